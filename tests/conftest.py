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
# Cache every compilation, not only those over JAX's 1 s (the app's 0.5 s): at this
# optimisation level most of them take less, and the pytest workers and the many CLI
# subprocesses compile the same tiny functions over and over (a tiny run's first fit in a
# fresh process, cache warm: 5.8 s with the 1 s threshold, 3.2 s with none).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# JAX writes a cache entry in place, not atomically: a process that reads one while another
# is still writing it recompiles, with a warning of two lines on stderr, which the CLI tests
# that expect one line would take for a failure. The recompile is all that matters.
os.environ.setdefault("PYTHONWARNINGS", "ignore:Error reading persistent compilation cache entry")

#: The slowest test modules (cold cache, CI's 2 cores), slowest first. pytest-xdist hands out
#: whole modules (``--dist loadscope``) in collection order (``--no-loadscope-reorder``; by
#: default it orders them by their number of tests), so these start first and the suite ends on
#: short modules, instead of one worker running a long one alone while the other has finished.
#: The order changes no test; a module missing here just runs after these.
SLOWEST_FIRST = [
    "tests/test_cli.py",
    "tests/train/test_resume.py",
    "tests/train/test_multihost.py",
    "tests/test_sweeps.py",
    "tests/perf/test_step_vjp.py",
    "tests/tasks/test_mnist_inpainting.py",
    "tests/test_configs.py",
    "tests/perceive/test_attention.py",
    "tests/train/test_training.py",
    "tests/train/test_data_parallel.py",
    "tests/log/test_wandb.py",
    "tests/perf/test_fused_step.py",
    "tests/interop/test_interop_cli.py",
    "tests/bench/test_bench.py",
    "tests/test_nca.py",
    "tests/perf/test_active_cells.py",
    "tests/test_readme_python.py",
    "tests/interop/test_interop_checkpoint.py",
    "tests/test_ckpt.py",
    "tests/interop/test_interop_parity.py",
]


def pytest_collection_modifyitems(items):
    rank = {module: index for index, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: modules stay whole


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

    from nca_lab.data.mnist import raw_dir

    from nca_testing import write_idx

    root = tmp_path_factory.mktemp("mnist_tiny")
    digits = np.random.default_rng(0).integers(0, 256, (4, 12, 12), dtype=np.uint8)
    for split in ("train", "t10k"):
        write_idx(raw_dir(root) / f"{split}-images-idx3-ubyte", digits)
    grid = ["task.target_size=8", "task.padding=2"]
    return {
        "regenerating": [*grid, "task.pool_size=4", "task.damage_n=1"],
        "mnist_inpainting": [f"task.data_root={root}", "task.pool_size=4", "task.eval_samples=2"],
    }
