"""The wheel carries conf/ inside the package, so `python -m nca_lab` works from an install."""

import os
import subprocess
import sys
import zipfile

from nca_testing import REPO


def test_wheel_ships_the_configs_and_runs_from_them(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("nca_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert {f"nca_lab/conf/{c}" for c in conf} <= names
    assert "nca_lab/__main__.py" in names and not any(n.startswith("tests/") for n in names)

    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    shown = subprocess.run(
        [sys.executable, "-c", "import nca_lab.config as c; print(c.config_dir())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.stdout.strip() == str(site / "nca_lab" / "conf")
    composed = subprocess.run(
        [sys.executable, "-m", "nca_lab", "--cfg", "job", "perceive=learned"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert "LearnedPerceive" in composed.stdout and "GrowingTask" in composed.stdout


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    test_command = next(line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line)
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
