"""Objects from config nodes, with bad options as one line that names the group.

Hydra's ``instantiate`` reports an unknown option, a value of the wrong type or a failing
constructor as a traceback; the composition root (:mod:`nca_lab.train.run`) builds every
group through :func:`construct` or :func:`checked_factory` instead, so a user's mistake is a
:class:`~nca_lab.errors.ConfigError` before anything is compiled. Part of the composition
root, split off :mod:`nca_lab.train.run`: with it, the only module that reads config nodes.
"""

import functools
import inspect
import typing
from collections.abc import Iterable
from contextlib import contextmanager

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from nca_lab.errors import ConfigError, is_integer, one_line, require


def construct(node: DictConfig, group: str, **supplied):
    """Instantiate a ``_partial_`` config node with the sizes only code knows (checked by :func:`checked_factory`)."""
    factory = checked_factory(node, group, supplied)
    with config_errors(group):
        return factory(**supplied)


def checked_factory(node: DictConfig, group: str, supplied: Iterable[str]) -> functools.partial:
    """The ``_partial_`` of a config node, its options checked against the constructor.

    The options and the ``supplied`` names are bound against the constructor, so an unknown
    option (say ``+task.colour=red``) is one line naming the group, not a ``TypeError``
    traceback; an option annotated ``int``, ``float`` or ``bool`` must hold one
    (``task.target_size=1.5`` was truncated, ``task.centre_on_body=no`` read as true), one
    annotated ``Literal[...]`` one of its values (``logger.mode=ofline`` is refused before the
    model is built, not after); an optional one (``int | None``) may also be null.
    """
    supplied = tuple(supplied)
    named = ", ".join(f"{name}=" for name in supplied)
    require(node.get("_partial_") is True, f"the {group} config needs _partial_: true (nca_lab passes {named})")
    with config_errors(group):
        factory = instantiate(node)
    target = factory.func
    # the constructor's own signature (nnx's metaclass shows ``*args, **kwargs``)
    signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        for name in supplied:
            require(name in signature.parameters, f"{target.__qualname__} must take {name}= (nca_lab passes {named})")
    options = {**factory.keywords, **dict.fromkeys(supplied)}  # code's win over the yaml's (``logger.group``)
    try:
        signature.bind(*((None,) if inspect.isclass(target) else ()), *factory.args, **options)
    except TypeError as err:
        raise ConfigError(f"unknown or missing option for {group}: {err}") from None
    for name, value in factory.keywords.items():
        parameter = signature.parameters.get(name)  # None: taken by a ``**kwargs``
        kind, optional = _without_none(inspect.Parameter.empty if parameter is None else parameter.annotation)
        if value is None and optional:
            continue
        number = is_integer(value) or isinstance(value, float)
        require(kind not in (int, "int") or is_integer(value), f"{group}.{name} must be an integer, got {value!r}")
        require(kind not in (float, "float") or number, f"{group}.{name} must be a number, got {value!r}")
        switch = isinstance(value, bool)
        require(kind not in (bool, "bool") or switch, f"{group}.{name} must be true or false, got {value!r}")
        choices = _literal_values(kind)
        if choices is not None and value not in choices:
            allowed = ", ".join(map(repr, choices)) + (", null" if optional else "")
            raise ConfigError(f"{group}.{name} must be one of {allowed}, got {value!r}")
    return factory


def _without_none(kind) -> tuple[object, bool]:
    """``(X, True)`` for an optional annotation ``X | None``, ``(kind, False)`` for any other."""
    members = typing.get_args(kind)
    if typing.get_origin(kind) is not typing.Literal and len(members) == 2 and type(None) in members:
        (other,) = (m for m in members if m is not type(None))
        return other, True
    return kind, False


def _literal_values(kind) -> tuple | None:
    """The values a ``Literal[...]`` annotation allows; ``None`` for others."""
    return typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None


@contextmanager
def config_errors(group: str):
    """Turn errors of building ``group`` from its config into one-line :class:`ConfigError`s.

    A :class:`ConfigError` raised by a constructor is re-raised as is; a ``TypeError`` or
    ``ValueError`` (a value a constructor did not check, an unexpected keyword) names the group;
    anything else from Hydra's ``instantiate`` (an unknown option) keeps its first line.
    """
    try:
        yield
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        if isinstance(exc.__cause__, (TypeError, ValueError)):
            raise ConfigError(f"a bad value for {group}: {one_line(exc.__cause__)}") from exc
        raise ConfigError(one_line(exc)) from exc
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"a bad value for {group}: {one_line(err)}") from err
