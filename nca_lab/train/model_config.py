"""The model a config describes: build it, and check a model against it.

Part of the composition root (:mod:`nca_lab.train.run` builds the task, trainer and logger and
runs them); split off so that :meth:`~nca_lab.train.trainer.Trainer.fit`, which saves the config
with its checkpoints, can check that the config builds the model it trains without importing
the root that imports it. A seed splits into independent PRNG streams here, so that a perceive
ablation starts every update from the same weights.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nca_lab.errors import SEEDS, ConfigError, is_integer, one_line, require
from nca_lab.nca import NCA
from nca_lab.perceive.base import Perceive
from nca_lab.train.construct import construct
from nca_lab.update.base import Update


class SeedKeys(NamedTuple):
    """The independent PRNG streams of a seed."""

    update: jax.Array  #: the update's initial weights
    run: jax.Array  #: the pool, the training steps and the evaluation
    perceive: jax.Array  #: the perceive's initial weights (attention, learned ``init=random``)


#: Where the perceive's stream branches off the update's: ``nnx.Rngs`` draws ``fold_in(key, 0)``,
#: ``fold_in(key, 1)``, ... and never gets this far.
PERCEIVE_STREAM = 2**32 - 1


def seed_keys(seed: int) -> SeedKeys:
    """Split ``seed`` into independent streams: ``nnx.Rngs(params=key)`` folds in 0, 1, ...,
    as ``split(key, n)`` does, so a shared key would draw the first weights from the very
    bits of the pool and training keys. The perceive has a stream of its own, so that a
    perceive ablation (``-m perceive=sobel,learned,attention``) starts every update from the
    same weights: drawn after a perceive's, they differed with the perceive."""
    update, run = jax.random.split(jax.random.key(seed))
    return SeedKeys(update, run, jax.random.fold_in(update, PERCEIVE_STREAM))


def build_model(cfg: DictConfig, alive_threshold: float | None, fixed_channels: int = 0) -> NCA:
    """The NCA of ``cfg`` (perceive and update groups, ``num_channels``, ``seed``, ``kernel``,
    ``compact_cells``) for a task with ``alive_threshold`` and ``fixed_channels`` (its own)."""
    channels = cfg.num_channels
    seed = cfg.seed
    require(is_integer(seed) and seed in SEEDS, f"seed must be an integer from 0 to {SEEDS[-1]}, got {seed!r}")
    keys = seed_keys(seed)
    perceive = construct(cfg.perceive, "perceive", num_channels=channels, rngs=nnx.Rngs(params=keys.perceive))
    perception_size = _perception_size(perceive, channels)
    update = construct(
        cfg["update"],
        "update",
        perception_size=perception_size,
        num_channels=channels,
        rngs=nnx.Rngs(params=keys.update),
    )
    _check_next_state(update, channels, perception_size)
    return NCA(
        perceive,
        update,
        alive_threshold=alive_threshold,
        kernel=str(cfg.kernel),
        compact_cells=cfg.compact_cells,
        fixed_channels=fixed_channels,
    )


def _perception_size(perceive, channels: int) -> int:
    """The perceive's declared ``out_features``, checked against what it computes (a new
    perceive that gets it wrong stops here with one line, not deep inside the update's matmul)."""
    name = type(perceive).__name__
    declared = getattr(perceive, "out_features", None)
    require(declared is not None, f"{name} must set out_features (see nca_lab.perceive.base.Perceive)")
    hint = f" (is its out_features, {declared}, right?)"
    computed = _traced(perceive, hint, jax.ShapeDtypeStruct((1, 3, 3, channels), jnp.float32)).shape[-1]
    require(computed == declared, f"{name}.out_features is {declared}, but its perception has {computed} features")
    return declared


def _check_next_state(update, channels: int, perception_size: int) -> None:
    """A new update must return a state of the state's shape and dtype: one line here, not a
    traceback from inside the rollout's scan once training has started."""
    state = jax.ShapeDtypeStruct((1, 3, 3, channels), jnp.float32)
    perception = jax.ShapeDtypeStruct((1, 3, 3, perception_size), jnp.float32)
    out = _traced(update, "", state, perception, jax.random.split(jax.random.key(0), 1))
    require(
        (out.shape, out.dtype) == (state.shape, state.dtype),
        f"{type(update).__name__} returns {out.dtype}{list(out.shape)} for a state float32{list(state.shape)}: "
        "the next state must have the state's shape and dtype",
    )


def _traced(module, hint: str, *inputs) -> jax.ShapeDtypeStruct:
    """What ``module(*inputs)`` returns, traced (on an abstract copy: a module that updates its
    own state as it runs is left as it was); a module that fails on them is one line naming it."""
    name = type(module).__name__
    require(type(module).__call__ not in (Perceive.__call__, Update.__call__), f"{name} must implement __call__")
    try:
        return nnx.eval_shape(lambda module, *inputs: module(*inputs), module, *inputs)
    except (TypeError, ValueError) as err:
        shapes = ", ".join(str(list(x.shape)) for x in inputs)
        raise ConfigError(f"{name} fails on inputs of shape {shapes}: {one_line(err)}{hint}") from err


def check_config_builds(model: NCA, config: dict) -> None:
    """Refuse a ``config`` (``Trainer.fit(config=...)``) that does not build ``model``'s perceive
    and update, the parts :func:`load_model` rebuilds from it: a hand-built model saved with
    another model's config loaded as that other one (another fire rate, another angle) without
    a word, or failed to load only after training."""
    how_it_steps = {"kernel": model.kernel, "compact_cells": model.compact_cells}  # not what load_model rebuilds
    try:
        config = OmegaConf.merge(config, how_it_steps)
        built = nnx.eval_shape(lambda: build_model(config, model.alive_threshold, model.fixed_channels))
    except (ConfigError, OmegaConfBaseException) as err:
        raise ConfigError(
            f"config= does not build a model ({one_line(err)}): give the one the model was built from"
        ) from err
    for part in ("perceive", "update"):
        ours, theirs = getattr(model, part), getattr(built, part)
        if nnx.graphdef(ours) != nnx.graphdef(theirs) or _shapes(ours) != _shapes(theirs):
            raise ConfigError(
                f"config= builds a {part} ({type(theirs).__name__}) of other settings or sizes than the model's "
                f"({type(ours).__name__}): load_model, grow and export rebuild the model from it; give the config "
                "the model was built from"
            )


def _shapes(module: nnx.Module):
    return jax.tree.map(lambda x: (x.shape, x.dtype), nnx.state(module))
