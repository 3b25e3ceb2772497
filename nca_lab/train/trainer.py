"""The training loop: steps, logging, evaluation, checkpoints and the pictures of a run.

A library class (the Flax ``train_and_evaluate`` pattern): it takes built objects, not a
config (one to save with the checkpoints, checked to build the model), so a notebook can drive
it as well as the Hydra app. Nothing is lost when a job
dies: metrics are flushed line by line, checkpoints are atomic, SIGTERM/SIGINT save one
last checkpoint, and a non-finite loss stops the run before anything poisoned is saved,
evaluated or rendered.
"""

import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import jax
import optax
from flax import nnx
from tqdm.auto import tqdm

from nca_lab.atomic import atomic_path, write_text_atomically
from nca_lab.ckpt import CHECKPOINTS, RunCheckpointer
from nca_lab.errors import ConfigError, is_integer, is_number, require
from nca_lab.log.base import Logger, NullLogger
from nca_lab.log.metrics_file import MetricsFile
from nca_lab.nca import NCA, typed_keys
from nca_lab.render import RENDERS, rendering_files, save_gif, save_png
from nca_lab.run_files import SUMMARY
from nca_lab.tasks.base import Task
from nca_lab.train import multihost, parallel
from nca_lab.train.model_config import check_config_builds
from nca_lab.train.pool import check_damage, init_pool
from nca_lab.train.step import make_train_step


class TrainingDiverged(RuntimeError):
    """The loss, the gradient or the parameters stopped being finite; the last good checkpoint is kept."""


class OutOfMemory(RuntimeError):
    """The training did not fit in the device's memory; the checkpoints written so far are kept."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint of the last completed step was saved."""


class Trainer:
    """Trains an :class:`~nca_lab.nca.NCA` on a :class:`~nca_lab.tasks.base.Task`."""

    def __init__(
        self,
        *,
        steps: int,
        batch_size: int,
        learning_rate: optax.ScalarOrSchedule,
        optimizer: Callable[..., optax.GradientTransformation],
        rollout_steps: tuple[int, int] = (64, 95),
        remat: bool = False,
        unroll: int = 1,
        log_every: int = 20,
        eval_every: int = 0,
        render_every: int = 1000,
        checkpoint_every: int = 500,
        keep_last: int = 3,
        keep_best: bool = True,
        resume: str | None = None,
        init_from: str | None = None,
        progress: bool = True,
        data_parallel: bool = False,
    ):
        """Set the schedule of a run.

        Args:
            steps: optimizer steps.
            batch_size: samples per step.
            learning_rate: a float or an optax schedule of the step.
            optimizer: ``optimizer(learning_rate) -> GradientTransformation``.
            rollout_steps: ``[low, high]``, the inclusive range of rollout lengths; one number
                is a fixed length.
            remat: recompute CA steps in the backward pass (less memory, more compute); implied
                by the residual update's manual step VJP and by ``kernel=pallas``, so it matters
                for other updates only.
            unroll: CA steps per scan iteration.
            log_every: steps between ``metrics.jsonl`` lines (and logger calls), besides the first and last step.
            eval_every: steps between evaluations (0: only at the end).
            render_every: steps between renderings of ``rollout.gif``/``final.png``, each kept in
                ``renders/<step>/`` (0: only at the end).
            checkpoint_every: steps between checkpoints (0: only at the end).
            keep_last: checkpoints kept (the newest), besides the best by loss.
            keep_best: also keep the checkpoint of lowest training loss: the loss of the batch
                of its step, which with a sample pool (reseeded and damaged samples) is noisy.
            resume: continue the run saved at this path (run dir or checkpoint) when the run
                dir has no checkpoints of its own (those are resumed automatically).
            init_from: start from the weights saved at this path (optimizer and step fresh).
            progress: show a progress bar.
            data_parallel: split the batch and the pool across all devices and replicate the
                parameters (:mod:`nca_lab.train.parallel`); the batch and pool sizes must be
                multiples of the device count. The losses equal a single device's up to the
                order of the gradient sum.
        """
        fixed = isinstance(rollout_steps, str) or not isinstance(rollout_steps, Iterable)
        given = rollout_steps if fixed else list(rollout_steps)
        rollout_steps = (rollout_steps, rollout_steps) if fixed else tuple(rollout_steps)
        counts = {"steps": (steps, 1), "batch_size": (batch_size, 1), "unroll": (unroll, 1)}
        counts |= {"log_every": (log_every, 1), "eval_every": (eval_every, 0), "render_every": (render_every, 0)}
        counts |= {"checkpoint_every": (checkpoint_every, 0), "keep_last": (keep_last, 1)}
        for name, (value, least) in counts.items():
            message = f"trainer.{name} must be an integer >= {least}, got {value!r}"
            require(is_integer(value) and value >= least, message)
        switches = {"remat": remat, "keep_best": keep_best, "progress": progress, "data_parallel": data_parallel}
        for name, value in switches.items():  # bool("no") is True: data_parallel=no switched it on
            require(isinstance(value, bool), f"trainer.{name} must be true or false, got {value!r}")
        require(
            callable(learning_rate) or (is_number(learning_rate) and learning_rate > 0),
            f"trainer.learning_rate must be positive (or a schedule), got {learning_rate!r}",
        )
        require(
            len(rollout_steps) == 2
            and all(map(is_integer, rollout_steps))
            and 0 < rollout_steps[0] <= rollout_steps[1],
            "trainer.rollout_steps must be [low, high] with 0 < low <= high, or one length "
            f"(trainer.rollout_steps=64, no brackets), got {given!r}",
        )
        require(not (resume and init_from), "set at most one of trainer.resume and trainer.init_from")
        require(
            callable(optimizer),
            f"trainer.optimizer must make the optimizer from the learning rate (optax.adam, not optax.adam(1e-3)), "
            f"got {type(optimizer).__name__}",
        )
        optimizer(learning_rate)  # its settings are checked when it is built: now, before any compile
        self.steps = int(steps)  # a NumPy integer is no JSON for the records
        self.batch_size = int(batch_size)
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.rollout_steps = tuple(map(int, rollout_steps))
        self.remat = remat
        self.unroll = int(unroll)
        self.log_every = int(log_every)
        self.eval_every = int(eval_every)
        self.render_every = int(render_every)
        self.checkpoint_every = int(checkpoint_every)
        self.keep_last = int(keep_last)
        self.keep_best = keep_best
        self.resume = resume
        self.init_from = init_from
        self.progress = progress
        self.data_parallel = data_parallel

    def check(self, task: Task) -> None:
        """Raise :class:`~nca_lab.errors.ConfigError` unless ``task`` can be trained on this schedule.

        :meth:`fit` calls it; the app calls it before building the model, whose initialisation compiles.
        A task's own ``sample`` and ``loss`` are checked for the shapes the trainer needs (traced
        abstractly, nothing computed): a per-batch loss failed deep in the pool's sort.
        """
        _check_task_shapes(task)
        if task.pool_size:
            require(
                task.pool_size >= self.batch_size,
                f"task.pool_size ({task.pool_size}) must be at least trainer.batch_size ({self.batch_size})",
            )
        else:  # damage is of pool samples, grown before: a fresh sample has nothing to regenerate
            require(task.damage_n == 0, f"task.damage_n ({task.damage_n}) needs a sample pool: task.pool_size > 0")
        check_damage(task.damage_n, self.batch_size)
        require(
            self.data_parallel or jax.process_count() == 1,
            f"{jax.process_count()} processes train one run only data parallel: set trainer.data_parallel=true",
        )
        if self.data_parallel:
            sizes = {"trainer.batch_size": self.batch_size}
            if task.pool_size:
                sizes["task.pool_size"] = task.pool_size
            parallel.check_divisible(parallel.data_mesh(), **sizes)

    @property
    def horizon(self) -> int:
        """The longest training rollout, the time scale of evaluation and rendering."""
        return self.rollout_steps[1]

    def lr_at(self, step: int) -> float:
        """Learning rate used by optimizer step ``step`` (1-based)."""
        lr = self.learning_rate
        return float(lr(step - 1)) if callable(lr) else float(lr)

    def resume_source(self, run_dir: Path) -> RunCheckpointer | None:
        """Where training continues from: the run dir's own checkpoints, else ``resume``, else nowhere.

        The run dir's own checkpoints come first: they are newer than anything ``resume``
        points at, so a requeued job that was started with ``resume`` continues where it
        stopped instead of starting over. Raises :class:`~nca_lab.errors.ConfigError` if
        ``resume`` (or ``init_from``) holds no checkpoint, even when the run dir's own win,
        or if the checkpoint is past ``steps``.
        """
        other = self.resume or self.init_from  # at most one is set
        other_run = RunCheckpointer.find(other) if other else None  # a bad path fails here, before any training step
        own = Path(run_dir) / CHECKPOINTS
        own_run = RunCheckpointer(own, create=False) if own.is_dir() else None
        if own_run is not None and own_run.latest_step() is not None:
            found = own_run
        else:
            found = other_run if self.resume else None
        if found is not None:
            step = found.default_step()
            require(
                step <= self.steps,
                f"{found.directory / str(step)} is at step {step}, past trainer.steps={self.steps}: "
                f"set trainer.steps to at least {step} to continue it",
            )
        return found

    def fit(
        self,
        model: NCA,
        task: Task,
        *,
        key: jax.Array,
        run_dir: Path,
        logger: Logger | Callable[[], Logger] | None = None,
        config: dict | None = None,
    ) -> dict:
        """Train ``model`` in place, resuming if :meth:`resume_source` finds a checkpoint.

        Writes ``metrics.jsonl``, ``checkpoints/``, ``renders/``, ``rollout.gif``, ``final.png`` and, last,
        ``summary.json`` (its presence marks a completed run). ``config`` is stored in every
        checkpoint: ``load_model`` rebuilds the model from it, so it must be ``model``'s (checked).
        A resume compares the task's grid, not its targets: one run dir per task.
        Returns the final metrics. With several processes, every one calls this and saves its
        share of each checkpoint; only process 0 writes the other files. ``logger`` may be a
        function that opens one: it is called once the checkpoint to resume from is read, so a
        resume that stops there (a damaged checkpoint) has opened no logger run; it is called on
        every process (open a run on process 0 only).
        """
        _require_json(config)
        _require_one_key(key)
        if config is not None:
            check_config_builds(model, config)
        require(
            model.fixed_channels == task.fixed_channels,
            f"the task keeps its input in the last {task.fixed_channels} channels, unchanged, and the model holds "
            f"{model.fixed_channels} fixed: build it with NCA(..., fixed_channels=task.fixed_channels)",
        )
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        main = multihost.is_main_process()
        self.check(task)
        source = self.resume_source(run_dir)
        multihost.sync("resume_source")  # every process decides from the same files before any writes them
        optimizer = nnx.Optimizer(model, self.optimizer(self.learning_rate), wrt=nnx.Param)
        pool_key, train_key, eval_key = jax.random.split(key, 3)
        grid = list(jax.eval_shape(lambda k: task.sample(k, 1), pool_key).state.shape[1:3])
        start, pool, train_key, last = self._restore_or_start(source, model, optimizer, task, grid, pool_key, train_key)
        logger = (logger() if callable(logger) else logger) or NullLogger()
        checkpointer = RunCheckpointer(run_dir / CHECKPOINTS, keep_last=self.keep_last, keep_best=self.keep_best)
        mesh = parallel.data_mesh() if self.data_parallel else None
        if mesh is not None:
            if pool is not None:
                pool = parallel.place(pool, mesh)
            parallel.replicate(mesh, model, optimizer)
            train_key = parallel.place_replicated(train_key, mesh)  # saved in checkpoints, by every process
        train_step = make_train_step(
            task,
            batch_size=self.batch_size,
            rollout_steps=self.rollout_steps,
            remat=self.remat,
            unroll=self.unroll,
            mesh=mesh,
        )
        metadata = {
            "config": config or {},
            "alive_threshold": model.alive_threshold,
            "fixed_channels": model.fixed_channels,
            "wandb_run_id": logger.run_id,  # any logger's run id (the name of the first, kept for saved runs)
            "grid": grid,  # for grow
            "horizon": self.horizon,
            "pool_size": task.pool_size,  # for grow: a pool trains the pattern to persist
        }
        metrics_file = MetricsFile(run_dir, resume_step=start, redo_evaluation=start == self.steps) if main else None
        if main:  # the final step's evaluation and rendering, if saved, are made again (redo_evaluation)
            renders = kept_renders(run_dir, until=start - 1 if start == self.steps else start)
            if start:
                logger.resume(metrics_file.earlier, renders)
        bar = tqdm(
            total=self.steps, initial=start, disable=not (self.progress and main), unit="step", dynamic_ncols=True
        )
        metrics = _StepMetrics(last, self.lr_at, metrics_file, logger, bar, checkpointer)

        def save(step: int) -> Path:
            if metrics_file is not None:  # its lines on disk first: a crash cannot keep a checkpoint past them
                metrics_file.sync()
            metadata_now = {**metadata, "loss": metrics.last["loss"]}
            return checkpointer.save(
                step, model=model, optimizer=optimizer, pool=pool, key=train_key, metadata=metadata_now
            )

        if start == self.steps and checkpointer.latest_step() is None:
            # ``resume``'s run, already at trainer.steps (evaluated again in a new run dir): no step
            # saves, and the run dir, complete, held no weights to grow, export or resume from
            save(start)

        try:
            with _stop_signals() as stop:
                previous = None
                for step in range(start + 1, self.steps + 1):
                    pool, out = train_step(model, optimizer, pool, jax.random.fold_in(train_key, step))
                    # One step in flight: JAX would queue every step up to the next log line,
                    # and a stop (which saves after the queued steps) waited for all of them.
                    jax.block_until_ready(previous)
                    metrics.pending.append((step, out))
                    previous = out
                    bar.update(1)
                    final = step == self.steps  # evaluated and rendered after the loop
                    evaluating = _due(step, self.eval_every) and not final
                    rendering = _due(step, self.render_every) and not final
                    if _due(step, self.log_every) or step in (1, self.steps):
                        metrics.fetch(step)
                    elif evaluating or rendering:  # a diverged model is neither: it stops here
                        metrics.fetch(step, log=False)
                    if evaluating:
                        self._evaluate(model, task, eval_key, step, metrics_file, logger)
                    if rendering:
                        self._render(model, task, eval_key, run_dir, step, logger)
                    # Checkpoint after this step's evaluation, so a resumed run logs exactly what
                    # an uninterrupted one does; a stop between log steps writes no extra line.
                    stopping = multihost.any_process(stop.is_set())  # every process stops after the same step
                    if final or _due(step, self.checkpoint_every) or stopping:
                        metrics.fetch(step, log=False)
                        where = save(step)
                    if stopping:
                        raise Preempted(f"by a signal after step {step}; checkpoint saved to {where}")
                if multihost.any_process(stop.is_set()):  # one came while the final checkpoint was written
                    last_saved = checkpointer.directory / str(self.steps)
                    raise Preempted(f"by a signal after step {self.steps}; checkpoint saved to {last_saved}")
            bar.close()
            evaluation = self._evaluate(model, task, eval_key, self.steps, metrics_file, logger)
            self._render(model, task, eval_key, run_dir, self.steps, logger)
        finally:
            bar.close()
            if metrics_file is not None:
                metrics_file.close()
        summary = {"step": self.steps, "loss": metrics.last["loss"], **evaluation}
        if main:
            write_text_atomically(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
        return summary

    def _restore_or_start(self, source, model, optimizer, task, grid, pool_key, train_key) -> tuple:
        """``(step, pool, training key, last metrics)`` to train on from: restored from
        ``source`` (into ``model`` and ``optimizer``), or a fresh run's (from ``init_from``'s weights)."""

        def fresh_pool():
            return init_pool(task, pool_key, task.pool_size) if task.pool_size else None

        if source is None:
            if self.init_from:
                RunCheckpointer.find(self.init_from).restore_model(model, model_from="this config")
            return 0, fresh_pool(), train_key, {}
        meta = source.metadata()
        trained_on = meta.get("grid", grid)  # another task's grid (a notebook's) carried on silently
        require(
            trained_on == grid,
            f"{source.directory}: trained on a {trained_on[0]}x{trained_on[1]} grid, this task's is "
            f"{grid[0]}x{grid[1]}: resume it with its own task, or train a new run dir from its weights",
        )
        # How the model steps, besides its weights (a notebook's model may differ from the task's):
        # runs saved before fixed_channels held none; a checkpoint saved outside fit may say neither.
        trained = {"alive_threshold": meta.get("alive_threshold", model.alive_threshold)}
        trained["fixed_channels"] = meta.get("fixed_channels", 0)
        changed = [f"{k}: {v!r} -> {getattr(model, k)!r}" for k, v in trained.items() if v != getattr(model, k)]
        require(
            not changed,
            f"{source.directory}: trained by a model that steps otherwise ({'; '.join(changed)}): resume it with "
            "its own task and model, or train a new run dir from its weights",
        )
        # the saved pool replaces a fresh one, of which only the shapes are needed
        start, pool, train_key, saved = source.restore(model, optimizer, jax.eval_shape(fresh_pool))
        return start, pool, train_key, {"loss": saved["loss"]}  # what summary.json reports if no step is left

    def _evaluate(self, model, task, key, step, metrics_file, logger) -> dict[str, float]:
        metrics = {f"eval/{k}": float(v) for k, v in task.evaluate(model, key, self.horizon).items()}
        if metrics_file is not None:
            metrics_file.write(step, metrics)
        logger.log(metrics, step)
        return metrics

    def _render(self, model, task, key, run_dir, step, logger) -> None:
        """``renders/<step>/`` keeps each rendering (a run's progress, and what a resumed W&B
        run logs again); ``rollout.gif`` and ``final.png`` beside it are the latest."""
        rendering = task.render(model, key, self.horizon)  # on every process: the model's arrays may span them
        if not multihost.is_main_process():
            return
        paths = rendering_files(run_dir / RENDERS / str(step))
        paths["rollout"].parent.mkdir(parents=True, exist_ok=True)
        save_gif(rendering.frames, paths["rollout"])
        save_png(rendering.final, paths["final"])
        _show(run_dir, paths)
        logger.log_media(paths, step)


def _require_json(config) -> None:
    """``config`` is saved with each checkpoint: a DictConfig failed at the first save, after its steps."""
    try:
        json.dumps(config)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"config= must be plain JSON data, saved with each checkpoint (from a DictConfig: "
            f"OmegaConf.to_container(cfg, resolve=True)); {err}"
        ) from err


def _require_one_key(key) -> None:
    """``fit(key=0)`` was JAX's "invalid PRNG key data", a batch of keys its "split accepts a single key"."""
    is_array = hasattr(key, "dtype")
    try:
        one = is_array and typed_keys(key).shape == ()
    except TypeError:
        one = False
    if not one:
        got = f"shape {key.shape}, dtype {key.dtype}" if is_array else type(key).__name__
        raise TypeError(f"key must be one PRNG key, jax.random.key(seed); got {got}")


def _check_task_shapes(task: Task, n: int = 2) -> None:
    """Refuse a task whose ``sample(key, n)`` is not ``n`` states ``(H, W, C)`` and ``n`` targets,
    or whose ``loss`` of them is not one loss per sample, ``(n,)``."""
    name = type(task).__name__
    batch = jax.eval_shape(lambda key: task.sample(key, n), jax.random.key(0))
    state, targets = batch.state.shape, [leaf.shape for leaf in jax.tree.leaves(batch.target)]
    require(
        len(state) == 4 and state[0] == n and state[-1] == task.num_channels,
        f"{name}.sample(key, {n}) gives states of shape {state}; the trainer needs ({n}, H, W, {task.num_channels})",
    )
    require(  # any pytree of arrays, each with a leading axis of one target per sample
        all(shape[:1] == (n,) for shape in targets),
        f"{name}.sample(key, {n}) gives targets of shape {', '.join(map(str, targets))}; "
        f"the trainer needs a leading axis of {n}, one target per sample",
    )
    loss = jax.eval_shape(task.loss, batch.state, batch.target).shape
    require(loss == (n,), f"{name}.loss gives shape {loss} for {n} samples; it must be one loss per sample, ({n},)")


def _due(step: int, every: int) -> bool:
    """Whether a schedule of one event every ``every`` steps (0: none) has one at ``step``."""
    return every > 0 and step % every == 0


class _StepMetrics:
    """The train steps' metrics, kept on the device until a log line or a checkpoint needs them:
    then fetched (one sync for all), checked for divergence, and at log lines written to
    ``metrics.jsonl`` and the logger with the speed since the last line."""

    def __init__(self, last: dict, lr_at, metrics_file, logger: Logger, bar, checkpointer: RunCheckpointer):
        self.pending: list[tuple[int, dict]] = []
        self.last = last  # the latest fetched record: its loss goes into checkpoints and summary.json
        self._lr_at = lr_at
        self._file = metrics_file
        self._logger = logger
        self._bar = bar
        self._checkpointer = checkpointer
        self._tick, self._tick_step = 0.0, None  # the speed is timed from the first line on

    def fetch(self, step: int, *, log: bool = True) -> None:
        """Fetch the pending metrics; stop on the first non-finite one. With ``log``, the last
        step's metrics also go to ``metrics.jsonl`` and the logger."""
        if not self.pending:
            return
        now = time.perf_counter()
        for pending_step, out in self.pending:
            values = {k: float(v) for k, v in out.items()}
            if not all(map(math.isfinite, values.values())):
                raise TrainingDiverged(
                    f"training diverged at step {pending_step} (loss {values['loss']}, grad_norm "
                    f"{values['grad_norm']}, param_norm {values['param_norm']}); "
                    f"last good checkpoint: {self._checkpointer.latest_step() or 'none'}"
                )
        self.pending.clear()
        record = self.last = {**values, "lr": self._lr_at(step)}
        if not log:
            return
        if self._tick_step is not None:  # not on the first line: its steps include the compile
            record["steps_per_s"] = (step - self._tick_step) / (now - self._tick)
        self._tick, self._tick_step = now, step
        if self._file is not None:
            self._file.write(step, record)
        self._logger.log(record, step)
        self._bar.set_postfix(loss=f"{record['loss']:.4g}")


def kept_renders(run_dir: Path, until: int) -> dict[int, dict[str, Path]]:
    """The renderings :meth:`Trainer._render` kept up to step ``until``, by step:
    ``{"rollout": gif, "final": png}``. Later ones, of an attempt that died after the
    checkpoint this run resumes (or before its first), are deleted: they are not this run's;
    ``rollout.gif`` and ``final.png`` beside them, copies of the latest, are then the latest
    kept one's again (none if none is kept)."""
    renders, dropped = {}, False
    for kept in (run_dir / RENDERS).glob("*"):
        media = rendering_files(kept)
        if kept.name.isdigit() and int(kept.name) <= until and all(p.is_file() for p in media.values()):
            renders[int(kept.name)] = media
        else:
            shutil.rmtree(kept, ignore_errors=True)
            dropped = True
    renders = dict(sorted(renders.items()))
    if dropped:  # the copies showed a dropped one until the next rendering
        _show(run_dir, renders[max(renders)] if renders else None)
    return renders


def _show(run_dir: Path, media: dict[str, Path] | None) -> None:
    """Make ``rollout.gif`` and ``final.png`` in ``run_dir`` copies of one rendering's ``media``
    (:func:`rendering_files`), each written whole; ``None``: remove them."""
    for name, shown in rendering_files(run_dir).items():
        if media is None:
            shown.unlink(missing_ok=True)
            continue
        with atomic_path(shown) as tmp:
            shutil.copyfile(media[name], tmp)


@contextmanager
def _stop_signals():
    """Turn SIGTERM and SIGINT into a flag checked after each step (preemption-safe stopping)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    handler = lambda signum, frame: stop.set()  # noqa: E731
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
