"""The fused rollout: CA steps as Pallas kernels in a loop, differentiated as a whole.

A custom VJP per CA step (the XLA path's :mod:`nca_lab.step_vjp`) leaves the rollout's
bookkeeping to ``lax.scan`` and its transpose: every step's residuals are stacked (a copy
into the stack forward, a copy out of it backward, for each of state, fire mask and alive
mask), every step's weight gradients are reduced and added to the scan's accumulator, and
every step's fire mask is drawn by its own small kernels. On an H200 that was ~20 launches
per CA step besides the four Pallas kernels (``experiments/bench/h200_2026-11-30_fused``:
482 copies and 6 reductions per step). Here the whole rollout has one custom VJP:

- forward, the kernels write each state into a buffer of all ``T + 1`` states in place
  (:func:`~nca_lab.kernels.sobel_mlp_step.forward_step`), and the fire masks of all steps
  are drawn at once, by the same ``jax.random`` calls as the reference's steps
  (:meth:`~nca_lab.update.residual.ResidualUpdate.fire_mask`, one key per grid and step);
- backward, a loop over the steps in reverse recomputes each step from its saved state (the
  rematerialisation of :mod:`nca_lab.step_vjp`) and adds its weight gradients to per-program
  partial sums (:func:`~nca_lab.kernels.sobel_mlp_backward.backward_step`), reduced once;
- without differentiation, two state buffers alternate.

Steps past the drawn rollout length (``count``) do nothing: their kernels see ``count`` and
return at once (backward, the cotangent passes through). The loops keep their static length:
XLA:GPU syncs the host on every iteration of a loop of unknown trip count, and may on every
``lax.cond``. ``tests/perf/test_fused_step.py`` checks states, frames and gradients against the
XLA path in Pallas' interpreter.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from nca_lab.kernels.sobel_mlp_backward import backward_step, weight_partials
from nca_lab.kernels.sobel_mlp_step import FlatLayout, forward_step, pack_weights, slots, supports
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate

#: The mesh whose devices split the batch of the rollouts traced now (:func:`split_over`).
_MESH: ContextVar[Mesh | None] = ContextVar("fused_rollout_mesh", default=None)


@contextmanager
def split_over(mesh: Mesh | None) -> Iterator[None]:
    """Fused rollouts traced inside run their kernels on each device's share of the batch.

    XLA's SPMD partitioner has no rule for a Pallas call: on a batch split across devices it
    would gather the batch and run the whole rollout on every device. Inside this context
    (the data-parallel train step, :func:`~nca_lab.train.step.make_train_step`) the rollout is
    a ``shard_map`` over ``mesh``: each device steps its samples, and the weights' gradient
    is summed across devices. ``None``: no split.
    """
    token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(token)


def _split(rollout, mesh: Mesh):
    """``rollout`` run per device on the batch split over all of ``mesh``'s axes."""
    batch = PartitionSpec(mesh.axis_names)
    specs = (PartitionSpec(), batch, PartitionSpec(None, *batch), PartitionSpec())
    return jax.shard_map(rollout, mesh=mesh, in_specs=specs, out_specs=batch, check_vma=False)


def cannot_fuse(perceive, update, alive_threshold: float | None) -> str | None:
    """What the fused kernels need that this NCA's step lacks (the first), ``None`` if they
    compute it: fixed Sobel, the residual update with one hidden layer, sizes in 16s."""
    if type(perceive) is not SobelPerceive:
        return f"the sobel perceive, not {type(perceive).__name__}"
    if type(update) is not ResidualUpdate:
        return f"the residual update, not {type(update).__name__}"
    if len(update.hidden) != 1:
        return f"a residual update with one hidden layer, not {len(update.hidden)}"
    channels, hidden = perceive.num_channels, update.hidden[0].out_features
    if not supports(channels, hidden):
        return f"channel and hidden sizes in multiples of 16, hidden at least channels, not {channels} and {hidden}"
    if alive_threshold is not None and alive_threshold < 0:
        return f"an alive threshold of at least 0 (or none), not {alive_threshold}"
    return None


def packed_weights(update: ResidualUpdate) -> jnp.ndarray:
    """The packed weights (:func:`~nca_lab.kernels.sobel_mlp_step.pack_weights`) of a one-hidden-layer update."""
    hidden, out = update.hidden[0], update.out
    return pack_weights({"w1": hidden.kernel[...], "b1": hidden.bias[...], "w2": out.kernel[...], "b2": out.bias[...]})


def fused_rollout(
    layout: FlatLayout,
    *,
    angle: float,
    step_size: float,
    alive_threshold: float | None,
    interpret: bool = False,
    unroll: int = 1,
):
    """``rollout(packed, flat, fire, count) -> flat``: ``count`` CA steps (an int32, may be
    traced; at most ``T``) of a ``(B, layout.length, C)`` state, with the fire masks ``(T, B,
    layout.length)``; differentiable in ``packed`` and ``flat``. ``unroll``: steps per
    iteration of the loops over steps (fewer iterations, less of their bookkeeping)."""
    kernel_args = {"angle": angle, "step_size": step_size, "interpret": interpret}

    def run(packed, flat, fire, count, history):
        steps, batch = fire.shape[:2]
        # Every state for the backward pass, or two that alternate.
        states = jnp.zeros((steps + 1, *flat.shape), flat.dtype).at[0].set(flat) if history else jnp.stack([flat, flat])
        alive = None
        if alive_threshold is not None:
            alive = jnp.zeros((steps if history else 1, batch, layout.length), flat.dtype)

        def body(step, buffers):
            return forward_step(
                *buffers,
                fire,
                packed,
                step,
                count,
                layout,
                history=history,
                alive_threshold=alive_threshold,
                **kernel_args,
            )

        return jax.lax.fori_loop(0, steps, body, (states, alive), unroll=min(unroll, steps))

    def final(states, count, history):
        """The last state written: the one step ``count``, which did not run, would read."""
        return states[slots(count, history)[0]]

    @jax.custom_vjp
    def rollout(packed, flat, fire, count):
        states, _ = run(packed, flat, fire, count, history=False)
        return final(states, count, history=False)

    def rollout_fwd(packed, flat, fire, count):
        states, alive = run(packed, flat, fire, count, history=True)
        return final(states, count, history=True), (packed, states, fire, alive, count)

    def rollout_bwd(residuals, grad):
        packed, states, fire, alive, count = residuals
        steps = fire.shape[0]

        def body(k, carry):
            partials, grad = carry
            return backward_step(
                states, fire, alive, grad, partials, packed, k, count, layout, from_end=True, **kernel_args
            )

        start = (weight_partials(grad.shape[0], layout, packed), grad)
        partials, grad = jax.lax.fori_loop(0, steps, body, start, unroll=min(unroll, steps))
        return partials.sum(axis=(0, 1)), grad, None, None

    rollout.defvjp(rollout_fwd, rollout_bwd)
    return rollout


def fused_rollout_parts(
    perceive: SobelPerceive,
    update: ResidualUpdate,
    alive_threshold: float | None,
    state: jnp.ndarray,
    *,
    unroll: int = 1,
) -> tuple:
    """``(flat_state, run, to_grid)``: what ``NCA.rollout`` needs to step ``state (..., H, W, C)``
    in the kernels' flat layout; ``run(flat, step_keys, count)`` runs the first ``count`` of the
    steps whose keys are ``step_keys (T, ...)``, each grid drawing its fire masks as ``NCA.step``
    does; ``unroll`` as for :func:`fused_rollout`."""
    *batch_shape, height, width, channels = state.shape
    layout = FlatLayout(height, width)
    rollout = fused_rollout(
        layout,
        angle=perceive.angle,
        step_size=update.step_size,
        alive_threshold=alive_threshold,
        interpret=jax.default_backend() != "gpu",
        unroll=unroll,
    )

    def to_grid(flat):
        return layout.from_flat(flat).reshape(*batch_shape, height, width, channels)

    def run(flat, step_keys, count):
        steps = step_keys.shape[0]
        fire = jax.vmap(lambda keys: update.fire_mask(keys, (*batch_shape, height, width)))(step_keys)
        fire = layout.to_flat(fire.reshape(-1, height, width, 1))[..., 0].reshape(steps, -1, layout.length)
        mesh = _MESH.get()
        split = rollout if mesh is None else _split(rollout, mesh)
        return split(packed_weights(update), flat, fire, jnp.asarray(count, jnp.int32))

    return layout.to_flat(state.reshape(-1, height, width, channels)), run, to_grid
