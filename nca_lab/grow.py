"""``python -m nca_lab.grow MODEL``: grow a pattern with a trained NCA and save what it became.

MODEL is an nca_lab run dir or checkpoint, or a model file the Growing-NCA authors released
(webgl8 or TF.js graph-model JSON; the format is read from the content). The run starts
from the standard seed, one living cell in the centre (Mordvintsev et al., "Growing Neural
Cellular Automata", Distill 2020), or, for a run whose task starts from something else (a
noised target, a masked digit), from a sample of that task (``--start``), and writes
``rollout.gif``, ``final.png`` and ``final_state.npy`` (float32 ``(H, W, C)``) into ``--out``.
``--damage`` erases a disc of the pattern halfway through, the article's regeneration
experiment. A run is grown on its training grid for its rollout horizon, the length it learned
to grow in, or for twice that, as its own ``rollout.gif``, if it trained on a sample pool,
which teaches the pattern to persist (the article's experiments 2 and 3; a growing run,
experiment 1, overgrows past its horizon); a released model on the article's 72x72 grid for
200 steps.

Example::

    python -m nca_lab.grow tests/data/reference_models/distill_ex3_lizard.webgl8.json --damage --out /tmp/lizard
"""

import argparse
import math
import sys
from pathlib import Path

from nca_lab.runtime import (
    STOPPED_BY_SIGNAL,
    configure_jax_environment,
    run_checkpoint_reader,
    stop_on_signals,
    wait_for,
)

if __name__ == "__main__":
    stop_on_signals(STOPPED_BY_SIGNAL)  # before the imports below, which take seconds

configure_jax_environment()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from nca_lab.alive import ALIVE_THRESHOLD, ALPHA  # noqa: E402
from nca_lab.atomic import atomic_path  # noqa: E402
from nca_lab.ckpt import CHECKPOINTS, RunCheckpointer  # noqa: E402
from nca_lab.cli_args import ArgumentParser, command_name  # noqa: E402
from nca_lab.errors import SEEDS, ConfigError, one_line, out_of_memory_as, require  # noqa: E402
from nca_lab.interop.detect import read_model  # noqa: E402
from nca_lab.log.metrics_file import METRICS  # noqa: E402
from nca_lab.nca import NCA, grow  # noqa: E402
from nca_lab.render import RENDERS, rendering_files, rgba, save_gif, save_png, to_rgb, to_uint8  # noqa: E402
from nca_lab.tasks.growing import GrowingTask, seed_state  # noqa: E402

#: The article's grid and steps, for models that do not say what they were trained on.
ARTICLE_GRID, ARTICLE_STEPS = (72, 72), 200
NOTHING_GREW = (
    "nothing grew from the seed (a model of a task that starts from something else, such as diffusing or "
    "inpainting, does not grow)"
)
#: The GIF keeps at most about this many frames (every k-th step for long runs).
MAX_GIF_FRAMES = 200
#: Target width of the pictures in pixels (each cell is a square of pixels).
PICTURE_PIXELS = 320
#: Most steps and cells per side a grow takes: beyond them it cannot run (a key for every step
#: is split up front, each frame kept is a full RGBA grid).
MAX_STEPS, MAX_SIDE = 1_000_000, 4096
#: The stream of ``--seed``'s key that draws a task's sample to start from (``--start task``):
#: none of the growth's. JAX's default (partitionable) threefry makes ``split(key, n)[i]``
#: ``fold_in(key, i)``, so a small count was a key the growth splits off again.
TASK_SAMPLE_STREAM = 2**32 - 1


class _HelpFormatter(argparse.HelpFormatter):
    """Shows ``--size H [W]``: argparse has no "one or two values", so ``nargs="+"`` (checked
    after parsing) would show ``H [W ...]``."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        return "H [W]" if action.dest == "size" else super()._format_args(action, default_metavar)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a malformed value is one ``error:`` line and exit status 2."""
    parser = ArgumentParser(
        prog=command_name("nca_lab.grow"),
        description="Grow a pattern with a trained NCA, from the seed or from a sample of a run's task.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="nca_lab run dir or checkpoint, webgl8 JSON or TF.js graph JSON")
    parser.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="CA steps (default: a run's rollout horizon, twice that if it trained on a sample pool; "
        "200 for a released model)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        help="grid H [W] (default: a run's grid; 72 for a released model)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the random cell updates, and of the task's sample it starts from (default 0)",
    )
    parser.add_argument(
        "--fire-rate",
        type=float,
        default=None,
        metavar="P",
        help="update probability per cell and step (default: the model's)",
    )
    parser.add_argument(
        "--angle", type=float, default=None, metavar="A", help="rotate the perception (Sobel's) by A degrees"
    )
    parser.add_argument(
        "--start",
        choices=("seed", "task"),
        default=None,
        help="start from the one-cell seed or from a sample of the run's task (default: the task's where it "
        "does not grow from the seed, as diffusing and inpainting; else the seed)",
    )
    parser.add_argument("--damage", action="store_true", help="erase a disc of the pattern halfway through")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output dir (default outputs/grow/<model name> and the options given, e.g. _64x64_seed3_damage; "
        "overwritten by the next grow of that model with those options)",
    )
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) > 2:
        parser.error("--size takes H or H W")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        parser.error(f"--steps must be from 1 to {MAX_STEPS}")
    if args.size is not None and not all(1 <= side <= MAX_SIDE for side in args.size):
        parser.error(f"--size must be from 1 to {MAX_SIDE}")
    if args.seed not in SEEDS:
        parser.error(f"--seed must be from 0 to {SEEDS[-1]}")
    if args.fire_rate is not None and not 0.0 < args.fire_rate <= 1.0:
        parser.error("--fire-rate must be in (0, 1]")
    if args.angle is not None and not math.isfinite(args.angle):
        parser.error("--angle must be a finite number of degrees")
    if args.damage and args.steps is not None and args.steps < 2:
        parser.error("--damage needs --steps of at least 2 (the hole is cut halfway through)")
    if args.size is not None:
        args.size = (args.size[0], args.size[-1])  # (H, W): one side is a square
    return args


def configure(model: NCA, source: str, *, fire_rate: float | None, angle: float | None) -> NCA:
    """Apply the command line's fire rate and rotation (degrees) to ``model``."""
    if fire_rate is not None:
        require(hasattr(model.update, "fire_rate"), f"{source}: this model's update has no fire rate")
        model.update.fire_rate = float(fire_rate)
    if angle is not None:
        require(
            hasattr(model.perceive, "angle"),
            f"{source}: --angle rotates a perception with an angle (Sobel's); "
            f"this model has {type(model.perceive).__name__}",
        )
        model.perceive.angle = math.radians(angle)
    return model


def cut_hole(state: np.ndarray, threshold: float = ALIVE_THRESHOLD, fixed_channels: int = 0) -> np.ndarray:
    """Zero a disc in the middle of the living pattern of ``state (H, W, C)``.

    The disc is centred on the bounding box of the cells with alpha above ``threshold``, with
    a radius of a quarter of the box's shorter side, so it bites into the body whatever the
    grid size; an empty grid is returned unchanged. The last ``fixed_channels``, the cells'
    input (``NCA(fixed_channels=...)``), are left: the cells in the hole grow back from it.
    """
    rows, cols = np.nonzero(state[..., ALPHA] > threshold)
    if rows.size == 0:
        return state
    centre_r, centre_c = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    radius = max(1.0, min(np.ptp(rows), np.ptp(cols)) / 4)
    rr, cc = np.mgrid[: state.shape[0], : state.shape[1]]
    hole = (rr - centre_r) ** 2 + (cc - centre_c) ** 2 <= radius**2
    erased = np.arange(state.shape[-1]) < state.shape[-1] - fixed_channels
    return np.where(hole[..., None] & erased, 0.0, state).astype(state.dtype)


def run_segment(model: NCA, state: np.ndarray, key: jax.Array, num_steps: int, every: int):
    """``num_steps`` steps; returns ``(final_state, frames)`` with RGBA frames every ``every`` steps and at the end."""
    bulk = num_steps - num_steps % every
    key_bulk, key_rest = jax.random.split(key)
    frames = []
    if bulk:
        final, kept = wait_for(grow(model, state, key_bulk, bulk, frame_every=every, frame_fn=rgba))
        state = np.asarray(final)
        frames = list(np.asarray(kept[1:]))
    if num_steps > bulk:
        state = np.asarray(wait_for(grow(model, state, key_rest, num_steps - bulk)[0]))
        frames.append(rgba(state))
    return state, frames


def living_threshold(model: NCA) -> float:
    """Alpha above which a cell of ``model`` lives: its alive mask's, else the paper's."""
    return ALIVE_THRESHOLD if model.alive_threshold is None else model.alive_threshold


def grow_from(model: NCA, state: np.ndarray, steps: int, key: jax.Array, damage: bool):
    """Grow from ``state (H, W, C)``: ``(final_state (H, W, C), frames (T, H, W, 4))``.

    The frames keep only RGBA, all the GIF shows: a quarter of the memory of 16-channel states.
    """
    every = math.ceil(steps / MAX_GIF_FRAMES)
    lengths = [steps // 2, steps - steps // 2] if damage else [steps]
    frames = [rgba(state)]
    keys = jax.random.split(key, len(lengths))
    threshold = living_threshold(model)
    for index, length in enumerate(lengths):
        if index:
            state = cut_hole(state, threshold, model.fixed_channels)
            frames.append(rgba(state))
        if length:
            state, segment = run_segment(model, state, keys[index], length, every)
            frames.extend(segment)
    return state, np.stack(frames)


def check_not_a_run(out: Path) -> None:
    """Refuse an output dir that is a training run's dir (it has ``metrics.jsonl``) or inside
    its checkpoints or renderings: ``--out <run dir>`` overwrote the run's own ``rollout.gif``
    and ``final.png``."""
    resolved = out.resolve()
    for run in (resolved, *resolved.parents):  # the nearest run dir, if any: <run>/grown is fine
        if (run / METRICS).is_file():
            inside = run == resolved or any(resolved.is_relative_to(run / kept) for kept in (CHECKPOINTS, RENDERS))
            require(not inside, f"{out}: that is where the run {run} keeps its own files; give --out another dir")
            return


def write_outputs(out: Path, final: np.ndarray, frames: np.ndarray) -> list[Path]:
    """Write ``rollout.gif`` (of RGBA ``frames``), ``final.png`` and ``final_state.npy`` into ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{out}: cannot create the output dir ({one_line(err)})") from err
    scale = max(1, PICTURE_PIXELS // max(final.shape[:2]))
    npy, paths = out / "final_state.npy", rendering_files(out)
    try:
        gif = save_gif(to_uint8(to_rgb(frames), scale), paths["rollout"])
        png = save_png(to_uint8(to_rgb(final), scale), paths["final"])
        with atomic_path(npy) as tmp, open(tmp, "wb") as file:
            np.save(file, final.astype(np.float32))
    except OSError as err:  # a read-only dir, a full disk: each file is written whole or not at all
        raise ConfigError(f"{out}: cannot write ({err.strerror})") from err
    return [gif, png, npy]


def pinned(model_path: str) -> str:
    """``model_path``, a run dir or checkpoints dir, as the step dir of the checkpoint it reads
    now (its newest), so that every read of one grow (weights, grid, horizon, name, task) is of
    that checkpoint while a run still training saves newer ones; a file or step dir as given."""
    if not Path(model_path).is_dir():
        return model_path
    checkpoints = RunCheckpointer.find(model_path)
    return str(checkpoints.directory / str(checkpoints.default_step()))


def trained_setting(model_path: str) -> tuple[tuple[int, int], int, str]:
    """``(grid, steps, name)`` to grow ``model_path`` with by default.

    A run's training grid and its horizon, twice that if it trained on a sample pool (runs
    saved before the pool was recorded: twice; before the grid and horizon were, and released
    models: the article's). ``name`` tells models apart in ``outputs/grow/``: a
    released file's stem; for a run, the last two parts of its dir (Hydra's ``<date>/<time>``,
    a sweep's ``<time>/<job>``) and the step grown.
    """
    if not Path(model_path).is_dir():
        return ARTICLE_GRID, ARTICLE_STEPS, Path(model_path).stem
    checkpointer = RunCheckpointer.find(model_path)
    meta = checkpointer.metadata()
    directory = checkpointer.directory
    run_dir = directory.parent if directory.name == CHECKPOINTS else directory
    name = f"{run_dir.parent.name}_{run_dir.name}_step{checkpointer.default_step()}"
    grid, horizon = meta.get("grid"), meta.get("horizon")
    pooled = meta.get("pool_size", 1)  # not recorded (older runs): twice, as before
    steps = horizon * (2 if pooled else 1) if horizon else ARTICLE_STEPS
    return (tuple(grid) if grid else ARTICLE_GRID), steps, name


def default_start(model_path: str) -> str:
    """``task`` for a run whose task is not a :class:`GrowingTask` (its samples, a noised target
    or a masked digit, are what it learned to start from), else ``seed``: a released model, a
    growing or regenerating run, and one whose task class cannot be imported (``--start task``
    then says why), as every run grew before ``--start``."""
    if not Path(model_path).is_dir():
        return "seed"
    config = RunCheckpointer.find(model_path).metadata().get("config") or {}
    return start_of_task(str((config.get("task") or {}).get("_target_", "")))


def start_of_task(task_target: str) -> str:
    """:func:`default_start` of a run of the task class named ``task_target`` (a ``_target_``)."""
    from nca_lab.train.construct import target_of  # Hydra: only for a run

    task_class = target_of({"_target_": task_target})  # None if it does not import
    return "task" if isinstance(task_class, type) and not issubclass(task_class, GrowingTask) else "seed"


def task_sample(model_path: str, key: jax.Array) -> np.ndarray:
    """A start state ``(H, W, C)`` of the task the run at ``model_path`` trained on: a noised
    target, a masked digit (training's ``sample``, so MNIST's train split). The task is rebuilt
    from the run's config, its paths read from the current directory, as training read them."""
    require(Path(model_path).is_dir(), f"{model_path}: --start task needs an nca_lab run; a released model has no task")
    from nca_lab.train.run import load_task  # Hydra and the trainer: only for a run

    try:
        task = load_task(model_path)
    except ConfigError as err:
        raise ConfigError(
            f"{err} (rebuilding the run's task to start from its sample: grow from the directory it was trained "
            "in, or from the seed with --start seed)"
        ) from err
    return np.asarray(task.sample(key, 1).state[0])


def default_out(name: str, args: argparse.Namespace) -> Path:
    """``outputs/grow/<name>`` and each option given, so that variants of one model's grow
    (another seed, angle, size, ...) do not overwrite each other:
    ``<name>_<H>x<W>_steps<N>_seed<S>_fire<P>_angle<A>_from-<start>_damage``."""
    parts = [name]
    if args.size:
        parts.append(f"{args.size[0]}x{args.size[1]}")
    if args.steps:
        parts.append(f"steps{args.steps}")
    if args.seed:  # seed 0 is the default
        parts.append(f"seed{args.seed}")
    if args.fire_rate is not None:
        parts.append(f"fire{args.fire_rate:.12g}")
    if args.angle is not None:
        parts.append(f"angle{args.angle:.12g}")
    if args.start:
        parts.append(f"from-{args.start}")
    if args.damage:
        parts.append("damage")
    return Path("outputs") / "grow" / "_".join(parts)


def grow_and_write(
    model: NCA, state: np.ndarray, steps: int, key: jax.Array, damage: bool, out: Path, *, sized: bool = True
):
    """Grow from ``state`` and write the outputs: ``(final_state, paths)``; running out of
    memory is a :class:`ConfigError` (suggesting a smaller ``--size`` where the grid was ``sized``
    by it: a seed's, not a task sample's)."""
    height, width = state.shape[:2]
    try_instead = "a smaller --size or fewer --steps" if sized else "fewer --steps"
    too_big = ConfigError(f"growing {height}x{width} for {steps} steps does not fit in memory (try {try_instead})")
    with out_of_memory_as(lambda err: too_big):
        final, frames = grow_from(model, state, steps, key, damage)
        return final, write_outputs(out, final, frames)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input is one ``error: <file>: ...`` line and exit status 2, nothing written."""
    args = parse_args(argv)
    try:
        model_path = pinned(args.model)
        model = configure(read_model(model_path), args.model, fire_rate=args.fire_rate, angle=args.angle)
        grid, steps, name = trained_setting(model_path)
        start = args.start or default_start(model_path)
        out = Path(args.out) if args.out else default_out(name, args)
        check_not_a_run(out)
        steps = args.steps or steps
        key = jax.random.key(args.seed)
        if start == "task":
            require(
                args.size is None,
                "--size sets the seed's grid; a sample of the run's task has the task's own (--start seed: the seed)",
            )
            # the growth's own draws are those of a seed start: the same --seed grows a growing run
            # alike from either start (its task's sample is the seed)
            state = task_sample(model_path, jax.random.fold_in(key, TASK_SAMPLE_STREAM))
        else:
            state = seed_state(args.size or grid, model.num_channels)
        final, paths = grow_and_write(model, state, steps, key, args.damage, out, sized=start == "seed")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    living = int((final[..., ALPHA] > living_threshold(model)).sum())
    where = " from a sample of its task" if start == "task" else ""
    height, width = final.shape[:2]
    print(f"grew {args.model} for {steps} steps{where} on {height}x{width} (seed {args.seed}): {living} living cells")
    if living <= 1 and start == "seed":
        print(f"note: {NOTHING_GREW}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths))


def cli() -> None:
    """The command: :func:`main`, with SIGTERM and SIGINT one line and exit status 143."""
    run_checkpoint_reader(main)


if __name__ == "__main__":
    cli()
