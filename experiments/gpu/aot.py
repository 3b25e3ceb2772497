"""The bench's cases compiled for an H100 on a machine without a GPU: compile time, kernels per CA step, memory.

    pip install "jax-cuda12-plugin[with-cuda]==$(python -c 'import jax; print(jax.__version__)')" cax
    python experiments/gpu/aot.py [--suite growing diffusing] [--impl nca_lab:xla nca_lab:pallas cax]
        [--repeats 3] [--dump DIR] [--launch chunk_loop=1 hidden_chunk=64] [--unroll N] [--rollout-steps 64 96]
        [--spec experiments/gpu/h100_sxm.txtpb]

GPU time is scarce, and much of what decides a GPU step's speed is fixed when XLA compiles it:
how many kernels each CA step launches (stop 19's H200 profile: 26 per CA step, ~4 µs each,
for the fused growing step), what each fusion holds, the memory planned. XLA:GPU compiles
without a device given the device's description (a ``GpuTargetConfigProto``, here
``h100_sxm.txtpb``: the H100 SXM facts of XLA's ``tools/hlo_opt/gpu_specs``): the CUDA plugin
creates a compile-only "topology" from it. So each case's train step is traced here, lowered
for ``cuda`` and compiled for an H100 by the installed jaxlib's XLA:GPU, Pallas kernels
through XLA's Triton and ptxas included. Without a device XLA does not autotune (its GEMM
fusions take default tilings; on a GPU, autotuning adds to the compile time). nca_lab is traced
as on a GPU: ``jax.default_backend()`` answers ``"gpu"`` while it is built and traced, so the
fused kernels are compiled, not interpreted, and active-cell compaction (a CPU path) is off.

Per case and implementation it prints the trace + lowering and compile times (medians of
``--repeats`` cold rounds, on this host's CPU), XLA's planned memory, and the kernels a call
launches: every instruction of the optimised HLO that becomes a kernel or a copy, the bodies
of loops counted once per iteration (their known trip counts), divided by the case's CA steps,
and the possible host syncs (iterations of loops of unknown length, conditionals: run from the
host, XLA:GPU copies their predicate to the host and waits for it).
What this cannot show: which thunks XLA:GPU records into command buffers (CUDA graphs). It
keeps the types that need CUDA >= 12.3 (``CONDITIONAL``, ``WHILE``, cuBLAS, custom calls) only
where the driver's version says so, and a compile-only device has no driver: here only
fusions and copies are captured, and every conditional is run from the host. On a GPU with a
recent driver a conditional inside a captured sequence becomes a CUDA graph node and syncs
nothing (``experiments/gpu/README.md``, command buffers).
The count is static: copies XLA adds at run time (the profile's ``memcpy32_post``) are not
in it, so it is a lower bound to set against a profile's kernel count. With ``--dump``, XLA's
dumps of each compile are kept and every kernel in a loop over CA steps gets a line: its
programs, warps and shared memory (XLA's thunk sequence), registers and bytes spilled per
thread (its PTX through ``ptxas -v``), and how many of its programs an SM holds.
``--launch`` compiles nca_lab's fused kernels with other :class:`Launch` defaults.
"""

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # the plugin's checks need a driver

import jax  # noqa: E402
import numpy as np  # noqa: E402

from nca_lab.bench import nca_lab_impl  # noqa: E402
from nca_lab.bench.suites import cases  # noqa: E402

SPEC = Path(__file__).with_name("h100_sxm.txtpb")
#: Optimised-HLO instructions that launch nothing (free, or their work is done by others);
#: loops, conditionals and calls count what they run (:func:`launches`).
NO_LAUNCH = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "after-all",
    "partition-id",
    "replica-id",
    "opt-barrier",
}
#: Entries of :func:`launches` that count possible host syncs, not launches.
SYNC_LOOP, SYNC_BRANCH = "(sync: loop of unknown length)", "(sync: conditional)"
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%(\S+) = .*?\s([a-z][a-z0-9-]*)\((.*)$")
_CALLEES = ("calls", "to_apply", "branch_computations", "true_computation", "false_computation")
_CALLS = re.compile(rf"(body|condition|{'|'.join(_CALLEES)})=(\{{[^}}]*\}}|%[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def h100(spec: Path):
    """The compile-only device of a one-GPU topology described by ``spec``."""
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="cuda", topology_name="", topology="1x1x1", target_config=spec.read_text()
    )
    return topology.devices[0]


@contextmanager
def traced_as_on_a_gpu():
    """nca_lab's backend checks answer ``"gpu"`` (its GPU paths are traced), then the real answer again."""
    real = jax.default_backend
    jax.default_backend = lambda: "gpu"
    try:
        yield
    finally:
        jax.default_backend = real


def compile_for(device, traced, dump: Path | None = None):
    """``(lower_s, compile_s, executable)`` of ``traced`` compiled for ``device``; XLA's dumps
    (optimised HLO, thunk sequences: each kernel's grid and shared memory) go to ``dump``.
    JAX has no public call that compiles a lowering for devices other than its backends': this
    uses its private ``compiler`` module, and may need updating with JAX."""
    from jax._src import compiler
    from jax._src.lib import _jax

    tick = time.perf_counter()
    lowered = traced.lower(lowering_platforms=("cuda",))
    module = lowered.compiler_ir("stablehlo")
    tock = time.perf_counter()
    overrides = {"xla_dump_to": str(dump), "xla_dump_hlo_as_text": True} if dump else None
    options = compiler.get_compile_options(
        num_replicas=1, num_partitions=1, device_assignment=np.array([[device]]), env_options_overrides=overrides
    )
    executable = compiler.backend_compile_and_load(device.client, module, _jax.DeviceList((device,)), options, [])
    return tock - tick, time.perf_counter() - tock, executable


def launches(hlo_text: str) -> Counter:
    """Kernels and copies one run of the module launches, by kind (a fusion's kind, or the opcode).

    Every instruction of the entry computation that is not in :data:`NO_LAUNCH` counts once;
    a loop's body (and condition, when its trip count is unknown) counts once per iteration,
    a call's computation once, a conditional's costliest branch once (an upper bound), and
    loops of unknown length and conditionals are counted apart: each iteration or branch
    run from the host syncs it with the GPU.
    """
    bodies: dict[str, list[tuple[str, str]]] = {}  # computation -> (opcode, operands and attributes)
    current = None
    entry = None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = head.group(1)
            bodies[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        instruction = _INSTRUCTION.match(line)
        if current is not None and instruction:
            bodies[current].append(instruction.groups()[1:])

    def count(name: str, times: int, into: Counter) -> Counter:
        for opcode, rest in bodies[name]:
            calls = dict((key, value.strip("{}").replace("%", "").split(", ")) for key, value in _CALLS.findall(rest))
            if opcode == "while":
                trip = _TRIP.search(rest)
                n = int(trip.group(1)) if trip else 1
                count(calls["body"][0], times * n, into)
                if not trip:
                    count(calls["condition"][0], times, into)
                    into[SYNC_LOOP] += times
            elif opcode == "conditional":  # its costliest branch; XLA:GPU reads the predicate on the host
                branches = [callee for key in _CALLEES for callee in calls.get(key, [])]
                counted = [count(branch, times, Counter()) for branch in branches]
                into.update(max(counted, key=lambda c: sum(c.values())))
                into[SYNC_BRANCH] += times
            elif opcode == "call":
                count(calls["to_apply"][0], times, into)
            elif opcode not in NO_LAUNCH:
                kind = re.search(r'"kind":"(__[\w]+)"', rest) or re.search(r"custom_call_target=\"([^\"]+)\"", rest)
                into[kind.group(1) if kind else opcode] += times
        return into

    total: Counter = Counter()
    count(entry, 1, total)
    return total


_KERNEL = re.compile(
    r"^\s+\d+: kCustomKernel .*?\] (\S+) grid: \[(\d+), (\d+), (\d+)\] threads: \[(\d+), (\d+), (\d+)\]"
    r"\s+shared_memory: (\d+) bytes"
)


def loop_kernels(dump: Path) -> dict[str, dict]:
    """The kernels in loop bodies of the last module XLA dumped to ``dump`` (its thunk sequence):
    programs, threads and shared memory by name."""
    # After XLA's thunk passes (command buffers) where they ran, else as emitted.
    found = sorted(dump.glob("module_*.thunk_sequence_after_thunk_passes.txt"))
    sequence = (found or sorted(dump.glob("module_*.thunk_sequence.txt")))[-1]
    kernels, in_body = {}, False
    for line in sequence.read_text().splitlines():
        if not line.startswith(" ") or line.strip() in ("body:", "condition:"):
            in_body = line.strip() == "body:"
            continue
        kernel = _KERNEL.match(line)
        if in_body and kernel:
            name, *sizes = kernel.groups()
            grid, threads = math.prod(map(int, sizes[:3])), math.prod(map(int, sizes[3:6]))
            kernels[name] = {"programs": grid, "threads": threads, "smem": int(sizes[6])}
    return kernels


def ptxas_usage(dump: Path, name: str) -> tuple[int, int] | None:
    """``(registers, bytes spilled)`` per thread of kernel ``name`` in the PTX XLA dumped, from the
    ptxas of the CUDA wheels (``nvidia-cuda-nvcc-cu12``, what XLA finds too); ``None`` if not there."""
    import nvidia.cuda_nvcc

    ptxas = Path(nvidia.cuda_nvcc.__path__[0]) / "bin" / "ptxas"
    for ptx in sorted(dump.glob("module_*.ptx"), reverse=True):
        text = ptx.read_text()
        if f".entry {name}(" not in text:
            continue
        target = re.search(r"^\.target (\S+)", text, re.M).group(1)
        info = subprocess.run(
            [str(ptxas), "-v", "--gpu-name", target, str(ptx), "-o", os.devnull], capture_output=True, text=True
        ).stderr
        section = info[info.index(f"'{name}'") :]
        registers = int(re.search(r"Used (\d+) registers", section).group(1))
        spills = int(re.search(r"(\d+) bytes spill stores", section).group(1))
        return registers, spills
    return None


def programs_per_sm(spec: str, registers: int, threads: int, smem: int) -> int:
    """Programs (thread blocks) of a kernel one SM holds at once: registers (allocated per warp
    in units of 256), shared memory (1 KiB reserved per block) and threads bound it."""
    limit = {
        key: int(re.search(rf"{key}: (\d+)", spec).group(1))
        for key in ("registers_per_core_limit", "shared_memory_per_core", "threads_per_core_limit")
    }
    warps = math.ceil(threads / 32)
    by_registers = limit["registers_per_core_limit"] // (math.ceil(registers * 32 / 256) * 256) // warps
    by_smem = limit["shared_memory_per_core"] // (smem + 1024)
    return min(by_registers, by_smem, limit["threads_per_core_limit"] // threads, 32)


def launch_defaults(pairs: list[str]) -> None:
    """Change the defaults of :class:`~nca_lab.kernels.sobel_mlp_step.Launch` (``KEY=VALUE``:
    ``warps``, ``hidden_chunk``, ``chunk_loop``) for this process, to compile a train step
    with other launches than nca_lab's; ``cells`` follows the layout and is not changed."""
    from nca_lab.kernels.sobel_mlp_step import Launch

    defaults = dict(zip(("cells", "warps", "hidden_chunk", "chunk_loop"), Launch.__init__.__defaults__, strict=True))
    for pair in pairs:
        key, value = pair.split("=")
        if key not in defaults or key == "cells":
            raise SystemExit(f"--launch takes warps, hidden_chunk or chunk_loop, got {key!r}")
        defaults[key] = type(defaults[key])(int(value))
    Launch.__init__.__defaults__ = tuple(defaults.values())


def build(case, impl: str, unroll: int, rollout_steps: tuple[int, int] | None = None):
    """The workload of ``impl`` (``nca_lab:<kernel>`` or ``cax``) for ``case``."""
    if impl == "cax":
        from nca_lab.bench import cax_impl

        return cax_impl.build(case)
    return nca_lab_impl.build(case, kernel=impl.split(":")[1], unroll=unroll, rollout_steps=rollout_steps)


def report_kernels(dump: Path, spec: str, prefix: str = "") -> None:
    """One line per kernel of the loops over CA steps (those named ``prefix...``; Pallas names
    kernels after their functions, ``_update_kernel`` and the like): its launch, registers,
    spills and how many of its programs an SM holds (``waves``: rounds of programs over all
    the SMs)."""
    cores = int(re.search(r"core_count: (\d+)", spec).group(1))
    for name, kernel in loop_kernels(dump).items():
        if not name.startswith(prefix):
            continue
        usage = ptxas_usage(dump, name)
        warps, smem = math.ceil(kernel["threads"] / 32), kernel["smem"] / 1024
        line = f"    {name:<28} {kernel['programs']:6d} programs x {warps:2d} warps, {smem:5.1f} KiB shared"
        if usage:
            per_sm = programs_per_sm(spec, usage[0], kernel["threads"], kernel["smem"])
            waves = math.ceil(kernel["programs"] / (per_sm * cores)) if per_sm else 0
            line += f", {usage[0]:3d} registers, {usage[1]:5d} B spilled, {per_sm} per SM, {waves} waves"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="+", default=["growing", "diffusing", "scaled", "rollout"])
    parser.add_argument("--impl", nargs="+", default=["nca_lab:xla", "nca_lab:pallas", "cax"])
    parser.add_argument("--steps", type=int, default=None, help="CA steps per rollout (default: the suite's)")
    parser.add_argument("--unroll", type=int, default=1, help="nca_lab's CA steps per loop iteration")
    parser.add_argument(
        "--rollout-steps", nargs=2, type=int, default=None, metavar=("LO", "HI"),
        help="nca_lab draws each train step's rollout length from this range, as the trainer does",
    )  # fmt: skip
    parser.add_argument("--launch", nargs="*", default=[], metavar="KEY=VALUE", help="other Launch defaults")
    parser.add_argument("--repeats", type=int, default=1, help="cold compiles of each (medians reported)")
    parser.add_argument("--spec", type=Path, default=SPEC, help="GpuTargetConfigProto text of the target GPU")
    parser.add_argument("--dump", type=Path, default=None, help="XLA's dumps of each compile, one folder each")
    args = parser.parse_args(argv)
    device = h100(args.spec)
    launch_defaults(args.launch)
    print(
        f"target: {device.device_kind} (compile-only, {args.spec.name}); jax {jax.__version__}; {os.cpu_count()} CPUs"
    )
    print(
        f"{'case':<22} {'impl':<16} {'lower s':>8} {'compile s':>9} {'GiB':>6} {'launches':>9} {'per CA step':>11}"
        f" {'syncs':>6}"
        "  most launched, per CA step"
    )
    for case in cases(args.suite, args.steps):
        for impl in args.impl:
            if impl == "nca_lab:pallas" and case.perceive != "sobel":
                continue
            try:
                with traced_as_on_a_gpu():
                    work = build(case, impl, args.unroll, args.rollout_steps and tuple(args.rollout_steps))
                    rounds = []
                    dump = args.dump / f"{case.suite}_{case.name}_{impl.replace(':', '_')}" if args.dump else None
                    for _ in range(args.repeats):
                        jax.clear_caches()
                        rounds.append(compile_for(device, work.trace(), dump))
            except Exception as exc:  # noqa: BLE001 - one failing implementation must not stop the others
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                print(f"{case.suite + ' ' + case.name:<22} {impl:<16} failed: {reason}")
                continue
            executable = rounds[-1][2]
            text = executable.hlo_modules()[0].to_string()
            stats = executable.get_compiled_memory_stats()
            planned = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            planned -= stats.alias_size_in_bytes
            kinds = launches(text)
            syncs = kinds.pop(SYNC_LOOP, 0) + kinds.pop(SYNC_BRANCH, 0)
            total = sum(kinds.values())
            top = ", ".join(f"{kind} {n / case.steps:.1f}" for kind, n in kinds.most_common(5))
            print(
                f"{case.suite + ' ' + case.name:<22} {impl:<16} {statistics.median(r[0] for r in rounds):8.2f} "
                f"{statistics.median(r[1] for r in rounds):9.2f} {planned / 2**30:6.2f} {total:9d} "
                f"{total / case.steps:11.1f} {syncs:6d}  {top}",
                flush=True,
            )
            if dump:
                report_kernels(dump, args.spec.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
