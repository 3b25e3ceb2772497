import numpy as np
import pytest
from PIL import Image

from nca_lab.data.images import body_at_centre, load_target
from nca_lab.errors import ConfigError


def test_emoji_target_shape_range_and_premultiplied():
    target = load_target("🦋", size=40, padding=16)
    assert target.shape == (72, 72, 4) and target.dtype == np.float32
    assert target.min() >= 0.0 and target.max() <= 1.0
    assert np.all(target[..., :3] <= target[..., 3:4] + 1e-6)  # premultiplied
    assert not target[:16].any() and not target[:, -16:].any()  # the padding is empty


def test_image_path_target_keeps_aspect_and_centres(tmp_path):
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    path = tmp_path / "bar.png"
    Image.fromarray(rgba).save(path)
    target = load_target(str(path), size=10, padding=1)
    assert target.shape == (12, 12, 4)
    rows = np.nonzero(target[..., 3].any(axis=1))[0]
    assert len(rows) == 5  # 40x20 -> 10x5
    np.testing.assert_allclose(target[rows[0], 5], [128 / 255 * 1.0, 0, 0, 128 / 255], atol=1e-6)


def test_body_at_centre_moves_an_off_centre_body_under_the_seed():
    target = np.zeros((9, 9, 4), np.float32)
    target[4, 7] = 1.0  # opaque cell 3 columns right of the centre
    shifted = body_at_centre(target)
    assert shifted[4, 4, 3] == 1.0 and shifted.sum() == target.sum()
    centred = np.zeros_like(target)
    centred[4, 4] = 1.0
    np.testing.assert_array_equal(body_at_centre(centred), centred)


def test_twemoji_lizard_gets_its_body_under_the_seed():
    target = load_target("🦎")
    assert target[36, 36, 3] >= 0.5


@pytest.mark.parametrize(
    ("source", "message"),
    [("not-an-emoji", "unknown emoji"), ("/nonexistent/picture.png", "image not found")],
)
def test_bad_sources(source, message):
    with pytest.raises(ConfigError, match=message):
        load_target(source)


def test_unreadable_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot read image"):
        load_target(str(bad))
