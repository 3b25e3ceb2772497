"""The jitted training step: draw a batch, roll out, take one optimizer step.

Reference: Mordvintsev et al., Distill 2020 (the authors' ``train_step``): a rollout of
random length, the task loss on the final state, backpropagation through every CA step.
"""

from collections.abc import Callable
from functools import partial

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from nca_lab.kernels.fused_rollout import split_over
from nca_lab.nca import NCA
from nca_lab.tasks.base import Batch, Task
from nca_lab.train import parallel
from nca_lab.train import pool as pool_ops


def make_train_step(
    task: Task,
    *,
    batch_size: int,
    rollout_steps: tuple[int, int],
    remat: bool = False,
    unroll: int = 1,
    donate_pool: bool = True,
    mesh: Mesh | None = None,
) -> Callable:
    """Build ``train_step(model, optimizer, pool, key) -> (pool, metrics)``.

    The step is pure in its arguments: the model and optimizer are updated in place by
    ``nnx.jit``'s state propagation in tree mode (``graph=False``: they pass as pytrees; nnx's
    graph traversal cost ~2 ms of host time per call, which a step waited for pays in full; flax
    refuses, with its own message, modules that share a variable), ``pool`` (a :class:`~nca_lab.train.pool.Pool`, or
    ``None`` when the task has none) is returned. The rollout length is drawn uniformly
    from ``rollout_steps`` (inclusive) once per batch; the scan always has the maximum
    length and skips the steps past the drawn one, so no length triggers a recompile.
    Each sample has its own PRNG key.

    With ``donate_pool`` (the default) the pool passed in is donated to the step, which
    writes the trained samples back in place; the caller must use the returned pool, as the
    old one is deleted. Without donation XLA copies the whole pool on every step to write
    ``batch_size`` samples into it (1024 x 72x72x16 floats: 340 MB, a third of a CPU step).

    With a ``mesh`` (:func:`~nca_lab.train.parallel.data_mesh`) the step is data parallel:
    the batch (and the pool it returns) stay split across the mesh's devices; place the
    pool with :func:`~nca_lab.train.parallel.place` and the model and optimizer with
    :func:`~nca_lab.train.parallel.replicate` before the first call.
    """
    low, high = rollout_steps
    if mesh is not None:
        parallel.check_divisible(mesh, **{"trainer.batch_size": batch_size})

    @partial(nnx.jit, donate_argnames=("pool",) if donate_pool else (), graph=False)
    def train_step(model: NCA, optimizer: nnx.Optimizer, pool: pool_ops.Pool | None, key: jax.Array):
        draw_key, prepare_key, length_key, rollout_key = jax.random.split(key, 4)
        if pool is None:
            batch = task.sample(draw_key, batch_size)
        else:
            idx, batch = pool_ops.draw(pool, draw_key, batch_size)
            idx, batch = pool_ops.prepare(task, idx, batch, prepare_key, task.damage_n)
        if mesh is not None:
            batch = parallel.constrain(batch, mesh)
        active = None if low == high else jax.random.randint(length_key, (), low, high + 1)
        sample_keys = jax.random.split(rollout_key, batch_size)

        def loss_fn(model: NCA):
            with split_over(mesh):
                final, _ = model.rollout(
                    batch.state,
                    sample_keys,
                    high,
                    active_steps=active,
                    min_active_steps=low,
                    remat=remat,
                    unroll=unroll,
                )
            return task.loss(final, batch.target).mean(), final

        (loss, final), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        grad_norm = optax.tree.norm(grads)
        optimizer.update(model, grads)
        param_norm = optax.tree.norm(nnx.state(model, nnx.Param))  # catches a non-finite update
        if pool is not None:
            pool = pool_ops.write_back(pool, idx, Batch(final, batch.target))
            if mesh is not None:
                pool = parallel.constrain(pool, mesh)
        return pool, {"loss": loss, "grad_norm": grad_norm, "param_norm": param_norm}

    return train_step
