"""One job at a time in a run dir.

Two jobs in one run dir (the same command started twice, a sweep re-run while the first
still runs) interleaved their ``metrics.jsonl`` lines and overwrote each other's checkpoints,
both ending with exit status 0. The job holds an advisory lock (``flock``) on
``<run dir>/.lock`` while it runs; the kernel drops it when the process ends, however it ends,
so a job requeued after a kill is never locked out.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nca_lab.errors import ConfigError, one_line

LOCK_FILE = ".lock"


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; :class:`ConfigError` if another process holds it,
    or if ``run_dir`` cannot be made (from Python: the command's Hydra makes it first) or its
    lock file written (a read-only dir): every process of a run stops with that line."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"cannot write {one_line(err)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"{run_dir} is in use by another job (pid {holder}): wait for it, or give this one another run dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
