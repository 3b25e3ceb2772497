"""Time nca_lab's step variants on a GPU: XLA vs fused Pallas kernels; the kernels' block, warps, precision.

    python experiments/gpu/sweep.py

Prints one line per variant: median and min over 10 synchronised calls after one warm-up
call (whose time, compile included, is shown as ``first``).
"""

import statistics
import time
from dataclasses import replace

import jax
import jax.numpy as jnp

from nca_lab.bench import nca_lab_impl
from nca_lab.bench.suites import SUITES
from nca_lab.kernels import sobel_mlp_step


def timed(call, reps=10):
    t0 = time.perf_counter()
    jax.block_until_ready(call(0))
    first = time.perf_counter() - t0
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(call(i + 1))
        times.append(time.perf_counter() - t0)
    return first, 1e3 * statistics.median(times), 1e3 * min(times)


def report(label, result):
    first, med, lo = result
    print(f"{label:60s} median {med:9.2f} ms  min {lo:9.2f} ms  first {first:5.1f} s", flush=True)


def cases():
    growing = SUITES["growing"][0]
    rollout8, rollout256 = SUITES["rollout"]
    return [growing, rollout8, rollout256]


def bare_kernels(batch=256, grid=72, steps=96):
    """The two fused kernels alone in a scan (no RNG): block size, warps, dot precision."""
    model = nca_lab_impl.build_model(replace(SUITES["rollout"][1], batch=batch), 0.1, kernel="xla")
    weights = {
        "w1": model.update.hidden[0].kernel[...],
        "b1": model.update.hidden[0].bias[...],
        "w2": jax.random.normal(jax.random.key(0), (128, 16)) * 0.01,
        "b2": model.update.out.bias[...],
    }
    x = jax.random.uniform(jax.random.key(1), (batch, grid, grid, 16))
    variants = [(128, 4, None), (256, 8, None), (128, 4, jax.lax.Precision.HIGHEST)]
    variants.append((128, 4, jax.lax.DotAlgorithmPreset.BF16_BF16_F32))
    for block, warps, precision in variants:
        layout = sobel_mlp_step.FlatLayout(grid, grid, block=block)
        flat = layout.to_flat(x)
        fire = jnp.ones(flat.shape[:2], flat.dtype)

        @jax.jit
        def run(flat, layout=layout, fire=fire, warps=warps, precision=precision):
            def body(f, _):
                out = sobel_mlp_step.fused_step(
                    f,
                    fire,
                    weights,
                    layout,
                    angle=0.0,
                    step_size=1.0,
                    alive_threshold=0.1,
                    num_warps=warps,
                    precision=precision,
                )
                return out[0], None

            return jax.lax.scan(body, flat, None, length=steps, unroll=8)[0]

        label = f"bare kernels {batch}x{grid}x{grid} x{steps}, block {block}, warps {warps}, {precision}"
        report(label, timed(lambda i, flat=flat: run(flat)))


if __name__ == "__main__":
    print(jax.devices(), flush=True)
    for case in cases():
        for kernel in ("xla", "pallas"):
            work = nca_lab_impl.build(case, kernel=kernel)
            report(f"{case.suite} {case.name} x{case.steps} {kernel} unroll 1", timed(work.call))
            del work
    bare_kernels()
