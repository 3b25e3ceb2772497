"""Fixed identity + Sobel perception of Growing Neural Cellular Automata.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020
(https://distill.pub/2020/growing-ca/), ``CAModel.perceive`` of the authors' notebook.
"""

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from nca_lab.errors import require
from nca_lab.perceive.base import Perceive
from nca_lab.perceive.stencil import correlate3x3

#: Sobel kernel indexed ``[row, col]``: a derivative along +column, divided by 8.
SOBEL_X = np.outer([1.0, 2.0, 1.0], [-1.0, 0.0, 1.0]) / 8.0
#: Its transpose: a derivative along +row (rows run down the image).
SOBEL_Y = SOBEL_X.T
IDENTITY = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def sobel_kernels(angle: float = 0.0) -> np.ndarray:
    """The three 3x3 kernels ``[identity, grad_x, grad_y]``, shape ``(3, 3, 3)``.

    A rotation ``angle`` (radians) turns the gradient pair exactly as the original model:
    ``grad_x = cos(a) * sobel_x - sin(a) * sobel_y`` and
    ``grad_y = sin(a) * sobel_x + cos(a) * sobel_y``.
    """
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([IDENTITY, c * SOBEL_X - s * SOBEL_Y, s * SOBEL_X + c * SOBEL_Y])


class SobelPerceive(Perceive):
    """Depthwise identity, Sobel-x and Sobel-y per channel, zero padding.

    Output features are ordered ``channel * 3 + filter`` (the order of TensorFlow's depthwise
    convolution with channel multiplier 3), so the released models' weights apply unchanged.
    The kernels are constants: each filter is a handful of shifted slices that XLA fuses
    into the first dense layer's input.
    """

    def __init__(self, num_channels: int, *, angle: float = 0.0, rngs: nnx.Rngs | None = None):
        """Build the perceive.

        Args:
            num_channels: state channels ``C``.
            angle: rotation of the gradient pair in radians.
            rngs: unused (no parameters); accepted so every perceive builds alike.
        """
        del rngs
        require(int(num_channels) > 0, f"num_channels must be positive, got {num_channels}")
        self.num_channels = int(num_channels)
        self.out_features = 3 * self.num_channels
        require(math.isfinite(angle), f"perceive.angle must be a finite number of radians, got {angle}")
        self.angle = float(angle)

    def __call__(self, state: jnp.ndarray) -> jnp.ndarray:
        """Perception ``(..., H, W, 3C)`` of a state ``(..., H, W, C)``."""
        identity, grad_x, grad_y = sobel_kernels(self.angle)
        del identity  # the centre tap alone: the state itself
        filtered = jnp.stack([state, correlate3x3(state, grad_x), correlate3x3(state, grad_y)], axis=-1)
        return filtered.reshape(*state.shape[:-1], self.out_features)
