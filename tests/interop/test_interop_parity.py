"""The imported sample models step exactly like the original model and grow the lizard.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020; the sample
files and their format facts are in ``tests/data/reference_models/``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_lab.data.images import load_target
from nca_lab.interop import read_model
from nca_lab.interop.original import original_nca
from nca_lab.nca import grow

from original_reference import MODELS, TFJS_GRAPH, WEBGL8, reference_step, seed

SAMPLES = {"webgl8": (WEBGL8, "webgl8_weights"), "tfjs_graph": (TFJS_GRAPH, "tfjs_graph_weights")}


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
@pytest.mark.parametrize("step", [100, 200])
@pytest.mark.parametrize("angle", [0.0, 0.5])
def test_one_deterministic_step_matches_the_reference(fmt, step, angle, reference_lizard, request):
    path, weights = SAMPLES[fmt]
    state = reference_lizard[step]  # a grown lizard: living body, border cells, dead surroundings
    model = read_model(path)
    model.update.fire_rate = 1.0
    model.perceive.angle = angle
    expected = reference_step(state, request.getfixturevalue(weights), np.ones(state.shape[:2]), angle=angle)
    got = np.asarray(model.step(jnp.asarray(state, jnp.float32), jax.random.key(0)))
    assert np.abs(expected - state).max() > 0.02  # the step does change the state
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_imported_models_have_the_original_settings():
    for path in (WEBGL8, TFJS_GRAPH):
        model = read_model(path)
        assert model.num_channels == 16 and model.perceive.out_features == 48
        assert [layer.out_features for layer in model.update.hidden] == [128]
        assert model.update.fire_rate == 0.5 and model.update.step_size == 1.0
        assert np.float32(model.alive_threshold) == np.float32(0.1)


def lizard_scores(final: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-grid RGBA MSE against ``target`` and IoU of the living silhouettes (alpha > 0.1)."""
    mse = np.mean((final[..., :4] - target[..., :4]) ** 2, axis=(-3, -2, -1))
    mine, theirs = final[..., 3] > 0.1, target[..., 3] > 0.1
    iou = (mine & theirs).sum((-2, -1)) / (mine | theirs).sum((-2, -1))
    return mse, iou


@pytest.fixture(scope="module")
def grown_lizards() -> np.ndarray:
    """Three 200-step rollouts of the webgl8 lizard from the seed, by nca_lab (other random keys)."""
    seeds = np.broadcast_to(seed().astype(np.float32), (3, 72, 72, 16))
    final, _ = grow(read_model(WEBGL8), seeds, jax.random.split(jax.random.key(0), 3), 200)
    return np.asarray(final)


def test_webgl8_lizard_grows_from_the_seed(grown_lizards, reference_lizard, webgl8_weights):
    target = reference_lizard[200]
    empty_mse = np.mean(target[..., :4] ** 2)
    seeds = np.broadcast_to(seed().astype(np.float32), (3, 72, 72, 16))
    mse, iou = lizard_scores(grown_lizards, target)
    # measured: mse 6e-5 .. 5e-4 (two reference rollouts differ by 6e-5), IoU 0.96 .. 0.99
    assert (mse < 2e-3).all() and (mse < empty_mse / 20).all(), (mse, empty_mse)
    assert (iou > 0.9).all(), iou

    # the same weights without the filter-major -> TF row permutation grow no lizard
    w1, b1, w2, b2 = webgl8_weights
    demo_rows = w1.reshape(16, 3, 128).transpose(1, 0, 2).reshape(48, 128)  # row f*16+c, as in the file
    unpermuted = original_nca(demo_rows, b1, w2, b2)
    wrong, _ = grow(unpermuted, seeds[:1], jax.random.split(jax.random.key(0), 1), 200)
    wrong_mse, _ = lizard_scores(np.asarray(wrong), target)
    assert not wrong_mse[0] < 20 * mse.max(), wrong_mse  # it blows up (nan) instead


def test_webgl8_lizard_grows_the_picture_the_right_way_round(grown_lizards):
    """Against the authors' picture, prepared as their notebook prepares a target (40 px,
    padded by 16, premultiplied), not against a rollout of nca_lab's own reading of the format:
    a mirrored or swapped Sobel filter, or a transposed weight layout, would grow a mirrored or
    turned lizard, and the reference rollout, made with the same conventions, would not see it.
    The picture has no tail; the grown lizard has one."""
    target = load_target(str(MODELS / "lizard_no_tail.png"), centre_on_body=False)
    turned = [np.rot90(target, k) for k in (1, 2, 3)] + [target[::-1], target[:, ::-1], target.transpose(1, 0, 2)]
    # measured: IoU 0.81 as it is, at most 0.45 mirrored or turned; MSE 0.0056 against >= 0.031
    mse, iou = lizard_scores(grown_lizards, target)
    assert (iou > 0.7).all() and (mse < 0.01).all(), (iou, mse)
    for other in turned:
        other_mse, other_iou = lizard_scores(grown_lizards, np.ascontiguousarray(other))
        assert (other_iou < iou - 0.2).all() and (other_mse > 3 * mse).all(), (other_iou, iou)
