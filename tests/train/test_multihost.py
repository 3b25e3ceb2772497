"""Two processes train one run (``distributed.enabled=true``, JAX's multi-controller model on
CPU devices, over Gloo): the losses of one process, each file written once, one W&B run, a
stop signal to one process stopping both after the same step, and settings that differ
between the processes refused by both."""

import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from jax.errors import JaxRuntimeError
from omegaconf import OmegaConf

from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.log.metrics_file import read_metrics
from nca_lab.train import multihost
from nca_lab.train.run import run

from nca_testing import REPO, TINY, run_cli

OVERRIDES = [*TINY, "trainer.data_parallel=true", "trainer.log_every=1", "trainer.render_every=0"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _start(
    run_dir, *overrides: str, per_process: tuple[list[str], list[str]] = ([], []), prelude: str = ""
) -> list[tuple]:
    """Start two ``python -m nca_lab`` processes of one run (one CPU device each); return
    ``(process, stderr file)`` pairs (files, not pipes: one full pipe would stall both processes).
    ``prelude``: Python that process 1 runs first (its ``python -m nca_lab`` then run by runpy)."""
    address = f"localhost:{_free_port()}"
    shared = [*OVERRIDES, *overrides, f"hydra.run.dir={run_dir}", "distributed.enabled=true"]
    started = []
    for index in range(2):
        own = [f"distributed.coordinator_address={address}", "distributed.num_processes=2"]
        own += [f"distributed.process_id={index}", *per_process[index]]
        err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _finish
        command = [sys.executable, "-m", "nca_lab", *shared, *own]
        if prelude and index == 1:
            command[1:3] = ["-c", f"{prelude}\nimport runpy\nrunpy.run_module('nca_lab', run_name='__main__')"]
        started.append((subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err), err))
    return started


def _finish(started: list[tuple]) -> list[tuple[int, str]]:
    """Each process's exit status and stderr (killed after 4 minutes)."""
    results = []
    for process, err in started:
        try:
            process.wait(timeout=240)
        finally:
            process.kill()
        err.seek(0)
        results.append((process.returncode, err.read().decode()))
        err.close()
    return results


def _losses(run_dir) -> dict[int, float]:
    records = read_metrics(run_dir)
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"metrics lines written more than once: {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_two_processes_train_one_run_as_one_process_does(tmp_path):
    run_dir = tmp_path / "two"
    first = _finish(_start(run_dir, "logger=wandb", "logger.mode=offline"))
    assert [status for status, _ in first] == [0, 0], first
    assert all(f"training in {run_dir}" in err for _, err in first)
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1  # process 0's W&B run only
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2"]

    # On: resumed from step 2 by both processes; a SIGTERM to process 1 alone stops both after one step.
    (run_dir / "summary.json").unlink()
    processes = _start(run_dir, "trainer.steps=1000")
    deadline = time.monotonic() + 180
    while max(_losses(run_dir), default=0) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    processes[1][0].send_signal(signal.SIGTERM)
    second = _finish(processes)
    assert [status for status, _ in second] == [143, 143], second
    assert all(f"resuming {run_dir}/checkpoints/2" in err for _, err in second)
    stopped = {err.strip().splitlines()[-1] for _, err in second}
    assert len(stopped) == 1 and "stopped: by a signal after step" in stopped.pop()
    last = max(int(p.name) for p in (run_dir / "checkpoints").iterdir())
    assert all(f"after step {last};" in err for _, err in second)

    one = tmp_path / "one"  # one process, in this one
    run(compose(*OVERRIDES, f"trainer.steps={last}", "trainer.data_parallel=false"), one)
    two = _losses(run_dir)
    assert sorted(two) == list(range(1, last + 1))
    assert two == pytest.approx(_losses(one), rel=1e-5)


def test_processes_with_other_settings_are_all_refused(tmp_path):
    results = _finish(_start(tmp_path / "run", per_process=([], ["seed=1"])))
    assert [status for status, _ in results] == [2, 2], results
    for _, err in results:
        assert err.strip().splitlines()[-1] == (
            "error: the processes differ in settings.seed: process 0 0, process 1 1: "
            "start every process with the same command"
        )
    assert not (tmp_path / "run" / "config_resolved.yaml").exists()


def test_a_distributed_run_must_be_data_parallel(tmp_path):
    results = _finish(_start(tmp_path / "run", "trainer.data_parallel=false"))
    assert [status for status, _ in results] == [2, 2], results
    assert all("trainer.data_parallel=true" in err.strip().splitlines()[-1] for _, err in results)


def test_a_process_0_failure_to_start_stops_both(tmp_path):
    (tmp_path / "run" / "manifest.json").mkdir(parents=True)  # process 0 cannot write its run records
    results = _finish(_start(tmp_path / "run"))
    assert [status for status, _ in results] == [1, 1], results
    lines = [err.strip().splitlines()[-1] for _, err in results]
    assert lines[0].startswith("error: ") and "manifest.json" in lines[0]
    assert lines[1].startswith("error: process 0: ") and "manifest.json" in lines[1]


def test_a_run_dir_process_0_cannot_lock_stops_both_with_its_line(tmp_path):
    """The lock file's OSError reached only process 0; the other stopped on a lost process."""
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    results = _finish(_start(tmp_path / "run"))
    line = f"error: process 0: cannot write {tmp_path / 'run' / '.lock'}: Is a directory"
    assert [(status, err.strip().splitlines()[-1]) for status, err in results] == [(2, line), (2, line)], results


def test_sigterm_outside_the_training_steps_still_stops_a_distributed_process():
    """JAX's preemption service took SIGTERM from the app's handler: a job stopped before or
    after its training steps ran on (to the end, exit 0)."""
    script = (
        "import os, signal, time\n"
        "from nca_lab.runtime import stop_on_signals\n"
        "stop_on_signals('stopped outside')\n"
        "from nca_lab.train import multihost\n"
        f"multihost.initialize(True, 'localhost:{_free_port()}', 1, 0)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(5)\n"
        "print('ran on')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (143, "")
    assert result.stderr.strip().splitlines()[-1] == "stopped outside"


def test_a_lost_process_stops_the_other_at_once_with_one_line(tmp_path):
    """Killed mid-run (its host lost): the other process's step fails, and it exits with one
    error line instead of waiting 100 s at exit for the lost one (JAX's heartbeat), then aborting."""
    run_dir = tmp_path / "run"
    processes = _start(run_dir, "trainer.steps=1000")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (
        (run_dir / "metrics.jsonl").exists() and max(_losses(run_dir), default=0) >= 3
    ):
        time.sleep(0.2)
    processes[1][0].kill()
    killed_at = time.monotonic()
    (status, err), _ = _finish(processes)
    assert (status, time.monotonic() - killed_at < 30) == (1, True), err[-3000:]
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("error: this process's computation failed, as when another process of the run is lost (")
    )


@pytest.mark.parametrize(
    ("failure", "sweep", "last_line"),
    [
        ("KeyError('a bug in process 1')", False, "KeyError: 'a bug in process 1'"),
        ("OSError(28, 'No space left on device')", False, "error: [Errno 28] No space left on device"),
        ("OSError(28, 'No space left on device')", True, "error: {job}: [Errno 28] No space left on device"),
    ],
    ids=["bug", "write", "write-in-sweep"],
)
def test_a_failure_of_one_process_stops_both_at_once(tmp_path, failure, sweep, last_line):
    """An error that one process of a distributed run meets alone, a bug (its traceback) or a
    file it cannot write (one line): it exits 1 at once, not waiting at exit for the other,
    which waits for it in the step's collective (both still waited 300 s later); the other
    then finds it gone (one line). In a sweep too: its next job cannot run without the other."""
    fail_in_process_1 = (
        "from nca_lab.train import multihost\n"
        "original, calls = multihost.any_process, []\n"
        "def any_process(flag):\n"
        "    calls.append(flag)\n"
        "    if len(calls) == 3:\n"
        f"        raise {failure}\n"
        "    return original(flag)\n"
        "multihost.any_process = any_process"
    )
    one_job_sweep = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=job"]
    in_sweep = one_job_sweep if sweep else []
    started = time.monotonic()
    processes = _start(tmp_path / "run", "trainer.steps=1000", *in_sweep, prelude=fail_in_process_1)
    (status, err), (failed_status, failed_err) = _finish(processes)
    assert time.monotonic() - started < 120, (err[-2000:], failed_err[-2000:])
    assert (status, failed_status) == (1, 1)
    assert failed_err.strip().splitlines()[-1] == last_line.format(job=tmp_path / "sweep" / "job")
    assert err.strip().splitlines()[-1].startswith("error: this process's computation failed")


def test_a_failed_computation_is_told_from_a_bug():
    """A collective that fails as it is dispatched raises a ``ValueError`` worded as a status
    (measured: a peer gone before a jitted all-reduce or all-gather); those, and every
    ``JaxRuntimeError``, are the one-line lost-process exit; any other error keeps its traceback."""
    reset = "UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error [127.0.0.1]:3983: Connection reset by peer"
    assert multihost.failed_computation(ValueError(reset))
    assert multihost.failed_computation(JaxRuntimeError("INTERNAL: Gloo all-reduce failed"))
    assert not multihost.failed_computation(ValueError("operands could not be broadcast together"))
    assert not multihost.failed_computation(RuntimeError(reset))


def test_distributed_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="distributed.num_processes must be an integer >= 1"):
        run(compose(*TINY, "distributed.enabled=true", "distributed.num_processes=0"), tmp_path)
    with pytest.raises(ConfigError, match="distributed.heartbeat_timeout_seconds must be an integer >= 1, got 0"):
        run(compose(*TINY, "distributed.enabled=true", "distributed.heartbeat_timeout_seconds=0"), tmp_path)
    result = run_cli(*TINY, "distributed.enabled=true", f"hydra.run.dir={tmp_path / 'run'}")  # no cluster here
    assert result.returncode == 2 and result.stderr == (
        "error: distributed.enabled=true: coordinator_address should be defined (set "
        "distributed.coordinator_address, num_processes and process_id where JAX detects no cluster)\n"
    )
    assert OmegaConf.select(compose(*TINY), "distributed.enabled") is False
