"""Time the fused Pallas kernels on a GPU for several launches (cells and warps per program).

    python experiments/gpu/sweep.py [--steps N]

For the growing (C=16, hidden 128), diffusing (C=64, hidden 256) and scaled (the growing
model, 64 x 128x128) sizes, times ``fused_step`` (forward: update and alive kernels) and
``fused_step_backward`` (gradient kernel, the weight-gradient reductions, stencil kernel)
alone, each in a jitted scan of ``--steps`` steps, and prints microseconds per CA step
(median of 5 calls after one warm-up call) for each launch; ``*`` marks the defaults
(:func:`~nca_lab.kernels.sobel_mlp_step.forward_launch`, ``Launch()``). Off a GPU the kernels run in
Pallas' interpreter (slow: use a small ``--steps``).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from nca_lab.kernels.sobel_mlp_backward import fused_step_backward
from nca_lab.kernels.sobel_mlp_step import FlatLayout, Launch, forward_launch, fused_step

#: (name, channels, hidden, batch, grid)
SIZES = [("growing", 16, 128, 8, 72), ("diffusing", 64, 256, 8, 72), ("scaled", 16, 128, 64, 128)]
LAUNCHES = [Launch(16, 4), Launch(32, 4), Launch(32, 8), Launch(64, 4), Launch(64, 8), Launch(128, 4), Launch(128, 8)]


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
    params = {
        "w1": 0.1 * jax.random.normal(keys[0], (3 * channels, hidden)),
        "b1": 0.1 * jax.random.normal(keys[1], (hidden,)),
        "w2": 0.01 * jax.random.normal(keys[2], (hidden, channels)),
        "b2": jnp.zeros((channels,)),
    }
    layout = FlatLayout(grid, grid)
    x = jax.random.uniform(keys[3], (batch, grid, grid, channels))
    flat = layout.to_flat(x * (jax.random.uniform(keys[4], (batch, grid, grid, 1)) > 0.3))
    fire = layout.to_flat((jax.random.uniform(keys[5], (batch, grid, grid, 1)) < 0.5).astype(x.dtype))[..., 0]
    common = {"angle": 0.0, "step_size": 1.0, "interpret": interpret}
    alive = fused_step(flat, fire, params, layout, alive_threshold=0.1, **common)[1]
    print(f"{name}: C={channels}, hidden {hidden}, {batch} x {grid}x{grid}, {steps} steps; us per step", flush=True)
    for launch in LAUNCHES:

        @jax.jit
        def forward(flat, launch=launch):
            def body(f, _):
                return fused_step(f, fire, params, layout, alive_threshold=0.1, launch=launch, **common)[0], None

            return jax.lax.scan(body, flat, None, length=steps)[0]

        @jax.jit
        def backward(grad, launch=launch):
            def body(g, _):
                grads, g = fused_step_backward(flat, fire, alive, g, params, layout, launch=launch, **common)
                return g, grads["w2"]

            return jax.lax.scan(body, grad, None, length=steps)

        try:
            fwd, bwd = per_step_us(forward, flat, steps), per_step_us(backward, flat, steps)
        except Exception as error:  # noqa: BLE001 - a launch Triton cannot compile is reported, not fatal
            print(f"  cells {launch.cells:3d}, warps {launch.warps}: failed: {str(error).splitlines()[0][:150]}")
            continue
        fwd_mark = "*" if launch == forward_launch(layout, batch) else " "
        bwd_mark = "*" if launch == Launch() else " "
        label = f"  cells {launch.cells:3d}, warps {launch.warps}:"
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
