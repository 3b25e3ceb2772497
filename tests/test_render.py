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
