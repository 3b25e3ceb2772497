"""Run the update MLP only on the cells whose update can matter: the CPU's sparse fast path.

A Growing-NCA step computes the MLP for every cell, but a cell's update is used only if the
cell fires (half of them, at the paper's fire rate) and, with alive masking, only near the
living region: a cell all of whose 3x3 neighbours are dead before the step is zeroed by the
alive mask whatever it computes, and so are those neighbours, so its update changes nothing
(:func:`near_alive`). In the backward pass, likewise, only cells that fired and stayed alive
carry a cotangent. On a CPU the MLP's matmuls are most of a train step, and early in
training, or for a body covering a third of the grid, a fifth of the cells or fewer are active.

:func:`on_cells` gathers the active cells, runs the MLP on them and scatters the results
back. Shapes must be static under ``jit``, so the gather has a fixed capacity: the smallest
of a few :data:`TIERS` (fractions of the cells) that holds the active count, chosen at run
time by ``lax.switch``. The arithmetic per cell is unchanged, so results equal the dense
step's up to the order of float32 sums over cells (``tests/perf/test_active_cells.py``). On
a GPU, where the dense step is bound by kernel launches rather than arithmetic, it is off by
default (``NCA(compact_cells="auto")``). Under ``vmap`` the ``lax.switch`` runs every tier, so
a caller that vmaps the step over samples should turn it off (nca_lab's own rollouts step
whole batches).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from nca_lab.perceive.stencil import neighbours

#: Gather capacities, as fractions of all cells. 9/16 holds a fire rate of 0.5 with no alive
#: mask (the active count is within a few standard deviations of half the cells).
TIERS: tuple[float, ...] = (1 / 8, 1 / 4, 9 / 16, 1.0)
#: Below this many cells per step the dense step is used: gathers and the extra compiled
#: branches would cost more than they save (and tests' tiny grids compile once, not per tier).
MIN_CELLS = 4096


def near_alive(alive_before: jnp.ndarray) -> jnp.ndarray:
    """Boolean ``(..., H, W, 1)``: some cell of the 3x3 neighbourhood is alive before the step.

    ``alive_before`` is :func:`~nca_lab.alive.alive_mask` of the step's input state. Elsewhere
    the alive mask zeroes the cell and its neighbours after the step, whatever the cell's update.
    """
    dilated = None
    for _, nb in neighbours(alive_before.astype(jnp.float32)):
        dilated = nb if dilated is None else jnp.maximum(dilated, nb)
    return dilated > 0


def on_cells(
    active: jnp.ndarray,
    fn: Callable,
    rows: Sequence[jnp.ndarray],
    *,
    tiers: Sequence[float] = TIERS,
):
    """``fn`` applied to the active rows only.

    Args:
        active: boolean ``(N,)``, the cells to compute.
        fn: ``fn(*gathered_rows) -> (row_outputs, reductions)``: ``row_outputs`` a tuple of
            ``(n, d)`` arrays, one row per gathered cell; ``reductions`` any pytree of sums over
            the rows, which must vanish for all-zero rows (the gather's padding), as gradients
            with a zero cotangent do.
        rows: ``(N, k)`` arrays, one row per cell.
        tiers: gather capacities as fractions of ``N``.

    Returns:
        ``(row_outputs, reductions)``: each row output ``(N, d)``, zero at inactive cells.
    """
    n = active.shape[0]
    capacities = sorted({max(1, min(n, round(t * n))) for t in tiers} | {n})

    def gathered(capacity: int):
        def run(rows):
            index = jnp.nonzero(active, size=capacity, fill_value=n)[0]
            picked = [jnp.take(r, index, axis=0, mode="fill", fill_value=0) for r in rows]
            outputs, reductions = fn(*picked)
            scattered = tuple(jnp.zeros((n, o.shape[-1]), o.dtype).at[index].set(o, mode="drop") for o in outputs)
            return scattered, reductions

        return run

    tier = jnp.searchsorted(jnp.asarray(capacities), jnp.sum(active))
    return jax.lax.switch(tier, [gathered(c) for c in capacities], list(rows))
