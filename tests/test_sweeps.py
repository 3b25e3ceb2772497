"""Hydra multirun: one run dir and one W&B run per job, and re-running skips finished jobs."""

import signal
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from nca_lab.config import job_dir_name
from nca_lab.train.run import load_model

from nca_testing import REPO, TINY, run_cli
from wandb_records import read_run

SWEEP = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb", "logger.mode=offline"]


def test_two_job_sweep_then_rerun_skips_both(tmp_path):
    sweep_dir = tmp_path / "outputs" / "multirun" / "2026-11-30" / "10-00-00"  # as Hydra names it
    # a value Hydra escapes in the dir name (+tag=a\\:b): Orbax took the backslash for a '/', and
    # the checkpoints held no weights; an interpolation (escaped as $\\{tag\\}) was live again
    # without it, and the job stopped in a dir Hydra had not made
    args = ["-m", "seed=0,1", *SWEEP, "+tag=a:b", "logger.tags=[${tag}]", f"hydra.sweep.dir={sweep_dir}"]
    first = run_cli(*args, "distributed.process_id=0")  # a process's own settings do not name job dirs
    assert first.returncode == 0, first.stderr[-3000:]
    job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(job_dirs) == 2  # named by their overrides, so a re-run finds them again
    assert not any("distributed" in d.name for d in job_dirs)
    assert "seed=0" in job_dirs[0].name.split(",")
    assert "seed=1" in job_dirs[1].name.split(",")
    assert {"+tag=a:b", "logger.tags=[$%7Btag}]"} <= set(job_dirs[0].name.split(","))
    assert load_model(job_dirs[0]).update.out.kernel[...].any()  # trained weights, read back
    runs = [read_run(d) for d in job_dirs]
    assert all(len(r["runs"]) == 1 for r in runs)
    assert runs[0]["run_id"] != runs[1]["run_id"]
    assert runs[0]["group"] == runs[1]["group"] == "multirun/2026-11-30/10-00-00"  # the sweep is the W&B group
    assert [r["name"] for r in runs] == [d.name for d in job_dirs]  # the overrides, without the group's path
    assert [r["config"]["seed"] for r in runs] == [0, 1]
    assert runs[0]["config"]["logger"]["tags"] == ["a:b"]  # the interpolation, resolved
    assert runs[0]["summary"]["train/loss"] != runs[1]["summary"]["train/loss"]

    second = run_cli(*args, "distributed.process_id=1")
    assert second.returncode == 0
    assert second.stderr.count("already completed") == 2
    assert all(len(read_run(d)["runs"]) == 1 for d in job_dirs)  # no new W&B runs


def test_a_job_dir_name_is_one_dir_without_backslashes():
    """``-m trainer.init_from=runs/a,runs/b`` made nested dirs, named by the rest of the path."""
    assert job_dir_name("logger.tags=[a\\:b],seed=0") == "logger.tags=[a:b],seed=0"
    assert job_dir_name("seed=1,trainer.init_from=/tmp/runs/a") == "seed=1,trainer.init_from=%2Ftmp%2Fruns%2Fa"
    assert job_dir_name("task.target_size=$\\{size\\}") == "task.target_size=$%7Bsize}"  # no interpolation
    long = [job_dir_name(f"seed={seed},trainer.init_from={'/runs/ü' * 60}") for seed in (0, 1)]
    assert all(len(name.encode()) == 255 for name in long) and long[0] != long[1]  # ENAMETOOLONG at 256
    assert long[0].startswith("seed=0,trainer.init_from=%2Fruns%2F") and long[0] == job_dir_name(
        f"seed=0,trainer.init_from={'/runs/ü' * 60}"
    )


def test_no_distributed_setting_names_a_job_dir():
    """How a job is launched is not what it trains: re-running a sweep across hosts, or with
    another heartbeat timeout, finds its jobs' dirs again (the README's list of exclusions)."""
    config = OmegaConf.load(REPO / "conf" / "config.yaml")
    excluded = set(config.hydra.job.config.override_dirname.exclude_keys)
    assert {f"distributed.{key}" for key in config.distributed} <= excluded


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=local"]], ids=["basic", "submitit_local"])
def test_a_failing_job_does_not_stop_the_sweep(tmp_path, launcher):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", *launcher, "update.fire_rate=1.5,0.5", *TINY, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 1
    assert "fire_rate must be in (0, 1], got 1.5" in result.stderr
    assert "Error executing job" not in result.stderr  # Hydra's line: the job's error: line said it
    failed_dir = next(p for p in sweep_dir.iterdir() if "update.fire_rate=1.5" in p.name.split(","))
    how_many = (
        "every job of the sweep ran; the first that failed:"  # submitit's jobs run in other processes: not counted
        if launcher
        else "1 of the sweep's 2 jobs failed; the first:"
    )
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {how_many} {failed_dir}: update.fire_rate must be in (0, 1], got 1.5"
    )
    finished = [p.name for p in sweep_dir.iterdir() if (p / "summary.json").exists()]
    assert len(finished) == 1 and "update.fire_rate=0.5" in finished[0].split(",")
    log = (failed_dir / "__main__.log").read_text()  # why the job has no results, after the output scrolled away
    assert f"error: {failed_dir}: update.fire_rate must be in (0, 1], got 1.5" in log.splitlines()  # submitit logs on


def test_a_run_that_diverges_exits_1_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "trainer.learning_rate.init_value=1e38", "trainer.log_every=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"training in {run_dir}" and lines[1].startswith("error: training diverged at step ")
    assert len(lines) == 2
    assert not (run_dir / "summary.json").exists()


def test_a_signal_while_a_job_builds_stops_the_sweep_with_one_line(tmp_path):
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "nca_lab", "-m", "update.fire_rate=1.5,0.5", "perceive=attention", *TINY,
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    for line in process.stderr:  # the first job fails at once; the second then builds its model
        seen.append(line)
        if "fire_rate must be in (0, 1]" in line:
            process.send_signal(signal.SIGTERM)
            break
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 143, "".join(seen) + rest
    assert rest.strip().splitlines()[-1] == "stopped: by a signal outside the training steps (nothing to save)"
    assert "Traceback" not in rest
    assert not list(sweep_dir.glob("*/checkpoints/*"))  # it stopped before its first step
