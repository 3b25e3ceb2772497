"""Turning states into pictures: RGB over white, grids, GIFs and PNGs.

Files are written to a temporary name and renamed, so a killed run never leaves a
half-written picture that looks like a result.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nca_lab.atomic import atomic_path

#: A run dir's subdir of every rendering by step (``renders/<step>/rollout.gif``, ``final.png``).
RENDERS = "renders"


def rendering_files(directory: Path) -> dict[str, Path]:
    """The files of one rendering in ``directory`` (a run dir, a kept rendering, ``grow``'s output),
    by the name a logger shows them under."""
    return {"rollout": directory / "rollout.gif", "final": directory / "final.png"}


def rgba(state):
    """The RGBA channels of ``state (..., H, W, C)``: all a picture shows (a rollout's ``frame_fn``)."""
    return state[..., :4]


def to_rgb(state: np.ndarray, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """RGB in [0, 1] of a premultiplied state ``(..., H, W, C>=4)`` composited over ``background``.

    As the authors' ``to_rgb`` (over white): ``1 - alpha + rgb`` with alpha clipped to [0, 1].
    """
    state = np.asarray(state, np.float32)
    alpha = np.clip(state[..., 3:4], 0.0, 1.0)
    return np.clip(state[..., :3] + (1.0 - alpha) * np.asarray(background, np.float32), 0.0, 1.0)


def to_uint8(rgb: np.ndarray, scale: int = 1) -> np.ndarray:
    """``(..., H, W, 3)`` floats in [0, 1] to uint8, each pixel repeated ``scale`` times."""
    img = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    if scale > 1:
        img = img.repeat(scale, axis=-3).repeat(scale, axis=-2)
    return img


def tile(images: Sequence[np.ndarray], columns: int | None = None, gap: int = 2) -> np.ndarray:
    """Arrange same-sized ``(H, W, 3)`` uint8 images in a grid with white gaps."""
    images = [np.asarray(i) for i in images]
    n = len(images)
    cols = columns or n
    rows = -(-n // cols)
    h, w = images[0].shape[:2]
    grid = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = img
    return grid


def _pictures(images: np.ndarray) -> np.ndarray:
    """``images`` checked to be uint8 RGB: a float state in [0, 1] was written as a black picture,
    a raw 8-channel state as RGBA (:func:`to_uint8` of :func:`to_rgb` makes them pictures)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 RGB pictures (..., H, W, 3), got {images.dtype} {images.shape}: see to_uint8(to_rgb(x))"
        )
    return images


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 ``(H, W, 3)`` image as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(_pictures(image)).save(tmp, format="PNG")
    return path


def save_gif(frames: Sequence[np.ndarray] | np.ndarray, path: str | os.PathLike, fps: int = 20) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as a looping GIF, atomically."""
    path = Path(path)
    pictures = [Image.fromarray(f) for f in _pictures(frames)]
    with atomic_path(path) as tmp:
        pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=max(1, round(1000 / fps)), loop=0
        )
    return path
