"""The argument parser of nca_lab's own commands (``grow``, ``export``, ``bench``).

A malformed option is refused like every other bad input to them: one ``error:`` line and exit
status 2. argparse's own parser printed its usage block above the error.
"""

import argparse
import sys
from pathlib import Path


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, pointing at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def command_name(module: str) -> str:
    """The command as the user typed it: an installed script's name (``nca-lab-grow``), else
    ``python -m <module>``; for ``--help`` and the error lines."""
    script = Path(sys.argv[0]).name
    return script if script.startswith("nca-lab") else f"python -m {module}"
