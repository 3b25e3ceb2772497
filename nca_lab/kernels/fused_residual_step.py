"""The differentiable fused step: Pallas kernels forward, the rematerialising backward of :mod:`nca_lab.step_vjp`.

The forward pass is :func:`~nca_lab.kernels.sobel_mlp_step.fused_step` in the flat layout
and saves what the XLA path's custom VJP saves (input state, fire mask, alive mask); the
backward pass converts those to the grid layout and runs the very same
:func:`~nca_lab.step_vjp.step_backward`, so both paths give the same gradients.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from nca_lab.kernels.sobel_mlp_step import FlatLayout, fused_step, supports
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.step_vjp import step_backward
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
    """``NCA.step`` in the flat layout for a given fire mask ``(B, layout.length)``; differentiable."""
    perceive_graph, perceive_params, perceive_rest = nnx.split(perceive, nnx.Param, ...)
    update_graph, update_params, update_rest = nnx.split(update, nnx.Param, ...)

    def perceive_fn(params, x):
        return nnx.merge(perceive_graph, params, perceive_rest)(x)

    def forward(update_params, flat, fire):
        update = nnx.merge(update_graph, update_params, update_rest)
        hidden, out = update.hidden[0], update.out
        weights = {"w1": hidden.kernel[...], "b1": hidden.bias[...], "w2": out.kernel[...], "b2": out.bias[...]}
        return fused_step(
            flat,
            fire,
            weights,
            layout,
            angle=perceive.angle,
            step_size=update.step_size,
            alive_threshold=alive_threshold,
            interpret=interpret,
        )

    @jax.custom_vjp
    def step(perceive_params, update_params, flat, fire):
        return forward(update_params, flat, fire)[0]

    def step_fwd(perceive_params, update_params, flat, fire):
        out, alive = forward(update_params, flat, fire)
        return out, (perceive_params, update_params, flat, fire, alive)

    def step_bwd(residuals, grad_out):
        perceive_params, update_params, flat, fire, alive = residuals
        grid = layout.from_flat
        perceive_grads, update_grads, grad_x = step_backward(
            perceive_fn,
            update_graph,
            update_rest,
            perceive_params,
            update_params,
            grid(flat),
            grid(fire[..., None]),
            None if alive is None else grid(alive[..., None]) > 0,
            grid(grad_out),
        )
        return perceive_grads, update_grads, layout.to_flat(grad_x), jnp.zeros_like(fire)

    step.defvjp(step_fwd, step_bwd)
    return step(perceive_params, update_params, flat, fire)
