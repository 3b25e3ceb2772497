"""The run manifest names nca_lab's own commit, and no other repository's."""

import shutil
import subprocess

import pytest

from nca_lab.log import manifest as manifest_module
from nca_lab.log.manifest import checkout, git_state, manifest

from nca_testing import REPO

HAS_GIT = shutil.which("git") is not None


def test_a_checkout_reports_its_commit():
    if not (HAS_GIT and (REPO / ".git").exists()):  # a source tree without git: no commit to report
        assert checkout() is None and manifest(seed=3)["git_sha"] is None
        return
    assert checkout() == REPO
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    assert manifest(seed=3)["git_sha"] == head.stdout.strip()


def test_a_package_inside_another_repository_is_not_a_checkout(tmp_path):
    project = tmp_path / "project"
    site_packages = project / ".venv" / "lib" / "python3.11" / "site-packages"
    site_packages.mkdir(parents=True)
    if HAS_GIT:
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        assert checkout(project) == project
    assert checkout(site_packages) is None


@pytest.mark.skipif(not HAS_GIT, reason="needs git")
def test_git_dirty_says_whether_tracked_files_changed(tmp_path, monkeypatch):
    def git(*args):
        config = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        subprocess.run(["git", *config, *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "a")
    monkeypatch.setattr(manifest_module, "checkout", lambda: tmp_path)
    (tmp_path / "untracked.txt").write_text("not part of the code")
    assert git_state()["git_dirty"] is False and git_state()["git_untracked"] == []
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state()["git_dirty"] is True
    (tmp_path / "nca_lab" / "tasks").mkdir(parents=True)
    (tmp_path / "nca_lab" / "tasks" / "mine.py").write_text("class Mine: ...\n")  # the run used it, the commit lacks it
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.yaml").write_text("_target_: nca_lab.tasks.mine.Mine\n")
    assert git_state()["git_untracked"] == ["conf/mine.yaml", "nca_lab/tasks/mine.py"]
