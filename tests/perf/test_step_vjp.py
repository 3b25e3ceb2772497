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

from nca_lab.config import compose
from nca_lab.nca import NCA
from nca_lab.perceive.attention import AttentionPerceive
from nca_lab.perceive.learned import LearnedPerceive
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.tasks.growing import seed_state
from nca_lab.train.construct import construct
from nca_lab.train.pool import init_pool
from nca_lab.train.run import build
from nca_lab.train.step import make_train_step
from nca_lab.update.residual import ResidualUpdate

from nca_testing import REPO, TINY, assert_rollouts_agree, rollout_value_and_grads

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


def assert_same(fast, reference, state, keys, steps=5, **rollout_kw):
    """The forward pass runs the same operations (identical states); gradients agree to rounding."""
    got = rollout_value_and_grads(fast, state, keys, steps, **rollout_kw)
    want = rollout_value_and_grads(reference, state, keys, steps, **rollout_kw)
    assert_rollouts_agree(got, want, exact_states=True)


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


@pytest.mark.parametrize("compact", [False, True], ids=["dense", "active_cells"])
def test_fixed_input_channels(compact):
    """``fixed_channels`` (ViTCA's input) holds on the fast paths as on the reference one."""
    perceive = SobelPerceive(C)
    update = ResidualUpdate(perceive.out_features, C, hidden_sizes=(16,), zero_init=False, rngs=nnx.Rngs(1))
    fast = NCA(perceive, update, alive_threshold=None, fixed_channels=4, compact_cells=compact)
    reference = NCA(perceive, update, alive_threshold=None, fixed_channels=4, manual_vjp=False)
    assert fast.compacts(10 * 10) == compact
    assert_same(fast, reference, start(), jax.random.split(jax.random.key(5), 3))


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


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO / "conf" / "perceive").glob("*.yaml")))
def test_every_perceive_config(name):
    """``Perceive``'s promise, any perceive works with the manual step VJP and active cells,
    checked for each yaml in ``conf/perceive/`` as configured: a new one is, with nothing to add."""
    perceive = construct(compose(f"perceive={name}").perceive, "perceive", num_channels=C, rngs=nnx.Rngs(2))
    fast, reference = pair(perceive)
    state, keys = start(batch=(2,), grid=6), jax.random.split(jax.random.key(5), 2)
    assert_same(fast, reference, state, keys, steps=2)
    # active cells: `compact_cells="auto"` leaves a grid this small dense, so it is asked for
    compacted = NCA(perceive, fast.update, alive_threshold=0.1, compact_cells=True)
    assert compacted.compacts(state.size // C)
    want = rollout_value_and_grads(reference, state, keys, 2)
    assert_rollouts_agree(rollout_value_and_grads(compacted, state, keys, 2), want)
    assert_jitted_agrees(fast, want, state, keys)


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO / "conf" / "update").glob("*.yaml")))
def test_every_update_config(name):
    """Each yaml in ``conf/update/`` as configured, on the path it trains by (the manual step VJP
    where it keeps the residual step, else autodiff), equals autodiff inside ``jit``, as the
    train step runs it."""
    perceive = SobelPerceive(C)
    options = {"perception_size": perceive.out_features, "num_channels": C, "rngs": nnx.Rngs(1)}
    update = construct(compose(f"update={name}")["update"], "update", **options)
    params = nnx.state(update, nnx.Param)  # moved off a zero initialisation, so every parameter gets a gradient
    noise = jax.tree.map(lambda p: 0.1 * jax.random.normal(jax.random.key(p.size), p.shape), params)
    nnx.update(update, jax.tree.map(jnp.add, params, noise))
    fast = NCA(perceive, update, alive_threshold=0.1)
    reference = NCA(perceive, update, alive_threshold=0.1, manual_vjp=False)
    state, keys = start(batch=(2,), grid=6), jax.random.split(jax.random.key(5), 2)
    assert_jitted_agrees(fast, rollout_value_and_grads(reference, state, keys, 2), state, keys)


def assert_jitted_agrees(model, want, state, keys):
    """``model``'s rollout value and gradients under ``nnx.jit`` (where a module's variables are
    tracers, as in the train step) agree with the eager reference's ``want``."""
    jitted = nnx.jit(lambda model, state: rollout_value_and_grads(model, state, keys, 2))
    assert_rollouts_agree(jitted(model, state), want)


class GatedUpdate(ResidualUpdate):
    """A researcher's subclass: ``delta`` of its own, with a parameter the residual update lacks."""

    def __init__(self, perception_size, num_channels, **options):
        super().__init__(perception_size, num_channels, **options)
        self.gate = nnx.Linear(perception_size, num_channels, rngs=nnx.Rngs(3))

    def delta(self, perception):
        return super().delta(perception) * jax.nn.sigmoid(self.gate(perception))


class LearnedStepUpdate(ResidualUpdate):
    """A subclass that changes what the inherited ``delta`` computes: a trained step size."""

    def __init__(self, perception_size, num_channels, **options):
        super().__init__(perception_size, num_channels, **options)
        self.step_size = nnx.data(nnx.Param(jnp.array(0.7)))


class SoftFireUpdate(ResidualUpdate):
    """A subclass whose fire mask is not 0 or 1 (active cells applied a firing cell's delta whole)."""

    def fire_mask(self, key, grid_shape):
        return 0.5 * super().fire_mask(key, grid_shape)


class TwoHeadUpdate(ResidualUpdate):
    """A subclass whose output layer gives twice the channels, a gate and a value per channel
    (``NCA`` refused it as sized for other channels)."""

    def __init__(self, perception_size, num_channels, **options):
        super().__init__(perception_size, num_channels, **options)
        self.out = nnx.Linear(self.out.in_features, 2 * num_channels, rngs=nnx.Rngs(4))

    def delta(self, perception):
        hidden = perception
        for layer in self.hidden:
            hidden = jax.nn.relu(layer(hidden))
        gate, value = jnp.split(self.out(hidden), 2, axis=-1)
        return jax.nn.sigmoid(gate) * value


@pytest.mark.parametrize("kind", [GatedUpdate, LearnedStepUpdate, SoftFireUpdate, TwoHeadUpdate])
@pytest.mark.parametrize("compact", [False, True])
def test_a_subclass_that_keeps_the_step_keeps_the_fast_paths(kind, compact):
    """A gated update trained by autodiff, about 5x slower on a CPU, though only ``delta``
    changed. A subclass keeping ``apply`` and ``__call__`` has the manual step VJP (its ``delta``
    by autodiff there; the hand-written one gave a learned step size no gradient) and, asked
    for, active cells."""
    perceive = SobelPerceive(C)
    update = kind(perceive.out_features, C, hidden_sizes=(16,), zero_init=False, rngs=nnx.Rngs(1))
    fast = NCA(perceive, update, alive_threshold=0.1, compact_cells=compact)
    reference = NCA(perceive, update, alive_threshold=0.1, manual_vjp=False)
    assert fast.uses_manual_vjp and fast.compacts(10**6) == compact
    assert not NCA(perceive, update, alive_threshold=0.1).compacts(10**6)  # auto: a subclass's delta may mix cells
    state, keys = start(), jax.random.split(jax.random.key(6), 3)
    got = rollout_value_and_grads(fast, state, keys, 4)
    want = rollout_value_and_grads(reference, state, keys, 4)
    assert_rollouts_agree(got, want)


class BufferedUpdate(ResidualUpdate):
    """A subclass with a variable that is not trained (a buffer)."""

    def __init__(self, perception_size, num_channels, **options):
        super().__init__(perception_size, num_channels, **options)
        self.scale = nnx.Variable(jnp.full((num_channels,), 0.5))

    def delta(self, perception):
        return super().delta(perception) * self.scale[...]


class BufferedPerceive(SobelPerceive):
    """A perceive with a variable that is not trained."""

    def __init__(self, num_channels, **options):
        super().__init__(num_channels, **options)
        self.gain = nnx.Variable(jnp.array(2.0))

    def __call__(self, state):
        return super().__call__(state) * self.gain[...]


def test_variables_that_are_not_trained_under_jit():
    """Inside a jitted rollout they are tracers, which the step's custom VJP closed over:
    "No constant handler for type: DynamicJaxprTracer" at the first train step."""
    perceive = BufferedPerceive(C)
    update = BufferedUpdate(perceive.out_features, C, hidden_sizes=(16,), zero_init=False, rngs=nnx.Rngs(1))
    fast = NCA(perceive, update, alive_threshold=0.1)
    reference = NCA(perceive, update, alive_threshold=0.1, manual_vjp=False)
    state, keys = start(), jax.random.split(jax.random.key(6), 3)
    jitted = nnx.jit(lambda model, state: rollout_value_and_grads(model, state, keys, 4))
    assert_rollouts_agree(jitted(fast, state), jitted(reference, state))


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
