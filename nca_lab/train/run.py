"""The composition root: the one place that turns a config into objects and runs them.

Each config group names its class with ``_target_`` (``_partial_`` where only code knows a
size); this module supplies those sizes, builds task, model, trainer and logger, and trains.
"""

import functools
import inspect
import json
import sys
import typing
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nca_lab.atomic import write_text_atomically
from nca_lab.ckpt import CHECKPOINTS, RunCheckpointer
from nca_lab.errors import SEEDS, ConfigError, is_integer, one_line, require
from nca_lab.log.manifest import manifest
from nca_lab.nca import NCA
from nca_lab.train.run_dir_lock import run_dir_lock


class SeedKeys(NamedTuple):
    """The two independent PRNG streams of a seed."""

    init: jax.Array  #: the model's initial weights
    run: jax.Array  #: the pool, the training steps and the evaluation


def seed_keys(seed: int) -> SeedKeys:
    """Split ``seed`` into independent streams: ``nnx.Rngs(params=key)`` folds in 0, 1, ...,
    as ``split(key, n)`` does, so a shared key would draw the first weights from the very
    bits of the pool and training keys."""
    return SeedKeys(*jax.random.split(jax.random.key(seed)))


def build_model(cfg: DictConfig, alive_threshold: float | None) -> NCA:
    """The NCA of ``cfg`` (perceive and update groups, ``num_channels``, ``seed``, ``kernel``, ``compact_cells``)."""
    channels = cfg.num_channels
    seed = cfg.seed
    require(is_integer(seed) and seed in SEEDS, f"seed must be an integer from 0 to {SEEDS[-1]}, got {seed!r}")
    rngs = nnx.Rngs(params=seed_keys(seed).init)
    perceive = _construct(cfg.perceive, "perceive", num_channels=channels, rngs=rngs)
    update = _construct(
        cfg["update"], "update", perception_size=_perception_size(perceive, channels), num_channels=channels, rngs=rngs
    )
    return NCA(
        perceive, update, alive_threshold=alive_threshold, kernel=str(cfg.kernel), compact_cells=cfg.compact_cells
    )


def _perception_size(perceive, channels: int) -> int:
    """The perceive's declared ``out_features``, checked against what it computes (a new
    perceive that gets it wrong stops here with one line, not deep inside the update's matmul)."""
    name = type(perceive).__name__
    declared = getattr(perceive, "out_features", None)
    require(declared is not None, f"{name} must set out_features (see nca_lab.perceive.base.Perceive)")
    computed = jax.eval_shape(perceive, jax.ShapeDtypeStruct((1, 3, 3, channels), jnp.float32)).shape[-1]
    require(computed == declared, f"{name}.out_features is {declared}, but its perception has {computed} features")
    return declared


def load_model(path: str | Path, step: int | None = None):
    """The trained :class:`~nca_lab.nca.NCA` of a run dir, checkpoints dir or step dir.

    The model is rebuilt from the config saved with the checkpoint, then its variables are
    restored. How steps execute follows this machine, not the training one: the fused
    kernels (``kernel=pallas``) only on a GPU, where they compile (elsewhere they would run
    interpreted, for tests). Raises :class:`ConfigError` if nothing loadable is there.
    """
    checkpointer = RunCheckpointer.find(path)
    meta = checkpointer.metadata(step)
    config = OmegaConf.merge({"kernel": "xla", "compact_cells": "auto"}, meta["config"])  # keys added later
    if jax.default_backend() != "gpu":
        config.kernel = "xla"
    model = build_model(config, alive_threshold=meta.get("alive_threshold"))
    checkpointer.restore_model(model, step)
    return model


def build(cfg: DictConfig) -> tuple:
    """Build ``(task, model, trainer)`` from a composed config; bad settings raise :class:`ConfigError`."""
    require(
        is_integer(cfg.num_channels) and cfg.num_channels >= 4,
        f"num_channels must be an integer >= 4 (RGBA), got {cfg.num_channels!r}",
    )
    task = _construct(cfg.task, "task", num_channels=cfg.num_channels)
    with _config_errors("trainer"):
        trainer = instantiate(cfg.trainer)
    trainer.check(task)
    model = build_model(cfg, task.alive_threshold)  # the model last: initialising it compiles
    if not model.uses_manual_vjp:
        print(
            f"note: {type(model.update).__name__} trains by autodiff of its step, on every cell; the manual "
            "step VJP and active cells are the residual update's (trainer.remat=true saves memory)",
            file=sys.stderr,
        )
    if model.uses_fused_kernel and jax.default_backend() != "gpu":
        print(
            "note: kernel=pallas runs interpreted off a GPU (slow, for tests); kernel=xla is the fast path here",
            file=sys.stderr,
        )
    return task, model, trainer


def run(
    cfg: DictConfig, run_dir: Path, *, sweep_dir: Path | None = None, hydra_records: dict[str, str] | None = None
) -> dict:
    """Train as ``cfg`` says, writing everything into ``run_dir``; return the final metrics.

    A run dir that already holds checkpoints is resumed (with the same W&B run id); one
    that holds ``summary.json`` is complete and skipped, so re-running a sweep only runs
    the jobs that did not finish. Either only under the run's own :data:`RUN_DEFINING`
    settings. A job of the sweep in ``sweep_dir`` is in the W&B group named like a run
    (:func:`_default_name`): ``multirun/2026-11-23/10-00-00``, unique across days. One job at
    a time: another that holds ``run_dir`` (:func:`run_dir_lock`) makes this one stop.
    ``hydra_records`` (Hydra's ``config.yaml``, ``hydra.yaml``, ``overrides.yaml``) go into
    ``run_dir/.hydra`` when training starts: a command refused or skipped leaves the run's own.
    """
    run_dir, records = Path(run_dir), hydra_records or {}
    if jax.process_index() > 0:  # a multi-host job's other processes share process 0's run dir
        return _run(cfg, run_dir, sweep_dir, records)
    with run_dir_lock(run_dir):
        return _run(cfg, run_dir, sweep_dir, records)


def _run(cfg: DictConfig, run_dir: Path, sweep_dir: Path | None, hydra_records: dict[str, str]) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    completed = run_dir / "summary.json"
    if completed.is_file():
        return _completed(run_dir, config)
    in_sweep = sweep_dir is not None and cfg.logger.get("group", "") is None
    extra = {"group": _default_name(sweep_dir)} if in_sweep else {}
    logger_factory = _factory(cfg.logger, "logger", ("config", "run_dir", "name", "run_id", *extra))
    task, model, trainer = build(cfg)
    resumed = trainer.resume_source(run_dir)
    run_id, start = None, f", from the weights of {trainer.init_from}" if trainer.init_from else ""
    if resumed is not None:
        saved = resumed.metadata()
        checkpoint = resumed.directory / str(resumed.default_step())
        changes = _setting_changes(saved.get("config", {}), config)
        require(
            not changes,
            f"{checkpoint} was trained with other settings ({changes}): resume it with its own, "
            f"or train a new run dir from its weights with trainer.init_from={checkpoint}",
        )
        if resumed.directory == (run_dir / CHECKPOINTS).resolve():  # continuing itself: the same W&B run
            run_id = saved.get("wandb_run_id")
        start = f", resuming {checkpoint}"
    print(f"training in {run_dir}{start}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(config))
    write_text_atomically(run_dir / "manifest.json", json.dumps(manifest(cfg.seed), indent=2) + "\n")
    if hydra_records:
        (run_dir / ".hydra").mkdir(exist_ok=True)
    for name, text in hydra_records.items():
        write_text_atomically(run_dir / ".hydra" / name, text)
    with _config_errors("logger"):
        logger = logger_factory(
            config=config, run_dir=run_dir, name=cfg.run_name or _default_name(run_dir), run_id=run_id, **extra
        )
    failed = True
    try:
        summary = trainer.fit(
            model, task, key=seed_keys(int(cfg.seed)).run, run_dir=run_dir, logger=logger, config=config
        )
        failed = False
        return summary
    finally:
        logger.finish(None if failed else summary, failed=failed)


#: The settings that say what a checkpoint is a run of. Resuming under others would continue
#: that run while the run dir's config says something else; trainer, logger and execution
#: settings (steps, learning rate, kernel) may change on resume, as may these task settings,
#: which only say where data is and how results are evaluated and shown.
RUN_DEFINING = ("seed", "num_channels", "perceive", "update", "task")
FREE_ON_RESUME = ("task.data_root", "task.download", "task.eval_samples", "task.eval_levels", "task.render_scale")


def _setting_changes(saved: dict, config: dict) -> str:
    """The :data:`RUN_DEFINING` settings in which ``config`` differs from ``saved``, as text ("" if none).

    Settings only one of the two configs has (options added to nca_lab since ``saved`` was
    written) are not compared.
    """
    changes = [
        f"{key}: {old!r} -> {new!r}"
        for key, old, new in _differences(
            {k: saved[k] for k in RUN_DEFINING if k in saved}, {k: config[k] for k in RUN_DEFINING if k in config}
        )
        if key not in FREE_ON_RESUME
    ]
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    return "; ".join(changes[:3]) + more


def _completed(run_dir: Path, config: dict) -> dict:
    """The summary of the completed run in ``run_dir``, if ``config`` asks for that run."""
    saved_config = run_dir / "config_resolved.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(saved_config)) if saved_config.is_file() else {}
    changes = _setting_changes(saved, config)
    require(
        not changes,
        f"{run_dir} holds a completed run with other settings ({changes}): give this one another run dir "
        f"(trainer.init_from={run_dir} starts from its weights)",
    )
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    steps = config["trainer"]["steps"]
    # deleting summary.json only trains on: at the same steps it would evaluate again, at fewer it is refused
    hint = f" (delete its summary.json to train on to step {steps})" if steps > summary["step"] else ""
    print(f"skipped {run_dir}: already completed at step {summary['step']}{hint}", file=sys.stderr)
    return summary


def _differences(saved, current, key: str = ""):
    """``(key, saved, current)`` for each setting both nested dicts have and that differs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in sorted(saved.keys() & current.keys()):
            yield from _differences(saved[name], current[name], f"{key}.{name}" if key else name)
    elif saved != current:
        yield key, saved, current


def _default_name(run_dir: Path) -> str:
    """``outputs/2026-11-23/10-00-00`` -> ``2026-11-23/10-00-00``: readable and unique per run (else the dir's name)."""
    parts = Path(run_dir).resolve().parts
    return "/".join(parts[parts.index("outputs") + 1 :]) if "outputs" in parts[:-1] else parts[-1]


def _construct(node: DictConfig, group: str, **supplied):
    """Instantiate a ``_partial_`` config node with the sizes only code knows (checked by :func:`_factory`)."""
    factory = _factory(node, group, supplied)
    with _config_errors(group):
        return factory(**supplied)


def _factory(node: DictConfig, group: str, supplied: Iterable[str]) -> functools.partial:
    """The ``_partial_`` of a config node, its options checked against the constructor.

    The options and the ``supplied`` names are bound against the constructor, so an unknown
    option (say ``+task.colour=red``) is one line naming the group, not a ``TypeError``
    traceback; an option annotated ``int`` or ``float`` must hold one
    (``task.target_size=1.5`` was truncated), one annotated ``Literal[...]`` one of its values
    (``logger.mode=ofline`` is refused before the model is built, not after).
    """
    with _config_errors(group):
        factory = instantiate(node)
    target = factory.func
    # the constructor's own signature (nnx's metaclass shows ``*args, **kwargs``)
    signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    options = {**factory.keywords, **dict.fromkeys(supplied)}  # code's win over the yaml's (``logger.group``)
    try:
        signature.bind(*((None,) if inspect.isclass(target) else ()), *factory.args, **options)
    except TypeError as err:
        raise ConfigError(f"unknown or missing option for {group}: {err}") from None
    for name, value in factory.keywords.items():
        kind = signature.parameters[name].annotation
        number = is_integer(value) or isinstance(value, float)
        require(kind not in (int, "int") or is_integer(value), f"{group}.{name} must be an integer, got {value!r}")
        require(kind not in (float, "float") or number, f"{group}.{name} must be a number, got {value!r}")
        choices = _literal_values(kind)
        if choices is not None and value not in choices:
            allowed = ", ".join("null" if c is None else repr(c) for c in choices)
            raise ConfigError(f"{group}.{name} must be one of {allowed}, got {value!r}")
    return factory


def _literal_values(kind) -> tuple | None:
    """The values a ``Literal[...]`` annotation allows, ``None`` included if it is optional; ``None`` for others."""
    if typing.get_origin(kind) is typing.Literal:
        return typing.get_args(kind)
    members = typing.get_args(kind)
    if len(members) == 2 and type(None) in members:
        (other,) = (m for m in members if m is not type(None))
        inner = _literal_values(other)
        return None if inner is None else (*inner, None)
    return None


@contextmanager
def _config_errors(group: str):
    """Turn errors of building ``group`` from its config into one-line :class:`ConfigError`s.

    A :class:`ConfigError` raised by a constructor is re-raised as is; a ``TypeError`` or
    ``ValueError`` (a value of the wrong type: ``update.hidden_sizes=128``) names the group;
    anything else from Hydra's ``instantiate`` (an unknown option) keeps its first line.
    """
    try:
        yield
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        if isinstance(exc.__cause__, (TypeError, ValueError)):
            raise ConfigError(f"a bad value for {group}: {one_line(exc.__cause__)}") from exc
        raise ConfigError(one_line(exc)) from exc
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"a bad value for {group}: {one_line(err)}") from err
