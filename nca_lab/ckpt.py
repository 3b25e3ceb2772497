"""Orbax checkpoints of a training run: everything needed to continue it exactly.

A checkpoint holds the model's variables, the optimizer state, the sample pool, the training
PRNG key (as key data: typed keys do not serialise), the step, and JSON metadata: ``step`` and
``has_pool`` (written here), and what :meth:`nca_lab.train.trainer.Trainer.fit` adds: ``config``
(resolved; :func:`nca_lab.train.run.load_model` rebuilds the model from it),
``alive_threshold``, ``fixed_channels``, ``wandb_run_id``, ``grid``, ``horizon`` and
``pool_size`` (what ``grow`` defaults to; older runs lack them) and ``loss``. Orbax writes each
step to a temporary directory and renames it when complete, so a process killed mid-save leaves
the previous checkpoint loadable.
"""

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from nca_lab.errors import ConfigError, one_line, out_of_memory, require
from nca_lab.runtime import quiet_checkpoint_io_callbacks
from nca_lab.train import multihost

CHECKPOINTS = "checkpoints"
#: The items of a checkpoint, each a dir in its step dir: arrays, then the JSON metadata.
ARRAY_ITEMS = ("model", "optimizer", "rng", "pool")
META_ITEM = "meta"
#: Where Orbax moves the checkpoints it drops (``keep_last``), one rename each, before nca_lab
#: deletes them: deleted in place, a kill mid-way left a step dir of a few files that read as
#: a damaged checkpoint, blocking a resume that fell back to it.
TRASH = ".dropped"
#: What names the temporary dir of a save Orbax has not finished: ``<step>.orbax-checkpoint-tmp``.
UNFINISHED_SAVE = ".orbax-checkpoint-tmp"


class _WithoutOcdbtNotes(logging.Filter):
    """Drops Orbax's warning "Skipping merge of OCDBT checkpoints", which it logs for each item
    of every checkpoint written without OCDBT (ours, see :class:`RunCheckpointer`): four
    lines per save in a notebook, about nothing wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


logging.getLogger("absl").addFilter(_WithoutOcdbtNotes())


def _pure(module_or_state) -> dict:
    return nnx.to_pure_dict(nnx.state(module_or_state))


def _shapes(tree) -> dict:
    return {
        jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def check_checkpoint_path(directory: Path) -> None:
    """Refuse a path with a backslash: Orbax's TensorStore reads it as ``/``, so a checkpoint's
    arrays went to a stray tree beside it, and the checkpoint held no weights."""
    require("\\" not in str(directory), f"{directory}: Orbax cannot keep checkpoints under a path with a backslash")


class RunCheckpointer:
    """Saves and restores the checkpoints of one run under ``<run_dir>/checkpoints``.

    Keeps the last ``keep_last`` checkpoints and, with ``keep_best``, the one of lowest loss.
    """

    def __init__(self, directory: str | Path, *, keep_last: int = 3, keep_best: bool = True, create: bool = True):
        """Open (and with ``create``, make) the checkpoint directory; paths are made absolute. A
        writer (``create``) deletes what an earlier one left in :data:`TRASH` and the temporary
        dir of a save a kill cut short. From then on, a
        damaged checkpoint or a full disk is one error without pages of Orbax's reads and writes
        failing again behind it (:func:`~nca_lab.runtime.quiet_checkpoint_io_callbacks`), in a
        notebook as in the commands."""
        require(keep_last > 0, f"trainer.keep_last must be positive, got {keep_last}")
        quiet_checkpoint_io_callbacks()  # before the first read: Orbax abandons them in its own thread
        self.directory = Path(directory).expanduser().resolve()
        check_checkpoint_path(self.directory)
        loss = lambda metrics: metrics["loss"]  # noqa: E731
        policies = [checkpoint_managers.LatestN(keep_last)]
        if keep_best:
            policies.append(checkpoint_managers.BestN(get_metric_fn=loss, reverse=True, n=1))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=loss,  # writes each step's loss to disk, so a reopened manager (a resumed run) keeps the best
            best_mode="min",
            enable_async_checkpointing=False,
            create=create,
            todelete_subdir=TRASH,
        )
        # Without OCDBT: Orbax finds OCDBT's per-process files with a glob of the step dir, so a
        # run dir named with ``[`` (a sweep job's ``trainer.rollout_steps=[16,24]``) saved
        # checkpoints it could not read. Checkpoints written with OCDBT still load.
        handlers = {item: ocp.StandardCheckpointHandler(use_ocdbt=False) for item in ARRAY_ITEMS}
        handlers[META_ITEM] = ocp.JsonCheckpointHandler()
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        except Exception as err:  # it reads every checkpoint's saved loss: a damaged one stops it
            steps = step_dirs(self.directory)
            damaged = _unreadable_loss(self.directory, steps) if _read_error(err) else None
            if damaged is None:
                raise
            raise _damaged(self.directory, damaged, steps, err) from err
        self.selected_step: int | None = None
        if create:
            self._empty_trash()
            self._remove_unfinished_saves()

    @classmethod
    def find(cls, path: str | Path) -> "RunCheckpointer":
        """The checkpoints of ``path``: a run dir, its ``checkpoints`` dir, or one step dir in it.

        Given a step dir, that step (not the newest) is the one :meth:`metadata`,
        :meth:`restore_model` and :meth:`restore` read by default. Raises
        :class:`ConfigError` if there is no checkpoint there.
        """
        path = Path(path).expanduser().resolve()
        require(path.exists(), f"{path}: no such checkpoint or run dir")
        for candidate in (path / CHECKPOINTS, path):
            if step_dirs(candidate) if candidate.name == CHECKPOINTS else _holds_checkpoints(candidate):
                found = cls(candidate, create=False)
                if found.latest_step() is not None:
                    return found
        if path.name.isdigit() and (path.parent.name == CHECKPOINTS or _holds_checkpoints(path.parent)):
            found = cls(path.parent, create=False)
            if int(path.name) in found.manager.all_steps():
                found.selected_step = int(path.name)
                return found
        raise ConfigError(f"{path}: no checkpoint here (expected a run dir, its checkpoints/ dir or a step dir)")

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        return self.manager.latest_step()

    def default_step(self) -> int | None:
        """The step read when none is given: the step dir :meth:`find` was given, else the newest."""
        return self.latest_step() if self.selected_step is None else self.selected_step

    def _step(self, step: int | None) -> int:
        """``step``, or :meth:`default_step`; :class:`ConfigError` if there is no such checkpoint."""
        step = self.default_step() if step is None else step
        steps = sorted(self.manager.all_steps())
        if not steps and (self.directory / CHECKPOINTS).is_dir():  # RunCheckpointer(<run dir>), not find
            raise ConfigError(
                f"{self.directory}: a run dir; its checkpoints: RunCheckpointer.find({str(self.directory)!r})"
            )
        require(step in steps, f"{self.directory}: no checkpoint of step {step} (there are {steps or 'none'})")
        return step

    @contextmanager
    def _reading(self, step: int) -> Iterator[None]:
        """Run the block that reads checkpoint ``step``; a read error in it is :func:`_damaged`."""
        try:
            yield
        except Exception as err:
            if not _read_error(err):
                raise
            raise _damaged(self.directory, step, self.manager.all_steps(), err) from err

    def save(
        self,
        step: int,
        *,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        pool: Any,
        key: jax.Array,
        metadata: dict,
    ) -> Path:
        """Write checkpoint ``step`` (synchronously) and return its directory."""
        items = {
            "model": ocp.args.StandardSave(_pure(model)),
            "optimizer": ocp.args.StandardSave(_pure(optimizer)),
            "rng": ocp.args.StandardSave({"key_data": jax.random.key_data(key)}),
            "meta": ocp.args.JsonSave({**metadata, "step": int(step), "has_pool": pool is not None}),
        }
        if pool is not None:
            items["pool"] = ocp.args.StandardSave(pool._asdict())
        try:
            self.manager.save(
                step, args=ocp.args.Composite(**items), metrics={"loss": float(metadata["loss"])}, force=True
            )
            self.manager.wait_until_finished()
        except (OSError, ValueError) as err:  # TensorStore's write errors (a full disk) come as ValueError
            raise OSError(f"cannot write checkpoint {self.directory / str(step)}: {one_line(err)}") from err
        self._empty_trash()
        return self.directory / str(step)

    def _empty_trash(self) -> None:
        """Delete the checkpoints Orbax dropped (on process 0, which drops them); a kill while
        deleting leaves only part of :data:`TRASH`, which no reader takes for a checkpoint."""
        if multihost.is_main_process():
            shutil.rmtree(self.directory / TRASH, ignore_errors=True)

    def _remove_unfinished_saves(self) -> None:
        """Delete the temporary dirs of saves a kill cut short (``17.orbax-checkpoint-tmp``): a
        step that is not saved again kept its dir for good. A writer's, at its start, when no save
        of its run is under way (Orbax's own option does it in a thread a short command outlives)."""
        if multihost.is_main_process():
            for unfinished in self.directory.glob(f"*{UNFINISHED_SAVE}*"):
                shutil.rmtree(unfinished, ignore_errors=True)

    def metadata(self, step: int | None = None) -> dict:
        """The JSON metadata of checkpoint ``step`` (default: :meth:`default_step`)."""
        step = self._step(step)
        with self._reading(step):
            return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore_model(self, model: nnx.Module, step: int | None = None, *, model_from: str = "this model") -> None:
        """Load the saved variables into ``model`` in place (a warm start, or inference); a
        mismatch is one line that calls ``model`` by ``model_from`` (``this config``)."""
        step = self._step(step)
        with self._reading(step):
            restored = self.manager.restore(step, args=ocp.args.Composite(**self._on_one_device(step, "model")))
        _assign(model, restored["model"], f"{self.directory / str(step)}", mine=model_from)

    def check_fits(self, model: nnx.Module, step: int | None = None) -> None:
        """Raise :class:`ConfigError` unless checkpoint ``step``'s model fits ``model``, reading
        only its metadata (a warm start is checked before the run dir is written)."""
        step = self._step(step)
        saved = self._saved(step, "model")["model"]
        saved = getattr(saved, "tree", saved)  # Orbax's tree metadata holds the nested dict
        _fitted(_pure(model), saved, f"{self.directory / str(step)}")

    def _saved(self, step: int, *items: str) -> dict:
        """The arrays of each of ``items`` in checkpoint ``step``, as shapes and dtypes on this
        process's first device (the metadata of every item, read once)."""
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def on_device(leaf):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)

        with self._reading(step):  # an item missing is a damaged checkpoint too
            saved = self.manager.item_metadata(step)
            return {item: jax.tree.map(on_device, saved[item]) for item in items}

    def _on_one_device(self, step: int, *items: str) -> dict:
        """Restore arguments that put every array of ``items`` on this process's first device.

        Orbax otherwise restores the shardings it saved, which fails on another device count
        (a data-parallel run grown on a laptop); the trainer places the arrays afterwards.
        """
        return {item: ocp.args.StandardRestore(arrays) for item, arrays in self._saved(step, *items).items()}

    def restore(self, model: nnx.Module, optimizer: nnx.Optimizer, pool: Any, step: int | None = None):
        """Restore a full training state in place; returns ``(step, pool, key, metadata)``.

        ``pool`` is a freshly initialised pool, or its ``jax.eval_shape`` (or ``None``): it gives
        the expected shapes.
        """
        step = self._step(step)
        where = f"{self.directory / str(step)}"
        meta = self.metadata(step)
        require(
            meta["has_pool"] == (pool is not None),
            f"{where} does not fit this config (one of them trains with a sample pool, the other without)",
        )
        arrays = ("model", "optimizer", "rng") + (("pool",) if pool is not None else ())
        with self._reading(step):
            restored = self.manager.restore(step, args=ocp.args.Composite(**self._on_one_device(step, *arrays)))
        _assign(model, restored["model"], where)
        _assign(optimizer, restored["optimizer"], where, "optimizer state, from another trainer.optimizer")
        if pool is not None:
            saved = dict(restored["pool"])
            require(_shapes(saved) == _shapes(pool._asdict()), f"{where}: pool shapes differ from this config's")
            pool = type(pool)(**saved)
        key = jax.random.wrap_key_data(np.asarray(restored["rng"]["key_data"]))
        return step, pool, key, meta


def _read_error(err: BaseException) -> bool:
    """Whether ``err`` is Orbax's or TensorStore's error in reading a checkpoint's files: a
    ``ValueError``, ``KeyError`` or ``OSError`` at its root (Orbax wraps TensorStore's in a bare
    ``Exception``), not a file one may not read, an allocation that failed or a bug."""
    root = _root_cause(err)
    readable = not isinstance(root, PermissionError) and not isinstance(err, ConfigError)
    allocated = out_of_memory(err) or out_of_memory(root)  # Orbax's wrapper does not repeat its cause
    return isinstance(root, ValueError | KeyError | OSError) and readable and not allocated


def _damaged(directory: Path, step: int, steps, err: BaseException) -> ConfigError:
    """Checkpoint ``step`` of those (``steps``) in ``directory``, damaged (a file cut short, an
    item deleted: a full disk, a copy that broke off), as one line naming it instead of Orbax's
    traceback; every re-run would fail the same way, so the line ends with the way out: the
    newest other checkpoint (the one before it, if it is the newest)."""
    root = _root_cause(err)
    reason = root.args[0] if isinstance(root, KeyError) and root.args else str(root)
    reason = reason.splitlines()[0].split(" [tensorstore_spec=")[0]  # not TensorStore's JSON spec
    others = [s for s in steps if s != step]
    way_out = (
        f"move it out of {directory} to use the newest other one (step {max(others)})"
        if others
        else f"it is the only one in {directory}: without it there is none to read"
    )
    return ConfigError(f"{directory / str(step)}: a damaged checkpoint? It cannot be read ({reason}); {way_out}")


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def step_dirs(directory: Path) -> list[int]:
    """The steps of the dirs in ``directory`` named by one, ascending (none if it is no dir):
    its checkpoints, complete or not."""
    return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit()) if directory.is_dir() else []


def _holds_checkpoints(directory: Path) -> bool:
    """Whether a dir of ``directory`` named by a step holds a checkpoint, whole or damaged (an
    item of nca_lab's, or a file of Orbax's own): a run's ``renders/``
    (``renders/<step>/final.png``) is not a checkpoints dir. One named ``checkpoints`` is taken
    for one without this test."""
    names = (*ARRAY_ITEMS, META_ITEM, "_CHECKPOINT_METADATA", "commit_success.txt", "metrics")
    return any((directory / str(step) / name).exists() for step in step_dirs(directory) for name in names)


def _unreadable_loss(directory: Path, steps: list[int]) -> int | None:
    """The first of ``steps`` whose checkpoint's saved loss is not JSON (Orbax reads each one
    when it opens ``directory``), or ``None``."""
    for step in steps:
        try:
            json.loads((directory / str(step) / "metrics" / "metrics").read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return step
    return None


def _names(tree) -> set[str]:
    """The dotted names of ``tree``'s leaves (``update.hidden.0.kernel``)."""
    return {
        ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(tree)
    }


def _align(reference, restored):
    """``restored`` with the keys of ``reference`` (Orbax returns list indices as strings), or
    ``None`` if their structures differ anywhere."""
    if not isinstance(reference, dict):
        return restored
    if not isinstance(restored, dict):
        return None
    aligned = {}
    for key, value in reference.items():
        match = restored.get(key, restored.get(str(key)))
        aligned[key] = None if match is None else _align(value, match)
        if aligned[key] is None:
            return None
    return aligned if len(aligned) == len(restored) else None


def _assign(
    target: nnx.Module, restored: dict, where: str, what: str = "model structure", mine: str = "this config"
) -> None:
    """Copy a restored pure dict into ``target`` (``what`` it is, made by ``mine``), refusing any
    mismatch with one clear line."""
    state = nnx.state(target)
    current = nnx.to_pure_dict(state)
    restored = _fitted(current, restored, where, what, mine)
    restored = jax.tree.map(lambda ref, new: jax.numpy.asarray(new, dtype=ref.dtype), current, restored)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(target, state)


def _fitted(current: dict, restored, where: str, what: str = "model structure", mine: str = "this config") -> dict:
    """``restored`` keyed as ``current`` (made by ``mine``); :class:`ConfigError` naming the
    first difference if their structures (of ``what``) or shapes differ."""
    aligned = _align(current, restored)
    if aligned is None:
        ours, theirs = _names(current), _names(restored)
        only = [
            f"{min(names)} only in {side}"
            for names, side in ((ours - theirs, mine), (theirs - ours, "the checkpoint"))
            if names
        ]
        raise ConfigError(f"{where} does not fit {mine} (different {what}: {'; '.join(only)})")
    restored = aligned
    if _shapes(current) != _shapes(restored):
        ours, theirs = _shapes(current), _shapes(restored)
        first = sorted(set(ours.items()) ^ set(theirs.items()))[0][0]
        raise ConfigError(
            f"{where} does not fit {mine} (incompatible shapes, first at {first}: "
            f"checkpoint {theirs.get(first)}, {mine} {ours.get(first)})"
        )
    return restored
