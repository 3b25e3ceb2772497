"""The backward pass of one fused Growing-NCA step (:mod:`nca_lab.kernels.sobel_mlp_step`) as two Pallas kernels.

Issue 7's H100 study puts two thirds of a train step's GPU time in the backward pass, and the
XLA backward of a step is again ~15 kernels, each a pass over device memory. Here it is two.
The first recomputes a block's perception and hidden layer from the saved input state (the
rematerialisation of :mod:`nca_lab.step_vjp`: nothing per step is stored but the state, the
fire mask and the alive mask), masks the incoming cotangent by the alive mask and the fire
mask, and computes in registers the block's share of every weight gradient and the
perception's cotangent. Weight gradients leave as one partial sum per program, reduced
afterwards (a deterministic order, unlike atomic adds). The second kernel applies the
transposed 3x3 stencil to the perception's cotangent: the state's cotangent needs the
neighbours' values, hence a second pass, as the alive mask needs one in the forward pass.

The arithmetic is that of :func:`~nca_lab.step_vjp.step_backward` (the XLA path's backward,
used for every other perceive and update); ``tests/perf/test_fused_step.py`` checks the two
against each other in Pallas' interpreter, and ``tests/perf/test_fused_lowering.py`` lowers
these kernels to Triton on a machine without a GPU.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from nca_lab.kernels.sobel_mlp_step import (
    FlatLayout,
    Launch,
    inside_grid,
    light_launch,
    pallas_call,
    perception,
    sobel_taps,
    split_w1,
)

#: ``a^T b`` and ``a b^T`` as ``dot_general`` dimension numbers.
_TN = (((0,), (0,)), ((), ()))
_NT = (((1,), (1,)), ((), ()))


def _grads_kernel(*refs, layout, cells, taps, step_size, precision, masked):
    """One block: the weight-gradient partials and the perception's cotangent (identity term plus cell cotangent)."""
    x_ref, fire_ref, *refs = refs
    keep_ref = refs.pop(0) if masked else None
    grad_ref, w_id_ref, w_gx_ref, w_gy_ref, b1_ref, w2_ref, *outs = refs
    base_ref, dgx_ref, dgy_ref, dw_id_ref, dw_gx_ref, dw_gy_ref, db1_ref, dw2_ref, db2_ref = outs
    b, j = pl.program_id(0), pl.program_id(1)
    start = layout.margin + j * cells
    here = pl.ds(start, cells)
    inside = inside_grid(layout, start, cells)[:, None]
    tiles = [x_ref[b, pl.ds(start + off, cells), :] for off in layout.offsets()]
    # Cells outside the grid may read the undefined margins: zero their features, so that no
    # garbage enters the weight gradients through a product with their zero cotangent.
    features = [jnp.where(inside, f, 0.0) for f in perception(tiles, taps)]
    weights = [w_id_ref[...], w_gx_ref[...], w_gy_ref[...]]

    def dot(a, w, dims=(((1,), (0,)), ((), ()))):
        return jax.lax.dot_general(a, w, dims, precision=precision, preferred_element_type=jnp.float32)

    hidden = sum(dot(f, w) for f, w in zip(features, weights, strict=True)) + b1_ref[...][None, :]
    relu = jnp.maximum(hidden, 0.0)
    grad_new = grad_ref[b, here, :]
    if masked:
        grad_new = grad_new * keep_ref[b, here][:, None]
    grad_new = jnp.where(inside, grad_new, 0.0)
    grad_delta = grad_new * (fire_ref[b, here] * step_size)[:, None]
    dw2_ref[b, j, :, :] = dot(relu, grad_delta, _TN)
    db2_ref[b, j, :] = jnp.sum(grad_delta, axis=0)
    grad_hidden = jnp.where(hidden > 0, dot(grad_delta, w2_ref[...], _NT), 0.0)
    for feature, dw_ref in zip(features, (dw_id_ref, dw_gx_ref, dw_gy_ref), strict=True):
        dw_ref[b, j, :, :] = dot(feature, grad_hidden, _TN)
    db1_ref[b, j, :] = jnp.sum(grad_hidden, axis=0)
    base_ref[b, here, :] = grad_new + dot(grad_hidden, weights[0], _NT)
    dgx_ref[b, here, :] = dot(grad_hidden, weights[1], _NT)
    dgy_ref[b, here, :] = dot(grad_hidden, weights[2], _NT)


def _stencil_transpose_kernel(base_ref, dgx_ref, dgy_ref, out_ref, *, layout, cells, taps):
    """The state's cotangent of one block: its own term plus the Sobel features' cotangents of its neighbours."""
    b, j = pl.program_id(0), pl.program_id(1)
    start = layout.margin + j * cells
    total = base_ref[b, pl.ds(start, cells), :]
    for off, (kx, ky) in zip(layout.offsets(), taps, strict=True):
        # x[m] feeds grad_x[m - off] with weight kx: read the neighbour at -off.
        if kx:
            total = total + kx * dgx_ref[b, pl.ds(start - off, cells), :]
        if ky:
            total = total + ky * dgy_ref[b, pl.ds(start - off, cells), :]
    out_ref[b, pl.ds(start, cells), :] = jnp.where(inside_grid(layout, start, cells)[:, None], total, 0.0)


def fused_step_backward(
    flat: jnp.ndarray,
    fire: jnp.ndarray,
    alive: jnp.ndarray | None,
    grad_out: jnp.ndarray,
    params: dict,
    layout: FlatLayout,
    *,
    angle: float,
    step_size: float,
    interpret: bool = False,
    launch: Launch | None = None,
    precision=None,
) -> tuple[dict, jnp.ndarray]:
    """Gradients of one :func:`~nca_lab.kernels.sobel_mlp_step.fused_step` in the flat layout.

    Args:
        flat: the step's input state ``(B, layout.length, C)``.
        fire: its fire mask ``(B, layout.length)``.
        alive: the alive mask the step applied (0/1 floats, ``(B, layout.length)``), or ``None``.
        grad_out: cotangent of the step's output, ``(B, layout.length, C)``.
        params: ``w1``, ``b1``, ``w2`` as for ``fused_step`` (``b2`` is not needed).
        layout, angle, step_size, interpret, precision: as for ``fused_step``.
        launch: cells and warps per program of the first kernel (default: :class:`Launch`'s
            warps, the layout's block).

    Returns:
        ``(param_grads, grad_flat)``: gradients ``w1 (3C, hidden)``, ``b1``, ``w2``, ``b2``, and
        the input state's cotangent ``(B, layout.length, C)`` (zero outside the grid; the margins
        are undefined, as in the forward pass).
    """
    batch, _, channels = flat.shape
    hidden = params["b1"].shape[0]
    taps = sobel_taps(angle)
    launch = launch or Launch(cells=layout.block)
    state_shape = jax.ShapeDtypeStruct(flat.shape, flat.dtype)

    def partials(*shape):
        return jax.ShapeDtypeStruct((batch, launch.programs(layout), *shape), flat.dtype)

    masked = alive is not None
    base, dgx, dgy, *weight_partials = pallas_call(
        _grads_kernel,
        batch,
        layout,
        launch,
        out_shape=(
            state_shape,
            state_shape,
            state_shape,
            *[partials(channels, hidden)] * 3,
            partials(hidden),
            partials(hidden, channels),
            partials(channels),
        ),
        interpret=interpret,
        taps=taps,
        step_size=float(step_size),
        precision=precision,
        masked=masked,
    )(flat, fire, *([alive] if masked else []), grad_out, *split_w1(params["w1"]), params["b1"], params["w2"])
    dw_id, dw_gx, dw_gy, db1, dw2, db2 = (p.sum(axis=(0, 1)) for p in weight_partials)
    grad_flat = pallas_call(
        _stencil_transpose_kernel,
        batch,
        layout,
        light_launch(layout),
        out_shape=state_shape,
        interpret=interpret,
        taps=taps,
    )(base, dgx, dgy)
    w1 = jnp.stack([dw_id, dw_gx, dw_gy], axis=1).reshape(3 * channels, hidden)
    return {"w1": w1, "b1": db1, "w2": dw2, "b2": db2}, grad_flat
