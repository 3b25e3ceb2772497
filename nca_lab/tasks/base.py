"""The Task interface: everything the trainer needs to know about an experiment.

The trainer never branches on which task it runs. A task supplies fresh samples (initial
state and target), a per-sample loss, optional damage for a sample pool, evaluation
metrics and what to render. Adding a task is one module here and one yaml in ``conf/task/``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nca_lab.alive import ALIVE_THRESHOLD
from nca_lab.errors import require
from nca_lab.nca import NCA


class Batch(NamedTuple):
    """Initial states ``(N, H, W, C)`` and their targets: ``(N, H, W, K)``, or any pytree of arrays
    with one target per sample along the first axis (what the task's ``loss`` takes)."""

    state: jax.Array
    target: jax.Array


class Rendering(NamedTuple):
    """What a run shows: ``frames`` for ``rollout.gif`` and ``final`` for ``final.png`` (uint8 RGB)."""

    frames: np.ndarray
    final: np.ndarray


class Task:
    """Base class of tasks; subclasses implement the methods that raise ``NotImplementedError``.

    The app constructs a task from ``conf/task/<name>.yaml``: its keys as keyword arguments,
    plus ``num_channels``, which the app supplies.

    With ``pool_size > 0`` the trainer keeps a sample pool (:mod:`nca_lab.train.pool`, Growing
    NCA experiments 2 and 3): it fills it with ``sample(key, pool_size)``, draws each batch from
    it without replacement, sorts the batch by descending ``loss``, replaces the worst with
    ``sample(key, 1)``, passes the ``damage_n`` best through :meth:`damage` and writes the
    trained states back. Without a pool every batch is ``sample(key, batch_size)`` and
    ``damage_n`` must be 0.

    Attributes:
        num_channels: state channels ``C``.
        render_scale: pixels per cell in the rendered pictures.
        alive_threshold: alpha threshold of the alive mask, or ``None`` for no masking.
        fixed_channels: the last channels, which hold the task's input and which the model
            must never update (``NCA(fixed_channels=...)``; see :func:`with_input`).
        pool_size: states kept in a sample pool (0: every batch starts fresh).
        damage_n: pool samples damaged per batch (see :meth:`damage`).
        free_on_resume: options that only say where data is or how results are evaluated and
            shown: a run may resume under other values of them (any other change of the task's
            settings is refused, :mod:`nca_lab.train.run_settings`). A subclass lists its own;
            its base classes' count too.
        added_later: options added to the task after runs were saved, with the value those runs
            trained with: a saved config without one is compared as if it held that value
            (a subclass's, with its base classes').
    """

    num_channels: int
    render_scale: int
    alive_threshold: float | None = ALIVE_THRESHOLD
    fixed_channels: int = 0
    pool_size: int = 0
    damage_n: int = 0
    free_on_resume: tuple[str, ...] = ("render_scale",)
    added_later: dict = {}

    def __init__(self, num_channels: int, render_scale: int):
        """Check and keep the settings every task has."""
        require(int(num_channels) >= 4, f"num_channels must be at least 4 (RGBA), got {num_channels}")
        require(render_scale > 0, f"task.render_scale must be positive, got {render_scale}")
        self.num_channels = int(num_channels)
        self.render_scale = int(render_scale)

    def sample(self, key: jax.Array, n: int) -> Batch:
        """``n`` fresh initial states and their targets (pure, jittable)."""
        raise NotImplementedError

    def loss(self, state: jax.Array, target: jax.Array) -> jax.Array:
        """Per-sample loss ``(N,)`` of final states ``(N, H, W, C)`` (pure, differentiable)."""
        raise NotImplementedError

    def damage(self, state: jax.Array, key: jax.Array) -> jax.Array:
        """Damage pool states before they are trained on again; the default does none."""
        del key
        return state

    def evaluate(self, model: NCA, key: jax.Array, horizon: int) -> dict[str, float]:
        """Evaluation metrics after ``horizon`` steps (the longest training rollout, ``trainer.rollout_steps[1]``).

        Keys carry no ``eval/`` prefix; the trainer adds it.
        """
        raise NotImplementedError

    def render(self, model: NCA, key: jax.Array, horizon: int) -> Rendering:
        """A rollout to show and a final picture, for a model trained on ``horizon`` steps."""
        raise NotImplementedError


#: What a task with ``fixed_input`` starts its cells' RGBA at (``task.output_init``).
OUTPUT_INITS = ("input", "grey")


def input_channels(fixed_input: bool, num_channels: int, output_init: str = "input") -> int:
    """The fixed channels of a task whose ``fixed_input`` option keeps the corrupted RGBA in
    each cell, as ViTCA does (Tesfaldet et al., NeurIPS 2022; :func:`with_input`): 4 or 0."""
    require(
        not fixed_input or int(num_channels) >= 8,
        f"task.fixed_input needs num_channels of at least 8 (RGBA out, RGBA in), got {num_channels}",
    )
    require(output_init in OUTPUT_INITS, f"task.output_init must be one of {OUTPUT_INITS}, got {output_init!r}")
    require(
        fixed_input or output_init == "input",
        f"task.output_init={output_init} needs task.fixed_input=true: else no cell would see its input",
    )
    return 4 if fixed_input else 0


def with_input(state: jax.Array, fixed_channels: int, output_init: str = "input") -> jax.Array:
    """``state (..., H, W, C)`` whose last ``fixed_channels`` (4 or 0) channels are replaced by
    a copy of its RGBA, the input the cell keeps; its own RGBA starts from that input, or opaque
    mid-grey (``output_init="grey"``: RGB 0.5, alpha 1; ViTCA's constant start, a 0.5 grey
    image, so only the kept input tells the cells what they were given)."""
    if not fixed_channels:
        return state
    rgba = state[..., :4]
    grey = jnp.broadcast_to(jnp.asarray([0.5, 0.5, 0.5, 1.0], rgba.dtype), rgba.shape)
    start = grey if output_init == "grey" else rgba
    return jnp.concatenate([start, state[..., 4 : state.shape[-1] - fixed_channels], rgba], axis=-1)


def input_of(state: jax.Array, fixed_channels: int) -> jax.Array:
    """The RGBA the cells of states made by :func:`with_input` were given: what evaluation
    compares against and pictures show as the input."""
    return state[..., state.shape[-1] - fixed_channels :] if fixed_channels else state[..., :4]


def rgba_mse(state: jax.Array, target: jax.Array) -> jax.Array:
    """Per-sample mean squared error on the RGBA channels, shape ``state.shape[:-3]``."""
    return jnp.mean(jnp.square(state[..., :4] - target[..., :4]), axis=(-3, -2, -1))


def psnr(mse: jax.Array | float) -> float:
    """Peak signal-to-noise ratio in dB of images in ``[0, 1]``: ``10 * log10(1 / mse)`` (``inf`` if exact)."""
    mse = float(mse)
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(1.0 / mse))
