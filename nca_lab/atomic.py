"""Files that appear whole or not at all: a killed job never leaves a half-written result."""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it becomes ``path`` when the block completes.

    A rename within a directory is atomic, so readers see the old file or the new one. The
    file is synced to disk before the rename: else a machine crash could leave ``path`` renamed
    but empty. If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: several may write a file
    try:
        yield tmp
        _sync_to_disk(tmp)
        os.replace(tmp, path)
    except OSError as err:  # a full disk fails a write without a file name: "No space left on device"
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


#: The name of :func:`atomic_path`'s temporary file: what a killed process leaves behind.
LEFTOVER = re.compile(r"\..+\.\d+\.tmp")


def remove_leftovers(*directories: Path) -> None:
    """Delete the temporary files killed processes left in ``directories``: only where no
    process writes now (a run dir, while its job holds it)."""
    for directory in directories:
        for tmp in directory.glob(".*.tmp"):
            if LEFTOVER.fullmatch(tmp.name) and tmp.is_file():
                tmp.unlink(missing_ok=True)


def _sync_to_disk(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
