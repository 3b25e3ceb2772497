"""The train step draws its rollout length from the whole range and writes the trained states
back to the pool (Mordvintsev et al., Distill 2020: 64-96 steps, experiments 2 and 3)."""

import jax
import numpy as np
import optax
from flax import nnx

from nca_lab.config import compose
from nca_lab.train.pool import init_pool
from nca_lab.train.run import build
from nca_lab.train.step import make_train_step

from nca_testing import TINY

DRIFT = 1 / 16  # exact in float32: alpha after T steps is T / 16


def test_rollouts_run_each_length_of_the_range_and_the_pool_keeps_their_final_states():
    """A model that adds ``DRIFT`` to every cell's alpha at every step (fire rate 1, no alive
    mask) leaves ``T * DRIFT`` in an empty corner after a rollout of ``T`` steps: over 40 keys
    the pool holds each length of ``[2, 4]`` (both ends included, none past the drawn one)."""
    settings = ("task=regenerating", "task.pool_size=2", "task.damage_n=0", "task.alive_threshold=null")
    task, model, _ = build(compose(*TINY, *settings, "update.fire_rate=1"))
    model.update.out.bias[...] = model.update.out.bias[...].at[3].set(DRIFT)
    optimizer = nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.Param)  # the weights stay as set
    step = make_train_step(task, batch_size=2, rollout_steps=(2, 4), donate_pool=False)
    lengths = []
    for i in range(40):
        pool, metrics = step(model, optimizer, init_pool(task, jax.random.key(0), 2), jax.random.key(i))
        if i == 0:  # the logged loss is the batch's mean, not its sum
            np.testing.assert_allclose(metrics["loss"], np.mean(task.loss(pool.state, pool.target)), rtol=1e-6)
        corners = np.asarray(pool.state[:, 0, 0, 3]) / DRIFT  # the batch is the whole pool, seeds before the step
        assert corners[0] == corners[1] and corners[0] == round(corners[0])
        lengths.append(int(corners[0]))
    assert sorted(set(lengths)) == [2, 3, 4]
