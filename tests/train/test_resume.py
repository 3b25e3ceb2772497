"""Preemption and crashes lose nothing: a run stopped by SIGTERM or killed by SIGKILL and then
resumed logs exactly what an uninterrupted run logs (CPU, same seed and config)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import jax
import numpy as np
import pytest
from flax import nnx

from nca_lab.ckpt import RunCheckpointer
from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.log.metrics_file import read_metrics
from nca_lab.train import trainer as trainer_module
from nca_lab.train.run import build, run
from nca_lab.train.trainer import Preempted

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
    # what a SIGKILL mid-write leaves (kept for good before): a file's temporary sibling, and
    # the temporary dir of a save of a step not saved again
    leftovers = [run_dir / ".summary.json.4242.tmp", run_dir / ".rollout.gif.4242.tmp"]
    unfinished = run_dir / "checkpoints" / "7.orbax-checkpoint-tmp-1764670000"
    unfinished.mkdir()
    (unfinished / "part").write_text("cut short")
    for path in [*leftovers, run_dir / ".mine.tmp"]:
        path.write_text("cut short")

    finished = run_cli(*RUN, f"hydra.run.dir={run_dir}")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert losses(run_dir) == losses(reference)
    assert sorted(losses(run_dir)) == list(range(1, 31))
    assert not any(path.exists() for path in [*leftovers, unfinished])
    assert (run_dir / ".mine.tmp").exists()  # not a name nca_lab writes: not its to delete


# In-process: SIGTERM arrives during chosen train steps, through the handler fit installs;
# every log line (not only the losses) must equal the uninterrupted run's.

SCHEDULE = [*TINY, "trainer.steps=8", "trainer.log_every=3", "trainer.eval_every=4", "trainer.checkpoint_every=2"]


@contextmanager
def sigterm_during(monkeypatch, steps):
    """Deliver SIGTERM to the running fit (its installed handler) while the train step of each of ``steps`` runs."""
    make = trainer_module.make_train_step

    def make_interrupted(*args, **kwargs):
        step_fn, calls = make(*args, **kwargs), []

        def interrupted(model, optimizer, pool, key):
            calls.append(None)
            if len(calls) in steps:
                signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
            return step_fn(model, optimizer, pool, key)

        return interrupted

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "make_train_step", make_interrupted)
        yield


def fit(run_dir, *overrides):
    task, model, trainer = build(compose(*SCHEDULE, *overrides))
    return trainer.fit(model, task, key=jax.random.key(0), run_dir=run_dir)


def logged(run_dir):
    """metrics.jsonl without the wall-clock field."""
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return fit(run_dir), logged(run_dir)


def test_train_lines_follow_log_every_only(uninterrupted):  # checkpoints every 2 steps add none
    assert [r["step"] for r in uninterrupted[1] if "loss" in r] == [1, 3, 6, 8]


@pytest.mark.parametrize("stopped_in", [2, 5], ids=["checkpoint_step", "between_log_steps"])
def test_a_stop_saves_once_and_the_resumed_log_equals_the_uninterrupted_one(
    tmp_path, monkeypatch, uninterrupted, stopped_in
):
    with sigterm_during(monkeypatch, {stopped_in}), pytest.raises(Preempted, match=f"after step {stopped_in};"):
        fit(tmp_path)
    assert RunCheckpointer(tmp_path / "checkpoints", create=False).latest_step() == stopped_in
    summary = fit(tmp_path)
    assert (summary, logged(tmp_path)) == uninterrupted


def test_a_resumed_run_trains_on_its_saved_pool(tmp_path, monkeypatch):
    """Experiments 2 and 3 train on a sample pool: a resumed run that started a fresh pool of
    seeds would log other losses from its first step on."""
    pooled = ("task=regenerating", "task.pool_size=4", "task.damage_n=1", "trainer.eval_every=0")
    reference = tmp_path / "reference"
    fit(reference, *pooled)
    with sigterm_during(monkeypatch, {5}), pytest.raises(Preempted, match="after step 5;"):
        fit(tmp_path / "run", *pooled)
    fit(tmp_path / "run", *pooled)
    assert logged(tmp_path / "run") == logged(reference)


def test_a_run_dir_resumes_its_own_checkpoints_before_trainer_resume(tmp_path, monkeypatch):
    fit(tmp_path / "first", "trainer.steps=4")
    reference = tmp_path / "reference"
    reference_summary = fit(reference, f"trainer.resume={tmp_path / 'first'}")
    run_dir = tmp_path / "continued"
    with sigterm_during(monkeypatch, {2}), pytest.raises(Preempted, match="after step 6;"):
        fit(run_dir, f"trainer.resume={tmp_path / 'first'}")
    summary = fit(run_dir, f"trainer.resume={tmp_path / 'first'}")  # the requeued job: from step 6, not 4
    assert (summary, logged(run_dir)) == (reference_summary, logged(reference))


def test_a_run_resumed_from_another_at_its_last_step_keeps_that_checkpoint(tmp_path):
    """Evaluating a finished run again in a new run dir (``trainer.resume`` at its final step):
    no step was left to save, and the new dir was completed without a checkpoint (``load_model``:
    "no checkpoint here")."""
    fit(tmp_path / "first", "trainer.steps=4")
    summary = fit(tmp_path / "again", "trainer.steps=4", f"trainer.resume={tmp_path / 'first'}")
    kept, saved = (RunCheckpointer.find(tmp_path / run) for run in ("again", "first"))
    assert kept.latest_step() == 4 and kept.metadata()["loss"] == saved.metadata()["loss"] == summary["loss"]
    first, again = (build(compose(*SCHEDULE))[1] for _ in range(2))
    saved.restore_model(first)
    kept.restore_model(again)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(first, nnx.Param), nnx.state(again, nnx.Param))


def test_a_run_killed_after_its_last_checkpoint_reports_the_saved_loss_and_evaluates_once(tmp_path, uninterrupted):
    fit(tmp_path)
    (tmp_path / "summary.json").unlink()  # as if killed after the final evaluation, before the summary
    assert (fit(tmp_path), logged(tmp_path)) == uninterrupted


def test_a_signal_while_the_final_checkpoint_is_written_stops_before_the_evaluation(
    tmp_path, monkeypatch, uninterrupted
):
    """It was lost: the run evaluated, rendered, wrote summary.json and exited 0, past a
    cluster's grace period."""
    save = RunCheckpointer.save

    def save_with_a_signal(self, step, **kwargs):
        if step == 8:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        return save(self, step, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(RunCheckpointer, "save", save_with_a_signal)
        with pytest.raises(Preempted, match=f"after step 8; checkpoint saved to {tmp_path}/checkpoints/8$"):
            fit(tmp_path)
    assert not (tmp_path / "summary.json").exists()
    assert (fit(tmp_path), logged(tmp_path)) == uninterrupted  # resumed: evaluates, once


def test_the_metrics_lines_are_on_disk_before_each_checkpoint(tmp_path, monkeypatch):
    """A flush alone let a machine crash keep a checkpoint (Orbax syncs) and lose the lines
    before it, which the resumed run never wrote again."""
    events = []
    fsync, save = os.fsync, RunCheckpointer.save
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    monkeypatch.setattr(RunCheckpointer, "save", lambda self, step, **kw: events.append(step) or save(self, step, **kw))
    fit(tmp_path)
    metrics = str(tmp_path / "metrics.jsonl")
    saves = [i for i, event in enumerate(events) if isinstance(event, int)]
    assert [events[i] for i in saves] == [2, 4, 6, 8]
    assert all(events[i - 1] == metrics for i in saves)


def test_a_damaged_summary_is_one_line_saying_how_to_evaluate_again(tmp_path, completed_run):
    completed_run(tmp_path)
    (tmp_path / "summary.json").write_text('{"step": 2, "lo')
    with pytest.raises(ConfigError, match=r"summary\.json cannot be read \(.+\): delete it to evaluate the run again"):
        run_app(tmp_path, "trainer.steps=2")
    (tmp_path / "summary.json").write_text("[]")  # JSON, but no summary
    with pytest.raises(ConfigError, match=r"summary\.json cannot be read \(no summary of a run\): delete it"):
        run_app(tmp_path, "trainer.steps=2")
    (tmp_path / "summary.json").unlink()
    assert run_app(tmp_path, "trainer.steps=2")["step"] == 2


def test_a_bad_resume_path_is_refused_even_when_the_run_dir_has_checkpoints(tmp_path):
    fit(tmp_path, "trainer.steps=2")
    (tmp_path / "summary.json").unlink()
    with pytest.raises(ConfigError, match="no/such/run: no such checkpoint or run dir"):
        fit(tmp_path, "trainer.resume=/no/such/run")


def run_app(run_dir, *overrides):
    """What ``python -m nca_lab`` runs for one job (in-process)."""
    return run(compose(*SCHEDULE, *overrides), run_dir)


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    """``completed_run(run_dir)`` puts in ``run_dir`` a copy of one completed run of
    ``run_app(..., "trainer.steps=2")``, trained once for the tests that damage it or run on it."""
    trained = tmp_path_factory.mktemp("completed") / "run"
    run_app(trained, "trainer.steps=2")
    return lambda run_dir: shutil.copytree(trained, run_dir, dirs_exist_ok=True)


def test_a_run_is_not_resumed_or_skipped_under_other_model_or_task_settings(tmp_path, completed_run, capsys):
    completed_run(tmp_path)
    config_before = (tmp_path / "config_resolved.yaml").read_text()
    checkpoint = tmp_path / "checkpoints" / "2"
    changed = ("perceive.angle=0.5", "task.target_size=7", "update.fire_rate=0.25")
    with pytest.raises(ConfigError) as completed:
        run_app(tmp_path, *changed)
    assert str(completed.value) == (
        f"{tmp_path} holds a completed run with other settings (perceive.angle: 0.0 -> 0.5; task.target_size: 8 -> 7; "
        f"update.fire_rate: 0.5 -> 0.25): give this one another run dir (trainer.init_from={tmp_path} starts from "
        "its weights)"
    )
    with pytest.raises(ConfigError, match=r"\(num_channels: 16 -> 8\): give this one another run dir$"):
        run_app(tmp_path, "num_channels=8")  # no advice to start from weights that do not fit
    with pytest.raises(ConfigError, match=r"\(update\.fire_rate: 0\.5 -> 0\.0\): give this one another run dir$"):
        run_app(tmp_path, "update.fire_rate=0.0")  # a model that cannot be built: no advice, the same line
    assert run_app(tmp_path, "trainer.steps=3")["step"] == 2  # skipped, saying how to train on
    assert f"skipped {tmp_path}: already completed at step 2 (delete its summary.json to train on to step 3)\n" in (
        capsys.readouterr().err
    )
    for steps in (2, 1, "null"):  # deleting summary.json would evaluate again, or be refused: no such advice
        run_app(tmp_path, f"trainer.steps={steps}")
        assert capsys.readouterr().err.endswith(f"skipped {tmp_path}: already completed at step 2\n")

    (tmp_path / "summary.json").unlink()  # as if it had stopped before its end
    with pytest.raises(ConfigError) as resumed:
        run_app(tmp_path, *changed, "trainer.steps=3")
    assert str(resumed.value) == (
        f"{checkpoint} was trained with other settings (perceive.angle: 0.0 -> 0.5; task.target_size: 8 -> 7; "
        "update.fire_rate: 0.5 -> 0.25): "
        f"resume it with its own, or train a new run dir from its weights with trainer.init_from={checkpoint}"
    )
    with pytest.raises(ConfigError, match=r"\(num_channels: 16 -> 8\): resume it with its own$"):
        run_app(tmp_path, "num_channels=8", "trainer.steps=3")
    assert (tmp_path / "config_resolved.yaml").read_text() == config_before  # the record still says what ran
    with pytest.raises(ConfigError, match=f"{checkpoint} is at step 2, past trainer.steps=1: set trainer.steps to"):
        run_app(tmp_path, "trainer.steps=1")

    assert run_app(tmp_path, "trainer.steps=3", "task.render_scale=2")["step"] == 3  # trainer and display may change
    assert f"training in {tmp_path}, resuming {checkpoint}" in capsys.readouterr().err


def test_a_damaged_checkpoint_to_resume_stops_the_job_before_it_touches_the_run(tmp_path, completed_run):
    """Its records were written again and its logger opened (a new, empty W&B run) first."""
    completed_run(tmp_path)
    (tmp_path / "summary.json").unlink()  # as if it had stopped before its end
    next((tmp_path / "checkpoints" / "2" / "model").glob("update.out.kernel/0*")).write_bytes(b"")
    records = {name: (tmp_path / name).stat().st_mtime_ns for name in ("config_resolved.yaml", "manifest.json")}
    with pytest.raises(ConfigError, match=r"/checkpoints/2: a damaged checkpoint\? It cannot be read"):
        run_app(tmp_path, "trainer.steps=3")
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in records} == records


def test_a_run_that_saved_no_checkpoint_is_started_again_only_under_its_own_settings(tmp_path, completed_run):
    """It was trained over under others: its records, metrics and renderings replaced silently."""
    completed_run(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints")  # as a job killed before its first checkpoint
    (tmp_path / "summary.json").unlink()
    records = (tmp_path / "config_resolved.yaml").read_text()
    with pytest.raises(ConfigError) as refused:
        run_app(tmp_path, "trainer.steps=2", "seed=1")
    assert str(refused.value) == (
        f"{tmp_path} holds a run with other settings (seed: 0 -> 1) that saved no checkpoint: give this one another "
        "run dir"
    )
    assert (tmp_path / "config_resolved.yaml").read_text() == records
    assert run_app(tmp_path, "trainer.steps=3")["step"] == 3  # its own settings (the trainer's may change)


@pytest.mark.parametrize("cut_to", [0, 50, 63], ids=["empty", "parses_cut_short", "no_yaml"])
def test_a_damaged_record_of_the_settings_is_one_line(tmp_path, completed_run, cut_to):
    """Not YAML: a traceback; cut short but YAML: a false "other settings" refusal, or (empty)
    no check at all, the run skipped under any seed."""
    completed_run(tmp_path)
    record = tmp_path / "config_resolved.yaml"
    record.write_text(record.read_text()[:cut_to])
    with pytest.raises(ConfigError, match=r"config_resolved\.yaml cannot be read \(.+\): it records the run's"):
        run_app(tmp_path, "trainer.steps=2", "seed=1")


def test_a_completed_run_without_checkpoints_is_not_offered_as_weights(tmp_path, completed_run):
    completed_run(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(ConfigError) as refused:
        run_app(tmp_path, "trainer.steps=2", "seed=1")
    assert str(refused.value).endswith("(seed: 0 -> 1): give this one another run dir")


def test_a_run_that_logged_nothing_may_be_retried_with_other_settings(tmp_path, completed_run):
    """Out of memory before its first step, say: the advice is a smaller grid, in the same run dir."""
    completed_run(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints")
    (tmp_path / "summary.json").unlink()
    (tmp_path / "metrics.jsonl").write_text("")
    assert run_app(tmp_path, "trainer.steps=2", "task.target_size=7")["step"] == 2


def test_a_warm_start_from_another_model_is_refused_before_the_run_dir_is_written(tmp_path, capsys):
    source, target = tmp_path / "source", tmp_path / "target"
    run_app(source, "trainer.steps=1")
    capsys.readouterr()
    with pytest.raises(ConfigError, match=r"does not fit this config \(incompatible shapes"):
        run_app(target, "num_channels=8", f"trainer.init_from={source}")
    assert not (target / "config_resolved.yaml").exists() and "training in" not in capsys.readouterr().err
    run_app(target, "trainer.steps=1", f"trainer.init_from={source}")  # the same model warm-starts
    assert (target / "summary.json").is_file()


def test_fit_refuses_to_resume_a_run_of_another_grid(tmp_path):
    """From Python, fit on a run dir with another task's grid carried the run on without a word."""
    fit(tmp_path, "trainer.steps=2")
    with pytest.raises(ConfigError, match=r"trained on a 12x12 grid, this task's is 14x14: resume it with its own"):
        fit(tmp_path, "trainer.steps=4", "task.padding=3")
    assert RunCheckpointer(tmp_path / "checkpoints", create=False).latest_step() == 2
