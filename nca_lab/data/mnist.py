"""MNIST from its IDX files, in the layout torchvision writes, read with NumPy only.

Reference: LeCun et al., the MNIST database (http://yann.lecun.com/exdb/mnist/), "file
formats": a big-endian header ``0, 0, type, ndim``, then ``ndim`` int32 sizes, then the
values. ``torchvision.datasets.MNIST(root)`` keeps the files in ``<root>/MNIST/raw/`` (both
the ``.gz`` downloads and their extracted copies); either is read here, so torchvision is
needed only to download, and only when asked.
"""

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from nca_lab.errors import ConfigError, one_line, require

#: IDX type codes and their (big-endian) NumPy types.
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
#: Image files of each split, as torchvision names them.
IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
GZIP_MAGIC = b"\x1f\x8b"
HOW_TO_GET = (
    "copy the IDX files there (train-images-idx3-ubyte and t10k-images-idx3-ubyte, .gz or not), "
    "or install torchvision and set task.download=true"
)


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file, plain or gzip-compressed (detected from its first bytes).

    Raises:
        ConfigError: the file is missing, is not IDX (wrong magic), or is truncated or too long.
    """
    path = Path(path)
    require(path.is_file(), f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ConfigError(f"corrupt gzip file {path}: {err}") from err
    require(
        len(raw) >= 4 and raw[:2] == b"\x00\x00" and raw[2] in IDX_TYPES and raw[3] > 0,
        f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'})",
    )
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    require(len(raw) >= header, f"{path} is truncated: {len(raw)} bytes, the header alone needs {header}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize  # np.prod wraps around past int64
    require(
        len(raw) == expected,
        f"{path} is {'truncated' if len(raw) < expected else 'too long'}: {len(raw)} bytes, "
        f"shape {shape} needs {expected}",
    )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def raw_dir(root: str | Path) -> Path:
    """Where torchvision keeps MNIST's IDX files under ``root``."""
    return Path(root).expanduser() / "MNIST" / "raw"


def _find(root: str | Path, split: str) -> Path | None:
    return _file_in(raw_dir(root), split)


def _file_in(directory: Path, split: str) -> Path | None:
    """The split's IDX file in ``directory``, plain or gzipped (the plain one first)."""
    name = directory / IMAGE_FILES[split]
    return next((p for p in (name, name.with_name(name.name + ".gz")) if p.is_file()), None)


def _download(root: Path) -> None:
    """Fetch MNIST into ``root`` with torchvision (an optional dependency)."""
    try:
        from torchvision.datasets import MNIST
    except ImportError as err:
        raise ConfigError(
            f"task.download=true needs torchvision (pip install torchvision); or put MNIST in {raw_dir(root)}"
        ) from err
    try:
        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    except Exception as err:  # network and archive errors of any kind become one line
        raise ConfigError(f"MNIST download into {root} failed: {one_line(err) or type(err).__name__}") from err


def load_mnist_images(root: str | Path, split: str, *, download: bool = False) -> np.ndarray:
    """Images ``(N, H, W)`` uint8 of the ``"train"`` or ``"test"`` split under ``root``.

    Args:
        root: the directory holding ``MNIST/raw/`` (torchvision's ``root``).
        split: ``"train"`` (60000 digits) or ``"test"`` (10000 digits).
        download: if the files are missing, download them with torchvision.

    Raises:
        ConfigError: the data is missing (with how to get it) or a file is corrupt.
    """
    require(split in IMAGE_FILES, f"MNIST split must be train or test, got {split!r}")
    root = Path(root).expanduser()
    if _find(root, split) is None and download:
        _download(root)
    require(not root.is_file(), f"MNIST root task.data_root={str(root)!r} is a file: give the dir that holds MNIST/raw")
    require(
        root.is_dir(),
        f"MNIST root task.data_root={str(root)!r} does not exist: create {raw_dir(root)} and {HOW_TO_GET}",
    )
    path = _find(root, split)
    if path is None and _file_in(root, split) is not None:  # the files themselves, or MNIST/raw, given
        above = root.parent.parent if root.parts[-2:] == ("MNIST", "raw") else None
        hint = f"set task.data_root={above}" if above else f"move them into {raw_dir(root)}"
        raise ConfigError(
            f"MNIST {split} images are in {root} itself; nca_lab reads <data_root>/MNIST/raw "
            f"(torchvision's layout): {hint}"
        )
    require(path is not None, f"MNIST {split} images not found in {raw_dir(root)}: {HOW_TO_GET}")
    images = read_idx(path)
    require(
        images.ndim == 3 and images.dtype == np.uint8 and images.shape[0] > 0,
        f"{path} should hold uint8 images (N, H, W), got {images.dtype} {images.shape}",
    )
    return images
