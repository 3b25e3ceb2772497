"""The one exception type nca_lab reports to users as a single line, that line, and the checks that raise it."""

import difflib
import numbers
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


class ConfigError(ValueError):
    """A bad setting or an input nca_lab cannot use, shown as one line: a setting, a model file,
    a damaged checkpoint or record, a run dir another process holds.

    The entry points print ``error: <message>`` and exit with status 2 instead of a
    traceback, so the message must say what is wrong and, where it helps, how to fix it.
    """


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed: Python's ``MemoryError``, or XLA's
    ``RESOURCE_EXHAUSTED`` status (a ``JaxRuntimeError``, or a ``ValueError`` where it fails as
    a computation is dispatched)."""
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err)


@contextmanager
def out_of_memory_as(error: Callable[[BaseException], Exception]) -> Iterator[None]:
    """Run the block; an allocation that fails in it (:func:`out_of_memory`) is raised as
    ``error(err)``, one line instead of XLA's report and the traceback under it."""
    try:
        yield
    except Exception as err:
        if not out_of_memory(err):
            raise
        raise error(err) from None


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def is_number(value) -> bool:
    """``value`` is a real number, Python's or NumPy's, and not a bool (``b1=true`` is no decay)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def numbers_of(value, setting: str, what: str) -> tuple[float, ...]:
    """``value``, a list of numbers, as floats; else :class:`ConfigError` "``setting`` must be
    ``what``": a number or a string where a list belongs (``task.damage_radius=10``) was
    ``'int' object is not iterable``."""
    listed = isinstance(value, Iterable) and not isinstance(value, str | bytes) and getattr(value, "ndim", 1) == 1
    items = [_scalar(item) for item in value] if listed else None  # ndim: a 0-d array iterates to an error
    require(items is not None and all(map(is_number, items)), f"{setting} must be {what}, got {value!r}")
    return tuple(map(float, items))


def _scalar(item):
    """A NumPy or JAX 0-d array as its Python number (``jnp.linspace``'s items), else ``item``."""
    return item.item() if getattr(item, "ndim", None) == 0 and hasattr(item, "item") else item


def is_integer(value) -> bool:
    """``value`` is an integer, Python's or NumPy's (``np.arange`` in a notebook's sweep), and
    not a bool (a config's ``2.5`` or ``true`` is no count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def os_reason(err: OSError) -> str:
    """Why an OS call failed, in words: a directory made where a file is ("File exists") says so."""
    in_the_way = isinstance(err, FileExistsError) and err.filename and os.path.isfile(err.filename)
    return "a file, not a directory" if in_the_way else err.strerror or str(err)


def one_line(err: BaseException, *, _said: str = "") -> str:
    """``err``'s message as one line: Hydra's and OmegaConf's span several, with a cause
    (``_said``: what the line around a cause says already)."""
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {os_reason(err)}"
    lines, where = [], None
    for line in str(err).splitlines():
        if line.startswith("Config search path"):
            break
        key = re.fullmatch(r"\s*full_key: (\S+)", line)  # OmegaConf's: the setting the error is in
        where = where or (key and key[1])
        if line.strip() and not re.fullmatch(r"\s*(\^|full_key:.*|(object|reference)_type=.*)", line):
            lines.append(line.strip())
    if where and where not in " ".join([_said, *lines]):  # "Interpolation key 'x' not found": in which setting?
        lines.append(f"(in {where})")
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause) not in str(err):
        lines.append(f"({one_line(cause, _said=' '.join([_said, *lines]))})")
    return " ".join(lines)


#: The seeds JAX tells apart: ``jax.random.key`` keeps the low 32 bits (``2**32 + s`` draws as
#: ``s``, ``-1`` as ``2**32 - 1``) and a seed of 2**63 or more does not convert at all.
SEEDS = range(2**32)


def nearest(name: str, names: list[str], where: str = "") -> str:
    """The hint for a mistyped setting ``name`` in ``where`` (a group; "" for the top level):
    the nearest of ``names`` or, none near, all of them."""
    close = closest(name, names)
    prefix = f"{where}." if where else ""
    if close:
        return f"did you mean {prefix}{close}?"
    return f"the {where or 'top-level'} settings: {', '.join(names)}" if names else f"{where} takes no settings"


def closest(name: str, names: list[str]) -> str | None:
    """The one of ``names`` that ``name`` most likely meant: the nearest by difflib's ratio or,
    none near, the shortest that begins with it (``Sobel`` for ``SobelPerceive``, too short
    for the ratio; 3 characters at least), matching case first; ``None`` if neither."""
    close = difflib.get_close_matches(name, names, n=1)
    if close or len(name) < 3:
        return close[0] if close else None
    longer = [n for n in names if n.startswith(name)] or [n for n in names if n.lower().startswith(name.lower())]
    return min(longer, key=len, default=None)
