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
