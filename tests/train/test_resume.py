"""Preemption and crashes lose nothing: a run stopped by SIGTERM or killed by SIGKILL and then
resumed logs exactly the losses of an uninterrupted run (CPU, same seed and config)."""

import signal
import subprocess
import sys
import time

from nca_lab.log.metrics_file import read_metrics

from nca_testing import REPO, TINY, run_cli

RUN = [*TINY, "trainer.steps=30", "trainer.rollout_steps=[16,20]", "trainer.log_every=1", "trainer.checkpoint_every=4"]


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def start(run_dir):
    return subprocess.Popen(
        [sys.executable, "-m", "nca_lab", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(process, run_dir, step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and max(losses(run_dir), default=0) >= step:
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached")


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    assert run_cli(*RUN, f"hydra.run.dir={reference}").returncode == 0

    run_dir = tmp_path / "interrupted"
    process = start(run_dir)
    wait_for_step(process, run_dir, 5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143
    assert "checkpoint saved to" in err and "Traceback" not in err
    preempted_at = max(losses(run_dir))
    assert str(run_dir / "checkpoints" / str(preempted_at)) in err

    process = start(run_dir)  # resumes from the preemption checkpoint
    wait_for_step(process, run_dir, preempted_at + 6)
    process.kill()  # SIGKILL: no chance to save; the last periodic checkpoint must do
    process.communicate(timeout=60)
    assert not (run_dir / "summary.json").exists()

    finished = run_cli(*RUN, f"hydra.run.dir={run_dir}")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert losses(run_dir) == losses(reference)
    assert sorted(losses(run_dir)) == list(range(1, 31))
