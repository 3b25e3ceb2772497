"""The composition root: the one place that turns a config into objects and runs them.

Each config group names its class with ``_target_`` (``_partial_`` where only code knows a
size); this module supplies those sizes, builds task, model (:mod:`nca_lab.train.model_config`),
trainer and logger (through :mod:`nca_lab.train.construct`, which checks their options; the
trainer checks its own values), and trains, resuming or skipping a run dir as
:mod:`nca_lab.train.run_settings` allows.
"""

import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import jax
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nca_lab.atomic import remove_leftovers, write_text_atomically
from nca_lab.ckpt import CHECKPOINTS, RunCheckpointer, check_checkpoint_path
from nca_lab.config import check_top_level
from nca_lab.errors import ConfigError, is_integer, one_line, out_of_memory_as, require
from nca_lab.log.base import NullLogger
from nca_lab.log.manifest import manifest
from nca_lab.log.metrics_file import METRICS, read_metrics
from nca_lab.nca import NCA
from nca_lab.render import RENDERS
from nca_lab.run_files import MANIFEST, RESOLVED_CONFIG, SUMMARY
from nca_lab.runtime import on_stop
from nca_lab.train import multihost
from nca_lab.train.construct import check_names, checked_factory, config_errors, construct, instantiate_plain
from nca_lab.train.model_config import build_model, seed_keys
from nca_lab.train.run_dir_lock import run_dir_lock
from nca_lab.train.run_settings import completed_summary, recorded_config, setting_changes
from nca_lab.train.trainer import OutOfMemory, Preempted


def load_model(path: str | Path, step: int | None = None):
    """The trained :class:`~nca_lab.nca.NCA` of a run dir, checkpoints dir or step dir.

    The model is rebuilt from the config saved with the checkpoint, then its variables are
    restored. How steps execute follows this machine, not the training one: the fused
    kernels (``kernel=pallas``) only on a GPU, where they compile (elsewhere they would run
    interpreted, for tests). Raises :class:`ConfigError` if nothing loadable is there.
    """
    checkpointer = RunCheckpointer.find(path)
    meta = checkpointer.metadata(step)
    added_later = {"kernel": "xla", "compact_cells": "auto"}  # keys older runs' configs lack
    config = OmegaConf.merge(added_later, _saved_config(checkpointer, meta))
    if jax.default_backend() != "gpu":
        config.kernel = "xla"
    model = build_model(config, meta.get("alive_threshold"), meta.get("fixed_channels", 0))
    # a mismatch here: Trainer.fit was given the config= of another model
    checkpointer.restore_model(model, step, model_from="the config saved with it")
    return model


def load_task(path: str | Path, step: int | None = None):
    """The task a run dir (checkpoints dir, step dir) trained on, rebuilt from the config saved
    with its checkpoint. Its paths (``task.target=dot.png``, ``task.data_root``) are read as
    training read them: relative to the current directory. Raises :class:`ConfigError`."""
    checkpointer = RunCheckpointer.find(path)
    config = OmegaConf.create(_saved_config(checkpointer, checkpointer.metadata(step)))
    return construct(config.task, "task", num_channels=config.num_channels)


def _saved_config(checkpointer: RunCheckpointer, meta: dict) -> dict:
    """The run's config in a checkpoint's metadata ``meta``: one line where it has none."""
    require(
        meta.get("config"),
        f"{checkpointer.directory}: its checkpoints hold no config to rebuild the model from (Trainer.fit "
        "was called without config=): build the model as it was trained and load the weights with "
        "RunCheckpointer.find(path).restore_model(model)",
    )
    return meta["config"]


def build(cfg: DictConfig | dict) -> tuple:
    """Build ``(task, model, trainer)`` from a composed config (or the plain dict ``fit`` saves,
    ``OmegaConf.to_container(cfg, resolve=True)``); bad settings raise :class:`ConfigError`."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    require(
        is_integer(cfg.num_channels) and cfg.num_channels >= 4,
        f"num_channels must be an integer >= 4 (RGBA), got {cfg.num_channels!r}",
    )
    task = construct(cfg.task, "task", num_channels=cfg.num_channels)
    check_names(cfg.trainer, "trainer")
    with config_errors("trainer"):
        trainer = instantiate_plain(cfg.trainer)
    trainer.check(task)
    model = build_model(cfg, task.alive_threshold, task.fixed_channels)  # the model last: initialising it compiles
    if not model.uses_manual_vjp:
        print(
            f"note: {type(model.update).__name__} trains by autodiff of its step, on every cell; the manual "
            "step VJP and active cells are the residual update's, and its subclasses' that keep its apply "
            "and __call__ (trainer.remat=true saves memory)",
            file=sys.stderr,
        )
    if model.uses_fused_kernel and jax.default_backend() != "gpu":
        print(
            "note: kernel=pallas runs interpreted off a GPU (slow, for tests); kernel=xla is the fast path here",
            file=sys.stderr,
        )
    return task, model, trainer


def run(
    cfg: DictConfig,
    run_dir: Path,
    *,
    sweep_dir: Path | None = None,
    hydra_records: dict[str, str] | None = None,
    choices: dict[str, str | None] | None = None,
) -> dict:
    """Train as ``cfg`` says, writing everything into ``run_dir``; return the final metrics.

    A run dir that already holds checkpoints is resumed (with the same W&B run id); one
    that holds ``summary.json`` is complete and skipped, so re-running a sweep only runs
    the jobs that did not finish. Either only under the run's own settings
    (:mod:`nca_lab.train.run_settings`). A job of the sweep in ``sweep_dir`` is in the W&B
    group named like a run (:func:`_default_name`): ``multirun/2026-11-23/10-00-00``, unique
    across days. One job at
    a time: another that holds ``run_dir`` (:func:`run_dir_lock`) makes this one stop.
    ``hydra_records`` (Hydra's ``config.yaml``, ``hydra.yaml``, ``overrides.yaml``) go into
    ``run_dir/.hydra`` when training starts: a command refused or skipped leaves the run's own.
    ``choices`` (each config group's option: ``perceive: sobel``) go to the logger's config
    too, to filter and group a sweep's runs by on a dashboard (the config itself holds only
    what they compose to: ``perceive._target_``).
    """
    run_dir, records = Path(run_dir), hydra_records or {}
    check_top_level(cfg, _hydra_overrides(records))
    check_checkpoint_path(run_dir.resolve())  # before anything is written there
    try:  # a setting that cannot be resolved (`trainer.steps=${nope}`) is this run's error, one line
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(one_line(err)) from err
    with config_errors("distributed"):
        multihost.initialize(**cfg.distributed)
    own = {k: v for k, v in config["distributed"].items() if k != "process_id"}  # the one that differs
    multihost.check_same(run_dir=str(run_dir.resolve()), settings={**config, "distributed": own})
    with ExitStack() as stack:
        error = None
        if multihost.is_main_process():  # the other processes of a multi-host run share its run dir
            try:
                stack.enter_context(run_dir_lock(run_dir))
            except ConfigError as err:
                error = err
        multihost.raise_together(error)
        return _run(cfg, config, run_dir, sweep_dir, records, choices or {})


def _run(
    cfg: DictConfig,
    config: dict,
    run_dir: Path,
    sweep_dir: Path | None,
    hydra_records: dict[str, str],
    choices: dict[str, str | None],
) -> dict:
    """:func:`run` once this process may train in ``run_dir``; ``config`` is ``cfg`` resolved."""
    completed = run_dir / SUMMARY
    if completed.is_file():
        return completed_summary(
            run_dir, config, lambda: _weights_fit(run_dir, lambda: build_model(cfg, alive_threshold=None))
        )
    group_by_sweep = sweep_dir is not None and cfg.logger.get("group", "") is None  # a logger with group: null
    extra = {"group": _default_name(sweep_dir)} if group_by_sweep else {}
    logger_factory = checked_factory(cfg.logger, "logger", ("config", "run_dir", "name", "run_id", *extra))
    task, model, trainer = build(cfg)
    resumed = trainer.resume_source(run_dir)
    run_id, start = None, f", from the weights of {trainer.init_from}" if trainer.init_from else ""
    if resumed is not None:
        saved = resumed.metadata()
        checkpoint = resumed.directory / str(resumed.default_step())
        changes = setting_changes(saved.get("config", {}), config)
        warm_start = f", or train a new run dir from its weights with trainer.init_from={checkpoint}"
        require(
            not changes,
            f"{checkpoint} was trained with other settings ({changes}): resume it with its own"
            + (warm_start if changes and _weights_fit(resumed, lambda: model) else ""),
        )
        if resumed.directory == (run_dir / CHECKPOINTS).resolve():  # continuing itself: the same W&B run
            run_id = saved.get("wandb_run_id")
        start = f", resuming {checkpoint}"
    elif (run_dir / METRICS).is_file() and read_metrics(run_dir):
        # A run that logged steps and died before its first checkpoint: started again only under
        # its own settings (one that logged none, say out of memory at once, may be retried smaller).
        changes = setting_changes(recorded_config(run_dir), config)
        require(
            not changes,
            f"{run_dir} holds a run with other settings ({changes}) that saved no checkpoint: "
            "give this one another run dir",
        )
    if resumed is None and trainer.init_from:  # checked now, not after the run dir is written
        RunCheckpointer.find(trainer.init_from).check_fits(model)
    print(f"training in {run_dir}{start}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    if multihost.is_main_process():  # the one writer of these files, holding the run dir
        remove_leftovers(run_dir, *run_dir.glob(f"{RENDERS}/*"))
    opened = {"logger": NullLogger()}

    def open_run():
        """The run's records and logger, once ``fit`` has read the checkpoint it resumes: a
        damaged one stops the job with the run's records as they were and no new W&B run."""
        error = None
        if multihost.is_main_process():  # the run's files and W&B run: one per run, not per process
            try:
                _write_records(run_dir, config, hydra_records)
                with config_errors("logger"):
                    opened["logger"] = logger_factory(
                        config={**config, "choices": choices} if choices else config,
                        run_dir=run_dir,
                        name=cfg.run_name or _run_name(run_dir, sweep_dir),
                        run_id=run_id,
                        **extra,
                    )
            except (ConfigError, OSError) as err:
                error = err
        multihost.raise_together(error)
        return opened["logger"]

    remat = "" if model.uses_manual_vjp else ", or trainer.remat=true"

    def too_big(err: BaseException) -> OutOfMemory:
        return OutOfMemory(
            f"out of memory ({one_line(err)}): try a smaller trainer.batch_size, grid (task.target_size, "
            f"task.padding) or trainer.rollout_steps{remat}"
        )

    try:
        with out_of_memory_as(too_big), on_stop(lambda: opened["logger"].finish(preempted=True)):
            summary = trainer.fit(
                model, task, key=seed_keys(int(cfg.seed)).run, run_dir=run_dir, logger=open_run, config=config
            )
    except Preempted:
        _finish_after_failure(opened["logger"], preempted=True)
        raise
    except BaseException as err:
        _finish_after_failure(opened["logger"], error=f"{type(err).__name__}: {one_line(err)}")
        raise
    opened["logger"].finish(summary)
    return summary


def _weights_fit(checkpoints: RunCheckpointer | Path, model: Callable[[], NCA]) -> bool:
    """Whether the weights of ``checkpoints`` (opened, or a path) fit the model that ``model``
    builds: only then is ``trainer.init_from=<checkpoint>`` advice (a warm start checks the
    same). A model that cannot be built is no fit: the refusal's own line is the one to show."""
    try:
        found = checkpoints if isinstance(checkpoints, RunCheckpointer) else RunCheckpointer.find(checkpoints)
        found.check_fits(model())
    except ConfigError:
        return False
    return True


def _finish_after_failure(logger, **how) -> None:
    """Close the logger of a run that failed or stopped; a failure of the logger's own then is a
    warning, so that the run's error (its line, its exit status) is the one reported."""
    try:
        logger.finish(**how)
    except Exception as err:  # noqa: BLE001 - any error of a logger's
        print(f"warning: the logger did not close its run ({one_line(err)})", file=sys.stderr)


def _hydra_overrides(hydra_records: dict[str, str]) -> str:
    """The command's own ``hydra.*`` overrides (``hydra.run.dir=runs/${tag}``), from Hydra's
    record, unresolved: what may read a value of the user's besides the config itself."""
    if "hydra.yaml" not in hydra_records:
        return ""
    return "\n".join(yaml.safe_load(hydra_records["hydra.yaml"])["hydra"]["overrides"]["hydra"])


def _write_records(run_dir: Path, config: dict, hydra_records: dict[str, str]) -> None:
    """The run's resolved config, its reproducibility manifest and Hydra's records."""
    write_text_atomically(run_dir / RESOLVED_CONFIG, OmegaConf.to_yaml(config))
    write_text_atomically(run_dir / MANIFEST, json.dumps(manifest(config["seed"]), indent=2) + "\n")
    if hydra_records:
        (run_dir / ".hydra").mkdir(exist_ok=True)
    for name, text in hydra_records.items():
        write_text_atomically(run_dir / ".hydra" / name, text)


def _run_name(run_dir: Path, sweep_dir: Path | None) -> str:
    """The W&B run's default name: a sweep's job by its dir's name, its overrides (the sweep is
    its group: with the group's path in front, the dashboard cut every name to the same
    ``multirun/2026-...``); a single run as :func:`_default_name` says."""
    return run_dir.name if sweep_dir is not None else _default_name(run_dir)


def _default_name(run_dir: Path) -> str:
    """``outputs/2026-11-23/10-00-00`` -> ``2026-11-23/10-00-00``: readable and unique per run (else the dir's name)."""
    parts = Path(run_dir).resolve().parts
    return "/".join(parts[parts.index("outputs") + 1 :]) if "outputs" in parts[:-1] else parts[-1]
