"""The fast training path equals the reference: the hand-written, rematerialising VJP of a CA
step (``NCA(manual_vjp=True)``, the default) against autodiff (``manual_vjp=False``), with the
same weights and the same random draws. Forward states must be identical, gradients equal
to float32 rounding, and a few optimizer steps must log the same losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nca_lab.nca import NCA
from nca_lab.perceive.attention import AttentionPerceive
from nca_lab.perceive.learned import LearnedPerceive
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.tasks.growing import seed_state
from nca_lab.train.pool import init_pool
from nca_lab.train.run import build
from nca_lab.train.step import make_train_step
from nca_lab.update.residual import ResidualUpdate

from nca_testing import TINY, compose

C = 8


def pair(perceive, hidden=(16,), alive_threshold=0.1, step_size=1.0):
    """The fast and the reference NCA over the very same modules (shared weights)."""
    update = ResidualUpdate(
        perceive.out_features, C, hidden_sizes=hidden, step_size=step_size, zero_init=False, rngs=nnx.Rngs(1)
    )
    fast = NCA(perceive, update, alive_threshold=alive_threshold)
    reference = NCA(perceive, update, alive_threshold=alive_threshold, manual_vjp=False)
    assert fast.uses_manual_vjp and not reference.uses_manual_vjp
    return fast, reference


def start(batch=(3,), grid=10):
    """Seeds with noise in the hidden channels, so every term of the gradient is exercised."""
    seed = jnp.asarray(seed_state((grid, grid), C))
    noise = 0.1 * jax.random.normal(jax.random.key(7), (*batch, grid, grid, C))
    return jnp.broadcast_to(seed, (*batch, grid, grid, C)) + noise.at[..., 3].set(0.0)


@nnx.jit(static_argnames=("steps", "remat", "unroll"))
def value_and_grads(model, state, keys, steps, **rollout_kw):
    """Loss, final state, parameter gradients and initial-state gradient of a rollout."""

    def loss(model, state):
        final, _ = model.rollout(state, keys, steps, **rollout_kw)
        return jnp.mean(jnp.square(final[..., :4] - 0.3)) + 0.1 * jnp.mean(final[..., 4:] ** 2), final

    (value, final), (param_grads, state_grad) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model, state)
    return value, final, nnx.state(param_grads, nnx.Param), state_grad


def assert_same(fast, reference, state, keys, steps=5, **rollout_kw):
    v_fast, f_fast, g_fast, s_fast = value_and_grads(fast, state, keys, steps, **rollout_kw)
    v_ref, f_ref, g_ref, s_ref = value_and_grads(reference, state, keys, steps, **rollout_kw)
    np.testing.assert_array_equal(f_fast, f_ref)  # the forward pass runs the same operations
    np.testing.assert_allclose(v_fast, v_ref, rtol=1e-6)
    leaves_fast, leaves_ref = jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)
    assert len(leaves_fast) == len(leaves_ref) > 0
    for a, b in zip(leaves_fast, leaves_ref, strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0  # every parameter gets a gradient
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(s_fast, s_ref, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(s_ref))))


def test_sobel_alive_mask_batch():
    fast, reference = pair(SobelPerceive(C))
    assert_same(fast, reference, start(), jax.random.split(jax.random.key(0), 3))


def test_two_hidden_layers_step_size_and_no_alive_mask():
    fast, reference = pair(SobelPerceive(C, angle=0.3), hidden=(16, 12), alive_threshold=None, step_size=0.5)
    assert_same(fast, reference, start(), jax.random.split(jax.random.key(1), 3))


def test_random_length_remat_and_unroll():
    fast, reference = pair(SobelPerceive(C))
    keys = jax.random.split(jax.random.key(3), 3)
    assert_same(fast, reference, start(), keys, steps=6, active_steps=jnp.int32(4), remat=True, unroll=2)


@pytest.mark.parametrize(
    "perceive",
    [
        lambda: LearnedPerceive(C, init="random", use_bias=True, rngs=nnx.Rngs(2)),
        lambda: AttentionPerceive(C, perception_size=12, num_heads=2, rngs=nnx.Rngs(2)),
    ],
    ids=["learned", "attention"],
)
def test_perceives_with_parameters(perceive):
    fast, reference = pair(perceive())
    assert_same(fast, reference, start(batch=(2,), grid=6), jax.random.split(jax.random.key(4), 2), steps=2)


def test_delta_vjp_equals_autodiff():
    update = ResidualUpdate(6, 5, hidden_sizes=[8, 7], step_size=0.7, zero_init=False, rngs=nnx.Rngs(0))
    perception = jax.random.normal(jax.random.key(0), (2, 4, 4, 6))
    cotangent = jax.random.normal(jax.random.key(1), (2, 4, 4, 5))
    grads, perception_grad = nnx.jit(lambda u, p, c: u.delta_vjp(p, c))(update, perception, cotangent)

    def inner(update, perception):
        return jnp.vdot(update.delta(perception), cotangent)

    want_grads, want_perception = nnx.jit(nnx.grad(inner, argnums=(0, 1)))(update, perception)
    np.testing.assert_allclose(perception_grad, want_perception, rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, nnx.state(want_grads, nnx.Param)
    )


def test_training_curves_are_unchanged():
    """Five optimizer steps with a pool (draw, reseed, damage, write back) log the same losses."""

    def train(manual_vjp):
        task, model, trainer = build(compose(*TINY, "task=regenerating", "task.pool_size=8", "task.damage_n=1"))
        model.manual_vjp = manual_vjp
        optimizer = nnx.Optimizer(model, trainer.optimizer(trainer.learning_rate), wrt=nnx.Param)
        pool = init_pool(task, jax.random.key(0), task.pool_size)
        step = make_train_step(task, batch_size=2, rollout_steps=(2, 4))
        losses = []
        for i in range(5):
            pool, metrics = step(model, optimizer, pool, jax.random.key(i))
            losses.append([float(metrics[k]) for k in ("loss", "grad_norm", "param_norm")])
        return np.array(losses), model, pool

    fast, fast_model, fast_pool = train(True)
    reference, reference_model, reference_pool = train(False)
    np.testing.assert_allclose(fast, reference, rtol=1e-5)
    np.testing.assert_allclose(fast_pool.state, reference_pool.state, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        nnx.state(fast_model, nnx.Param),
        nnx.state(reference_model, nnx.Param),
    )


def test_the_donated_pool_is_consumed_and_the_undonated_one_kept():
    task, model, _ = build(compose(*TINY, "task=regenerating", "task.pool_size=4", "task.damage_n=0"))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    kept = init_pool(task, jax.random.key(0), 4)
    make_train_step(task, batch_size=2, rollout_steps=(2, 2), donate_pool=False)(
        model, optimizer, kept, jax.random.key(0)
    )
    assert not kept.state.is_deleted()
    donated = init_pool(task, jax.random.key(0), 4)
    make_train_step(task, batch_size=2, rollout_steps=(2, 2))(model, optimizer, donated, jax.random.key(0))
    assert donated.state.is_deleted()
