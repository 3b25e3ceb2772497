"""A trainable 3x3 convolution as the perception (the learned-filter NCA variant).

Mordvintsev et al. (Growing NCA, Distill 2020) note that learned perception filters are a
natural extension of the fixed Sobel filters; CAX's ``ConvPerceive`` is the same idea.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from nca_lab.errors import require
from nca_lab.perceive.base import Perceive
from nca_lab.perceive.sobel import sobel_kernels
from nca_lab.perceive.stencil import neighbours


class LearnedPerceive(Perceive):
    """Trainable 3x3 convolution, depthwise (with a channel multiplier) or full.

    Depthwise: ``out[..., c * M + m] = sum_ab K[a, b, c, m] * x[..., i + a - 1, j + b - 1, c]``,
    the layout of :class:`~nca_lab.perceive.sobel.SobelPerceive` when ``M = 3``.
    Full: every output mixes all input channels, ``K`` has shape ``(3, 3, C, features)``.
    The convolution is written as 9 shifted slices: its gradient is elementwise arithmetic,
    much faster on XLA:CPU than the gradient of a convolution op.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        mode: str = "depthwise",
        channel_multiplier: int | None = None,
        features: int | None = None,
        init: str = "sobel",
        use_bias: bool = False,
        rngs: nnx.Rngs,
    ):
        """Build the perceive.

        Args:
            num_channels: state channels ``C``.
            mode: ``"depthwise"`` (each channel filtered on its own) or ``"full"``.
            channel_multiplier: filters per channel, depthwise mode only (default 3).
            features: output features, full mode only (default ``3 * C``).
            init: ``"sobel"`` starts from identity/Sobel-x/Sobel-y (needs 3 filters per
                channel), ``"random"`` from a scaled normal.
            use_bias: add a learned bias per output feature.
            rngs: parameter initialisation stream.
        """
        require(int(num_channels) > 0, f"num_channels must be positive, got {num_channels}")
        require(mode in ("depthwise", "full"), f"perceive.mode must be depthwise or full, got {mode!r}")
        require(init in ("sobel", "random"), f"perceive.init must be sobel or random, got {init!r}")
        self.num_channels = c = int(num_channels)
        self.mode = mode
        unused = ("features", features) if mode == "depthwise" else ("channel_multiplier", channel_multiplier)
        require(unused[1] is None, f"perceive.{unused[0]} does not apply to mode={mode}, got {unused[1]}")
        if mode == "depthwise":
            multiplier = 3 if channel_multiplier is None else int(channel_multiplier)
            require(multiplier > 0, f"perceive.channel_multiplier must be positive, got {channel_multiplier}")
            self.out_features = c * multiplier
            shape = (3, 3, c, multiplier)
        else:
            self.out_features = int(features) if features is not None else 3 * c
            require(self.out_features > 0, f"perceive.features must be positive, got {features}")
            shape = (3, 3, c, self.out_features)
        if init == "sobel":
            require(
                self.out_features == 3 * c,
                f"init=sobel needs 3 filters per channel ({3 * c} features), got {self.out_features}",
            )
            kernel = self._sobel_init(c, mode)
        else:
            fan_in = 9 if mode == "depthwise" else 9 * c
            kernel = nnx.initializers.normal(stddev=fan_in**-0.5)(rngs.params(), shape)
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((self.out_features,))) if use_bias else None

    @staticmethod
    def _sobel_init(c: int, mode: str) -> np.ndarray:
        kernels = np.transpose(sobel_kernels(), (1, 2, 0))  # (3, 3, filter)
        if mode == "depthwise":
            return np.broadcast_to(kernels[:, :, None, :], (3, 3, c, 3)).copy()
        full = np.zeros((3, 3, c, 3 * c))
        for ch in range(c):
            full[:, :, ch, 3 * ch : 3 * ch + 3] = kernels
        return full

    def __call__(self, state: jnp.ndarray) -> jnp.ndarray:
        """Perception ``(..., H, W, out_features)`` of a state ``(..., H, W, C)``."""
        kernel = self.kernel[...]
        out = None
        for (dr, dc), nb in neighbours(state):
            k = kernel[dr + 1, dc + 1]
            if self.mode == "depthwise":
                term = (nb[..., :, None] * k).reshape(*nb.shape[:-1], self.out_features)
            else:
                term = nb @ k
            out = term if out is None else out + term
        if self.bias is not None:
            out = out + self.bias[...]
        return out
