"""A sweep refused before its first job leaves no dir behind, as a refused run does.

Hydra's sweeper makes the sweep dir and writes ``multirun.yaml`` into it before it composes the
first job's config, so a mistyped setting (``-m trainer.step=3,4``) left a timestamped dir
holding only that file under ``outputs/multirun/``. :class:`SweepDirCallback` (registered in
``conf/config.yaml``'s ``hydra.callbacks``) notes the dir when a sweep starts if it is new;
the command calls :func:`remove_unused` when it refuses the sweep before any job ran.
:func:`remove_if_unused` also tidies after a refused run (``nca_lab.__main__``).
"""

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from hydra.experimental.callback import Callback

#: What Hydra's sweepers write into the sweep dir before the first job.
MULTIRUN_YAML = "multirun.yaml"


class SweepDirCallback(Callback):
    """Notes the sweep dir this command makes (one that did not exist when the sweep started)."""

    #: The sweep dir this process's sweep made, or ``None``.
    made_here: Path | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        # Reading the dir resolves ${now:...} once: Hydra caches the value in this config, which the
        # sweeper reads next to make the dir. An error reading it is the sweeper's to report (one
        # raised here Hydra prints as a warning of several lines).
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            SweepDirCallback.made_here = None if sweep_dir.exists() else sweep_dir
        except Exception:  # noqa: BLE001
            SweepDirCallback.made_here = None

    def on_multirun_end(self, config, **kwargs) -> None:
        SweepDirCallback.made_here = None  # its jobs ran: nothing of it to remove


def remove_unused() -> None:
    """Delete the sweep dir this command made if it holds only ``multirun.yaml`` (no job ran),
    and its day's dir if that is left empty."""
    sweep_dir, SweepDirCallback.made_here = SweepDirCallback.made_here, None
    if sweep_dir is not None:
        remove_if_unused(sweep_dir, lambda names: names == {MULTIRUN_YAML})


def remove_if_unused(directory: Path, unused: Callable[[set[str]], bool]) -> None:
    """Delete ``directory`` and its files if ``unused`` says so of their names, and its day's
    dir if that is left empty; one gone already, or not removable, is left as it is."""
    with contextlib.suppress(OSError):
        names = {path.name for path in directory.iterdir()}
        if unused(names):
            for name in names:
                (directory / name).unlink()
            directory.rmdir()
            remove_day_dir(directory.parent)


def remove_day_dir(directory: Path) -> None:
    """Delete ``directory`` if it is a day's dir of ``config.yaml``'s ``hydra.run.dir`` or
    ``hydra.sweep.dir`` (``2026-12-01``) and empty: the only run or sweep in it was removed;
    then ``outputs/multirun`` too, if that is left empty."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", directory.name):
        with contextlib.suppress(OSError):  # not empty: kept
            directory.rmdir()
            if directory.parent.name == "multirun":
                directory.parent.rmdir()
