"""The differentiable fused step (Pallas kernels forward and backward) and the rollout parts that scan it.

The forward pass is :func:`~nca_lab.kernels.sobel_mlp_step.fused_step` in the flat layout
and saves what the XLA path's custom VJP (:mod:`nca_lab.step_vjp`) saves: input state, fire
mask, alive mask. The backward pass,
:func:`~nca_lab.kernels.sobel_mlp_backward.fused_step_backward`, recomputes the step from
those, as the XLA path's does, and gives its gradients (``tests/perf/test_fused_step.py``).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from nca_lab.kernels.sobel_mlp_backward import fused_step_backward
from nca_lab.kernels.sobel_mlp_step import FlatLayout, fused_step, supports
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate


def can_fuse(perceive, update, alive_threshold: float | None) -> bool:
    """Whether the fused kernels compute this NCA's step: fixed Sobel, one hidden layer, sizes in 16s."""
    return (
        type(perceive) is SobelPerceive
        and type(update) is ResidualUpdate
        and len(update.hidden) == 1
        and supports(perceive.num_channels, update.hidden[0].out_features)
        and (alive_threshold is None or alive_threshold >= 0)
    )


def _weights(update: ResidualUpdate) -> dict:
    """The kernels' ``w1, b1, w2, b2`` of a one-hidden-layer update."""
    hidden, out = update.hidden[0], update.out
    return {"w1": hidden.kernel[...], "b1": hidden.bias[...], "w2": out.kernel[...], "b2": out.bias[...]}


def fused_residual_step(
    perceive: SobelPerceive,
    update: ResidualUpdate,
    alive_threshold: float | None,
    layout: FlatLayout,
    flat: jnp.ndarray,
    fire: jnp.ndarray,
    *,
    interpret: bool = False,
) -> jnp.ndarray:
    """``NCA.step`` in the flat layout for a given fire mask ``(B, layout.length)``; differentiable.

    The Sobel perceive has no parameters, so gradients flow to the update and the state only.
    """
    update_graph, update_params, update_rest = nnx.split(update, nnx.Param, ...)
    kernel_args = {"angle": perceive.angle, "step_size": update.step_size, "interpret": interpret}

    def merged(update_params) -> ResidualUpdate:
        return nnx.merge(update_graph, update_params, update_rest)

    def forward(update_params, flat, fire):
        weights = _weights(merged(update_params))
        return fused_step(flat, fire, weights, layout, alive_threshold=alive_threshold, **kernel_args)

    @jax.custom_vjp
    def step(update_params, flat, fire):
        return forward(update_params, flat, fire)[0]

    def step_fwd(update_params, flat, fire):
        out, alive = forward(update_params, flat, fire)
        return out, (update_params, flat, fire, alive)

    def step_bwd(residuals, grad_out):
        update_params, flat, fire, alive = residuals
        update = merged(update_params)
        grads, grad_flat = fused_step_backward(flat, fire, alive, grad_out, _weights(update), layout, **kernel_args)
        update_grads = update.param_grads([(grads["w1"], grads["b1"]), (grads["w2"], grads["b2"])])
        return update_grads, grad_flat, jnp.zeros_like(fire)

    step.defvjp(step_fwd, step_bwd)
    return step(update_params, flat, fire)


def flat_rollout_parts(
    perceive: SobelPerceive, update: ResidualUpdate, alive_threshold: float | None, state: jnp.ndarray
) -> tuple:
    """``(flat_state, flat_step, to_grid)``: what ``NCA.rollout`` scans to step ``state
    (..., H, W, C)`` in the kernels' flat layout, each grid drawing its fire mask as ``NCA.step`` does."""
    *batch_shape, height, width, channels = state.shape
    layout = FlatLayout(height, width)
    interpret = jax.default_backend() != "gpu"

    def to_grid(flat):
        return layout.from_flat(flat).reshape(*batch_shape, height, width, channels)

    def flat_step(flat, key):
        fire = update.fire_mask(key, (*batch_shape, height, width)).reshape(-1, height, width, 1)
        fire = layout.to_flat(fire)[..., 0]
        return fused_residual_step(perceive, update, alive_threshold, layout, flat, fire, interpret=interpret)

    return layout.to_flat(state.reshape(-1, height, width, channels)), flat_step, to_grid
