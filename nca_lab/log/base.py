"""The logger interface the trainer writes to; the base class itself logs nothing (``logger=none``)."""

from pathlib import Path


class Logger:
    """Receives scalars, media and a final summary. Every method may be a no-op.

    Scalar names are the trainer's: ``loss``, ``lr``, ``grad_norm``, ``param_norm``,
    ``steps_per_s`` and ``eval/<metric>``; a logger may rename them for its dashboard.
    """

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record scalars at ``step``."""

    def resume(self, earlier: list[dict], renders: dict[int, dict[str, Path]]) -> None:
        """A resumed run's records so far (``{"step": ..., **metrics}``, from ``metrics.jsonl``)
        and its renderings by step (as :meth:`log_media` had them), for a logger that may not
        hold them: its earlier attempt died before flushing them."""

    def log_media(self, paths: dict[str, Path], step: int) -> None:
        """Record pictures (``.png``) and animations (``.gif``) written by the run."""

    def finish(
        self, summary: dict[str, float] | None = None, *, error: str | None = None, preempted: bool = False
    ) -> None:
        """Close the run (always called): finished with its ``summary``, failed with the one-line
        ``error`` that ended it, or ``preempted`` (stopped by a signal after saving a checkpoint,
        to be resumed)."""


class NullLogger(Logger):
    """``logger=none``: the run dir's ``metrics.jsonl`` is the only record."""

    def __init__(self, **unused):
        """Accept and ignore what the composition root passes every logger."""
        del unused
