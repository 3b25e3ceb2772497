"""Time the fused Pallas kernels on a GPU for several launches (cells, warps, hidden chunk).

    python experiments/gpu/sweep.py [--steps N] [--sizes growing diffusing scaled]

For the growing (C=16, hidden 128), diffusing (C=64, hidden 256: two chunks of 128 columns
by default) and scaled (the growing model, 64 x 128x128) sizes, times ``forward_step``
(update and alive kernels, keeping every state as training does) and ``backward_step``
(gradient kernel, stencil kernel) alone, each in a jitted loop of ``--steps`` steps, and
prints microseconds per CA step (median of 5 calls after one warm-up call) for each launch;
``*`` marks the defaults (:func:`~nca_lab.kernels.sobel_mlp_step.forward_launch`,
``Launch()``). Off a GPU the kernels run in Pallas' interpreter (slow: use a small ``--steps``).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from nca_lab.kernels.sobel_mlp_backward import backward_step, weight_partials
from nca_lab.kernels.sobel_mlp_step import FlatLayout, Launch, forward_launch, forward_step, pack_weights

#: (name, channels, hidden, batch, grid)
SIZES = [("growing", 16, 128, 8, 72), ("diffusing", 64, 256, 8, 72), ("scaled", 16, 128, 64, 128)]
LAUNCHES = [
    *(Launch(cells, warps) for cells in (32, 64, 128) for warps in (4, 8)),
    *(Launch(cells, 8, hidden_chunk=64) for cells in (32, 64, 128)),
    # Chunks in a loop: offline (experiments/gpu/registers.py) these spill least; the last one
    # not at all, in 190 registers at 4 warps: two programs per multiprocessor.
    *(Launch(cells, 8, hidden_chunk=chunk, chunk_loop=True) for cells in (64, 128) for chunk in (32, 64)),
    Launch(64, 4, hidden_chunk=32, chunk_loop=True),
]


def per_step_us(run, arg, steps: int) -> float:
    jax.block_until_ready(run(arg))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(run(arg))
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times) / steps


def sweep(name, channels, hidden, batch, grid, steps, interpret):
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
    common = {"angle": 0.0, "step_size": 1.0, "interpret": interpret}
    states = jnp.zeros((steps + 1, *flat.shape)).at[0].set(flat)
    alive = jnp.zeros((steps, batch, layout.length))
    states, alive = jax.jit(
        lambda states, alive: jax.lax.fori_loop(
            0,
            steps,
            lambda t, b: forward_step(*b, fire, packed, t, steps, layout, history=True, alive_threshold=0.1, **common),
            (states, alive),
        )
    )(states, alive)
    print(f"{name}: C={channels}, hidden {hidden}, {batch} x {grid}x{grid}, {steps} steps; us per step", flush=True)
    for launch in LAUNCHES:

        @jax.jit
        def forward(states, launch=launch):
            def body(t, buffers):
                return forward_step(
                    *buffers, fire, packed, t, steps, layout, history=True, alive_threshold=0.1, launch=launch, **common
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
    args = parser.parse_args()
    interpret = jax.default_backend() != "gpu"
    print(jax.devices(), flush=True)
    for size in SIZES:
        if size[0] in args.sizes:
            sweep(*size, args.steps, interpret)


if __name__ == "__main__":
    main()
