"""Config nodes to objects: options checked against the constructor, errors naming the group."""

import pytest

from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.train.construct import checked_factory


def test_an_option_a_constructor_takes_as_keyword_arguments_passes():
    """``NullLogger(**unused)`` takes anything: it was a KeyError looking up the option's annotation."""
    factory = checked_factory(compose("logger=none", "+logger.colour=red").logger, "logger", ("config",))
    assert factory.keywords == {"colour": "red"}


SUPPLIED = ("config", "run_dir", "name")  # what the composition root gives every logger


def test_literal_choices_are_checked_optional_ones_accept_null():
    checked_factory(compose("logger=wandb", "logger.mode=null").logger, "logger", SUPPLIED)
    with pytest.raises(ConfigError, match="logger.mode must be one of 'online', 'offline', 'disabled', null"):
        checked_factory(compose("logger=wandb", "logger.mode=sometimes").logger, "logger", SUPPLIED)


def test_a_target_whose_module_fails_as_it_loads_is_one_line(tmp_path, monkeypatch):
    """A new module with a bad import of its own: Hydra had wrapped it in one line; it was a
    traceback once the target was located by nca_lab."""
    (tmp_path / "broken_perceive.py").write_text("from os import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^perceive._target_: cannot import broken_perceive.P \(cannot import name"):
        checked_factory(compose("perceive._target_=broken_perceive.P").perceive, "perceive", ("num_channels", "rngs"))


def test_constructors_get_plain_lists_and_dicts():
    """A new module's author gets what the Python API passes: OmegaConf's ListConfig and
    DictConfig are not lists and dicts (``isinstance``, ``json.dumps``, jax pytrees)."""
    node = compose("logger=none", "+logger.sizes=[1,2]", "+logger.extra={a: [3]}").logger
    factory = checked_factory(node, "logger", ("config",))
    assert factory.keywords == {"sizes": [1, 2], "extra": {"a": [3]}}
    assert type(factory.keywords["sizes"]) is list and type(factory.keywords["extra"]["a"]) is list
    assert type(factory.keywords["extra"]) is dict


def test_a_nodes_own_convert_setting_is_kept():
    """``_convert_: none`` in a config of one's own: the module asked for OmegaConf's nodes."""
    node = compose("logger=none", "+logger.sizes=[1,2]", "+logger._convert_=none").logger
    assert type(checked_factory(node, "logger", ("config",)).keywords["sizes"]).__name__ == "ListConfig"


def test_a_subclass_passing_its_options_on_has_them_checked(tmp_path, monkeypatch):
    """``**options`` passed on to ``ResidualUpdate``: its options went unchecked (``zero_init=no``
    trained as true) and a typo was Python's "unexpected keyword argument"."""
    (tmp_path / "bounded_update.py").write_text(
        "from nca_lab.update.residual import ResidualUpdate\n\n\n"
        "class BoundedUpdate(ResidualUpdate):\n"
        "    def __init__(self, perception_size, num_channels, bound: float = 1.0, **options):\n"
        "        super().__init__(perception_size, num_channels, **options)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    target = "update._target_=bounded_update.BoundedUpdate"
    supplied = ("perception_size", "num_channels", "rngs")
    factory = checked_factory(compose(target, "+update.bound=2.0")["update"], "update", supplied)
    assert factory.keywords["bound"] == 2.0 and factory.keywords["hidden_sizes"] == [128]
    with pytest.raises(ConfigError, match=r"^update.zero_init must be true or false, got 'no'$"):
        checked_factory(compose(target, "update.zero_init=no")["update"], "update", supplied)
    with pytest.raises(ConfigError, match=r"^unknown setting update.bond \(did you mean update.bound\?\)$"):
        checked_factory(compose(target, "+update.bond=1")["update"], "update", supplied)
