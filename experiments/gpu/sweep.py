"""Time the fused Pallas kernels on a GPU for several launches (cells, warps, hidden chunk).

    python experiments/gpu/sweep.py [--steps N] [--sizes growing diffusing scaled]

For the growing (C=16, hidden 128), diffusing (C=64, hidden 256: two chunks of 128 columns
by default) and scaled (the growing model, 64 x 128x128) sizes, times ``forward_step``
(update and alive kernels, keeping every state as training does) and ``backward_step``
(gradient kernel, stencil kernel) alone, each in a jitted loop of ``--steps`` steps, and
prints microseconds per CA step (median of 5 calls after one warm-up call) for each launch;
``*`` marks the defaults (:func:`~nca_lab.kernels.sobel_mlp_step.forward_launch`,
``Launch()``). Off a GPU the kernels run in Pallas' interpreter (slow: use a small ``--steps``).

``--compile-only`` needs no GPU: each launch is compiled for an H100 by XLA:GPU
(:mod:`aot`, with the CUDA plugin installed) and its kernels' registers, bytes spilled and
programs per SM are printed instead of timings, or why XLA refused the launch: a screen of
the launches before GPU time is spent on them.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from nca_lab.bench.suites import SUITES
from nca_lab.kernels.sobel_mlp_backward import backward_step, weight_partials
from nca_lab.kernels.sobel_mlp_step import FlatLayout, Launch, forward_launch, forward_step, pack_weights

#: (name, channels, hidden, batch, grid) of the bench's train cases that have fused kernels.
SIZES = [
    (name, c.channels, c.hidden, c.batch, c.grid)
    for name in ("growing", "diffusing", "scaled")
    for c in SUITES[name][:1]
]
#: Launches to time per size, most promising first (a run cut short still times those and the
#: defaults). Screened with ``--compile-only`` (``screen_2026-12-01.txt``): registers and spills
#: of XLA's own compile for an H100. The growing model (growing, scaled): looped chunks of 32
#: spill nothing and fit more programs per SM (at 64 cells and 4 warps, update 5 and gradients
#: 3, against 1 and 1 at the default); stop 19 found 32 cells slow (the gradient kernel spills
#: 17 KB per thread at 8 warps), so they are left out. Diffusing: only looped chunks of 32 at 64
#: cells and 8 warps spill nothing in either kernel; looped at 128 cells, XLA refuses every chunk
#: size (shared memory); 32 cells and 8 warps timed best backward in stop 19.
_GROWING_MODEL = [
    Launch(128, 8),
    Launch(128, 4),
    Launch(64, 4, hidden_chunk=32, chunk_loop=True),
    Launch(64, 8, hidden_chunk=32, chunk_loop=True),
    Launch(128, 8, hidden_chunk=32, chunk_loop=True),
    Launch(128, 8, hidden_chunk=64, chunk_loop=True),
    Launch(64, 4),
    Launch(64, 8),
]
LAUNCHES = {
    "growing": _GROWING_MODEL,
    "scaled": _GROWING_MODEL,
    "diffusing": [
        Launch(128, 8),
        Launch(64, 8, hidden_chunk=32, chunk_loop=True),
        Launch(64, 4, hidden_chunk=32, chunk_loop=True),
        Launch(128, 8, hidden_chunk=64),
        Launch(64, 8, hidden_chunk=64),
        Launch(32, 8),
        Launch(32, 8, hidden_chunk=64),
    ],
}


def per_step_us(run, arg, steps: int) -> float:
    jax.block_until_ready(run(arg))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(run(arg))
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times) / steps


def compiled_kernels(target, label: str, traced) -> None:
    """Registers, spills and residency of the Pallas kernels of ``traced`` compiled for ``target``."""
    import aot

    with tempfile.TemporaryDirectory() as dump:
        try:
            aot.compile_for(target, traced, Path(dump))
        except Exception as error:  # noqa: BLE001 - a launch XLA refuses is reported, not fatal
            print(f"  {label} failed: {str(error).splitlines()[0][:150]}", flush=True)
            return
        print(f"  {label}", flush=True)
        aot.report_kernels(Path(dump), aot.SPEC.read_text(), prefix="_")


def sweep(name, channels, hidden, batch, grid, steps, interpret, target=None):
    """Time every launch for one size, or with a compile-only ``target`` device, compile it."""
    keys = jax.random.split(jax.random.key(0), 6)
    packed = pack_weights(
        {
            "w1": 0.1 * jax.random.normal(keys[0], (3 * channels, hidden)),
            "b1": 0.1 * jax.random.normal(keys[1], (hidden,)),
            "w2": 0.01 * jax.random.normal(keys[2], (hidden, channels)),
            "b2": jnp.zeros((channels,)),
        }
    )
    layout = FlatLayout(grid, grid)
    x = jax.random.uniform(keys[3], (batch, grid, grid, channels))
    flat = layout.to_flat(x * (jax.random.uniform(keys[4], (batch, grid, grid, 1)) > 0.3))
    fire = (jax.random.uniform(keys[5], (steps, batch, grid, grid, 1)) < 0.5).astype(x.dtype)
    fire = layout.to_flat(fire.reshape(-1, grid, grid, 1))[..., 0].reshape(steps, batch, layout.length)
    # the diffusing task has no alive mask: its training runs the unmasked kernels (registers.py too)
    threshold = None if name == "diffusing" else 0.1
    common = {"angle": 0.0, "step_size": 1.0, "interpret": interpret}
    states = jnp.zeros((steps + 1, *flat.shape)).at[0].set(flat)
    alive = jnp.zeros((steps, batch, layout.length)) if threshold is not None else None
    if target is None:  # the alive masks of a real rollout, for the timed backward pass
        states, alive = jax.jit(
            lambda states, alive: jax.lax.fori_loop(
                0,
                steps,
                lambda t, b: forward_step(
                    *b, fire, packed, t, steps, layout, history=True, alive_threshold=threshold, **common
                ),
                (states, alive),
            )
        )(states, alive)
    what = "compiled for an H100" if target is not None else "us per step"
    print(f"{name}: C={channels}, hidden {hidden}, {batch} x {grid}x{grid}, {steps} steps; {what}", flush=True)
    for launch in LAUNCHES[name]:

        @jax.jit
        def forward(states, launch=launch):
            def body(t, buffers):
                return forward_step(
                    *buffers,
                    fire,
                    packed,
                    t,
                    steps,
                    layout,
                    history=True,
                    alive_threshold=threshold,
                    launch=launch,
                    **common,
                )

            return jax.lax.fori_loop(0, steps, body, (states, alive))[0]

        @jax.jit
        def backward(grad, launch=launch):
            def body(k, carry):
                return backward_step(
                    states,
                    fire,
                    alive,
                    carry[1],
                    carry[0],
                    packed,
                    k,
                    steps,
                    layout,
                    launch=launch,
                    from_end=True,
                    **common,
                )

            return jax.lax.fori_loop(0, steps, body, (weight_partials(batch, layout, packed, launch), grad))

        if target is not None:
            compiled_kernels(target, f"{launch} forward:", forward.trace(states))
            compiled_kernels(target, f"{launch} backward:", backward.trace(flat))
            continue
        try:
            fwd, bwd = per_step_us(forward, states, steps), per_step_us(backward, flat, steps)
        except Exception as error:  # noqa: BLE001 - a launch Triton cannot compile is reported, not fatal
            print(f"  {launch}: failed: {str(error).splitlines()[0][:150]}")
            continue
        fwd_mark = "*" if launch == forward_launch(layout, batch) else " "
        bwd_mark = "*" if launch == Launch() else " "
        loop = " looped" if launch.chunk_loop else ""
        label = f"  cells {launch.cells:3d}, warps {launch.warps}, hidden chunk {launch.hidden_chunk:3d}{loop}:"
        print(f"{label} forward {fwd:8.1f}{fwd_mark} backward {bwd:8.1f}{bwd_mark}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=32, help="CA steps per timed scan")
    parser.add_argument("--sizes", nargs="+", default=[s[0] for s in SIZES], choices=[s[0] for s in SIZES])
    parser.add_argument("--compile-only", action="store_true", help="compile for an H100 here, time nothing")
    args = parser.parse_args()
    target = None
    if args.compile_only:
        import aot

        target = aot.h100(aot.SPEC)
    interpret = jax.default_backend() != "gpu" and target is None
    print(target or jax.devices(), flush=True)
    for size in SIZES:
        if size[0] in args.sizes:
            sweep(*size, args.steps, interpret, target)


if __name__ == "__main__":
    main()
