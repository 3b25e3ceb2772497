"""W&B logging read back from offline run files; never blocking or failing a run."""

from types import SimpleNamespace

import pytest

from nca_lab.log import wandb as wandb_logger

from nca_testing import TINY, run_cli
from wandb_records import read_run

WANDB_TINY = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb", "logger.mode=offline"]


def test_offline_run_holds_config_history_summary_and_media(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*WANDB_TINY, "trainer.steps=3", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    run = read_run(run_dir)
    assert len(run["runs"]) == 1
    assert {"perceive", "update", "task", "trainer", "seed", "manifest"} <= set(run["config"])
    assert run["config"]["trainer"]["steps"] == 3
    choices = {"perceive": "sobel", "update": "residual", "task": "growing", "trainer": "default", "logger": "wandb"}
    assert run["config"]["choices"] == {**choices, "experiment": None}  # to filter a sweep's runs by: perceive=sobel
    assert run["config"]["manifest"]["seed"] == 0 and "jax" in run["config"]["manifest"]["packages"]
    keys = set().union(*run["history"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/steps_per_s", "eval/mse"} <= keys
    assert "media/rollout/path" in keys and "media/final/path" in keys
    assert run["summary"]["train/loss"] > 0 and "eval/mse" in run["summary"]
    files = run["runs"][0].parent / "files"
    assert (files / "config_resolved.yaml").is_file() and (files / "manifest.json").is_file()
    assert any(files.glob("media/videos/**/*.gif")) and any(files.glob("media/images/**/*.png"))


def test_falls_back_to_offline_when_online_init_fails(tmp_path, monkeypatch, capsys):
    import wandb

    real_init = wandb.init
    online_timeouts = []

    def failing_online_init(*args, mode=None, **kwargs):
        if mode == "online":
            online_timeouts.append(kwargs["settings"].init_timeout)  # how long W&B may try: init_timeout
            raise TimeoutError("no network")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", failing_online_init)
    monkeypatch.setattr(wandb_logger, "_has_api_key", lambda _: True)
    logger = wandb_logger.WandbLogger(config={"a": 1}, run_dir=tmp_path, name="t", mode="online", init_timeout=1)
    assert logger.mode == "offline" and online_timeouts == [1.0]
    logger.log({"loss": 1.0}, 1)
    logger.finish({"loss": 1.0})
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "logging offline" in err
    assert any(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_no_api_key_means_offline_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(wandb_logger, "_has_api_key", lambda _: False)
    logger = wandb_logger.WandbLogger(config={}, run_dir=tmp_path, name="t", mode="online")
    logger.finish()
    err = capsys.readouterr().err
    assert logger.mode == "offline" and "no W&B API key" in err
    assert f"wandb sync {tmp_path}/wandb/latest-run" in err  # what to run once online
    assert (tmp_path / "wandb" / "latest-run").resolve() == next(tmp_path.glob("wandb/offline-run-*"))


def test_wandb_mode_environment_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = wandb_logger.WandbLogger(config={}, run_dir=tmp_path, name="t")
    logger.finish()
    assert logger.mode == "disabled" and not (tmp_path / "wandb").exists()


def test_unknown_mode_is_a_config_error(tmp_path):
    from nca_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="logger.mode"):
        wandb_logger.WandbLogger(config={}, run_dir=tmp_path, name="t", mode="sometimes")


def test_disabled_mode_writes_nothing_and_does_not_fail(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    logger = wandb_logger.WandbLogger(config={}, run_dir=tmp_path, name="t", mode="disabled")
    logger.log({"loss": 1.0}, 1)
    logger.finish({"loss": 1.0})
    assert not (tmp_path / "wandb").exists()


def test_a_run_resumes_its_own_w_and_b_run_and_one_resumed_elsewhere_gets_a_new_one(tmp_path):
    from nca_lab.config import compose
    from nca_lab.train.run import run

    from wandb_records import finished_records

    def run_ids(run_dir):
        return [
            r.run.run_id
            for f in read_run(run_dir)["runs"]
            for r in finished_records(f)
            if r.WhichOneof("record_type") == "run"
        ]

    first, second = tmp_path / "first", tmp_path / "second"
    run(compose(*WANDB_TINY, "trainer.steps=2"), first)
    (first / "summary.json").unlink()  # as if stopped before its end
    run(compose(*WANDB_TINY, "trainer.steps=3"), first)
    run(compose(*WANDB_TINY, "trainer.steps=4", f"trainer.resume={first}"), second)
    (first_id,) = set(run_ids(first))  # two starts, one W&B run
    assert len(run_ids(first)) == 2
    assert run_ids(second) and first_id not in run_ids(second)  # its own run dir, its own W&B run


def test_a_resumed_offline_run_holds_the_whole_history(tmp_path):
    """W&B buffers an offline run's file in 32 KiB blocks: a job killed (or stopped in its final
    evaluation) left a file of 7 bytes. The resumed run's file logs the earlier steps again,
    and the earlier renderings (``renders/<step>/``): it had the scalars only."""
    import shutil

    from nca_lab.config import compose
    from nca_lab.log.metrics_file import read_metrics
    from nca_lab.train.run import run

    settings = compose(
        *WANDB_TINY, "trainer.steps=4", "trainer.checkpoint_every=2", "trainer.log_every=1", "trainer.render_every=1"
    )
    run(settings, tmp_path)
    for lost in ("summary.json", "checkpoints/4", "wandb"):  # died after step 3, its W&B file lost
        shutil.rmtree(tmp_path / lost) if (tmp_path / lost).is_dir() else (tmp_path / lost).unlink()
    run(settings, tmp_path)
    history = read_run(tmp_path)["history"]
    logged = {row["_step"]: row["train/loss"] for row in history if "train/loss" in row}
    assert logged == {r["step"]: r["loss"] for r in read_metrics(tmp_path) if "loss" in r}
    assert sorted(logged) == [1, 2, 3, 4]
    pictures = [row["_step"] for row in history if {"media/final/path", "media/rollout/path"} <= row.keys()]
    assert pictures == [1, 2, 3, 4]  # in step order, once each
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == ["1", "2", "3", "4"]
    assert (tmp_path / "final.png").read_bytes() == (tmp_path / "renders" / "4" / "final.png").read_bytes()


def test_a_failed_run_says_why_and_a_preempted_one_is_marked_so(tmp_path, monkeypatch):
    """A diverged run's W&B run held an exit code and nothing else; a preempted one (SIGTERM, a
    checkpoint saved, to be requeued) showed as failed."""
    from nca_lab.config import compose
    from nca_lab.train import trainer as trainer_module
    from nca_lab.train.run import run

    from wandb_records import finished_records

    diverged = tmp_path / "diverged"
    with pytest.raises(trainer_module.TrainingDiverged):
        run(compose(*WANDB_TINY, "trainer.learning_rate.init_value=1e38", "trainer.log_every=1"), diverged)
    error = read_run(diverged)["summary"]["error"]
    assert error.startswith("TrainingDiverged: training diverged at step ")

    def stopped(*args, logger, **kwargs):
        logger()  # fit opens the run once it has read what it resumes
        raise trainer_module.Preempted("stopped after step 1; checkpoint saved")

    monkeypatch.setattr(trainer_module.Trainer, "fit", stopped)
    preempted = tmp_path / "preempted"
    with pytest.raises(trainer_module.Preempted):
        run(compose(*WANDB_TINY), preempted)
    (file,) = read_run(preempted)["runs"]
    kinds = [record.WhichOneof("record_type") for record in finished_records(file)]
    assert "preempting" in kinds and "error" not in read_run(preempted)["summary"]


def test_a_signal_outside_the_training_steps_closes_the_run_as_preempted(tmp_path, monkeypatch):
    """Before the first step or in the final evaluation the command exits at once (nothing to
    save); the W&B run was left "running", its file without an exit record."""
    import os
    import signal

    from nca_lab.config import compose
    from nca_lab.runtime import stop_on_signals
    from nca_lab.train import trainer as trainer_module
    from nca_lab.train.run import run

    from wandb_records import finished_records

    class Exited(Exception):
        pass

    def exit_now(status):
        raise Exited(status)

    def final_evaluation_stopped(*args, logger, **kwargs):
        logger()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # the command's handler, as a signal runs it

    previous = stop_on_signals("stopped: outside the training steps")
    try:
        monkeypatch.setattr(os, "_exit", exit_now)
        monkeypatch.setattr(trainer_module.Trainer, "fit", final_evaluation_stopped)
        with pytest.raises(Exited, match="143"):
            run(compose(*WANDB_TINY), tmp_path)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    (file,) = read_run(tmp_path)["runs"]
    kinds = [record.WhichOneof("record_type") for record in finished_records(file)]
    assert "preempting" in kinds and kinds[-1] == "exit"


def test_a_finished_resumed_run_drops_an_earlier_attempts_error():
    calls = []
    run = SimpleNamespace(summary={"error": "OSError: disk full"}, finish=lambda exit_code: calls.append(exit_code))
    logger = object.__new__(wandb_logger.WandbLogger)
    logger.run = run
    logger.finish({"loss": 0.5})
    assert run.summary == {"train/loss": 0.5} and calls == [0]


@pytest.mark.parametrize(
    ("tags", "expected"), [("ablation", ("ablation",)), (2024, ("2024",)), (["a", 2], ("a", "2")), (None, ())]
)
def test_one_tag_given_as_a_string_is_one_tag(tmp_path, tags, expected):
    """``logger.tags=ablation`` (or a sweep's ``-m logger.tags=a,b``) tagged the run a, b, l, ..."""
    logger = wandb_logger.WandbLogger(config={}, run_dir=tmp_path, name="t", mode="offline", tags=tags)
    try:
        assert tuple(logger.run.tags) == expected
    finally:
        logger.finish({})
