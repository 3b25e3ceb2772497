"""Run the update MLP only on the cells whose update can matter: the CPU's sparse fast path.

A Growing-NCA step computes the MLP for every cell, but a cell's update is used only if the
cell fires (half of them, at the paper's fire rate) and, with alive masking, only near the
living region: a cell all of whose 3x3 neighbours are dead before the step is zeroed by the
alive mask whatever it computes, and so are those neighbours, so its update changes nothing
(:func:`near_alive`). In the backward pass, likewise, only cells that fired and stayed alive
carry a cotangent. On a CPU the MLP's matmuls are most of a train step, and early in
training, or for a body covering a third of the grid, a fifth of the cells or fewer are active.

:func:`on_cells` gathers the active cells, a chunk of :data:`CHUNK_CELLS` at a time, runs
the MLP on each chunk and scatters the results back. Shapes must be static under ``jit``, so
the chunk size is fixed and the number of chunks, the active count rounded up, is a
``fori_loop``'s run-time trip count: one compiled MLP body, work in proportion to the active
cells. A chunk's hidden activations fit a core's L2 cache: on a 2-core EPYC this beat
gathering all active cells into one call (``experiments/bench/README.md``). The
arithmetic per cell is unchanged, so results equal the dense step's up to the order of
float32 sums over cells (``tests/perf/test_active_cells.py``). On a GPU, where the dense step
is bound by kernel launches rather than arithmetic, it is off by default
(``NCA(compact_cells="auto")``). Under ``vmap`` the loop runs, for every sample, as many chunks
as the busiest sample needs (nca_lab's own rollouts step whole batches).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from nca_lab.perceive.stencil import max_pool3x3

#: Cells per chunk: 1024 rows of 128 hidden floats (512 KiB) stay in a 1 MiB L2 cache. Chunks
#: of 256 to 1024 cells timed alike on the growing train step; 2048 was 15% slower.
CHUNK_CELLS = 1024
#: Below this many cells per step the dense step is used. A 16-step rollout with gradients and
#: a body on a quarter of the grid (2-core EPYC, 2026-11-30), dense vs compacted: 1024 cells
#: 21-33 vs 27-28 ms (two runs), 2048 cells 38 vs 33 ms, 2304 cells 63 vs 27 ms.
MIN_CELLS = 2048


def near_alive(alive_before: jnp.ndarray) -> jnp.ndarray:
    """Boolean ``(..., H, W, 1)``: some cell of the 3x3 neighbourhood is alive before the step.

    ``alive_before`` is :func:`~nca_lab.alive.alive_mask` of the step's input state. Elsewhere
    the alive mask zeroes the cell and its neighbours after the step, whatever the cell's update.
    """
    return max_pool3x3(alive_before.astype(jnp.float32)) > 0


def on_cells(active: jnp.ndarray, fn: Callable, rows: Sequence[jnp.ndarray], *, chunk: int = CHUNK_CELLS):
    """``fn`` applied to the active rows only, ``chunk`` rows at a time.

    Args:
        active: boolean ``(N,)``, the cells to compute.
        fn: ``fn(*gathered_rows) -> (row_outputs, reductions)``: ``row_outputs`` a tuple of
            ``(n, d)`` arrays, one row per gathered cell; ``reductions`` any pytree of sums over
            the rows, which must vanish for all-zero rows (the last chunk's padding), as
            gradients with a zero cotangent do.
        rows: ``(N, k)`` arrays, one row per cell.
        chunk: rows per call of ``fn``.

    Returns:
        ``(row_outputs, reductions)``: each row output ``(N, d)``, zero at inactive cells.
    """
    n = active.shape[0]
    chunk = min(n, chunk)
    index = jnp.nonzero(active, size=-(-n // chunk) * chunk, fill_value=n)[0]  # padding n: dropped
    rows = list(rows)
    out_shapes, sum_shapes = jax.eval_shape(
        lambda picked: fn(*picked), [jax.ShapeDtypeStruct((chunk, r.shape[-1]), r.dtype) for r in rows]
    )

    def add_chunk(i, carry):
        outputs, sums = carry
        cells = jax.lax.dynamic_slice_in_dim(index, i * chunk, chunk)
        chunk_outputs, chunk_sums = fn(*(jnp.take(r, cells, axis=0, mode="fill", fill_value=0) for r in rows))
        outputs = tuple(o.at[cells].set(c, mode="drop") for o, c in zip(outputs, chunk_outputs, strict=True))
        return outputs, jax.tree.map(jnp.add, sums, chunk_sums)

    zeros = (
        tuple(jnp.zeros((n, s.shape[-1]), s.dtype) for s in out_shapes),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sum_shapes),
    )
    num_chunks = -(-jnp.sum(active, dtype=jnp.int32) // chunk)
    return jax.lax.fori_loop(0, num_chunks, add_chunk, zeros)
