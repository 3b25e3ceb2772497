"""The MNIST inpainting task: masks, channel layout, masked-pixel metrics, data errors, the CLI."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_lab import grow as grow_cli
from nca_lab.config import compose
from nca_lab.data.mnist import load_mnist_images, raw_dir
from nca_lab.errors import ConfigError
from nca_lab.tasks.mnist_inpainting import (
    MnistInpaintingTask,
    inpainting_masks,
    masked_batch,
    masked_mse,
    neighbour_fill,
    read_out,
)
from nca_lab.train.run import build, load_model

from nca_testing import run_cli, write_idx

TASK = "mnist_inpainting"
EVAL_KEYS = {f"{m}{s}" for m in ("mse", "psnr") for s in ("", "_masked_input", "_neighbour_fill")}


@pytest.fixture(scope="module")
def task(mnist_root):
    return MnistInpaintingTask(6, data_root=str(mnist_root), pool_size=8, eval_samples=8)


def test_cli_smoke_run(smoke_runs):
    run = smoke_runs(TASK)
    assert [r["step"] for r in run.metrics if "loss" in r] == [1, 2]
    evaluation = [r for r in run.metrics if any(k.startswith("eval/") for k in r)][-1]
    assert {k.removeprefix("eval/") for k in evaluation if k != "step"} == EVAL_KEYS
    assert evaluation["eval/mse_neighbour_fill"] < evaluation["eval/mse_masked_input"]
    assert run.gif_frames > 1
    assert run.png_size == (8 * 48 + 7 * 2, 3 * 48 + 2 * 2)  # 8 test digits: masked, output, clean


def test_grow_starts_an_inpainting_run_from_a_masked_digit(smoke_runs):
    """The smoke run trains with ``task.fixed_input=true``: its model holds the masked digit in
    channels 12-15, also when ``grow --damage`` cuts a hole into the others."""
    run_dir = smoke_runs(TASK).run_dir
    assert grow_cli.default_start(str(run_dir)) == "task"
    state = grow_cli.task_sample(str(run_dir), jax.random.key(0))
    assert state.shape == (12, 12, 16) and np.count_nonzero(state[..., 3]) > 1  # a digit, not the seed's one cell
    np.testing.assert_array_equal(state[..., 12:], state[..., :4])
    model = load_model(run_dir)
    assert model.fixed_channels == 4
    final, frames = grow_cli.grow_from(model, state, 4, jax.random.key(1), damage=True)
    np.testing.assert_array_equal(final[..., 12:], state[..., 12:])
    assert np.count_nonzero(frames[3][..., 3]) < np.count_nonzero(frames[2][..., 3])  # the hole: alpha cut


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.9])
def test_pixel_mask_hides_the_requested_fraction(ratio):
    hidden = np.asarray(inpainting_masks(jax.random.key(0), 512, (12, 12), ratio))
    assert hidden.dtype == bool and hidden.shape == (512, 12, 12)
    assert abs(hidden.mean() - ratio) < 0.01  # 73728 pixels: the standard error is under 0.002
    assert abs(hidden.mean(axis=(1, 2)).std() - np.sqrt(ratio * (1 - ratio) / 144)) < 0.01  # independent pixels


def test_a_patch_hides_one_square():
    hidden = np.asarray(inpainting_masks(jax.random.key(0), 64, (12, 12), 0.0, patches=1, patch_size=4))
    assert np.all(hidden.sum(axis=(1, 2)) == 16)
    for mask in hidden:
        rows, cols = np.nonzero(mask)
        assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
    tops = [np.nonzero(m)[0].min() for m in hidden]
    assert min(tops) == 0 and max(tops) == 8  # every position is reachable, none falls off the grid


def test_patches_add_to_the_pixel_mask():
    pixels = np.asarray(inpainting_masks(jax.random.key(0), 64, (12, 12), 0.3))
    both = np.asarray(inpainting_masks(jax.random.key(0), 64, (12, 12), 0.3, patches=2, patch_size=5))
    assert np.all(both >= pixels) and both.mean() > pixels.mean() + 0.1


def test_channel_layout():
    images = jnp.array([[[0.2, 0.9], [0.0, 0.5]]])
    hidden = jnp.array([[[False, True], [True, False]]])
    batch = masked_batch(images, hidden, 6)
    state, target = np.asarray(batch.state), np.asarray(batch.target)
    assert state.shape == (1, 2, 2, 6) and target.shape == (1, 2, 2, 4)
    np.testing.assert_allclose(state[0, :, :, 3], [[1, 0], [0, 1]])  # alpha: visible
    np.testing.assert_allclose(state[0, :, :, 0], [[0.2, 0.0], [0.0, 0.5]])  # grey, premultiplied
    assert np.all(state[..., 0] == state[..., 2]) and np.all(state[..., 4:] == 0)
    np.testing.assert_allclose(target[0, :, :, 1], np.asarray(images[0]))
    assert np.all(target[..., 3] == 1.0)
    kept = np.asarray(masked_batch(images, hidden, 8, fixed_channels=4).state)
    np.testing.assert_array_equal(kept[..., :4], state[..., :4])
    np.testing.assert_array_equal(kept[..., 4:], kept[..., :4])  # the input, kept in the last 4


def test_a_grey_start_keeps_the_masked_digit_as_the_input(mnist_root, tiny_nca):
    """``output_init=grey`` (ViTCA's): the baselines and the pictures' input row still read the
    masked digit, now only in the kept channels; the identity's output is the grey start."""
    options = {"data_root": str(mnist_root), "pool_size": 8, "eval_samples": 8}
    plain = MnistInpaintingTask(8, **options)
    grey = MnistInpaintingTask(8, **options, fixed_input=True, output_init="grey")
    key = jax.random.key(0)
    state = np.asarray(grey.sample(key, 2).state)
    assert np.all(state[..., :3] == 0.5) and np.all(state[..., 3] == 1.0)  # opaque mid-grey
    np.testing.assert_array_equal(state[..., 4:], np.asarray(plain.sample(key, 2).state)[..., :4])
    held = tiny_nca(8, None)  # the identity, also of the plain task's states (their last 4 channels are 0)
    held.fixed_channels = 4
    metrics, grey_metrics = (task.evaluate(held, key, 2) for task in (plain, grey))
    for name in ("mse_masked_input", "mse_neighbour_fill"):
        assert grey_metrics[name] == metrics[name]
    assert grey_metrics["mse"] != pytest.approx(metrics["mse"], rel=1e-3)
    pictures = [task.render(held, key, 2).final for task in (plain, grey)]
    top = 12 * plain.render_scale
    np.testing.assert_array_equal(pictures[1][:top], pictures[0][:top])  # the masked inputs


def test_neighbour_fill_averages_visible_neighbours():
    images = jnp.array([[[0.0, 0.3, 0.0], [0.6, 0.5, 0.9], [0.0, 0.0, 0.0]]])
    hidden = jnp.array([[[True, False, True], [False, True, False], [True, True, True]]])
    filled = np.asarray(neighbour_fill(images, hidden))[0]
    np.testing.assert_allclose(filled[1, 1], (0.3 + 0.6 + 0.9) / 3, rtol=1e-6)
    np.testing.assert_allclose(filled[0, 0], (0.3 + 0.6) / 2, rtol=1e-6)
    np.testing.assert_allclose(filled[0, 1], 0.3)  # visible pixels stay
    fully_hidden = np.asarray(neighbour_fill(images, jnp.ones_like(hidden)))
    assert np.all(fully_hidden == 0.0)


def test_masked_mse_counts_hidden_pixels_only():
    images = jnp.zeros((1, 2, 2))
    hidden = jnp.array([[[True, False], [False, False]]])
    wrong_visible = jnp.array([[[0.0, 1.0], [1.0, 1.0]]])
    assert float(masked_mse(wrong_visible, images, hidden)) == 0.0
    wrong_hidden = jnp.array([[[0.5, 0.0], [0.0, 0.0]]])
    assert float(masked_mse(wrong_hidden, images, hidden)) == pytest.approx(0.25)


def test_evaluation_scores_hidden_pixels_only(task, tiny_nca, mnist_root):
    metrics = task.evaluate(tiny_nca(6, None), jax.random.key(0), horizon=2)
    assert set(metrics) == EVAL_KEYS
    # The identity NCA outputs its input: exactly the masked-input baseline.
    assert metrics["mse"] == pytest.approx(metrics["mse_masked_input"], rel=1e-6)
    assert metrics["psnr"] == pytest.approx(metrics["psnr_masked_input"], rel=1e-6)
    # Hidden pixels are a random half of the digits, so the masked-input error on them is about
    # the mean square of all digit pixels; over all pixels it would be about half of that.
    images = load_mnist_images(mnist_root, "test").astype(np.float32) / 255.0
    mean_square = float(np.mean(images**2))
    assert 0.8 * mean_square < metrics["mse_masked_input"] < 1.2 * mean_square
    assert metrics["mse_neighbour_fill"] < metrics["mse_masked_input"]
    assert metrics["psnr"] == pytest.approx(10 * np.log10(1 / metrics["mse"]))


def test_evaluation_reads_the_test_split(tmp_path, tiny_nca, drifting_nca):
    train = np.random.default_rng(0).integers(1, 256, (16, 12, 12), dtype=np.uint8)
    write_idx(raw_dir(tmp_path) / "train-images-idx3-ubyte", train)
    write_idx(raw_dir(tmp_path) / "t10k-images-idx3-ubyte", np.zeros((8, 12, 12), np.uint8))
    task = MnistInpaintingTask(6, data_root=str(tmp_path), pool_size=8, eval_samples=8)
    metrics = task.evaluate(tiny_nca(6, None), jax.random.key(0), horizon=2)
    assert metrics["mse_masked_input"] == 0.0 and metrics["mse"] == 0.0  # blank test digits: nothing to get wrong
    # The NCA's score is its state after the horizon: 2 steps of +0.05 make every pixel 0.1.
    drifted = task.evaluate(drifting_nca(6, 0.05), jax.random.key(0), horizon=2)
    assert drifted["mse"] == pytest.approx(0.1**2, rel=1e-5) and drifted["mse_masked_input"] == 0.0
    assert float(np.mean(np.asarray(task.sample(jax.random.key(0), 4).target) ** 2)) > 0  # training draws train


def test_sample_draws_train_digits_inside_jit(task, mnist_root):
    batch = jax.jit(lambda key: task.sample(key, 5))(jax.random.key(3))
    train = load_mnist_images(mnist_root, "train").astype(np.float32) / 255.0
    for digit in np.asarray(batch.target)[..., 0]:
        assert np.min(np.abs(train - digit).max(axis=(1, 2))) < 1e-6
    state = np.asarray(batch.state)
    np.testing.assert_allclose(state[..., 0], np.asarray(batch.target)[..., 0] * state[..., 3])
    many = np.asarray(jax.jit(lambda key: task.sample(key, 256))(jax.random.key(4)).target)[..., 0]
    drawn = {int(np.argmin(np.abs(train - digit).max(axis=(1, 2)))) for digit in many}
    assert drawn == set(range(len(train)))  # every train digit, the last one too


def test_sample_is_vmap_safe(task):
    keys = jax.random.split(jax.random.key(3), 2)
    batches = jax.jit(jax.vmap(lambda key: task.sample(key, 5)))(keys)  # e.g. over seeds
    for i, key in enumerate(keys):
        np.testing.assert_array_equal(batches.target[i], task.sample(key, 5).target)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"mask_ratio": 1.0}, r"mask_ratio must be in \[0, 1\)"),
        ({"mask_ratio": -0.1}, r"mask_ratio must be in \[0, 1\)"),
        ({"mask_ratio": 0.0}, "nothing to inpaint"),
        ({"patches": 1, "patch_size": 13}, "patch_size"),
        ({"patches": -1}, "patches"),
        ({"eval_samples": 0}, "eval_samples"),
    ],
)
def test_bad_settings_are_config_errors(option, message, mnist_root):
    with pytest.raises(ConfigError, match=message):
        MnistInpaintingTask(6, data_root=str(mnist_root), **option)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*task.download=true"):
        MnistInpaintingTask(6, data_root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="not found in .*MNIST/raw"):
        MnistInpaintingTask(6, data_root=str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_download_without_torchvision_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="needs torchvision"):
        MnistInpaintingTask(6, data_root=str(tmp_path), download=True)


def test_cli_reports_a_missing_root_in_one_line(tmp_path):
    missing = f"task.data_root={tmp_path / 'none'}"
    result = run_cli("task=mnist_inpainting", "logger=none", missing, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MNIST root") and "task.download=true" in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_quick_preset_builds(mnist_root):
    task, model, trainer = build(compose("experiment=quick_mnist_inpainting", f"task.data_root={mnist_root}"))
    assert isinstance(task, MnistInpaintingTask)
    assert model.alive_threshold is None and task.pool_size >= trainer.batch_size


def test_the_read_out_is_clipped_to_grey_levels():
    """A state whose RGB overshoots reads as white or black, as a digit's pixels are: the
    metrics compare grey levels in [0, 1]."""
    state = jnp.zeros((1, 2, 1, 4)).at[0, 0, 0, :3].set(2.0).at[0, 1, 0, :3].set(-1.0)
    np.testing.assert_array_equal(read_out(state), [[[1.0], [0.0]]])
