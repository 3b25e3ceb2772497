"""JAX process settings that only work before JAX initialises.

Reference: JAX docs, "Persistent compilation cache" and "GPU memory allocation".
"""

import os
from pathlib import Path


def configure_jax_environment() -> None:
    """Set defaults for a training process, keeping anything the user already set.

    * A persistent compilation cache shared by every job (``NCA_LAB_CACHE_DIR`` or
      ``~/.cache/nca_lab/jax``), so a sweep compiles each shape once.
    * No GPU memory preallocation, so several jobs can share a GPU.
    """
    cache = os.environ.get("NCA_LAB_CACHE_DIR", str(Path.home() / ".cache" / "nca_lab" / "jax"))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
