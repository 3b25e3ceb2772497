import jax.numpy as jnp
import numpy as np

from nca_lab.alive import alive_mask


def test_alive_is_max_pooled_alpha_above_threshold():
    state = np.zeros((6, 6, 4), np.float32)
    state[0, 0, 3] = 0.5  # corner: padding must not win
    state[4, 4, 3] = 0.1  # exactly the threshold: not alive
    mask = np.asarray(alive_mask(jnp.asarray(state)))[..., 0]
    expected = np.zeros((6, 6), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(mask, expected)


def test_negative_alpha_everywhere_is_dead():
    """Whatever the threshold: off-grid padding never wins the max-pool (a zero padding would
    bring the border to life under a negative threshold)."""
    state = -np.ones((1, 5, 5, 4), np.float32)
    assert not np.asarray(alive_mask(jnp.asarray(state))).any()
    assert not np.asarray(alive_mask(jnp.asarray(state), threshold=-0.5)).any()
