"""Optimizers for NCA training, built as ``optax.chain``s.

Reference: Mordvintsev et al., Distill 2020, the authors' notebook: Adam (lr 2e-3, decayed
tenfold after 2000 steps) on gradients normalised per variable, ``g / (||g|| + 1e-8)``, which
keeps updates stable over the long backpropagation through ~100 CA steps.
"""

import math

import jax
import jax.numpy as jnp
import optax

from nca_lab.errors import is_integer, is_number, require

GRADIENT_TRANSFORMS = ("normalize", "clip", "none")


def normalize_per_parameter(eps: float = 1e-8) -> optax.GradientTransformation:
    """Scale every parameter's gradient to unit L2 norm, ``g / (||g|| + eps)``."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: g / (jnp.linalg.norm(g) + eps), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(
    learning_rate: optax.ScalarOrSchedule,
    *,
    gradient: str = "normalize",
    clip_norm: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-7,
) -> optax.GradientTransformation:
    """Adam after a gradient transform.

    Args:
        learning_rate: a float or an optax schedule.
        gradient: ``"normalize"`` (per-parameter, the original), ``"clip"`` (global-norm
            clipping at ``clip_norm``) or ``"none"``.
        clip_norm: the global norm bound of ``"clip"``.
        b1: Adam's first-moment decay.
        b2: Adam's second-moment decay.
        eps: Adam's denominator floor; Keras' default, which the authors' Adam had (optax's is 1e-8).
            Keras adds it to the uncorrected ``sqrt(v)``, optax to the bias-corrected one, so the
            first updates of near-zero gradients differ (parameters 1e-3 apart, relative, after
            100 updates, 3e-4 after 2000, on random normalised gradients).
    """
    require(
        gradient in GRADIENT_TRANSFORMS,
        f"trainer.optimizer.gradient must be one of {GRADIENT_TRANSFORMS}, got {gradient!r}",
    )
    require(is_number(clip_norm) and clip_norm > 0, f"trainer.optimizer.clip_norm must be positive, got {clip_norm!r}")
    for name, decay in (("b1", b1), ("b2", b2)):  # Adam's moments: a decay outside [0, 1) trains on without a word
        require(is_number(decay) and 0 <= decay < 1, f"trainer.optimizer.{name} must be in [0, 1), got {decay!r}")
    require(
        is_number(eps) and 0 < eps < math.inf, f"trainer.optimizer.eps must be a positive finite number, got {eps!r}"
    )
    if not callable(learning_rate):  # a schedule either way: the same optimizer state, so a
        learning_rate = optax.constant_schedule(learning_rate)  # resume may switch between them
    first = {
        "normalize": normalize_per_parameter(),
        "clip": optax.clip_by_global_norm(clip_norm),
        "none": optax.identity(),
    }[gradient]
    return optax.chain(first, optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def step_decay(init_value: float, boundaries: list[int], factor: float = 0.1) -> optax.Schedule:
    """``init_value``, multiplied by ``factor`` at each step in ``boundaries`` (the paper: 2e-3, x0.1 at 2000).

    A list (not optax's dict) so that a config override replaces the boundaries instead of
    merging with them. Updates count from 0 and the rate changes at update ``boundary``, after
    ``boundary`` updates; the authors' ``PiecewiseConstantDecay`` changes it one update later.
    """
    for name, value in (("init_value", init_value), ("factor", factor)):  # true was a rate of 1, or no decay
        require(is_number(value) and value > 0, f"trainer.learning_rate.{name} must be positive, got {value!r}")
    steps = [] if isinstance(boundaries, str) else list(boundaries)
    require(
        steps and all(map(is_integer, steps)),
        f"trainer.learning_rate.boundaries must be a non-empty list of steps (a constant rate is "
        f"trainer.learning_rate=<value>), got {boundaries!r}",
    )
    return optax.piecewise_constant_schedule(init_value, dict.fromkeys(steps, float(factor)))
