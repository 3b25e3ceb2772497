"""Session-wide test setup and fixtures (helpers live in ``nca_testing.py``).

Everything runs on CPU with tiny grids so the whole suite fits CI's budget (2 cores).
"""

import os
from pathlib import Path

import pytest

# Before JAX loads: CPU, quiet, and a compilation cache shared by the CLI subprocesses.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("NCA_LAB_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".jax_cache"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["NCA_LAB_CACHE_DIR"])


@pytest.fixture(scope="session")
def tiny_target():
    """A 12x12 premultiplied RGBA target (8x8 emoji padded by 2)."""
    from nca_lab.data.images import load_target

    return load_target("🦎", size=8, padding=2)


@pytest.fixture(scope="session")
def tiny_data_overrides(tmp_path_factory) -> dict:
    """Extra overrides per ``(group, option)`` for options that need data files to build."""
    return {}
