"""One job at a time in a run dir: a second one stops with one line, and a dead job's lock is gone."""

import os
import subprocess
import sys

import pytest

from nca_lab.errors import ConfigError
from nca_lab.train.run_dir_lock import run_dir_lock

from nca_testing import TINY, run_cli


def test_a_held_run_dir_refuses_a_second_holder_until_released(tmp_path):
    refused = pytest.raises(ConfigError, match=rf"is in use by another job \(pid {os.getpid()}\)")
    with run_dir_lock(tmp_path), refused, run_dir_lock(tmp_path):
        pass
    with run_dir_lock(tmp_path):  # released with the block
        pass


@pytest.mark.parametrize("where", [".", "sub"])
def test_a_run_dir_where_a_file_is_is_one_line(tmp_path, where):
    """From Python, ``run(cfg, <a file>)`` raised ``FileExistsError: [Errno 17] File exists``."""
    (tmp_path / "afile").write_text("mine")
    run_dir = tmp_path / "afile" / where
    reason = "a file, not a directory" if where == "." else "Not a directory"
    with pytest.raises(ConfigError, match=rf"^cannot write {tmp_path}/afile[^ ]*: {reason}$"), run_dir_lock(run_dir):
        pass
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_lock_file_that_cannot_be_written_is_one_line(tmp_path):
    """It was an OSError, which ``run`` did not pass on to the other processes of a run (each
    stopped with a line about a lost process) and the command exited 1 for."""
    (tmp_path / ".lock").mkdir()
    with pytest.raises(ConfigError, match=rf"^cannot write {tmp_path}/.lock: Is a directory$"), run_dir_lock(tmp_path):
        pass


def test_the_lock_of_a_killed_job_is_released(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from nca_lab.train.run_dir_lock import "
         "run_dir_lock\nwith run_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(ConfigError, match=rf"pid {holder.pid}"), run_dir_lock(tmp_path):
        pass
    holder.kill()
    holder.wait()
    with run_dir_lock(tmp_path):
        pass


def test_a_job_in_a_run_dir_in_use_stops_with_one_line(tmp_path):
    with run_dir_lock(tmp_path):
        result = run_cli(*TINY, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {tmp_path} is in use by another job (pid {os.getpid()}): wait for it, or give this one another "
        "run dir\n"
    )
    assert not (tmp_path / "metrics.jsonl").exists()
