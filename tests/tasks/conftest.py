"""Fixtures of the task tests: tiny MNIST files, a tiny NCA, and the 2-step CLI run of each task.

The CLI runs dominate the cost of these tests (a fresh process compiles the train step,
evaluation and rendering), so in a serial session every selected one starts at once, the
first time any of them is asked for, and runs in the background while the in-process tests
go on. Under pytest-xdist each worker collects every test but runs only the modules sent to
it, so a worker starts only the runs it is asked for (starting all of them ran each task's
run once per worker, competing for the CPUs with the runs that were needed).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image, ImageSequence

from nca_testing import REPO, TINY, tiny_for_task

#: Size of the synthetic "digits" of :func:`mnist_root` (real MNIST is 28x28; any size works).
DIGIT_SIZE = 12


def smooth_digits(n: int, seed: int, size: int = DIGIT_SIZE) -> np.ndarray:
    """``n`` uint8 images of two Gaussian blobs each: smooth, so neighbours predict pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    centres = rng.uniform(2, size - 2, (n, 2, 2, 1, 1))
    blobs = np.exp(-((y - centres[:, :, 0]) ** 2 + (x - centres[:, :, 1]) ** 2) / 8.0).max(axis=1)
    return np.round(255 * blobs).astype(np.uint8)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A ``data_root`` in torchvision's layout: 16 train digits (plain IDX), 8 test digits (gzip)."""
    from nca_lab.data.mnist import raw_dir

    from nca_testing import write_idx

    root = tmp_path_factory.mktemp("mnist")
    write_idx(raw_dir(root) / "train-images-idx3-ubyte", smooth_digits(16, seed=0))
    write_idx(raw_dir(root) / "t10k-images-idx3-ubyte.gz", smooth_digits(8, seed=1))
    return root


@pytest.fixture(scope="session")
def tiny_nca():
    """``tiny_nca(num_channels, alive_threshold)``: Sobel perceive and a 16-unit update, zero-initialised.

    A zero-initialised update makes the NCA the identity, so a task's evaluation of it can be
    checked against its baselines exactly.
    """
    from flax import nnx

    from nca_lab.nca import NCA
    from nca_lab.perceive.sobel import SobelPerceive
    from nca_lab.update.residual import ResidualUpdate

    def build(num_channels: int, alive_threshold: float | None) -> NCA:
        perceive = SobelPerceive(num_channels)
        update = ResidualUpdate(perceive.out_features, num_channels, hidden_sizes=[16], rngs=nnx.Rngs(params=0))
        return NCA(perceive, update, alive_threshold=alive_threshold)

    return build


@pytest.fixture(scope="session")
def drifting_nca():
    """``drifting_nca(num_channels, rate)``: every cell adds ``rate`` to every channel at every
    step (zero weights, bias ``rate``, every cell fires), no alive masking: after ``k`` steps a
    state is exactly its start plus ``k * rate``, so a task's metrics at each horizon are known."""
    import jax.numpy as jnp
    from flax import nnx

    from nca_lab.nca import NCA
    from nca_lab.perceive.sobel import SobelPerceive
    from nca_lab.update.residual import ResidualUpdate

    def build(num_channels: int, rate: float) -> NCA:
        perceive = SobelPerceive(num_channels)
        update = ResidualUpdate(perceive.out_features, num_channels, hidden_sizes=[4], fire_rate=1.0, rngs=nnx.Rngs(0))
        update.out.bias[...] = jnp.full((num_channels,), rate)
        return NCA(perceive, update, alive_threshold=None)

    return build


def smoke_overrides(task: str, mnist_root: Path) -> list[str]:
    """Overrides for a 2-step run of ``task`` on a tiny grid."""
    if task == "mnist_inpainting":
        sizes = [o for o in TINY if not o.startswith("task.")]
        # ViTCA's input channels, trained end to end here (test_mnist_inpainting checks them)
        data = [f"task.data_root={mnist_root}", "task.pool_size=4", "task.eval_samples=4"]
        return [*sizes, *data, "task.fixed_input=true"]
    extra = ["task.pool_size=4", "task.damage_n=1"] if task == "regenerating" else []
    return [*tiny_for_task(task), *extra]


class SmokeRun(NamedTuple):
    """The outputs of a finished CLI run."""

    run_dir: Path
    stdout: str
    metrics: list[dict]
    gif_frames: int  #: after the GIF writer merged identical consecutive frames
    gif_ms: int  #: the GIF's running time: merged frames add their durations
    png_size: tuple[int, int]


@pytest.fixture(scope="session")
def smoke_runs(request, tmp_path_factory, mnist_root):
    """``smoke_runs(task)``: the :class:`SmokeRun` of ``python -m nca_lab task=<task>`` (asserts it succeeded).

    Test modules that use it name their task in a module-level ``TASK``; in a serial session
    the runs of all selected modules are started together on first use, under pytest-xdist
    each task's run on its own first use (see the module docstring).
    """
    root = tmp_path_factory.mktemp("smoke")
    procs = {}

    def start(task: str) -> None:
        run_dir = root / task
        args = [f"task={task}", *smoke_overrides(task, mnist_root), f"hydra.run.dir={run_dir}"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "nca_lab", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        procs[task] = (proc, run_dir)

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        users = [item for item in request.session.items if "smoke_runs" in getattr(item, "fixturenames", ())]
        for task in sorted({item.module.TASK for item in users}):
            start(task)

    results = {}

    def result(task: str) -> SmokeRun:
        if task not in procs:
            start(task)
        if task not in results:
            proc, run_dir = procs[task]
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr[-3000:]
            lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            with Image.open(run_dir / "rollout.gif") as gif, Image.open(run_dir / "final.png") as png:
                gif_ms = sum(frame.info["duration"] for frame in ImageSequence.Iterator(gif))
                metrics = [json.loads(line) for line in lines]
                results[task] = SmokeRun(run_dir, stdout, metrics, gif.n_frames, gif_ms, png.size)
        return results[task]

    yield result
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
