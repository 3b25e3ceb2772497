"""The sample pool of Growing NCA experiments 2 and 3, as pure jittable functions.

Reference: Mordvintsev et al., Distill 2020, "Experiment 2: What persists, exists": keep
a pool of states, train on batches drawn from it and write the results back, so the CA
learns to maintain its pattern over long horizons. Before training, the batch is sorted by
loss, the worst sample is replaced by a fresh seed (to keep learning to grow) and the
``damage_n`` best are damaged (experiment 3, "Learning to regenerate").
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nca_lab.errors import require
from nca_lab.tasks.base import Batch, Task


class Pool(NamedTuple):
    """States ``(P, H, W, C)`` and their targets (``(P, H, W, K)``, or any pytree of arrays with
    one target per sample along the first axis), kept on device."""

    state: jax.Array
    target: jax.Array


def init_pool(task: Task, key: jax.Array, size: int) -> Pool:
    """A pool of ``size`` fresh samples of ``task``."""
    return Pool(*task.sample(key, size))


def draw(pool: Pool, key: jax.Array, n: int) -> tuple[jax.Array, Batch]:
    """``n`` distinct pool indices (without replacement) and their samples."""
    idx = jax.random.permutation(key, pool.state.shape[0])[:n]
    return idx, Batch(pool.state[idx], _rows(pool.target, idx))


def check_damage(damage_n: int, batch_size: int) -> None:
    """Raise :class:`~nca_lab.errors.ConfigError` unless ``damage_n`` leaves the reseeded sample undamaged."""
    require(
        0 <= damage_n < batch_size,
        f"task.damage_n ({damage_n}) must be smaller than trainer.batch_size ({batch_size}): "
        "the worst sample is reseeded",
    )


def prepare(task: Task, idx: jax.Array, batch: Batch, key: jax.Array, damage_n: int) -> tuple[jax.Array, Batch]:
    """Sort by descending loss, reseed the worst sample, damage the ``damage_n`` best.

    Returns the reordered indices and the batch to train on.

    Raises:
        ConfigError: ``damage_n`` is not smaller than the batch (the reseeded sample would be damaged).
    """
    check_damage(damage_n, batch.state.shape[0])
    reseed_key, damage_key = jax.random.split(key)
    order = jnp.argsort(-task.loss(batch.state, batch.target))
    idx, state, target = idx[order], batch.state[order], _rows(batch.target, order)
    fresh = task.sample(reseed_key, 1)
    state = state.at[:1].set(fresh.state)
    target = jax.tree.map(lambda old, new: old.at[:1].set(new), target, fresh.target)
    if damage_n > 0:
        state = state.at[-damage_n:].set(task.damage(state[-damage_n:], damage_key))
    return idx, Batch(state, target)


def write_back(pool: Pool, idx: jax.Array, batch: Batch) -> Pool:
    """Store trained states (and their targets) at ``idx``."""
    target = jax.tree.map(lambda kept, trained: kept.at[idx].set(trained), pool.target, batch.target)
    return Pool(pool.state.at[idx].set(batch.state), target)


def _rows(tree, idx: jax.Array):
    """The rows ``idx`` of every array in ``tree``: a task's targets may be any pytree."""
    return jax.tree.map(lambda leaf: leaf[idx], tree)
