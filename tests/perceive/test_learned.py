import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nca_lab.errors import ConfigError
from nca_lab.perceive.learned import LearnedPerceive
from nca_lab.perceive.sobel import SobelPerceive


@pytest.mark.parametrize("mode", ["depthwise", "full"])
def test_sobel_init_equals_fixed_sobel(mode):
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 4))
    learned = LearnedPerceive(4, mode=mode, init="sobel", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(learned(x), SobelPerceive(4)(x), atol=1e-6)


def test_depthwise_matches_a_convolution():
    c, m = 3, 2
    perceive = LearnedPerceive(c, channel_multiplier=m, init="random", rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (1, 6, 5, c))
    kernel = perceive.kernel[...]  # (3, 3, C, M) -> HWIO with feature_group_count=C
    expected = jax.lax.conv_general_dilated(
        x,
        kernel.reshape(3, 3, 1, c * m),
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )
    np.testing.assert_allclose(perceive(x), expected, atol=1e-5)


def test_full_matches_a_convolution_and_has_gradients():
    perceive = LearnedPerceive(3, mode="full", features=5, init="random", use_bias=True, rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(4), (2, 5, 5, 3))
    expected = (
        jax.lax.conv_general_dilated(
            x, perceive.kernel[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + perceive.bias[...]
    )
    np.testing.assert_allclose(perceive(x), expected, atol=1e-5)
    grads = nnx.grad(lambda p: jnp.sum(p(x) ** 2))(perceive)
    assert float(jnp.abs(grads["kernel"][...]).sum()) > 0


def test_bad_settings():
    with pytest.raises(ConfigError, match="mode"):
        LearnedPerceive(4, mode="dilated", rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="init=sobel"):
        LearnedPerceive(4, channel_multiplier=2, init="sobel", rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="perceive.features does not apply to mode=depthwise, got 12"):
        LearnedPerceive(4, features=12, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="perceive.channel_multiplier does not apply to mode=full, got 3"):
        LearnedPerceive(4, mode="full", channel_multiplier=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(("mode", "fan_in"), [("depthwise", 9), ("full", 9 * 16)])
def test_random_init_has_the_scale_of_its_fan_in(mode, fan_in):
    """LeCun-normal scale: each output feature's variance is about its input's, whatever the channels."""
    kernel = LearnedPerceive(16, mode=mode, init="random", rngs=nnx.Rngs(0)).kernel[...]
    assert abs(float(jnp.std(kernel)) * fan_in**0.5 - 1.0) < 0.1
