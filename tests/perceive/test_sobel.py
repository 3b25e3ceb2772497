import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_lab.errors import ConfigError
from nca_lab.perceive.sobel import SOBEL_X, SobelPerceive, sobel_kernels


def reference_perception(x: np.ndarray, angle: float = 0.0) -> np.ndarray:
    """Depthwise cross-correlation with zero padding, outputs ordered channel*3 + filter."""
    h, w, c = x.shape
    kernels = sobel_kernels(angle)
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, c, 3))
    for f in range(3):
        for a in range(3):
            for b in range(3):
                out[..., f] += kernels[f, a, b] * padded[a : a + h, b : b + w]
    return out.reshape(h, w, 3 * c)


def test_kernel_values():
    assert np.allclose(SOBEL_X, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8)
    identity, sx, sy = sobel_kernels()
    assert identity[1, 1] == 1 and identity.sum() == 1
    assert np.allclose(sy, SOBEL_X.T)


def test_matches_reference_and_ordering():
    x = np.random.default_rng(0).normal(size=(6, 7, 5)).astype(np.float32)
    out = np.asarray(SobelPerceive(5)(jnp.asarray(x)))
    assert out.shape == (6, 7, 15)
    np.testing.assert_allclose(out, reference_perception(x), atol=1e-6)
    # channel*3 + filter: feature 3*c is channel c itself
    np.testing.assert_allclose(out[..., ::3], x, atol=0)


def test_gradient_of_a_ramp():
    ramp = np.tile(np.arange(8.0), (8, 1))[..., None]  # increases along +column
    out = np.asarray(SobelPerceive(1)(jnp.asarray(ramp)))
    np.testing.assert_allclose(out[2:-2, 2:-2, 1], 1.0)  # d/dcol = 1 (sum of weights 8 / 8)
    np.testing.assert_allclose(out[2:-2, 2:-2, 2], 0.0)


def test_rotation_by_90_degrees_rotates_the_perception():
    x = np.random.default_rng(1).normal(size=(9, 9, 3)).astype(np.float32)
    rotated = np.rot90(x, 1, axes=(0, 1))  # counterclockwise
    perceived = np.asarray(SobelPerceive(3, angle=np.pi / 2)(jnp.asarray(rotated.copy())))
    expected = np.rot90(np.asarray(SobelPerceive(3)(jnp.asarray(x))), 1, axes=(0, 1))
    np.testing.assert_allclose(perceived, expected, atol=1e-5)


def test_batched_and_jitted():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 4))
    perceive = SobelPerceive(4)
    out = jax.jit(perceive)(x)
    assert out.shape == (2, 3, 8, 8, 12)
    np.testing.assert_allclose(out[1, 2], perceive(x[1, 2]), atol=1e-6)


def test_rejects_non_positive_channels():
    with pytest.raises(ConfigError, match="num_channels"):
        SobelPerceive(0)
