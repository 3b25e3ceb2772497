"""``metrics.jsonl``: one JSON line per logged step (evaluations on their own), flushed as written.

It is the run's own record, readable without any service; a killed run keeps every line
written before it died (a resume rewrites the file whole or not at all).
"""

import json
import math
import os
from pathlib import Path

from nca_lab.atomic import write_text_atomically
from nca_lab.errors import ConfigError, is_integer

#: The file in a run dir; its presence marks a dir a run trained in (``grow`` will not write there).
METRICS = "metrics.jsonl"


class MetricsFile:
    """Appends ``{"step": ..., **metrics}`` lines to ``<run_dir>/metrics.jsonl``."""

    def __init__(self, run_dir: Path, resume_step: int = 0, *, redo_evaluation: bool = False):
        """Open the file in ``run_dir`` for appending.

        A resumed run drops the lines after ``resume_step`` (written after its last
        checkpoint by the attempt that died), so every step appears once; with
        ``redo_evaluation`` also the evaluation lines of ``resume_step`` itself (the final
        evaluation follows the final checkpoint, and a run resumed there evaluates again).
        """
        self.path = Path(run_dir) / METRICS
        #: The records of earlier attempts that stand (a resumed run's history so far).
        self.earlier: list[dict] = []
        if self.path.exists():
            self.earlier = [
                r
                for r in read_metrics(run_dir)
                if r["step"] < resume_step
                or (r["step"] == resume_step and not (redo_evaluation and any(k.startswith("eval/") for k in r)))
            ]
            write_text_atomically(self.path, "".join(json.dumps(r) + "\n" for r in self.earlier))
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Write one line; non-finite values become ``null`` (JSON has no NaN)."""
        clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()

    def sync(self) -> None:
        """Make the lines written so far durable (``fsync``): a flush only hands them to the OS,
        which a machine crash can lose while a later checkpoint (Orbax syncs its files) survives;
        the resumed run would then miss them for good."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """All records of a run's ``metrics.jsonl``.

    A last line cut short (the disk filled, or the job was killed, while it was written) is
    left out, so a run can resume after it; the line is rewritten from the checkpoint's step on.
    """
    path = Path(run_dir) / METRICS
    text = path.read_text(encoding="utf-8")
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if lines and not text.endswith("\n") and not _is_json(lines[-1][1]):
        lines.pop()
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # damaged in the middle: not by a kill, which cuts the end only
            record = None
        if not (isinstance(record, dict) and is_integer(record.get("step"))):
            raise ConfigError(f"{path}: line {number} is no metrics record ({line[:40]!r}): mend or delete it")
        records.append(record)
    return records


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True
