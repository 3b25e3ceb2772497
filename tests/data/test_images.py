import re

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
    plain = load_target(str(path), size=10, padding=1, centre_on_body=False)  # centred in its square, as it is
    visible = np.argwhere(plain[..., 3] > 0)
    assert (visible.min(axis=0).tolist(), visible.max(axis=0).tolist()) == ([1 + 2, 1], [1 + 2 + 4, 10])


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
    [
        ("not-an-emoji", "unknown emoji"),
        ("/nonexistent/picture.png", "image not found"),
        ("/", "/ is a directory: task.target must be an emoji character or an image path"),  # was "not found"
    ],
)
def test_bad_sources(source, message):
    with pytest.raises(ConfigError, match=message):
        load_target(source)


def test_unreadable_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot read image"):
        load_target(str(bad))


def _disc(value, dtype, size=12):
    """A grayscale ``(size, size)`` image: a disc of ``value`` on 0."""
    rr, cc = np.mgrid[:size, :size]
    return np.where((rr - size / 2) ** 2 + (cc - size / 2) ** 2 < (size / 3) ** 2, value, 0).astype(dtype)


@pytest.mark.parametrize(
    ("value", "dtype", "name"),
    [(40000, np.uint16, "disc.png"), (40000, np.int32, "disc.tif"), (40000 / 65535, np.float32, "disc.tif")],
    ids=["I;16 png", "I tiff", "F tiff"],
)
def test_high_bit_depth_grayscale_is_scaled_not_clipped(tmp_path, value, dtype, name):
    path = tmp_path / name
    Image.fromarray(_disc(value, dtype)).save(path)
    target = load_target(str(path), size=12, padding=0, centre_on_body=False)
    np.testing.assert_allclose(target[6, 6], [40000 / 65535] * 3 + [1.0], atol=0.5 / 255)
    np.testing.assert_array_equal(target[0, 0], [0, 0, 0, 1])  # black, opaque background


@pytest.mark.parametrize(
    ("values", "message"),
    [(_disc(1.5, np.float32), r"must lie in \[0, 1\]"), (_disc(70000, np.int32), "beyond 16 bits")],
    ids=["float above 1", "int above 16 bits"],
)
def test_out_of_range_high_bit_depth_values_are_refused(tmp_path, values, message):
    path = tmp_path / "wide.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ConfigError, match=message):
        load_target(str(path), size=12, padding=0)


def test_an_existing_file_is_an_image_whatever_its_extension(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative names, without the "/" that marks a path
    Image.fromarray(np.full((8, 8, 4), 255, np.uint8)).save("photo.tif")
    assert load_target("photo.tif", size=8, padding=0)[..., 3].all()
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ConfigError, match="cannot read image notes.txt"):
        load_target("notes.txt")
    where = re.escape(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"image not found: missing.tif \(relative to {where}\)$"):
        load_target("missing.tif")


def test_a_small_image_is_not_scaled_up_and_says_so(tmp_path, capsys):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((5, 5, 4), 255, np.uint8)).save(path)
    target = load_target(str(path), size=10, padding=0)
    assert target[..., 3].sum() == 25
    assert (
        capsys.readouterr().err
        == f"note: {path} is 5x5, smaller than task.target_size=10; it is used at that size, not scaled up\n"
    )
    load_target(str(path), size=5, padding=0)
    assert capsys.readouterr().err == ""


def test_a_fully_transparent_image_is_refused(tmp_path):
    path = tmp_path / "clear.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(path)
    with pytest.raises(ConfigError, match="no visible pixel"):
        load_target(str(path), size=8)


@pytest.mark.parametrize(
    ("source", "got"), [(None, "None"), (7, "7"), ("", "''"), (np.zeros((8, 8, 4)), r"an array of shape \(8, 8, 4\)")]
)
def test_a_target_that_is_no_text_is_refused(source, got):
    """An array was refused with its whole repr, and no word of the PIL image that is taken."""
    message = rf"^task.target must be an emoji character, an image path or a PIL image, got {got} \(PIL.Image.fromarray"
    with pytest.raises(ConfigError, match=message):
        load_target(source)


def test_a_target_path_may_be_a_path(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGBA", (8, 8), (200, 0, 0, 255)).save(path)
    np.testing.assert_array_equal(load_target(path, size=8), load_target(str(path), size=8))


def test_an_emoji_with_spaces_around_is_that_emoji():
    """``'task.target=🦎 '``, as a shell quote easily has it, was an unknown emoji."""
    np.testing.assert_array_equal(load_target(" 🦎 "), load_target("🦎"))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_picture_without_alpha_says_its_background_is_grown_too(mode, tmp_path, capsys):
    """A photo or a JPEG: the whole rectangle, background included, is the target (loss ~0.16
    against ~0.03 with alpha); it trained without a word."""
    path = tmp_path / "photo.png"
    Image.new(mode, (8, 8), 200).save(path)
    target = load_target(str(path), size=8, padding=0)
    assert (target[..., 3] == 1).all()
    assert capsys.readouterr().err == (
        f"note: {path} has no alpha channel: all of it, its background too, is the pattern to grow\n"
    )
    Image.new("RGBA", (8, 8), (200, 0, 0, 255)).save(path)
    load_target(str(path), size=8, padding=0)
    assert capsys.readouterr().err == ""
    load_target(Image.new(mode, (8, 8), 200), size=8, padding=0)  # from Python: it said nothing
    assert capsys.readouterr().err == (
        "note: the given image has no alpha channel: all of it, its background too, is the pattern to grow\n"
    )
