"""Residual per-cell MLP update with stochastic (fire-rate) cell updates.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020, section
"Stochastic cell update" and ``CAModel`` of the authors' notebook: ``dx = MLP(perception)``,
last layer zero-initialised so the untrained CA does nothing, and each cell applies its
``dx`` with probability ``fire_rate``, without the 1/p rescaling of dropout, in training and
at inference alike. The other kernels start as the notebook's Keras ``Conv2D`` layers do
(Glorot-uniform; Flax's default, LeCun-normal, is 35% wider for the 48 -> 128 layer), biases
at zero.

:meth:`ResidualUpdate.delta_vjp` is the MLP's backward pass written out by hand, for the
rematerialising step of :mod:`nca_lab.step_vjp`: weight gradients as ``a^T g`` contractions
over cells, read from the activations in their natural ``(cells, features)`` layout. Autodiff
of the same MLP emits each weight gradient as a dot followed by a transpose, and XLA:CPU then
materialises a transposed copy of every ``(cells, 128)`` cotangent before an Eigen dot.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nca_lab.errors import is_integer, is_number, require
from nca_lab.update.base import Update


class ResidualUpdate(Update):
    """``state + fire_mask * step_size * MLP(perception)``, per cell.

    The MLP is ``perception -> hidden (relu) ... -> C`` applied to every cell (a 1x1
    convolution); the last layer starts at zero.
    """

    def __init__(
        self,
        perception_size: int,
        num_channels: int,
        *,
        hidden_sizes: Sequence[int] = (128,),
        fire_rate: float = 0.5,
        step_size: float = 1.0,
        zero_init: bool = True,
        rngs: nnx.Rngs,
    ):
        """Build the update.

        Args:
            perception_size: features of the perception (the perceive's ``out_features``).
            num_channels: state channels ``C``.
            hidden_sizes: widths of the relu hidden layers (the paper: one of 128).
            fire_rate: probability that a cell updates at a step, in ``(0, 1]``.
            step_size: scale of ``dx``.
            zero_init: start the last layer at zero (the paper), making the initial CA the identity.
            rngs: parameter initialisation stream.
        """
        require(
            isinstance(hidden_sizes, Sequence)
            and not isinstance(hidden_sizes, str)
            and all(is_integer(h) and h > 0 for h in hidden_sizes),
            f"update.hidden_sizes must be a list of positive integers, got {hidden_sizes!r}",
        )
        hidden_sizes = list(hidden_sizes)
        require(int(perception_size) > 0, f"perception_size must be positive, got {perception_size}")
        require(int(num_channels) > 0, f"num_channels must be positive, got {num_channels}")
        _check_fire_rate(fire_rate)
        self.fire_rate = float(fire_rate)
        require(
            math.isfinite(step_size) and step_size > 0,
            f"update.step_size must be a positive finite number, got {step_size}",
        )
        self.step_size = float(step_size)
        sizes = [int(perception_size), *hidden_sizes]
        keras = nnx.initializers.glorot_uniform()
        self.hidden = nnx.List(
            [nnx.Linear(a, b, kernel_init=keras, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        last_init = nnx.initializers.zeros if zero_init else keras
        self.out = nnx.Linear(sizes[-1], int(num_channels), kernel_init=last_init, rngs=rngs)

    def delta(self, perception: jnp.ndarray) -> jnp.ndarray:
        """The proposed change ``step_size * MLP(perception)``, shape ``(..., H, W, C)``.

        :meth:`delta_vjp` (and the fused kernels of :mod:`nca_lab.kernels`) mirror it by hand:
        change them together (``tests/perf/test_step_vjp.py`` checks they agree), or change it
        in a subclass: its ``delta`` is differentiated by autodiff inside the manual step VJP.
        Active cells run it on the rows ``(cells, features)`` of the cells that can change, so
        a subclass gets them only with ``compact_cells=true``, for a ``delta`` per cell (each
        cell's change from its own perception).
        """
        h = perception
        for layer in self.hidden:
            h = jax.nn.relu(layer(h))
        return self.out(h) * self.step_size

    def fire_mask(self, key: jax.Array, grid_shape: tuple[int, ...]) -> jnp.ndarray:
        """Which cells update: one ``uniform[0, 1)`` draw per cell, kept where ``<= fire_rate``.

        Args:
            key: one key per grid, shape ``grid_shape[:-2]`` (a scalar key for one grid).
            grid_shape: ``(..., H, W)``.

        Returns:
            float32 ``(..., H, W, 1)``, shared by all channels of a cell.
        """
        if is_number(self.fire_rate):  # an attribute a user may set: 0 changed nothing, without a word
            _check_fire_rate(self.fire_rate)
        height_width = tuple(grid_shape[-2:])
        draws = jax.vmap(lambda k: jax.random.uniform(k, (*height_width, 1)))(jnp.reshape(key, (-1,)))
        return (draws.reshape(*grid_shape, 1) <= self.fire_rate).astype(jnp.float32)

    def apply(self, state: jnp.ndarray, perception: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        """``state + delta(perception) * mask`` for a given fire ``mask (..., H, W, 1)``."""
        return state + self.delta(perception) * mask

    def __call__(self, state: jnp.ndarray, perception: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        """Updated state ``(..., H, W, C)``; ``key`` (one per grid) draws the fire mask."""
        return self.apply(state, perception, self.fire_mask(key, state.shape[:-1]))

    def delta_vjp(self, perception: jnp.ndarray, cotangent: jnp.ndarray) -> tuple[nnx.State, jnp.ndarray]:
        """The backward pass of :meth:`delta`: gradients of ``<delta(perception), cotangent>``.

        Recomputes the hidden activations from ``perception`` (nothing is stored between the
        forward and the backward pass) and returns ``(param_grads, perception_grad)``, where
        ``param_grads`` has the structure of ``nnx.state(self, nnx.Param)``. Equal to
        ``jax.vjp(ResidualUpdate.delta)`` up to float32 rounding (tested). A subclass gets
        ``jax.vjp``'s, unless it writes this method too: one may change what ``delta``
        computes without overriding it (a learned ``step_size``, another ``out`` layer).
        """
        if type(self) is not ResidualUpdate:
            graph, params, rest = nnx.split(self, nnx.Param, ...)
            _, delta_vjp = jax.vjp(lambda p, x: nnx.merge(graph, p, rest).delta(x), params, perception)
            return delta_vjp(cotangent)
        layers = [*self.hidden, self.out]
        inputs = [perception]
        for layer in self.hidden:
            inputs.append(jax.nn.relu(layer(inputs[-1])))
        grad = cotangent * self.step_size
        grads = []
        for index in reversed(range(len(layers))):
            layer, x = layers[index], inputs[index]
            flat_x, flat_g = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
            grads.append((jnp.einsum("nk,nm->km", flat_x, flat_g), jnp.sum(flat_g, axis=0)))
            grad = grad @ layer.kernel[...].T
            if index > 0:  # through the relu that produced x (relu' = 0 at 0, as jax.nn.relu)
                grad = jnp.where(x > 0, grad, 0.0)
        return self.param_grads(grads[::-1]), grad

    def param_grads(self, layer_grads: Sequence[tuple[jnp.ndarray, jnp.ndarray]]) -> nnx.State:
        """``(kernel_grad, bias_grad)`` per layer, first to last, as a state shaped like the parameters."""
        graph, params, rest = nnx.split(self, nnx.Param, ...)
        zeros = nnx.merge(graph, jax.tree.map(jnp.zeros_like, params), rest)
        for layer, (kernel_grad, bias_grad) in zip([*zeros.hidden, zeros.out], layer_grads, strict=True):
            layer.kernel.set_value(kernel_grad)
            layer.bias.set_value(bias_grad)
        return nnx.state(zeros, nnx.Param)


def _check_fire_rate(fire_rate: float) -> None:
    """The fire rate is a probability of updating: 0 would be a rule that never changes a cell."""
    require(0.0 < fire_rate <= 1.0, f"update.fire_rate must be in (0, 1], got {fire_rate}")
