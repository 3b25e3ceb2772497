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


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def manifest(seed: int) -> dict:
    """Git SHA and dirty flag (when run from a checkout), package versions, seed, host and devices."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {
        "git_sha": sha,
        "git_dirty": bool(status) if status is not None else None,
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "seed": int(seed),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
    }
