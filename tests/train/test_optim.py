"""The optimizer is the authors': Adam with Keras' defaults after per-parameter normalisation."""

import jax.numpy as jnp
import numpy as np
import pytest

from nca_lab.config import compose
from nca_lab.train.optim import make_optimizer
from nca_lab.train.run import build

from nca_testing import TINY


def test_adam_has_the_epsilon_of_the_authors_keras_adam():
    """A first step moves by ``lr * g / (|g| + eps)``: half the learning rate for ``|g| = eps = 1e-7``."""
    optimizer = make_optimizer(1.0, gradient="none")
    params = {"w": jnp.zeros(1)}
    updates, _ = optimizer.update({"w": jnp.full(1, 1e-7)}, optimizer.init(params), params)
    assert float(updates["w"][0]) == pytest.approx(-0.5, rel=1e-3)


def test_clip_scales_down_only_gradients_above_its_global_norm():
    """Adam's first step is the same for any gradient scale, so two steps tell: a gradient of
    global norm 10 then one of 0.1. Clipped at 1, the first enters Adam's moments at norm 1 and
    the second step differs from the unclipped one; under a bound above both, nothing changes."""
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    grads = [{"a": jnp.array([6.0, 0.0]), "b": jnp.array([8.0])}, {"a": jnp.array([0.06, 0.0]), "b": jnp.array([0.08])}]

    def second_step(**options):
        optimizer = make_optimizer(1.0, **options)
        state = optimizer.init(params)
        for g in grads:
            updates, state = optimizer.update(g, state, params)
        return jnp.concatenate([updates["a"], updates["b"]])

    unclipped = second_step(gradient="none")
    assert jnp.allclose(second_step(gradient="clip", clip_norm=100.0), unclipped)
    clipped = second_step(gradient="clip", clip_norm=1.0)
    assert not jnp.allclose(clipped, unclipped, rtol=1e-2)
    # by hand: Adam's moments of the clipped gradients (0.6, 0, 0.8) then (0.06, 0, 0.08)
    g1, g2 = jnp.array([0.6, 0.0, 0.8]), jnp.array([0.06, 0.0, 0.08])
    m = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.9**2)
    v = (0.999 * 0.001 * g1**2 + 0.001 * g2**2) / (1 - 0.999**2)
    assert jnp.allclose(clipped, -m / (jnp.sqrt(v) + 1e-7), rtol=1e-4, atol=1e-6)


def test_normalize_divides_each_parameter_by_its_norm():
    from nca_lab.train.optim import normalize_per_parameter

    transform = normalize_per_parameter()
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0, 0.0, 2.0]), "kernel": jnp.array([[3.0, 0.0], [0.0, 4.0]])}
    updates, _ = transform.update(grads, transform.init(grads))
    assert updates["a"].tolist() == pytest.approx([0.6, 0.8]) and updates["b"].tolist() == pytest.approx([0, 0, 1])
    np.testing.assert_allclose(updates["kernel"], [[0.6, 0.0], [0.0, 0.8]])  # the whole variable's norm, not a row's


def test_step_decay_changes_the_rate_after_boundary_updates():
    from nca_lab.train.optim import step_decay

    schedule = step_decay(2e-3, [2000, 3000])
    rates = [float(schedule(count)) for count in (0, 1999, 2000, 2999, 3000)]
    assert rates == pytest.approx([2e-3, 2e-3, 2e-4, 2e-4, 2e-5])


@pytest.mark.parametrize("boundaries", [[], "2000", [2000.5]])
def test_step_decay_refuses_boundaries_that_are_not_a_list_of_steps(boundaries):
    from nca_lab.errors import ConfigError
    from nca_lab.train.optim import step_decay

    with pytest.raises(ConfigError, match="boundaries must be a non-empty list of steps"):
        step_decay(2e-3, boundaries)


@pytest.mark.parametrize(("setting", "value"), [("init_value", True), ("init_value", "abc"), ("factor", True)])
def test_step_decay_refuses_a_rate_or_factor_that_is_not_a_number(setting, value):
    """``init_value=true`` trained at a rate of 1 (500x the paper's), ``factor=true`` never
    decayed, ``abc`` was "'>' not supported between instances of 'str' and 'int'"."""
    from nca_lab.errors import ConfigError
    from nca_lab.train.optim import step_decay

    with pytest.raises(ConfigError, match=rf"^trainer.learning_rate.{setting} must be positive, got "):
        step_decay(**{"init_value": 2e-3, "boundaries": [2000], setting: value})


def test_a_constant_rate_and_a_schedule_keep_the_same_state():
    """So a run trained on a schedule resumes with ``trainer.learning_rate=<value>`` (and back):
    the checkpoint's optimizer state fits either."""
    import jax

    from nca_lab.train.optim import step_decay

    params = {"w": jnp.zeros(3)}
    constant = make_optimizer(1e-3).init(params)
    scheduled = make_optimizer(step_decay(2e-3, [2000])).init(params)
    assert jax.tree.structure(constant) == jax.tree.structure(scheduled)
    updates, _ = make_optimizer(1e-3, gradient="none").update({"w": jnp.ones(3)}, constant, params)
    assert updates["w"].tolist() == pytest.approx([-1e-3] * 3, rel=1e-4)


def test_the_trainer_config_shows_every_optimizer_option_at_its_default():
    """A researcher reads the optimizer's options in ``conf/trainer/default.yaml`` (and sweeps
    ``trainer.optimizer.b2=...``): none is hidden in the code, and the file says what runs."""
    import inspect

    from nca_lab.config import compose

    options = {k: v for k, v in compose().trainer.optimizer.items() if not k.startswith("_")}
    parameters = inspect.signature(make_optimizer).parameters
    defaults = {name: p.default for name, p in parameters.items() if name != "learning_rate"}
    assert options == defaults


def test_the_trainers_python_defaults_are_the_configs():
    """A notebook's ``Trainer(...)`` without the schedule options checkpoints and renders as the
    command does (it had none until the end, and logged twice as often)."""
    import inspect

    from nca_lab.config import compose
    from nca_lab.train.trainer import Trainer

    config = compose().trainer
    parameters = inspect.signature(Trainer.__init__).parameters
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert {name: config[name] for name in defaults} == {
        name: list(value) if isinstance(value, tuple) else value for name, value in defaults.items()
    }


def test_an_optimizer_instead_of_its_factory_is_one_line():
    """``Trainer(optimizer=optax.adam(1e-3))`` was "'GradientTransformationExtraArgs' object is not callable"."""
    import optax
    import pytest

    from nca_lab.errors import ConfigError
    from nca_lab.train.trainer import Trainer

    with pytest.raises(ConfigError, match=r"make the optimizer from the learning rate \(optax.adam, not optax"):
        Trainer(steps=1, batch_size=1, learning_rate=1e-3, optimizer=optax.adam(1e-3))
    Trainer(steps=1, batch_size=1, learning_rate=1e-3, optimizer=optax.adam)


def test_the_logged_rate_is_the_one_each_update_used():
    """Optax counts updates from 0; the trainer logs steps from 1: step 2 is the second update,
    still at the first rate with a boundary at 2 updates."""
    overrides = ("trainer.learning_rate.init_value=1.0", "trainer.learning_rate.boundaries=[2]")
    _, _, trainer = build(compose(*TINY, *overrides))
    assert [trainer.lr_at(step) for step in (1, 2, 3)] == pytest.approx([1.0, 1.0, 0.1])
