"""Objects from config nodes, with bad options as one line that names the group.

Hydra's ``instantiate`` reports an unknown option, a value of the wrong type or a failing
constructor as a traceback; the composition root (:mod:`nca_lab.train.run`) builds the task,
model and logger through :func:`construct` or :func:`checked_factory` instead, so a user's
mistake is a :class:`~nca_lab.errors.ConfigError` before anything is compiled. The trainer
checks its own values (``trainer.steps must be an integer >= 1``: the bound too, for the
Python API as well), so its node gets :func:`check_names` and :func:`config_errors` only.
Part of the composition root, split off :mod:`nca_lab.train.run`, with
:mod:`nca_lab.train.run_settings`; :mod:`nca_lab.config` and :mod:`nca_lab.__main__` are the
Hydra front end, the other readers of config nodes.
"""

import functools
import importlib
import inspect
import typing
from collections.abc import Iterable
from contextlib import contextmanager

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from nca_lab.errors import ConfigError, closest, is_integer, nearest, one_line, require


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
    check_names(node, group, supplied)
    with config_errors(group):
        factory = instantiate_plain(node)
    target = factory.func
    signature = _signature(target)
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


def instantiate_plain(node: DictConfig):
    """Hydra's ``instantiate(node)`` passing plain lists and dicts, what the Python API passes,
    not OmegaConf's containers, unless the node sets its own ``_convert_``."""
    return instantiate(node, _convert_=node.get("_convert_", "all"))


def check_names(node: DictConfig, group: str, supplied: tuple[str, ...] | None = ()) -> None:
    """Check a config node's option names against its ``_target_``'s parameters (and those of
    the nodes in it), before anything is built: a typo is "unknown setting trainer.step (did
    you mean trainer.steps?)", not Python's "unexpected keyword argument", and a missing one
    names the setting. A node given ``supplied`` names (what code passes its constructor, by
    keyword) must be ``_partial_``, its constructor take them and the node not set them; ``None``:
    not known here (a ``_partial_`` node inside another).
    """
    by_code = supplied or ()
    named = ", ".join(f"{name}=" for name in by_code)
    require(
        not by_code or node.get("_partial_") is True,
        f"the {group} config needs _partial_: true (nca_lab passes {named})",
    )
    for name, value in node.items():  # nodes inside it are built by Hydra first: a schedule, an optimizer
        if isinstance(value, DictConfig) and "_target_" in value:
            check_names(value, f"{group}.{name}", None if value.get("_partial_") else ())
    target = _located(node.get("_target_"), group)
    parameters = _signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return  # takes anything
    keywords = settable_names(parameters)
    for name in by_code:
        require(name in keywords, f"{target.__qualname__} must take {name}= (nca_lab passes {named})")
        require(  # else silently replaced by code's value: +perceive.num_channels=3 trained with 16
            node.get(name) is None,
            f"{group}.{name} is not a setting: nca_lab passes it ({named}); remove it from the config",
        )
    settable = [name for name in keywords if name not in by_code]
    for name in node:
        if not name.startswith("_") and name not in keywords:  # not Hydra's _target_, _partial_, ...
            raise ConfigError(f"unknown setting {group}.{name} ({nearest(name, settable, group)})")
    for name in settable if supplied is not None else ():
        if parameters[name].default is inspect.Parameter.empty and name not in node:
            key = f"{group}.{name}"
            raise ConfigError(f"the config has no {key}, which {target.__qualname__} needs (removed by ~{key}?)")


def settable_names(parameters) -> list[str]:
    """The names a config may set of a constructor's ``parameters`` (keyword-passable, not ``self``)."""
    return [n for n, p in parameters.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def option_names(node: DictConfig) -> list[str] | None:
    """What a node with a ``_target_`` may set (None if its target does not import)."""
    target = target_of(node)
    return None if target is None else settable_names(_signature(target).parameters)


def target_of(node: DictConfig | dict):
    """What a node's ``_target_`` names (None if it does not import)."""
    try:
        return _located(node.get("_target_"), "")
    except ConfigError:
        return None


def _located(path, group: str):
    """What a ``_target_`` path names; one that does not import is one line, with the nearest
    name where a module has no such attribute (``SobelPercieve``)."""
    require(isinstance(path, str) and path, f"the {group} config needs a _target_ (the class it builds)")
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module, then attributes
        module = ".".join(parts[:split])
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if f"{module}.".startswith(f"{err.name}."):
                continue  # it, or a package above it, is no module: a shorter prefix
            raise ConfigError(f"{group}._target_: cannot import {path} ({err})") from err  # it imports a missing one
        except Exception as err:  # noqa: BLE001 - a module that fails as it loads: the user's code, one line
            raise ConfigError(f"{group}._target_: cannot import {path} ({one_line(err)})") from err
        for depth, name in enumerate(parts[split:], split):
            if not hasattr(found, name):
                close = closest(name, [n for n in dir(found) if not n.startswith("_")])
                where = ".".join(parts[:depth])
                hint = f"did you mean {where}.{close}?" if close else f"{where} has no {name}"
                raise ConfigError(f"{group}._target_: cannot import {path} ({hint})")
            found = getattr(found, name)
        require(callable(found), f"{group}._target_: {path} is not a class or a function")
        return found
    raise ConfigError(f"{group}._target_: cannot import {path} (no module {parts[0]})")


def _signature(target) -> inspect.Signature:
    """The constructor's own signature (nnx's metaclass shows ``*args, **kwargs``). A class whose
    constructor takes ``**options`` passes them on to its base class's (a researcher's subclass
    of ``ResidualUpdate``): the base's parameters join, keyword-only, so its options are checked
    (``update.zero_init=no`` trained as true)."""
    if not inspect.isclass(target):
        return inspect.signature(target)
    signature = inspect.signature(target.__init__)
    parameters = dict(signature.parameters)
    for base in target.__mro__[1:]:
        forwards = [n for n, p in parameters.items() if p.kind is p.VAR_KEYWORD]
        if not forwards or "__init__" not in vars(base) or base is object:
            continue
        del parameters[forwards[0]]
        for name, parameter in inspect.signature(base.__init__).parameters.items():
            if name not in parameters and parameter.kind is not parameter.VAR_POSITIONAL:
                keyword = parameter.kind is parameter.VAR_KEYWORD
                parameters[name] = parameter if keyword else parameter.replace(kind=parameter.KEYWORD_ONLY)
    ordered = sorted(parameters.values(), key=lambda p: p.kind)  # a valid order: keyword-only after the others
    return signature.replace(parameters=ordered)


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
