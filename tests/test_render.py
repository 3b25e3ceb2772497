import numpy as np
import pytest
from PIL import Image

from nca_lab.render import save_gif, save_png, tile, to_rgb, to_uint8


def test_to_rgb_composites_premultiplied_over_white():
    state = np.zeros((2, 2, 6), np.float32)
    state[0, 0, :4] = [0.5, 0.0, 0.0, 0.5]  # half-transparent red, premultiplied
    rgb = to_rgb(state)
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(rgb[1, 1], [1.0, 1.0, 1.0])


def test_alpha_outside_0_1_is_clipped_as_the_authors_did():
    state = np.zeros((1, 3, 4), np.float32)
    state[0, :, :3] = 0.5
    state[0, :, 3] = [2.0, -1.0, 0.0]  # over-opaque: no white shows through; negative: as transparent
    np.testing.assert_allclose(to_rgb(state)[0], [[0.5] * 3, [1.0] * 3, [1.0] * 3])


def test_to_uint8_rounds_to_the_nearest_level():
    np.testing.assert_array_equal(to_uint8(np.array([[[0.999, 0.5, 0.001]]])), [[[255, 128, 0]]])


def test_tile_leaves_white_gaps_between_images():
    black = np.zeros((2, 3, 3), np.uint8)
    grid = tile([black, black, black, black], columns=2, gap=2)
    assert grid.shape == (2 * 2 + 2, 2 * 3 + 2, 3)
    ink = (grid == 0).all(axis=-1)
    assert ink[:2, :3].all() and ink[:2, 5:].all() and ink[4:, :3].all() and ink[4:, 5:].all()
    assert (grid[:, 3:5] == 255).all() and (grid[2:4] == 255).all()  # the gaps, nothing drawn over them


def test_gif_and_png_round_trip(tmp_path):
    frames = to_uint8(np.random.default_rng(0).uniform(size=(5, 4, 6, 3)), scale=2)
    assert frames.shape == (5, 8, 12, 3)
    gif = save_gif(frames, tmp_path / "rollout.gif")
    with Image.open(gif) as img:
        assert img.n_frames == 5 and img.size == (12, 8)
    png = save_png(tile(list(frames[:3]), gap=1), tmp_path / "final.png")
    with Image.open(png) as img:
        assert img.size == (3 * 12 + 2, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.png", "rollout.gif"]  # no temp files left


def test_saving_a_state_instead_of_a_picture_is_refused(tmp_path):
    """A float state in [0, 1] was written as a black picture, an 8-channel one as RGBA."""
    state = np.random.default_rng(0).random((6, 6, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"expected uint8 RGB pictures .*got float32 \(6, 6, 8\): see to_uint8"):
        save_png(state, tmp_path / "final.png")
    with pytest.raises(ValueError, match="expected uint8 RGB pictures"):
        save_gif(to_uint8(state[None, ..., :3]).astype(np.float32), tmp_path / "rollout.gif")
    assert not any(tmp_path.iterdir())
    save_png(to_uint8(to_rgb(state)), tmp_path / "final.png")  # what the message points to
