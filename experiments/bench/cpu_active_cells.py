"""The growing train step on a CPU with and without active-cell compaction, by how much of the grid lives.

    python experiments/bench/cpu_active_cells.py

``python -m nca_lab.bench`` starts every implementation's pool from seeds, where few cells
live and compaction (``NCA(compact_cells=...)``, :mod:`nca_lab.active_cells`) gains most. Here
the pool's states are replaced by a living square body (random cells, alpha 1) covering a
given share of the 72x72 grid, from the bench's seeds to the whole grid, and the nca_lab step
is timed dense and compacted (8-step rollouts, batch 8, pool 1024, as the bench on a CPU).
Prints one line per setting: median of 10 synchronised steps after 3 warm-up steps.
"""

import statistics
import time
from dataclasses import replace

import jax
import jax.numpy as jnp

from nca_lab.bench import nca_lab_impl
from nca_lab.bench.suites import CPU_STEPS, SUITES
from nca_lab.nca import NCA
from nca_lab.train.pool import Pool


def with_body(pool: Pool, side: int) -> Pool:
    """Every pool state replaced by a ``side`` x ``side`` living square of random cells."""
    grid = pool.state.shape[1]
    start = (grid - side) // 2
    body = jnp.zeros((grid, grid), bool).at[start : start + side, start : start + side].set(True)
    cells = (0.5 * jax.random.uniform(jax.random.key(0), pool.state.shape)).at[..., 3].set(1.0)
    return Pool(jnp.where(body[None, :, :, None], cells, 0.0), pool.target)


def timed(compact_cells: bool, side: int | None, repeats: int = 10) -> float:
    """Median ms per step; ``side=None`` keeps the bench's pool of seeds."""
    init_pool, nca_init = nca_lab_impl.init_pool, NCA.__init__
    if side is not None:
        nca_lab_impl.init_pool = lambda task, key, n: with_body(init_pool(task, key, n), side)
    NCA.__init__ = lambda self, *a, **kw: nca_init(self, *a, **{**kw, "compact_cells": compact_cells})
    try:
        work = nca_lab_impl.build(replace(SUITES["growing"][0], steps=CPU_STEPS))
    finally:
        nca_lab_impl.init_pool, NCA.__init__ = init_pool, nca_init
    for i in range(3):
        jax.block_until_ready(work.call(i))
    times = []
    for i in range(repeats):
        tick = time.perf_counter()
        jax.block_until_ready(work.call(3 + i))
        times.append(time.perf_counter() - tick)
    return 1e3 * statistics.median(times)


if __name__ == "__main__":
    print(jax.devices(), flush=True)
    for side in (None, 24, 44, 72):
        dense, compact = timed(False, side), timed(True, side)
        body = "the bench's seeds" if side is None else f"body {side}x{side} ({side * side / 72**2:.0%} of the grid)"
        print(f"{body}: dense {dense:.0f} ms, compacted {compact:.0f} ms", flush=True)
