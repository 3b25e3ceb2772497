"""Weights & Biases logging that never blocks or kills training.

Online without an API key or without network, ``wandb.init`` either fails or hangs for
minutes; this logger falls back to offline mode with one warning line (sync later with
``wandb sync <run_dir>/wandb/latest-run``: a resumed run's newest dir holds its whole history).
"""

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Literal, get_args

from nca_lab.errors import require
from nca_lab.log.base import Logger
from nca_lab.run_files import MANIFEST, RESOLVED_CONFIG

Mode = Literal["online", "offline", "disabled"]
MODES = get_args(Mode)

#: Dashboard names of the trainer's scalars; ``eval/...`` keys pass through.
DASHBOARD_NAMES = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "param_norm": "train/param_norm",
    "steps_per_s": "perf/steps_per_s",
}


class WandbLogger(Logger):
    """Logs a run to W&B: config, scalars, pictures, the rollout as video, a summary."""

    def __init__(
        self,
        *,
        config: dict,
        run_dir: Path,
        name: str,
        project: str = "nca_lab",
        entity: str | None = None,
        mode: Mode | None = None,
        group: str | None = None,
        tags: list[str] | str | None = None,
        run_id: str | None = None,
        init_timeout: float = 30.0,
    ):
        """Start (or resume, with ``run_id``) a W&B run whose files live in ``run_dir``.

        Args:
            config: the resolved config, logged as nested keys.
            run_dir: the job's output directory.
            name: the run name.
            project: W&B project.
            entity: W&B entity (user or team); ``None`` for the default.
            mode: ``online``, ``offline`` or ``disabled``; ``None`` reads ``WANDB_MODE`` (default online).
            group: W&B group (a sweep's name), if any.
            tags: W&B tags; one value is one tag (``logger.tags=ablation``, ``logger.tags=2024``,
                or a sweep's ``-m logger.tags=a,b``), not one per character.
            run_id: resume this run id instead of starting a new run.
            init_timeout: seconds ``wandb.init`` may take online before falling back to offline.
        """
        import wandb

        mode = mode or os.environ.get("WANDB_MODE") or "online"
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        require(mode in MODES, f"logger.mode must be one of {MODES}, got {mode!r}")
        self._wandb = wandb
        kwargs = dict(
            project=project,
            entity=entity,
            name=name,
            group=group,
            tags=[str(tags)] if isinstance(tags, str | int | float) else [str(tag) for tag in tags or []],
            config=config,
            dir=str(run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(init_timeout=float(init_timeout), silent=True),
            reinit="finish_previous",
        )
        if mode == "online" and not _has_api_key(wandb):
            _warn(f"no W&B API key: logging offline (later: `wandb login`, then {_sync(run_dir)})")
            mode = "offline"
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure online must not stop training
            if mode != "online":
                raise
            _warn(f"W&B online init failed ({type(err).__name__}): logging offline (later: {_sync(run_dir)})")
            mode = "offline"
            self.run = wandb.init(mode=mode, **kwargs)
        self.run_id = self.run.id
        self.mode = mode
        files_dir = Path(self.run.dir)
        for name in (RESOLVED_CONFIG, MANIFEST):
            path = Path(run_dir) / name
            if path.is_file() and files_dir.is_dir():  # files in the run's own dir are uploaded with it
                shutil.copy(path, files_dir / name)
        manifest_path = Path(run_dir) / MANIFEST
        if manifest_path.is_file():
            self.run.config.update({"manifest": json.loads(manifest_path.read_text())}, allow_val_change=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars under dashboard names (``train/...``, ``perf/...``, ``eval/...``)."""
        self.run.log({DASHBOARD_NAMES.get(k, k): v for k, v in metrics.items()}, step=step)

    def resume(self, earlier: list[dict], renders: dict[int, dict[str, Path]]) -> None:
        """Offline, log the earlier steps and renderings again, in step order: a resumed
        offline run is a new file, and the last one (``wandb sync``) then holds the whole
        history. W&B buffers that file in 32 KiB blocks, so a job killed (or stopped in its
        final evaluation) left little or nothing of it. Online, the server already has them."""
        if self.mode != "offline":
            return
        scalars = [(record["step"], 0, record) for record in earlier]
        pictures = [(step, 1, media) for step, media in renders.items()]
        for step, is_media, entry in sorted(scalars + pictures, key=lambda event: event[:2]):
            if is_media:
                self.log_media(entry, step)
            else:
                self.log({k: v for k, v in entry.items() if k != "step" and v is not None}, step)

    def log_media(self, paths: dict[str, Path], step: int) -> None:
        """Log PNGs as images and GIFs as videos (no moviepy needed for a file)."""
        media = {}
        for name, path in paths.items():
            path = Path(path)
            media[f"media/{name}"] = (
                self._wandb.Video(str(path), format="gif") if path.suffix == ".gif" else self._wandb.Image(str(path))
            )
        self.run.log(media, step=step)

    def finish(
        self, summary: dict[str, float] | None = None, *, error: str | None = None, preempted: bool = False
    ) -> None:
        """Write the summary and close the run. A failed one (exit code 1) says why in its
        summary's ``error``, which the dashboard showed nowhere; a preempted one is marked so,
        not failed, while it waits to be resumed (a requeued SLURM job)."""
        for key, value in (summary or {}).items():
            if key != "step":
                self.run.summary[DASHBOARD_NAMES.get(key, key)] = value
        if error is not None:
            self.run.summary["error"] = error
        elif "error" in self.run.summary.keys():  # noqa: SIM118 - W&B's Summary has no __contains__; a resumed run's earlier error
            del self.run.summary["error"]
        if preempted:
            self.run.mark_preempting()
        self.run.finish(exit_code=1 if error is not None or preempted else 0)


def _has_api_key(wandb) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(wandb.Api(timeout=5).api_key)
    except Exception:  # noqa: BLE001 - no key, no netrc, no network: all mean "no key"
        return False


def _sync(run_dir) -> str:
    """The command that uploads an offline run of ``run_dir``."""
    return f"`wandb sync {run_dir}/wandb/latest-run`"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
