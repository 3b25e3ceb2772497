"""The neural cellular automaton: perceive, update, alive mask, rolled out by a scan.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020
(``CAModel.call``): ``x = update(x, perceive(x)) * (alive(x_before) & alive(x_after))``.
"""

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from nca_lab.active_cells import MIN_CELLS
from nca_lab.alive import ALIVE_THRESHOLD, alive_mask, keep_living
from nca_lab.errors import is_integer, require
from nca_lab.kernels.fused_rollout import cannot_fuse, fused_rollout_parts
from nca_lab.perceive.base import Perceive
from nca_lab.step_vjp import residual_step
from nca_lab.update.base import Update
from nca_lab.update.residual import ResidualUpdate


class NCA(nnx.Module):
    """A cellular automaton whose rule is a perceive followed by an update.

    States are channels-last ``(..., H, W, C)``: RGB (premultiplied by alpha) in 0-2, alpha in
    3, hidden channels after (and last, with ``fixed_channels``, the cell's input). Every method
    is pure (keys in, states out), so it composes with ``jit``, ``vmap``, ``grad`` and ``remat``
    (forward-mode ``jvp``/``jacfwd`` with ``manual_vjp=False`` and ``kernel="xla"``: the manual
    step VJP and the fused kernels are ``custom_vjp``s).
    """

    def __init__(
        self,
        perceive: Perceive,
        update: Update,
        *,
        alive_threshold: float | None = ALIVE_THRESHOLD,
        manual_vjp: bool = True,
        kernel: str = "xla",
        compact_cells: bool | str = "auto",
        fixed_channels: int = 0,
    ):
        """Combine a perceive and an update.

        Args:
            perceive: the perception module.
            update: the update module, sized for ``perceive.out_features``.
            alive_threshold: alpha above which a 3x3 neighbourhood is alive; ``None`` turns
                alive masking off (tasks without an alpha-defined body).
            manual_vjp: differentiate each step with the rematerialising hand-written VJP
                of :mod:`nca_lab.step_vjp` (same results, less time and memory) instead of
                autodiff, the reference path. Only a :class:`ResidualUpdate` has one; other
                updates always use autodiff.
            kernel: how a rollout runs each step: ``"xla"`` (the default, every device) or
                ``"pallas"``: the fused GPU kernels of :mod:`nca_lab.kernels` for a Sobel
                perceive with a one-hidden-layer residual update (interpreted, hence slow,
                off a GPU), forward and rematerialising backward, whatever ``manual_vjp``
                says. Same function, same random draws. Opt-in: on an H200 it made the
                growing train step faster and the diffusing one (C=64, hidden 256) slower
                (``experiments/bench/h200_2026-11-30_fused``).
            compact_cells: run the update MLP only on the cells whose update can matter
                (:mod:`nca_lab.active_cells`; same results), on the XLA path with the manual
                VJP. ``"auto"``: on a CPU, for steps of at least
                :data:`~nca_lab.active_cells.MIN_CELLS` cells, with a :class:`ResidualUpdate`
                itself (see :meth:`compacts`); ``True`` or ``False`` force it.
            fixed_channels: the last ``fixed_channels`` channels hold each cell's input, which
                every step perceives and none changes: ViTCA's input channels (Tesfaldet et al.,
                "Attention-based Neural Cellular Automata", NeurIPS 2022), so a denoiser keeps
                seeing the corrupted picture it started from. ``0``: every channel updates.
        """
        # a hand-built pair that does not fit: one line, not dot_general's (a subclass with a
        # delta of its own may size its layers otherwise: building from a config checks its next state)
        if isinstance(update, ResidualUpdate) and type(update).delta is ResidualUpdate.delta:
            takes, makes = (update.hidden[0] if update.hidden else update.out).in_features, update.out.out_features
            gives, channels = perceive.out_features, perceive.num_channels
            require(
                (takes, makes) == (gives, channels),
                f"the update is sized for perceptions of {takes} features and {makes} channels; the perceive "
                f"gives {gives} features of {channels} channels: ResidualUpdate(perceive.out_features, "
                "perceive.num_channels, ...)",
            )
        require(kernel in ("xla", "pallas"), f"kernel must be xla or pallas, got {kernel!r}")
        require(  # not `in ("auto", True, False)`: 0 and 1 equal False and True there, and acted as auto
            compact_cells == "auto" or isinstance(compact_cells, bool),
            f"compact_cells must be auto, true or false, got {compact_cells!r}",
        )
        channels = perceive.num_channels
        require(channels >= 4, f"the state needs at least 4 channels (RGBA), the perceive has {channels}")
        require(
            is_integer(fixed_channels) and 0 <= fixed_channels <= channels - 4,
            f"fixed_channels must be an integer from 0 to {channels - 4} (the channels after RGBA), "
            f"got {fixed_channels!r}",
        )
        if kernel == "pallas":
            missing = cannot_fuse(perceive, update, alive_threshold)
            if missing is None and fixed_channels:
                missing = f"every channel updated, not {fixed_channels} fixed input channels"
            require(missing is None, f"kernel=pallas needs {missing}")
        self.perceive = perceive
        self.update = update
        self.alive_threshold = alive_threshold
        self.manual_vjp = bool(manual_vjp)
        self.kernel = kernel
        self.compact_cells = compact_cells
        self.fixed_channels = int(fixed_channels)
        require(
            compact_cells is not True or self.can_compact,
            "compact_cells=true needs kernel=xla and the residual update (its manual step VJP)",
        )

    @property
    def num_channels(self) -> int:
        """State channels ``C``."""
        return self.perceive.num_channels

    @property
    def uses_manual_vjp(self) -> bool:
        """Whether :meth:`step` is differentiated by :func:`~nca_lab.step_vjp.residual_step`:
        with a :class:`ResidualUpdate`, or a subclass that keeps its step (``apply`` and
        ``__call__``): its own ``delta`` is differentiated by autodiff there, its own
        ``fire_mask`` drawn there."""
        kind = type(self.update)
        residual = issubclass(kind, ResidualUpdate)
        keeps_step = residual and kind.apply is ResidualUpdate.apply and kind.__call__ is ResidualUpdate.__call__
        return self.manual_vjp and keeps_step

    @property
    def uses_fused_kernel(self) -> bool:
        """Whether rollouts step with the fused Pallas kernels (see ``kernel``)."""
        return self.kernel == "pallas"

    @property
    def can_compact(self) -> bool:
        """Whether steps can run the MLP on active cells only: the XLA path with the manual VJP."""
        return not self.uses_fused_kernel and self.uses_manual_vjp

    def compacts(self, num_cells: int) -> bool:
        """Whether a step over ``num_cells`` cells runs the MLP on active cells only (``compact_cells``).

        ``auto`` only with a :class:`ResidualUpdate` itself: active cells run ``delta`` on rows
        of cells, which a subclass's ``delta`` may not be written for (one mixing cells would
        be silently wrong there); ``compact_cells=true`` asks for it.
        """
        if not self.can_compact or self.compact_cells is False:
            return False
        auto = type(self.update) is ResidualUpdate and jax.default_backend() == "cpu" and num_cells >= MIN_CELLS
        return self.compact_cells is True or auto

    def grid_keys(self, state: jnp.ndarray, key: jax.Array) -> jax.Array:
        """``key`` as new-style keys, one per grid of ``state``, once both are checked.

        Shapes and dtypes are static, so the checks run at trace time (free under ``jit``,
        ``vmap`` and ``grad``) and turn a reshape or scan error deep in a step into one
        naming what is expected. A classic ``jax.random.PRNGKey`` (uint32 key data) is
        wrapped: the same random draws as the ``jax.random.key`` with that data.
        """
        if not _is_array(state):  # else ``'Batch' object has no attribute 'ndim'``
            of_batch = " (of a task's Batch, its .state)" if hasattr(state, "state") else ""
            raise TypeError(f"state must be an array (..., H, W, C){of_batch}, got a {type(state).__name__}")
        if not _is_array(key):
            raise TypeError(f"key must be jax.random.key(seed) keys, one per grid, got {type(key).__name__}")
        if state.ndim < 3 or state.shape[-1] != self.num_channels:
            raise ValueError(f"state has shape {state.shape}; this model steps (..., H, W, {self.num_channels})")
        if jax.dtypes.canonicalize_dtype(state.dtype) != jnp.float32:
            raise TypeError(f"state has dtype {state.dtype}; this model steps float32 states")
        key = typed_keys(key)
        if key.shape != state.shape[:-3]:
            raise ValueError(
                f"key has shape {key.shape}; give one key per grid, shape {state.shape[:-3]} "
                "(jax.random.split(key, n) for a batch of n)"
            )
        return key

    def step(self, state: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        """One CA step of ``state (..., H, W, C)``; ``key`` has shape ``state.shape[:-3]``.

        Each grid draws its fire mask from its own key, so a sample's trajectory does not
        depend on the batch it is in.
        """
        key = self.grid_keys(state, key)
        if self.uses_manual_vjp:
            fire = self.update.fire_mask(key, state.shape[:-1])
            compact = self.compacts(math.prod(state.shape[:-1]))
            new_state = residual_step(self.perceive, self.update, self.alive_threshold, state, fire, compact=compact)
        else:  # any other update: autodiff's reference path; residual_step computes the same formula
            new_state = self.update(state, self.perceive(state), key)
            if self.alive_threshold is not None:
                new_state = keep_living(new_state, alive_mask(state, self.alive_threshold), self.alive_threshold)[0]
        return self._hold_input(new_state, state)

    def _hold_input(self, new_state: jnp.ndarray, state: jnp.ndarray) -> jnp.ndarray:
        """``new_state`` with the input channels of ``state`` (see ``fixed_channels``): the
        step's change to them is dropped, and with it their share of the gradient."""
        if not self.fixed_channels:
            return new_state
        updated = self.num_channels - self.fixed_channels
        return jnp.concatenate([new_state[..., :updated], state[..., updated:]], axis=-1)

    def rollout(
        self,
        state: jnp.ndarray,
        key: jax.Array,
        num_steps: int,
        *,
        active_steps: jax.Array | int | None = None,
        min_active_steps: int = 0,
        frame_every: int = 0,
        frame_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
        remat: bool = False,
        unroll: int = 1,
    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """Run ``num_steps`` steps with ``jax.lax.scan``.

        Args:
            state: initial state ``(..., H, W, C)``.
            key: one PRNG key per grid, shape ``state.shape[:-3]`` (a scalar key for one grid;
                see :meth:`grid_keys`).
            num_steps: static length of the scan.
            active_steps: run only the first ``active_steps`` steps (may be traced, e.g. a
                random rollout length); later steps are skipped by ``lax.cond``, so a random
                length costs no recompile and no wasted compute.
            min_active_steps: the least ``active_steps`` can be (static): the first that many
                steps run without a ``lax.cond`` each. XLA:GPU reads a ``lax.cond``'s predicate
                back to the host (``ConditionalThunk``: a sync) unless it captures the cond in a
                CUDA graph (command buffers; CUDA >= 12.3); the trainer's 64-95 draw then has 31
                conds a rollout instead of 95. Used without frames.
            frame_every: if positive, also return the state every ``frame_every`` steps
                (``num_steps`` must be a multiple), initial state included.
            frame_fn: applied to each frame as it is kept, e.g. :func:`~nca_lab.render.rgba`:
                a rollout keeps all its frames in device memory, so keeping only what is shown
                lets longer rollouts on larger grids fit.
            remat: recompute each step in the backward pass instead of storing its
                activations (memory ``O(steps * state)`` instead of ``O(steps * activations)``).
                Implied by the manual VJP (:attr:`uses_manual_vjp`) and the fused kernels, which
                always recompute.
            unroll: steps per loop iteration (``jax.lax.scan``'s ``unroll``; with the fused
                kernels, that of their loops over steps, :mod:`nca_lab.kernels.fused_rollout`).

        Returns:
            ``(final_state, frames)``; frames is ``(num_steps // frame_every + 1, ..., H, W, C)``
            (what ``frame_fn`` makes of it) or ``None``.
        """
        if not is_integer(num_steps) or num_steps < 0:  # else a reshape's error, deep in JAX
            raise ValueError(f"num_steps must be a Python int >= 0 (static: the scan's length), got {num_steps!r}")
        if not is_integer(min_active_steps) or min_active_steps < 0:  # -1 sliced from the end: skipped steps ran
            raise ValueError(f"min_active_steps must be a Python int >= 0, got {min_active_steps!r}")
        key = self.grid_keys(state, key)
        batch_shape = state.shape[:-3]
        flat_keys = jnp.reshape(key, (-1,))
        step_keys = jax.vmap(lambda k: jax.random.split(k, num_steps))(flat_keys)
        step_keys = jnp.swapaxes(step_keys, 0, 1).reshape(num_steps, *batch_shape)

        step = jax.checkpoint(self.step) if remat and not self.uses_manual_vjp else self.step
        start, to_grid = state, lambda x: x
        if self.uses_fused_kernel:
            start, run_fused, to_grid = fused_rollout_parts(
                self.perceive, self.update, self.alive_threshold, state, unroll=unroll
            )

        def body(carry, step_key, skippable):
            x, i = carry
            x = jax.lax.cond(i < active_steps, step, lambda s, _: s, x, step_key) if skippable else step(x, step_key)
            return (x, i + 1), None

        def scan(carry, keys, skippable):
            if keys.shape[0] == 0:
                return carry
            return jax.lax.scan(partial(body, skippable=skippable), carry, keys, unroll=min(unroll, keys.shape[0]))[0]

        def run(carry, keys, always=0):
            """The steps of ``keys``; with a drawn length, the first ``always`` of them unconditionally."""
            if not self.uses_fused_kernel:
                carry = scan(carry, keys[:always], skippable=False)
                return scan(carry, keys[always:], skippable=active_steps is not None)
            x, i = carry
            count = keys.shape[0] if active_steps is None else jnp.clip(active_steps - i, 0, keys.shape[0])
            return run_fused(x, keys, count), i + keys.shape[0]

        carry = (start, jnp.zeros((), jnp.int32))
        if frame_every <= 0:
            always = 0 if active_steps is None else min(int(min_active_steps), num_steps)
            return to_grid(run(carry, step_keys, always)[0]), None
        if num_steps % frame_every:
            raise ValueError(f"num_steps={num_steps} is not a multiple of frame_every={frame_every}")
        chunks = step_keys.reshape(num_steps // frame_every, frame_every, *batch_shape)

        keep = frame_fn or (lambda x: x)

        def chunk(carry, keys):
            carry = run(carry, keys)
            return carry, keep(to_grid(carry[0]))

        (final, _), frames = jax.lax.scan(chunk, carry, chunks)
        return to_grid(final), jnp.concatenate([keep(state)[None], frames])


def typed_keys(key: jax.Array) -> jax.Array:
    """``key`` (an array) as new-style keys: a classic ``jax.random.PRNGKey`` (uint32 key data,
    last axis 2) is wrapped, the same random draws as the ``jax.random.key`` with that data;
    anything else is a ``TypeError``."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype != jnp.uint32 or key.shape[-1:] != (2,):
        raise TypeError(f"key has dtype {key.dtype}, shape {key.shape}; give jax.random.key(seed) keys")
    return jax.random.wrap_key_data(key)


def _is_array(value) -> bool:
    """An array of JAX or NumPy, or a tracer of one."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


@nnx.jit(static_argnames=("num_steps", "frame_every", "frame_fn", "unroll"), graph=False)
def grow(
    model: NCA,
    state: jnp.ndarray,
    key: jax.Array,
    num_steps: int,
    frame_every: int = 0,
    frame_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
    unroll: int = 1,
):
    """Jitted :meth:`NCA.rollout` for evaluation and rendering: ``(final_state, frames)``.

    ``frame_fn`` is static: pass a module-level function (a new lambda on every call recompiles).
    The model passes as a pytree (``graph=False``), as in the train step
    (:func:`~nca_lab.train.step.make_train_step`): nnx's graph traversal costs milliseconds per call.
    """
    return model.rollout(state, key, num_steps, frame_every=frame_every, frame_fn=frame_fn, unroll=unroll)
