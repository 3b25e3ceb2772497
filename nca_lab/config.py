"""The app's Hydra config: where it lives, and composing it from overrides outside the app.

Its files are ``conf/`` at the top of a checkout, ``nca_lab/conf`` in a wheel: the top-level
``conf/`` is the one source of truth; the wheel build copies it into the package
(``pyproject.toml``, ``force-include``), so the app finds its configs both from an editable
install and from an installed wheel.
"""

import re
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The directory holding ``config.yaml`` and the config groups."""
    packaged = _PACKAGE / "conf"
    return packaged if (packaged / "config.yaml").is_file() else _PACKAGE.parent / "conf"


def compose(*overrides: str):
    """The app's config with ``overrides`` (``"task=diffusing"``, ``"trainer.steps=20"``), as
    ``python -m nca_lab`` composes it, for a notebook or a script: hand it to
    :func:`nca_lab.train.run.build` or :func:`~nca_lab.train.run.run`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=[quote_non_ascii(o) for o in overrides])


_OVERRIDE = re.compile(r"([~+]{0,2}[\w.@/-]+)=(.*)", re.DOTALL)


def quote_non_ascii(arg: str) -> str:
    """``task.target=🦋`` as Hydra can parse it: ``task.target='🦋'``.

    Hydra's override grammar has no unquoted non-ASCII characters, so the most natural way
    to pick an emoji target was a parse error. Each comma-separated value (a sweep's choices)
    that has one is quoted; arguments already using quotes, lists or functions are left alone.
    """
    match = _OVERRIDE.fullmatch(arg)
    if not match or arg.isascii() or any(c in match[2] for c in "'\"[]{}()"):
        return arg
    return f"{match[1]}=" + ",".join(v if v.isascii() else f"'{v}'" for v in match[2].split(","))
