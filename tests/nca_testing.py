"""Test helpers shared by every test file: config composition, tiny overrides, the real CLI."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Overrides that make any growing-style run tiny: a 12x12 grid, 2 steps of 2-3 CA steps.
TINY = [
    "logger=none",
    "task.target_size=8",
    "task.padding=2",
    "trainer.steps=2",
    "trainer.batch_size=2",
    "trainer.rollout_steps=[2,3]",
    "trainer.progress=false",
]


def compose(*overrides: str):
    """The composed app config (``conf/``) with ``overrides``, without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from nca_lab.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def run_cli(*args: str, module: str = "nca_lab", cwd: Path | None = None, timeout: int = 300, env: dict | None = None):
    """Run ``python -m <module> <args>`` as a user would; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
