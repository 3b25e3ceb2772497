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
# Tiny grids: XLA:CPU's compile time, not run time, is the suite's cost, and LLVM's lowest
# optimisation level about halves it (tests/perf/test_step_vjp.py + test_attention.py, cold
# cache, one worker: 163 -> 90 s). Results are checked against each other, not timed.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")


@pytest.fixture(scope="session")
def tiny_target():
    """A 12x12 premultiplied RGBA target (8x8 emoji padded by 2)."""
    from nca_lab.data.images import load_target

    return load_target("🦎", size=8, padding=2)


@pytest.fixture(scope="session")
def tiny_task_overrides(tmp_path_factory) -> dict:
    """The ``task.*`` overrides that make each task option tiny (replacing those of ``TINY``).

    MNIST inpainting reads IDX files: a few random 12x12 "digits" are written for it.
    """
    import numpy as np

    from nca_lab.data.mnist import raw_dir, write_idx

    root = tmp_path_factory.mktemp("mnist_tiny")
    digits = np.random.default_rng(0).integers(0, 256, (4, 12, 12), dtype=np.uint8)
    for split in ("train", "t10k"):
        write_idx(raw_dir(root) / f"{split}-images-idx3-ubyte", digits)
    grid = ["task.target_size=8", "task.padding=2"]
    return {
        "regenerating": [*grid, "task.pool_size=4", "task.damage_n=1"],
        "mnist_inpainting": [f"task.data_root={root}", "task.pool_size=4", "task.eval_samples=2"],
    }
