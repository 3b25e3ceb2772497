"""The app's Hydra config: where it lives, and composing it from overrides outside the app.

Its files are ``conf/`` at the top of a checkout, ``nca_lab/conf`` in a wheel: the top-level
``conf/`` is the one source of truth; the wheel build copies it into the package
(``pyproject.toml``, ``force-include``), so the app finds its configs both from an editable
install and from an installed wheel.
"""

import functools
import hashlib
import itertools
import re
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The directory holding ``config.yaml`` and the config groups."""
    packaged = _PACKAGE / "conf"
    return packaged if (packaged / "config.yaml").is_file() else _PACKAGE.parent / "conf"


def compose(*overrides: str, config_name: str = "config", config_dirs: tuple[str, ...] = ()):
    """The app's config with ``overrides`` (``"task=diffusing"``, ``"trainer.steps=20"``), as
    ``python -m nca_lab`` composes it, for a notebook or a script: hand it to
    :func:`nca_lab.train.run.build` or :func:`~nca_lab.train.run.run`. ``config_dirs`` and
    ``config_name`` are the command's ``--config-dir`` (configs of one's own, searched too)
    and ``--config-name`` (a primary config of one's own)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, OverrideParseException

    from nca_lab.errors import ConfigError

    given = [quote_non_ascii(o) for o in overrides]
    if config_dirs:  # quoted: a path with a comma, or not ASCII, is no value of the grammar's
        uris = (f"file://{Path(d).resolve()}".replace("'", "\\'") for d in config_dirs)
        quoted = (f"'{uri}'" for uri in uris)
        given.append(f"hydra.searchpath=[{','.join(quoted)}]")
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=given)
    except (ConfigCompositionException, OverrideParseException) as err:  # the command's words, not Hydra's
        raise ConfigError(composition_error(err, list(overrides))) from err
    check_top_level(cfg, "\n".join(o for o in given if o.startswith("hydra.")))
    return cfg


def check_top_level(cfg, hydra_settings: str = "") -> None:
    """Refuse a config whose top level is not ``config.yaml``'s (:class:`~nca_lab.errors.ConfigError`).

    Hydra refuses ``seedd=3``, but ``+seedd=3`` adds the key, and nothing reads it: the run
    trained with seed 0. Inside a group the constructors refuse unknown keys; here nothing else
    would. A key that an interpolation reads is a value of the user's own (``+size=32
    task.target_size=${size}``, ``size: 32`` in a config of theirs, ``+tag=x
    hydra.run.dir=runs/${tag}``: ``hydra_settings`` is the text of Hydra's settings), kept.
    ``~seed`` removes a setting the app needs: one line here, not OmegaConf's error later.
    """
    from omegaconf import OmegaConf

    from nca_lab.errors import ConfigError, nearest

    required, known = _top_level()
    read = _interpolated_names(OmegaConf.to_yaml(cfg) + hydra_settings)  # unresolved
    for key in cfg:
        if key not in known and key not in read:
            raise ConfigError(f"unknown setting {key} ({nearest(key, sorted(known))})")
    missing = sorted(required - set(cfg))
    if missing:
        raise ConfigError(f"the config has no {missing[0]}, which nca_lab needs (removed by ~{missing[0]}?)")


def _interpolated_names(text: str) -> set[str]:
    """The top-level keys the interpolations in ``text`` read: ``${size}``, ``${size.x}``,
    ``${..size}``, a resolver's arguments (``${oc.select:size,4}``: ``size``, not ``oc`` or
    ``4``), nested ones too (innermost first)."""
    names, innermost = set(), re.compile(r"\$\{([^${}]*)\}")
    while innermost.search(text):
        for span in innermost.findall(text):
            resolver, colon, arguments = span.partition(":")
            for read in arguments.split(",") if colon else [resolver]:
                key = re.match(r"\s*\.*([A-Za-z_][\w-]*)", read)
                names.update([key[1]] if key else [])
        text = innermost.sub("", text)
    return names


@functools.cache
def _top_level() -> tuple[frozenset[str], frozenset[str]]:
    """``config.yaml``'s top-level keys: those every config needs, and all it may have (read once)."""
    from omegaconf import DictConfig, OmegaConf

    primary = OmegaConf.load(config_dir() / "config.yaml")
    choices = {
        group: choice for entry in primary.defaults if isinstance(entry, DictConfig) for group, choice in entry.items()
    }
    required = (set(primary) - {"defaults", "hydra"}) | {group for group, choice in choices.items() if choice}
    return frozenset(required), frozenset(required | set(choices))  # and the groups off by default (experiment)


_OVERRIDE = re.compile(r"([~+]{0,2}[\w.@/-]+)=(.*)", re.DOTALL)


#: The resolver ``conf/config.yaml`` names a sweep job's dir with (``hydra.sweep.subdir``).
JOB_DIR_RESOLVER = "nca_lab.job_dir"


#: The longest file name (bytes) of common file systems (ext4, XFS, APFS, NTFS's 255 UTF-16 units).
NAME_MAX = 255


def job_dir_name(override_dirname: str) -> str:
    """A sweep job's dir name: Hydra's ``job.override_dirname`` without its backslashes, and
    with each ``/`` of a path-valued override as ``%2F``.

    Hydra escapes ``:``, spaces, braces and the like in it with ``\\`` (``run_name=a\\:b``), and
    Orbax's TensorStore reads a backslash as ``/``: the job's checkpoints were written to a
    stray tree beside its dir, and the run said ``done`` with no weights in them. A ``/``
    (``-m trainer.init_from=runs/a,runs/b``) made nested dirs, the job's named by the rest of
    the path and the other overrides. An interpolation (``task.target_size=${size}``), which
    Hydra escapes as ``$\\{size\\}``, was live again without the backslashes: Hydra made the
    job's dir with ``${size}`` in its name, then resolved the name to another dir, and the job
    stopped there; its ``${`` is kept as ``$%7B``. A name past the file system's 255 bytes
    (many overrides, long paths) could not be made: its start is kept, with a hash of the whole.
    """
    name = override_dirname.replace("\\", "").replace("/", "%2F").replace("${", "$%7B")
    encoded = name.encode()
    if len(encoded) <= NAME_MAX:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    return encoded[: NAME_MAX - len(digest) - 1].decode(errors="ignore") + "~" + digest


def quote_non_ascii(arg: str) -> str:
    """``task.target=🦋`` as Hydra can parse it: ``task.target='🦋'``.

    Hydra's override grammar has no unquoted non-ASCII characters, so the most natural way
    to pick an emoji target was a parse error. Each comma-separated value (a sweep's choices)
    that has one is quoted; arguments already using quotes, lists or functions are left alone,
    as are flags (``--config-dir=/home/zoë/conf`` is a path, which quotes would break).
    """
    match = _OVERRIDE.fullmatch(arg)
    if not match or arg.isascii() or arg.startswith("-") or any(c in match[2] for c in "'\"[]{}()"):
        return arg
    return f"{match[1]}=" + ",".join(v if v.isascii() else f"'{v}'" for v in match[2].split(","))


def composition_error(err: Exception, overrides: list[str]) -> str:
    """One line for an error of composing the config from ``overrides``: Hydra's "Could not
    override '<key>'" as :func:`mistyped_setting` words it, its "Could not find '<group>/<name>'"
    with where a config of one's own goes, any other as its first line."""
    from nca_lab.errors import one_line

    mistyped = re.match(r"Could not override '([\w.]+)'", str(err))
    line = (mistyped and mistyped_setting(mistyped[1], overrides)) or one_line(err)
    missing = re.search(r"Could not find '(\w+)/([^'/]+)' Available options", line)
    if missing:
        own = f"DIR/{missing[1]}/{missing[2]}.yaml"
        line += f" (one of your own: {own}, with --config-dir DIR or compose(config_dirs=[DIR]))"
    return line


def mistyped_setting(key: str, overrides: list[str]) -> str | None:
    """What to say of Hydra's "Could not override '<key>'": ``unknown setting trainer.step (did
    you mean trainer.steps?)``. Hydra's own advice, ``+trainer.step=...``, was a setting
    nothing reads, which nca_lab then refuses; it is right only for an option its class takes
    that the yaml leaves out, and then ``None`` keeps Hydra's words (also when the other
    overrides do not compose). In a sweep, the hint is for its first job without the setting
    (``-m perceive=sobel,learned perceive.angle=1``: the job ``perceive=learned``), named."""
    from omegaconf import DictConfig

    from nca_lab.errors import closest, nearest
    from nca_lab.train.construct import option_names

    parent, _, leaf = key.rpartition(".")
    try:
        lacking, node, having = _first_job_lacking(key, overrides)
    except Exception:  # noqa: BLE001 - any error of the others: Hydra's message stands
        return None
    if lacking is None or not isinstance(node, DictConfig):
        return None
    setting = f"{key} in the sweep's job {' '.join(lacking)}" if having else key  # the job's groups decide
    options = (option_names(node) or ()) if "_target_" in node else ()
    if leaf in options:
        return None  # an option its class takes: Hydra's "+key=..." is right
    names = [name for name in node if not name.startswith("_")]
    left_out = closest(leaf, [name for name in options if name not in node]) if not closest(leaf, names) else None
    if left_out:  # the nearest is an option the yaml does not list
        return (
            f"unknown setting {setting} (did you mean {parent}.{left_out}? not in its yaml: +{parent}.{left_out}=...)"
        )
    return f"unknown setting {setting} ({nearest(leaf, names, parent)})"


def _first_job_lacking(key: str, overrides: list[str]) -> tuple:
    """``(job, node, having)``: the first job (its group choices) of the command whose config
    lacks ``key``, the node that should hold it, and whether any job has it. A command that is
    no sweep is one job, ``()``; a sweep's jobs differ only in their groups' choices (the
    first 64), the other swept values taken at their first."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    parent, _, leaf = key.rpartition(".")
    given = [o for o in overrides if _OVERRIDE.fullmatch(o) and not o.startswith("-") or o.startswith("~")]
    parsed = OverridesParser.create().parse_overrides(given)  # not flags, nor their values (--cfg job)
    others = [o for o in parsed if o.key_or_group.lstrip("~+") != key and not o.key_or_group.startswith("hydra.")]
    flags = _config_flags(overrides)
    dirs = [config_dir(), *map(Path, flags.get("config_dirs", ()))]
    groups = [o for o in others if o.is_sweep_override() and any((d / o.key_or_group).is_dir() for d in dirs)]
    fixed = [  # a swept value's first: only the groups' options change what settings there are
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
        for o in others
        if o not in groups
    ]
    jobs = itertools.product(*([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in groups))
    lacking, node, having = None, None, False
    for job in itertools.islice(jobs, 64):
        cfg = compose(*fixed, *job, **flags)
        found = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(found, DictConfig) and leaf in found:
            having = True
        elif lacking is None:
            lacking, node = job, found
    return lacking, node, having


def _config_flags(argv: list[str]) -> dict:
    """A command line's ``--config-dir``/``-cd`` and ``--config-name``/``-cn``, as :func:`compose`'s arguments."""
    flags, words = {}, iter(argv)
    for word in words:
        flag, given, value = word.partition("=")
        if flag in ("--config-dir", "-cd", "--config-name", "-cn"):
            value = value if given else next(words, "")
            if flag in ("--config-dir", "-cd"):
                flags["config_dirs"] = (*flags.get("config_dirs", ()), value)
            else:
                flags["config_name"] = value
    return flags


def set_by_experiment(message: str, choices: dict[str, str | None]) -> str:
    """``message`` of an unknown setting, said to be the chosen experiment's where its preset
    sets it for a group the command then chose otherwise: ``experiment=quick_growing
    task=mnist_inpainting`` was "unknown setting task.target_size (did you mean
    task.patch_size?)", a setting the user never wrote. Other messages, and presets outside
    ``conf/experiment/``, are left as they are."""
    from omegaconf import DictConfig, OmegaConf

    experiment, found = choices.get("experiment"), re.match(r"unknown setting ([\w.]+) ", message)
    preset_file = config_dir() / "experiment" / f"{experiment}.yaml"
    if not found or experiment is None or not preset_file.is_file():
        return message
    key = found[1]
    group = key.split(".")[0]
    try:
        preset = OmegaConf.load(preset_file)
        unset = object()
        sets_it = OmegaConf.select(preset, key, default=unset, throw_on_resolution_failure=False) is not unset
        picks = [
            e[f"override /{group}"]
            for e in preset.get("defaults", [])
            if isinstance(e, DictConfig) and f"override /{group}" in e
        ]
    except Exception:  # noqa: BLE001 - a preset that does not load on its own: the message stands
        return message
    if not sets_it or not picks or choices.get(group) == picks[0]:
        return message  # the preset's own group: a typo in the preset, which the message's hint serves
    made_for = f"experiment={experiment} sets it for {group}={picks[0]}"
    return f"unknown setting {key}: {made_for} (drop experiment= for another {group})"
