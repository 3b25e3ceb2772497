"""The regenerating task: circle damage, grow-damage-recover evaluation, config, and the CLI."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_lab import grow as grow_cli
from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.tasks.damage import circle_masks
from nca_lab.tasks.regenerating import DAMAGE_HOLD_FRAMES, RegeneratingTask
from nca_lab.train.run import build

TASK = "regenerating"
EVAL_KEYS = {"mse", "mse_damaged", "mse_recovered", "mse_2x", "mse_5x", "mse_10x"}


@pytest.fixture(scope="module")
def task():
    return RegeneratingTask(6, target_size=8, padding=2, pool_size=8, damage_n=2)


def test_cli_smoke_run(smoke_runs):
    run = smoke_runs(TASK)
    assert [r["step"] for r in run.metrics if "loss" in r] == [1, 2]
    evaluation = [r for r in run.metrics if any(k.startswith("eval/") for k in r)]
    assert {k.removeprefix("eval/") for k in evaluation[-1] if k != "step"} == EVAL_KEYS
    assert run.gif_frames > 1
    horizon = 3  # TINY's rollout_steps=[2,3]
    assert run.gif_ms == (horizon + 1 + DAMAGE_HOLD_FRAMES + horizon) * 50  # grow, hold the damage, recover
    assert run.png_size == (4 * 48 + 3 * 2, 3 * 48 + 2 * 2)  # rows of target, grown, damaged, recovered


def test_a_run_with_a_pool_grows_for_twice_its_horizon_by_default(smoke_runs, tmp_path, capsys):
    """The pool trains the pattern to persist, so grow shows it past its horizon, as the run's GIF."""
    run = smoke_runs(TASK)
    grow_cli.main([str(run.run_dir), "--out", str(tmp_path)])
    assert f"grew {run.run_dir} for 6 steps on" in capsys.readouterr().out  # horizon 3
    # Its task's sample is the seed, so --start task grows what --start seed does (its updates drew other numbers)
    grow_cli.main([str(run.run_dir), "--seed", "2", "--start", "task", "--out", str(tmp_path / "task")])
    grow_cli.main([str(run.run_dir), "--seed", "2", "--start", "seed", "--out", str(tmp_path / "seed")])
    grown = [np.load(tmp_path / start / "final_state.npy") for start in ("task", "seed")]
    np.testing.assert_array_equal(*grown)


def test_circle_masks_have_the_requested_radius():
    masks = np.asarray(circle_masks(jax.random.key(0), 64, (64, 64), radius=(0.5, 0.5)))
    assert masks.shape == (64, 64, 64, 1)
    area = masks.sum(axis=(1, 2, 3))
    assert np.all(np.abs(area - math.pi * 16**2) < 0.1 * math.pi * 16**2)  # radius 0.5 of a half-grid of 32
    rows, cols = np.nonzero(masks[0, ..., 0])
    assert abs(rows.mean() - 31.5) <= 17 and abs(cols.mean() - 31.5) <= 17  # centre within the middle half


def test_damage_lands_anywhere_in_the_middle_of_the_grid_alike():
    """Centres uniform in [-0.5, 0.5]^2 (the notebook's): each half of the grid, left and right,
    top and bottom, takes the same share of the damage; on a grid that is not square too."""
    masks = np.asarray(circle_masks(jax.random.key(0), 2000, (32, 48)))[..., 0]
    assert masks.shape == (2000, 32, 48)
    for first, second in ((masks[:, :16], masks[:, 16:]), (masks[:, :, :24], masks[:, :, 24:])):
        assert abs(first.mean() - second.mean()) < 0.2 * masks.mean()


def test_more_circles_damage_more():
    one = np.asarray(circle_masks(jax.random.key(0), 256, (32, 32), circles=1)).mean()
    three = np.asarray(circle_masks(jax.random.key(0), 256, (32, 32), circles=3)).mean()
    assert three > 2 * one > 0


def test_damage_zeroes_cells_inside_circles_only(task):
    state = jax.random.uniform(jax.random.key(0), (8, *task.grid_shape, 6), minval=0.1, maxval=1.0)
    damaged = np.asarray(task.damage(state, jax.random.key(1)))
    zeroed = np.all(damaged == 0.0, axis=-1)
    assert zeroed.any()
    np.testing.assert_array_equal(damaged[~zeroed], np.asarray(state)[~zeroed])


def test_evaluation_of_an_identity_nca(task, tiny_nca):
    model = tiny_nca(6, task.alive_threshold)
    metrics = task.evaluate(model, jax.random.key(0), horizon=3, n=4)
    assert set(metrics) == EVAL_KEYS
    seed_mse = float(np.mean(task.loss(task.sample(None, 1).state, task.target[None])))
    # The identity keeps the seed for ever and never regrows a damaged one.
    for name in ("mse", "mse_2x", "mse_5x", "mse_10x"):
        assert metrics[name] == pytest.approx(seed_mse, rel=1e-6)
    assert metrics["mse_recovered"] == pytest.approx(metrics["mse_damaged"], rel=1e-6)


def test_evaluation_damages_the_grown_state_and_recovers_from_the_damaged_one(task, tiny_nca, monkeypatch):
    monkeypatch.setattr(task, "damage", lambda state, key: jnp.ones_like(state))  # damage the whole grid
    metrics = task.evaluate(tiny_nca(6, task.alive_threshold), jax.random.key(0), horizon=3, n=4)
    damaged_mse = float(np.mean(task.loss(jnp.ones((1, *task.target.shape[:2], 6)), task.target[None])))
    assert metrics["mse_damaged"] == pytest.approx(damaged_mse, rel=1e-6) and damaged_mse > 2 * metrics["mse"]
    assert metrics["mse_recovered"] == pytest.approx(damaged_mse, rel=1e-6)  # the identity keeps the damage


def test_evaluation_scores_each_horizon_and_the_recovery_from_the_damage(task, drifting_nca, monkeypatch):
    """A state that drifts by ``rate`` a step: each metric is the loss of the state at its own
    horizon (1, 2, 5 and 10 times ``horizon``), the damage acts on the grown state, and the
    recovery runs ``horizon`` steps from the damaged one."""
    rate, horizon = 0.004, 3
    monkeypatch.setattr(task, "damage", lambda state, key: state + 1.0)  # of the state it is given
    metrics = task.evaluate(drifting_nca(6, rate), jax.random.key(0), horizon=horizon, n=2)
    seed = task.sample(None, 1).state

    def loss(state) -> float:
        return float(np.mean(task.loss(state, task.target[None])))

    for name, k in (("mse", 1), ("mse_2x", 2), ("mse_5x", 5), ("mse_10x", 10)):
        assert metrics[name] == pytest.approx(loss(seed + k * horizon * rate), rel=1e-5), name
    assert metrics["mse_damaged"] == pytest.approx(loss(seed + horizon * rate + 1.0), rel=1e-5)
    assert metrics["mse_recovered"] == pytest.approx(loss(seed + 2 * horizon * rate + 1.0), rel=1e-5)
    assert len({round(v, 6) for v in metrics.values()}) == len(metrics)  # every horizon tells apart


def test_render_shows_grow_damage_recover(task, tiny_nca):
    rendering = task.render(tiny_nca(6, task.alive_threshold), jax.random.key(0), horizon=3, n=2)
    assert rendering.frames.shape == (4 + 10 + 3, 48, 48, 3)
    assert rendering.final.shape == (2 * 48 + 2, 4 * 48 + 3 * 2, 3)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"pool_size": 0}, "pool_size"),
        ({"damage_n": -1}, "damage_n"),
        ({"damage_radius": (0.4, 0.1)}, "damage_radius"),
        ({"damage_radius": (0.1,)}, "damage_radius"),
        ({"damage_radius": 10}, r"^task\.damage_radius must be \[low, high\] with 0 < low <= high, got 10$"),
        ({"damage_radius": [0.1, "x"]}, r"^task\.damage_radius must be \[low, high\] .+, got \[0\.1, 'x'\]$"),
        ({"damage_circles": 0}, "damage_circles"),
    ],
)
def test_bad_settings_are_config_errors(option, message):
    with pytest.raises(ConfigError, match=message):
        RegeneratingTask(6, target_size=8, padding=2, **option)


def test_quick_preset_builds_a_consistent_run():
    task, model, trainer = build(compose("experiment=quick_regenerating"))
    assert isinstance(task, RegeneratingTask)
    assert task.damage_n < trainer.batch_size <= task.pool_size
    assert model.alive_threshold == task.alive_threshold == 0.1
