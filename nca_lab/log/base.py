"""The logger interface the trainer writes to, and :class:`NullLogger` (``logger=none``), which logs nothing."""

from pathlib import Path


class Logger:
    """Receives scalars, media and a final summary. Every method may be a no-op.

    A logger is built by the app on process 0 once the model is built (not for a finished run
    that is skipped), from its yaml (``_target_``, ``_partial_: true``, its options) and what
    nca_lab passes by keyword: ``config`` (the resolved config, with ``choices``: each group's
    option), ``run_dir``, ``name`` and ``run_id``, and ``group`` (the sweep's name) if its yaml
    has ``group: null`` and the job is a sweep's. Scalar names are the trainer's: ``loss``,
    ``lr``, ``grad_norm``, ``param_norm``, ``steps_per_s`` (not on the first line of a start
    or resume: that one's time holds the compile) and ``eval/<metric>``; a logger may rename
    them for its dashboard.
    """

    #: The logger's id of the run, saved with each checkpoint and passed back as ``run_id`` when
    #: the run resumes in its own dir (W&B continues the same run); ``None`` if it has none.
    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record scalars at ``step`` (a step may come twice: its training line, then its evaluation)."""

    def resume(self, earlier: list[dict], renders: dict[int, dict[str, Path]]) -> None:
        """A run resumed from its checkpoint: its records so far (``{"step": ..., **metrics}``
        from ``metrics.jsonl``, ``None`` for a value that was not finite) and its renderings by
        step (as :meth:`log_media` had them), called before the first :meth:`log`, for a logger
        that may not hold them: its earlier attempt died before flushing them. Not called for
        a fresh start (also after an attempt killed before its first checkpoint), and empty for
        a run continued from another run's dir (``trainer.resume``)."""

    def log_media(self, paths: dict[str, Path], step: int) -> None:
        """Record pictures (``.png``) and animations (``.gif``) written by the run; they stay in
        ``renders/<step>/`` (a dead attempt's later ones are deleted on resume)."""

    def finish(
        self, summary: dict[str, float] | None = None, *, error: str | None = None, preempted: bool = False
    ) -> None:
        """Close the run: finished with its ``summary`` (``step``, ``loss`` and the final
        ``eval/...``), failed with the one line of the error that ended it (``"<Exception>:
        <message>"``, the logger's own errors too), or ``preempted`` (stopped by a signal: a
        checkpoint saved in the training steps, or nothing to save before them or in the final
        evaluation; the run resumes from its last checkpoint). Called in each case, but not when
        the process is killed (SIGKILL) or dies."""


class NullLogger(Logger):
    """``logger=none``: the run dir's ``metrics.jsonl`` is the only record."""

    def __init__(self, **unused):
        """Accept and ignore what the composition root passes every logger."""
        del unused
