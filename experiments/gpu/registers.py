"""Registers and spills of the fused kernels on a Hopper GPU, found without one.

    pip install triton    # 3.9.0 here: its compiler and the ptxas it ships
    python experiments/gpu/registers.py [--sizes growing diffusing] [--cells 128 32] [--chunks 128]
                                        [--warps 4 8] [--chunk-loop no yes] [--arch 90]

A kernel whose values outgrow the 255 registers a thread may have spills them to local
memory, and the update and gradient kernels of :mod:`nca_lab.kernels` hold a block's hidden
activations, weights and weight-gradient shares in registers: stop 19's H200 run found them
slow where they spilled (``experiments/bench/h200_2026-11-30_fused``). GPU time is scarce, so
this counts the spills on a CPU machine:

1. ``jax.export`` for the ``cuda`` platform runs Pallas' Triton lowering here (as
   ``tests/perf/test_fused_lowering.py`` does); the Triton IR of every kernel is captured by
   wrapping ``jax._src.pallas.triton.lowering.lower_jaxpr_to_triton_module`` (a private
   function: this script may need updating with JAX);
2. the Triton compiler from PyPI (``triton.compile`` of the IR, for ``sm_<arch>``) turns it
   into PTX, and its ``ptxas -v`` reports registers, spill stores and loads, and the stack.

On the GPU machine XLA compiles the same IR with its own copy of Triton, so the counts are a
guide to compare launches with, not the GPU's exact numbers. Shared memory differs most: the
gradient kernel that ran on the H200 on 2026-11-30 (commit 732e41b, diffusing, 128 cells,
8 warps) counts 288 KiB here, over the 227 KiB a block may have there. Prints one row per
kernel and launch (``cells`` per program, ``chunk`` hidden columns at a time, ``loop`` for
``Launch.chunk_loop``, ``warps``); ``*`` marks the
launch nca_lab uses by default for that size (:func:`~nca_lab.kernels.sobel_mlp_step.forward_launch`
for the update kernel, :class:`~nca_lab.kernels.sobel_mlp_step.Launch` for the gradient one).
"""

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import export  # noqa: E402
from jax._src.pallas.triton import lowering  # noqa: E402

from nca_lab.bench.suites import SUITES  # noqa: E402
from nca_lab.kernels.sobel_mlp_backward import backward_step, weight_partials  # noqa: E402
from nca_lab.kernels.sobel_mlp_step import FlatLayout, Launch, forward_launch, forward_step  # noqa: E402


def _size(case) -> tuple[int, int, int, int, bool]:
    """``(channels, hidden, batch, grid, alive mask)`` of a bench case (growing tasks mask alive cells)."""
    return case.channels, case.hidden, case.batch, case.grid, case.task == "growing"


#: The bench's train cases that have fused kernels, by suite.
SIZES = {name: _size(SUITES[name][0]) for name in ("growing", "diffusing", "scaled")}
#: The kernels that hold hidden activations (the others, the alive mask and the stencil
#: transpose, hold a few tiles and do not come near the limit).
HEAVY = ("_update_kernel", "_grads_kernel")


def triton_ir(size: str, cells: int, chunk: int, loop: bool) -> dict[str, str]:
    """The Triton IR of the update and gradient kernels of ``size`` at this launch, by kernel name."""
    channels, hidden, batch, grid, alive = SIZES[size]
    layout = FlatLayout(grid, grid)
    launch = Launch(cells=cells, hidden_chunk=chunk, chunk_loop=loop)
    captured = {}

    def capture(*args, **kwargs):
        result = lower(*args, **kwargs)
        text = result.module.operation.get_asm(enable_debug_info=False)
        captured[re.search(r"tt\.func public @(\w+)", text).group(1)] = text
        return result

    def step_and_back(packed, states, fire, alive_masks, grad, step):
        kwargs = {"angle": 0.0, "step_size": 1.0, "launch": launch}
        states, alive_masks = forward_step(
            states, alive_masks, fire, packed, step, step + 1, layout, history=True,
            alive_threshold=0.1 if alive else None, **kwargs,
        )  # fmt: skip
        partials = weight_partials(batch, layout, packed, launch)
        return backward_step(states, fire, alive_masks, grad, partials, packed, step, step + 1, layout, **kwargs)

    spec = jax.ShapeDtypeStruct
    args = (
        spec((4 * channels + 2, hidden), jnp.float32),
        spec((2, batch, layout.length, channels), jnp.float32),
        spec((1, batch, layout.length), jnp.float32),
        spec((1, batch, layout.length), jnp.float32) if alive else None,
        spec((batch, layout.length, channels), jnp.float32),
        spec((), jnp.int32),
    )
    lower = lowering.lower_jaxpr_to_triton_module
    lowering.lower_jaxpr_to_triton_module = capture
    try:
        triton_call = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
        export.export(jax.jit(step_and_back), platforms=["cuda"], disabled_checks=[triton_call])(*args)
    finally:
        lowering.lower_jaxpr_to_triton_module = lower
    return {name: text for name, text in captured.items() if name in HEAVY}


def ptxas_report(ir: str, warps: int, arch: int) -> dict[str, int]:
    """Registers, spill bytes and shared memory of ``ir`` compiled by Triton for ``sm_<arch>``."""
    import triton  # only this part needs it
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ttir"
        source.write_text(ir)
        options = {"num_warps": warps, "num_stages": 3}  # 3: Pallas' default on CUDA
        kernel = triton.compile(str(source), target=GPUTarget("cuda", arch, 32), options=options)
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(kernel.asm["ptx"])
        bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
        # Triton 3.9 writes PTX 9.4, which only the newer of its two ptxas binaries reads.
        ptxas = next(p for p in (bin_dir / "ptxas-blackwell", bin_dir / "ptxas") if p.exists())
        gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        done = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", ptx, "-o", os.devnull], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])

    def number(pattern: str) -> int:
        found = re.search(pattern, done.stderr)
        return int(found.group(1)) if found else 0

    return {
        "regs": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "stack": number(r"(\d+) bytes stack frame"),
        "shared_kib": kernel.metadata.shared // 1024,
    }


def default_launches(size: str) -> dict[str, Launch]:
    """nca_lab's launch of each heavy kernel for ``size``."""
    _, _, batch, grid, _ = SIZES[size]
    layout = FlatLayout(grid, grid)
    return {"_update_kernel": forward_launch(layout, batch), "_grads_kernel": Launch(cells=layout.block)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["growing", "diffusing"], choices=list(SIZES))
    parser.add_argument("--cells", nargs="+", type=int, default=[128, 32])
    parser.add_argument("--chunks", nargs="+", type=int, default=[128])
    parser.add_argument("--warps", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--chunk-loop", nargs="+", choices=["no", "yes"], default=["no"])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200)")
    args = parser.parse_args()
    columns = ["size", "kernel", "cells", "chunk", "loop", "warps", "regs"]
    columns += ["spill stores B", "spill loads B", "stack B", "shared KiB"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for size in args.sizes:
        defaults, hidden = default_launches(size), SIZES[size][1]
        for cells in args.cells:
            for chunk in args.chunks:
                for loop in [answer == "yes" for answer in args.chunk_loop]:
                    if loop and chunk >= hidden:
                        continue  # one chunk: no loop
                    for name, ir in triton_ir(size, cells, chunk, loop).items():
                        for warps in args.warps:
                            r = ptxas_report(ir, warps, args.arch)
                            mark = "*" if Launch(cells, warps, chunk, loop) == defaults[name] else ""
                            print(
                                f"| {size} | {name.strip('_')}{mark} | {cells} | {chunk} | {'yes' if loop else 'no'} | "
                                f"{warps} | {r['regs']} | {r['spill_stores']} | {r['spill_loads']} | {r['stack']} | "
                                f"{r['shared_kib']} |",
                                flush=True,
                            )


if __name__ == "__main__":
    main()
