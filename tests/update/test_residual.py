import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nca_lab.errors import ConfigError
from nca_lab.update.residual import ResidualUpdate


def test_zero_init_is_identity():
    update = ResidualUpdate(12, 4, rngs=nnx.Rngs(0))
    state = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
    perception = jax.random.normal(jax.random.key(1), (2, 5, 5, 12))
    np.testing.assert_array_equal(update(state, perception, jax.random.split(jax.random.key(2), 2)), state)


def test_fire_mask_frequency_and_no_rescaling():
    update = ResidualUpdate(4, 4, fire_rate=0.3, zero_init=False, rngs=nnx.Rngs(0))
    state = jnp.zeros((64, 64, 4))
    perception = jnp.ones((64, 64, 4))
    out = update(state, perception, jax.random.key(3))
    delta = update.delta(perception)
    fired = np.all(np.isclose(out, delta), axis=-1)
    untouched = np.all(out == 0, axis=-1)
    assert np.all(fired | untouched)  # a cell applies its whole delta (no 1/p rescaling) or nothing
    assert abs(fired.mean() - 0.3) < 0.03


def test_fire_mask_differs_per_grid_and_is_reproducible():
    update = ResidualUpdate(4, 4, rngs=nnx.Rngs(0))
    keys = jax.random.split(jax.random.key(0), 3)
    mask = update.fire_mask(keys, (3, 16, 16))
    assert mask.shape == (3, 16, 16, 1)
    assert not np.array_equal(mask[0], mask[1])
    np.testing.assert_array_equal(mask[2], update.fire_mask(keys[2], (16, 16)))


def test_fire_rate_one_updates_every_cell():
    update = ResidualUpdate(4, 4, fire_rate=1.0, rngs=nnx.Rngs(0))
    assert float(update.fire_mask(jax.random.key(0), (32, 32)).min()) == 1.0


def test_hidden_layers_and_step_size():
    update = ResidualUpdate(6, 5, hidden_sizes=[8, 7], step_size=0.5, zero_init=False, rngs=nnx.Rngs(0))
    assert [layer.kernel.shape for layer in update.hidden] == [(6, 8), (8, 7)]
    p = jnp.ones((3, 3, 6))
    unscaled = ResidualUpdate(6, 5, hidden_sizes=[8, 7], step_size=1.0, zero_init=False, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(update.delta(p), 0.5 * unscaled.delta(p), rtol=1e-6)


@pytest.mark.parametrize("fire_rate", [0.0, -0.1, 1.5])
def test_rejects_fire_rate_outside_unit_interval(fire_rate):
    with pytest.raises(ConfigError, match="fire_rate"):
        ResidualUpdate(4, 4, fire_rate=fire_rate, rngs=nnx.Rngs(0))


def test_a_fire_rate_set_after_construction_is_checked_when_a_mask_is_drawn():
    """``update.fire_rate = 0`` gave a rollout that changed nothing, without a word."""
    update = ResidualUpdate(4, 4, rngs=nnx.Rngs(0))
    update.fire_rate = 0.0
    with pytest.raises(ConfigError, match=r"^update\.fire_rate must be in \(0, 1\], got 0\.0$"):
        update.fire_mask(jax.random.key(0), (3, 3))


def test_rejects_non_positive_sizes():
    with pytest.raises(ConfigError, match="hidden_sizes"):
        ResidualUpdate(4, 4, hidden_sizes=[0], rngs=nnx.Rngs(0))


def test_hidden_kernels_start_as_the_authors_keras_layers():
    """Glorot-uniform (Keras' default) over the 48 -> 128 layer: bound sqrt(6 / 176), std bound/sqrt(3)."""
    update = ResidualUpdate(48, 16, rngs=nnx.Rngs(0))
    kernel, bound = np.asarray(update.hidden[0].kernel[...]), np.sqrt(6 / (48 + 128))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert not np.any(update.hidden[0].bias[...]) and not np.any(update.out.kernel[...])
