"""A reproducibility manifest: what code, packages, seed and machine produced a run."""

import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import jax

PACKAGES = (
    "nca_lab",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "hydra-core",
    "omegaconf",
    "numpy",
    "wandb",
)


#: The directory holding the ``nca_lab`` package: a git checkout's root when installed with ``-e``.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def _git(*args: str, cwd: Path = PACKAGE_PARENT) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def checkout(package_parent: Path = PACKAGE_PARENT) -> Path | None:
    """The git checkout nca_lab runs from, or ``None`` for an installed wheel.

    Only a repository whose root holds the package counts: a wheel in a virtualenv inside
    some other repository must not report that repository's commit as nca_lab's.
    """
    top = _git("rev-parse", "--show-toplevel", cwd=package_parent)
    return package_parent if top and Path(top).resolve() == package_parent.resolve() else None


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or ``None`` if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> dict:
    """``git_sha``, ``git_dirty`` (uncommitted changes to tracked files) and ``git_untracked``
    (files of the package and its configs that git does not track: a new task module and its
    yaml, which the run used but the commit lacks) of the checkout nca_lab runs from; all
    ``None`` for an installed wheel."""
    root = checkout()
    sha = _git("rev-parse", "HEAD", cwd=root) if root else None
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=root) if sha else None
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", "nca_lab", "conf", cwd=root) if sha else None
    return {
        "git_sha": sha,
        "git_dirty": bool(status) if status is not None else None,
        "git_untracked": untracked.splitlines() if untracked is not None else None,
    }


def manifest(seed: int) -> dict:
    """Git SHA and dirty flag (when run from a checkout), package versions, seed, host and devices."""
    return {
        **git_state(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "seed": int(seed),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
    }
