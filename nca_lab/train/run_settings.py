"""Which settings make a run dir's checkpoints and summary *this* run.

A run dir is resumed (its checkpoints) or skipped (its ``summary.json``) only under the
settings it was trained with: continuing it under others would leave a run whose config says
one thing and whose weights another. The composition root (:mod:`nca_lab.train.run`) asks;
part of it, split off, so it reads configs too.
"""

import json
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nca_lab.ckpt import CHECKPOINTS, step_dirs
from nca_lab.errors import ConfigError, is_integer, one_line, require
from nca_lab.run_files import RESOLVED_CONFIG, SUMMARY
from nca_lab.train.construct import target_of

#: The settings that say what a checkpoint is a run of. Resuming under others would continue
#: that run while the run dir's config says something else; trainer, logger and execution
#: settings (steps, learning rate, kernel) may change on resume, as may the task settings its
#: class lists in ``free_on_resume``, which only say where data is and how results are
#: evaluated and shown (:class:`~nca_lab.tasks.base.Task`).
RUN_DEFINING = ("seed", "num_channels", "perceive", "update", "task")


def setting_changes(saved: dict, config: dict) -> str:
    """The :data:`RUN_DEFINING` settings in which ``config`` differs from ``saved``, as text ("" if none).

    Settings only one of the two configs has (options added to nca_lab since ``saved`` was
    written, or another task's) are not compared, but for those ``config``'s task class lists
    in ``added_later``: a run saved before ``task.fixed_input`` existed trained without it.
    """
    classes = getattr(target_of(config.get("task", {})), "__mro__", ())  # each class lists its own
    free = {f"task.{name}" for kind in classes for name in vars(kind).get("free_on_resume", ())}
    added_later = {name: old for kind in reversed(classes) for name, old in vars(kind).get("added_later", {}).items()}
    saved = {k: saved[k] for k in RUN_DEFINING if k in saved}
    for name, value in added_later.items():
        if isinstance(saved.get("task"), dict) and name in config["task"]:
            saved["task"] = {name: value, **saved["task"]}
    changes = [
        f"{key}: {old!r} -> {new!r}"
        for key, old, new in _differences(saved, {k: config[k] for k in RUN_DEFINING if k in config})
        if key not in free
    ]
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    return "; ".join(changes[:3]) + more


def completed_summary(run_dir: Path, config: dict, weights_fit: Callable[[], bool]) -> dict:
    """The summary of the completed run in ``run_dir``, if ``config`` asks for that run (a line
    says it is skipped). ``weights_fit``: whether its checkpoints fit ``config``'s model, asked
    only to advise ``trainer.init_from`` where ``config`` asks for another run."""
    changes = setting_changes(recorded_config(run_dir), config)
    if changes:
        weights = step_dirs(run_dir / CHECKPOINTS) and weights_fit()
        raise ConfigError(
            f"{run_dir} holds a completed run with other settings ({changes}): give this one another run dir"
            + (f" (trainer.init_from={run_dir} starts from its weights)" if weights else "")
        )
    completed = run_dir / SUMMARY
    try:
        summary = json.loads(completed.read_text(encoding="utf-8"))
        require(isinstance(summary, dict) and is_integer(summary.get("step")), "no summary of a run")
    except ValueError as err:  # written atomically; damaged since (a copy that broke off, say)
        raise ConfigError(
            f"{completed} cannot be read ({err}): delete it to evaluate the run again from its last checkpoint"
        ) from err
    steps = config["trainer"]["steps"]
    # deleting summary.json only trains on: at the same steps it would evaluate again, at fewer it is refused
    train_on = is_integer(steps) and steps > summary["step"]  # no advice for a trainer.steps that is no count
    hint = f" (delete its summary.json to train on to step {steps})" if train_on else ""
    print(f"skipped {run_dir}: already completed at step {summary['step']}{hint}", file=sys.stderr)
    return summary


def recorded_config(run_dir: Path) -> dict:
    """The resolved config the run in ``run_dir`` recorded when it started training (``{}`` if
    none). One damaged since (cut short: not YAML, or without all of :data:`RUN_DEFINING`, which
    would not be compared) is one line, not a traceback or a check that silently passes."""
    recorded = run_dir / RESOLVED_CONFIG
    if not recorded.is_file():
        return {}
    try:
        config = OmegaConf.to_container(OmegaConf.load(recorded))
        require(isinstance(config, dict) and all(key in config for key in RUN_DEFINING), "settings are missing")
    except (ValueError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise ConfigError(
            f"{recorded} cannot be read ({one_line(err)}): it records the run's settings; "
            "restore it, or give this command another run dir"
        ) from err
    return config


def _differences(saved, current, key: str = ""):
    """``(key, saved, current)`` for each setting both nested dicts have and that differs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in sorted(saved.keys() & current.keys()):
            yield from _differences(saved[name], current[name], f"{key}.{name}" if key else name)
    elif saved != current:
        yield key, saved, current
