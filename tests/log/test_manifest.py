"""The run manifest names nca_lab's own commit, and no other repository's."""

import shutil
import subprocess

from nca_lab.log.manifest import checkout, manifest

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
