"""The backward pass of one fused Growing-NCA step (:mod:`nca_lab.kernels.sobel_mlp_step`) as two Pallas kernels.

Issue 7's H100 study puts two thirds of a train step's GPU time in the backward pass, and the
XLA backward of a step is again ~15 kernels, each a pass over device memory. Here it is two.
The first recomputes a block's perception and hidden layer from the saved input state (the
rematerialisation of :mod:`nca_lab.step_vjp`: nothing per step is stored but the state, the
fire mask and the alive mask), masks the incoming cotangent by the alive mask and the fire
mask, and computes in registers the block's share of every weight gradient and the
perception's cotangent. Each program adds its share of the weight gradients to its own slot
of a buffer of partial sums (:func:`weight_partials`, in the packed layout of
:func:`~nca_lab.kernels.sobel_mlp_step.pack_weights`) that the rollout's backward loop carries
through every step and reduces once, at the end: no reduction per step, and a deterministic
order, unlike atomic adds. The second kernel applies the transposed 3x3 stencil to the
perception's cotangent: the state's cotangent needs the neighbours' values, hence a second
pass, as the alive mask needs one in the forward pass.

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
    NT,
    TN,
    FlatLayout,
    Launch,
    backward_launch,
    dot,
    inside_grid,
    light_launch,
    neighbour_tiles,
    pallas_call,
    perception,
    program_cells,
    slots,
    sobel_taps,
    step_operands,
    weight_columns,
)


def _step(step_ref, last: int | None):
    """The step a backward kernel transposes: its ``step`` operand, or that many before ``last``."""
    return step_ref[0] if last is None else last - step_ref[0]


def _grads_kernel(*refs, layout, cells, taps, step_size, masked, over_hidden, last):
    """One block: its weight-gradient shares added to its partial sums, and the perception's
    cotangent (identity term plus the cell's own cotangent); the hidden layer a chunk of
    columns at a time (:class:`~nca_lab.kernels.sobel_mlp_step.Launch`)."""
    step_ref, count_ref, states_ref, fire_ref, *refs = refs
    alive_ref = refs.pop(0) if masked else None
    grad_ref, w_ref, partials_in, base_ref, dgx_ref, dgy_ref, partials_ref = refs
    step = _step(step_ref, last)
    read, _, mask = slots(step, history=True)
    b, j, start, here = program_cells(layout, cells)
    inside = inside_grid(layout, start, cells)[:, None]

    def accumulate(index, share):
        partials_ref[(b, j, *index)] = partials_in[(b, j, *index)] + share

    @pl.when(step < count_ref[0])
    def _():
        tiles = neighbour_tiles(states_ref, read, b, start, layout, cells)
        # Cells outside the grid may read the undefined margins: zero their features, so that no
        # garbage enters the weight gradients through a product with their zero cotangent.
        features = [jnp.where(inside, f, 0.0) for f in perception(tiles, taps)]
        c = features[0].shape[1]
        grad_new = grad_ref[b, here, :]
        if masked:
            grad_new = grad_new * alive_ref[mask, b, here][:, None]
        grad_new = jnp.where(inside, grad_new, 0.0)
        grad_delta = grad_new * (fire_ref[step, b, here] * step_size)[:, None]

        def add_chunk(columns, grad_features):
            *weights, w2t, b1 = weight_columns(w_ref, c, columns)
            hidden = sum(dot(f, w) for f, w in zip(features, weights, strict=True)) + b1[None, :]
            # The output layer's share first, so that the activations die before the first layer's
            # shares and cotangents: offline, 1008 bytes spilled per thread became 28 at the default
            # launch (experiments/gpu/registers_2026-12-01.md).
            accumulate((pl.ds(3 * c, c), columns), dot(grad_delta, jnp.maximum(hidden, 0.0), TN))
            grad_hidden = jnp.where(hidden > 0, dot(grad_delta, w2t), 0.0)
            accumulate((4 * c, columns), jnp.sum(grad_hidden, axis=0))
            grad_features = list(grad_features)
            for row, feature in enumerate(features):
                accumulate((pl.ds(row * c, c), columns), dot(feature, grad_hidden, TN))
                grad_features[row] = grad_features[row] + dot(grad_hidden, weights[row], NT)
            return tuple(grad_features)

        zero = jnp.zeros_like(grad_new)  # identity, grad_x, grad_y
        grad_features = over_hidden(w_ref.shape[1], add_chunk, (grad_new, zero, zero))
        accumulate((4 * c + 1, pl.ds(0, c)), jnp.sum(grad_delta, axis=0))  # b2: its row's first C columns
        for out_ref, grad in zip((base_ref, dgx_ref, dgy_ref), grad_features, strict=True):
            out_ref[b, here, :] = grad


def _stencil_transpose_kernel(
    step_ref, count_ref, grad_ref, base_ref, dgx_ref, dgy_ref, out_ref, *, layout, cells, taps, last
):
    """The state's cotangent of one block: its own term plus the Sobel features' cotangents of
    its neighbours; past the drawn rollout length, where the step did not run, the cotangent
    of its output unchanged. ``out_ref`` is ``grad_ref``'s buffer (each program reads only the
    cells it writes): the backward loop then carries one cotangent buffer, where XLA copied
    the kernel's result into it every step (``experiments/gpu/aot.py``)."""
    b, _, start, here = program_cells(layout, cells)
    total = base_ref[b, here, :]
    for off, (kx, ky) in zip(layout.offsets(), taps, strict=True):
        # x[m] feeds grad_x[m - off] with weight kx: read the neighbour at -off.
        if kx:
            total = total + kx * dgx_ref[b, pl.ds(start - off, cells), :]
        if ky:
            total = total + ky * dgy_ref[b, pl.ds(start - off, cells), :]
    total = jnp.where(_step(step_ref, last) < count_ref[0], total, grad_ref[b, here, :])
    out_ref[b, here, :] = jnp.where(inside_grid(layout, start, cells)[:, None], total, 0.0)


def weight_partials(batch: int, layout: FlatLayout, packed: jnp.ndarray, launch: Launch | None = None) -> jnp.ndarray:
    """Zeroed partial sums of the weight gradients, one slot per program of :func:`backward_step`
    (its ``launch``): ``(batch, programs, *packed.shape)``. Their sum over the first two axes is
    the packed weights' gradient."""
    programs = (launch or backward_launch(layout)).programs(layout)
    return jnp.zeros((batch, programs, *packed.shape), packed.dtype)


def backward_step(
    states: jnp.ndarray,
    fire: jnp.ndarray,
    alive: jnp.ndarray | None,
    grad: jnp.ndarray,
    partials: jnp.ndarray,
    packed: jnp.ndarray,
    step: jnp.ndarray,
    count: jnp.ndarray,
    layout: FlatLayout,
    *,
    angle: float,
    step_size: float,
    interpret: bool = False,
    launch: Launch | None = None,
    from_end: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The backward pass of CA step ``step`` of a rollout that kept every state
    (:func:`~nca_lab.kernels.sobel_mlp_step.forward_step` with ``history``).

    Args:
        states, fire, alive: the rollout's buffers after its forward pass.
        grad: cotangent of the step's output state, ``(B, layout.length, C)``.
        partials: the weight-gradient partial sums so far (:func:`weight_partials`, same ``launch``).
        packed, step, count, layout, angle, step_size, interpret: as for
            ``forward_step``; a step at or past ``count`` passes ``grad`` through unchanged.
        launch: cells, warps and hidden chunk of the first kernel (default: :class:`Launch`'s
            warps and chunk, the layout's block).
        from_end: ``step`` counts back from the rollout's last step (``T - 1 - step`` is
            transposed): a loop over the steps in reverse passes its counter as it is, where
            computing ``T - 1 - k`` was a kernel launch per step (``experiments/gpu/aot.py``).

    Returns:
        ``(partials, grad)``: the partial sums with this step's gradients added (in place), and
        the cotangent of the step's input state ``(B, layout.length, C)`` (zero outside the
        grid; the margins are undefined, as in the forward pass).
    """
    batch = grad.shape[0]
    launch = launch or backward_launch(layout)
    if partials.shape[:2] != (batch, launch.programs(layout)):
        raise ValueError(f"partials have shape {partials.shape}; this launch needs weight_partials(..., launch)")
    taps = sobel_taps(angle)
    last = fire.shape[0] - 1 if from_end else None
    scalars = step_operands(step, count)
    state_shape = jax.ShapeDtypeStruct(grad.shape, grad.dtype)
    masked = alive is not None
    inputs = [*scalars, states, fire, *([alive] if masked else []), grad, packed, partials]
    base, dgx, dgy, partials = pallas_call(
        _grads_kernel,
        batch,
        layout,
        launch,
        out_shape=(state_shape, state_shape, state_shape, jax.ShapeDtypeStruct(partials.shape, partials.dtype)),
        interpret=interpret,
        aliases={len(inputs) - 1: 3},
        taps=taps,
        step_size=float(step_size),
        masked=masked,
        over_hidden=launch.over_hidden,
        last=last,
    )(*inputs)
    grad = pallas_call(
        _stencil_transpose_kernel,
        batch,
        layout,
        light_launch(layout),
        out_shape=state_shape,
        interpret=interpret,
        aliases={2: 0},
        taps=taps,
        last=last,
    )(*scalars, grad, base, dgx, dgy)
    return partials, grad
