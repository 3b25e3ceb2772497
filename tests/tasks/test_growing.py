"""Growing NCA experiment 1: the seed, the RGBA loss, evaluation at one and two horizons, the pictures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from nca_lab.config import compose
from nca_lab.errors import ConfigError
from nca_lab.nca import NCA
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.render import to_rgb, to_uint8
from nca_lab.tasks.growing import GrowingTask, seed_state
from nca_lab.train.run import build
from nca_lab.update.residual import ResidualUpdate

from nca_testing import TINY

C = 6


@pytest.fixture(scope="module")
def task():
    return GrowingTask(C, target_size=8, padding=2, render_scale=2)


def test_the_seed_is_one_cell_with_alpha_and_hidden_channels_set():
    seed = seed_state((5, 6), C)
    living = np.argwhere(seed.any(axis=-1))
    assert living.tolist() == [[2, 3]]
    np.testing.assert_array_equal(seed[2, 3], [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"^grid_shape must be \(H, W\), got \(8, 5, 6\) \(a batch of n seeds: "):
        seed_state((8, 5, 6), C)  # was "too many values to unpack"
    with pytest.raises(ValueError, match=r"^grid_shape must be \(H, W\), got 64 "):
        seed_state(64, C)  # was "object of type 'int' has no len()"
    with pytest.raises(ValueError, match=r"^num_channels must be at least 4 \(RGBA\), got 3$"):
        seed_state((5, 6), 3)  # was a seed with nothing alive


def test_samples_are_seeds_with_the_target(task):
    batch = task.sample(jax.random.key(0), 3)
    assert batch.state.shape == (3, 12, 12, C) and batch.target.shape == (3, 12, 12, 4)
    np.testing.assert_array_equal(np.asarray(batch.state[2]), seed_state((12, 12), C))
    np.testing.assert_array_equal(np.asarray(batch.target[1]), np.asarray(task.target))


def test_the_loss_is_the_rgba_mean_squared_error_and_ignores_hidden_channels(task):
    state = jnp.zeros((1, 12, 12, C)).at[..., 4:].set(7.0)
    expected = float(jnp.mean(task.target**2))
    assert float(task.loss(state, task.target[None])[0]) == pytest.approx(expected, rel=1e-6)
    assert float(task.loss(state.at[0, 0, 0, 0].set(1.0), task.target[None])[0]) != pytest.approx(expected)


def test_evaluation_scores_the_state_at_one_and_two_horizons(task, drifting_nca):
    rate, horizon = 0.01, 3
    metrics = task.evaluate(drifting_nca(C, rate), jax.random.key(0), horizon=horizon, n=2)
    seed = jnp.asarray(seed_state((12, 12), C))[None]
    for name, steps in (("mse", horizon), ("mse_2x", 2 * horizon)):
        expected = float(task.loss(seed + steps * rate, task.target[None])[0])
        assert metrics[name] == pytest.approx(expected, rel=1e-5), name


def test_render_is_twice_the_horizon_and_a_row_of_target_and_samples(task, drifting_nca):
    rendering = task.render(drifting_nca(C, 0.0), jax.random.key(0), horizon=3, n=2)
    assert rendering.frames.shape == (2 * 3 + 1, 24, 24, 3)  # initial state included, 2 px per cell
    assert rendering.final.shape[0] == 24 and rendering.final.shape[1] > 3 * 24  # target + 2 samples


def test_the_final_picture_shows_the_samples_at_the_horizon(task, drifting_nca):
    """Not at the GIF's end (twice the horizon): the seed cell's colour tells the steps apart."""
    rate, horizon = 0.05, 3
    final = task.render(drifting_nca(C, rate), jax.random.key(0), horizon=horizon, n=2).final
    at_horizon = to_uint8(to_rgb(seed_state((12, 12), C) + horizon * rate), 2)
    np.testing.assert_array_equal(final[:, 24 + 2 : 2 * 24 + 2], at_horizon)  # after the target and a gap


class SquareTask(GrowingTask):
    """A task of one's own that grows a picture it draws: the growing task's loss, evaluation
    and rendering, no copy of them."""

    def __init__(self, num_channels: int, *, side: int = 6, padding: int = 3):
        square = Image.new("RGBA", (side, side), (255, 0, 0, 255))
        super().__init__(num_channels, target=square, target_size=side, padding=padding)


def test_a_subclass_grows_a_picture_it_draws():
    task = SquareTask(8)
    assert task.target.shape == (12, 12, 4) and task.grid_shape == (12, 12)
    np.testing.assert_array_equal(task.target[3:9, 3:9], np.tile([1.0, 0.0, 0.0, 1.0], (6, 6, 1)))
    assert float(task.target[:3].sum()) == 0.0  # the padding is empty
    model = NCA(SobelPerceive(8), ResidualUpdate(24, 8, hidden_sizes=[8], rngs=nnx.Rngs(params=0)))
    assert set(task.evaluate(model, jax.random.key(0), 4)) == {"mse", "mse_2x"}


def test_an_image_without_a_visible_pixel_is_refused():
    with pytest.raises(ConfigError, match="the given image: the image has no visible pixel"):
        GrowingTask(8, target=Image.new("RGBA", (4, 4)), target_size=4, padding=1)


@pytest.mark.parametrize("task_name", ["growing", "regenerating"])
def test_alive_masking_can_be_turned_off_from_the_config(task_name):
    """``task.alive_threshold=null``, the ablation: it was refused as not a number."""
    pool = ["task.pool_size=2", "task.damage_n=0"] if task_name == "regenerating" else []
    task, model, _ = build(compose(*TINY, f"task={task_name}", "task.alive_threshold=null", *pool))
    assert task.alive_threshold is None and model.alive_threshold is None
    hidden_only = jnp.zeros((1, 5, 5, model.num_channels)).at[..., 4:].set(1.0)  # masking would zero every cell
    stepped = model.step(hidden_only, jax.random.split(jax.random.key(0), 1))
    np.testing.assert_array_equal(stepped, hidden_only)  # the zero-initialised last layer: unchanged
