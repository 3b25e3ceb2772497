"""Where the Hydra configs live: ``conf/`` at the top of a checkout, ``nca_lab/conf`` in a wheel.

The top-level ``conf/`` is the one source of truth; the wheel build copies it into the
package (``pyproject.toml``, ``force-include``), so the app finds its configs both from an
editable install and from an installed wheel.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The directory holding ``config.yaml`` and the config groups."""
    packaged = _PACKAGE / "conf"
    return packaged if (packaged / "config.yaml").is_file() else _PACKAGE.parent / "conf"
