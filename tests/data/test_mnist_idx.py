"""The IDX reader and writer, and finding MNIST in torchvision's layout; all on generated files."""

import gzip
import sys
import types

import numpy as np
import pytest

from nca_lab.data.mnist import load_mnist_images, raw_dir, read_idx
from nca_lab.errors import ConfigError

from nca_testing import write_idx

DIGITS = np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_roundtrip_plain_and_gzip(tmp_path, name):
    path = write_idx(tmp_path / name, DIGITS)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    plain = gzip.decompress(raw) if name.endswith(".gz") else raw
    assert plain[:4] == bytes([0, 0, 0x08, 3]) and plain[4:16] == bytes([0, 0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 4])
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, DIGITS)


@pytest.mark.parametrize(
    "array", [np.array([7, -3, 1000], np.int16), np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)]
)
def test_roundtrip_other_types_is_big_endian_on_disk(tmp_path, array):
    path = write_idx(tmp_path / "x-idx", array)
    raw = path.read_bytes()
    header = 4 + 4 * array.ndim
    assert raw[header:] == array.astype(array.dtype.newbyteorder(">")).tobytes()
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an IDX file"),
        (b"\x1f\x8c\x08\x03" + bytes(12), "not an IDX file"),  # not gzip either
        (bytes([0, 1, 8, 3]) + bytes(12), "not an IDX file"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 0]), "not an IDX file"),  # unknown type code
        (bytes([0, 0, 8, 3, 0, 0, 0, 2]), "truncated.*header"),
    ],
)
def test_wrong_magic_or_header_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_idx(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_and_overlong_data_are_errors(tmp_path, compressed):
    good = write_idx(tmp_path / "good", DIGITS).read_bytes()
    for name, data, message in [("short", good[:-1], "truncated"), ("long", good + b"\x00", "too long")]:
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if compressed else data)
        with pytest.raises(ConfigError, match=f"{message}: {len(data)} bytes, shape \\(3, 5, 4\\) needs 76"):
            read_idx(path)


def test_a_cut_gzip_stream_is_an_error(tmp_path):
    raw = write_idx(tmp_path / "x.gz", DIGITS).read_bytes()
    (tmp_path / "cut.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ConfigError, match="corrupt gzip file"):
        read_idx(tmp_path / "cut.gz")


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="IDX file not found"):
        read_idx(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("split", "name"), [("train", "train-images-idx3-ubyte"), ("test", "t10k-images-idx3-ubyte.gz")]
)
def test_load_finds_torchvision_layout(tmp_path, split, name):
    write_idx(raw_dir(tmp_path) / name, DIGITS)
    np.testing.assert_array_equal(load_mnist_images(tmp_path, split), DIGITS)


def test_load_prefers_the_extracted_file(tmp_path):
    write_idx(raw_dir(tmp_path) / "train-images-idx3-ubyte", DIGITS)
    write_idx(raw_dir(tmp_path) / "train-images-idx3-ubyte.gz", DIGITS[:1])
    assert load_mnist_images(tmp_path, "train").shape == DIGITS.shape


def test_load_errors_say_what_is_missing_and_how_to_get_it(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: create .*absent/MNIST/raw and copy") as err:
        load_mnist_images(tmp_path / "absent", "train")
    assert "task.download=true" in str(err.value)
    with pytest.raises(ConfigError, match="MNIST test images not found in .*MNIST/raw"):
        load_mnist_images(tmp_path, "test")
    with pytest.raises(ConfigError, match="split must be train or test"):
        load_mnist_images(tmp_path, "valid")


def test_a_data_root_that_is_the_files_dir_or_a_file_says_so(tmp_path):
    """The easiest mistake: pointing task.data_root at the folder that holds the files. It said
    they were not found in <that folder>/MNIST/raw; a file as data_root, that it did not exist."""
    write_idx(raw_dir(tmp_path) / "train-images-idx3-ubyte.gz", DIGITS)
    with pytest.raises(ConfigError, match=f"are in {raw_dir(tmp_path)} itself; .*: set task.data_root={tmp_path}$"):
        load_mnist_images(raw_dir(tmp_path), "train")
    flat = tmp_path / "flat"
    write_idx(flat / "train-images-idx3-ubyte", DIGITS)
    with pytest.raises(ConfigError, match=f"are in {flat} itself; .*: move them into {raw_dir(flat)}$"):
        load_mnist_images(flat, "train")
    with pytest.raises(ConfigError, match="is a file: give the dir that holds MNIST/raw"):
        load_mnist_images(flat / "train-images-idx3-ubyte", "train")


def test_a_header_too_big_for_int64_counts_its_bytes_right(tmp_path):
    """``np.prod`` of the header's sizes wrapped around: "needs -17179869163 bytes"."""
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 8, 4]) + b"\xff\xff\xff\xff" * 4)
    with pytest.raises(ConfigError, match=f"needs {20 + (2**32 - 1) ** 4}$"):
        read_idx(path)


def test_load_rejects_files_that_are_not_images(tmp_path):
    write_idx(raw_dir(tmp_path) / "train-images-idx3-ubyte", np.arange(10, dtype=np.uint8))  # a labels file
    with pytest.raises(ConfigError, match=r"should hold uint8 images \(N, H, W\)"):
        load_mnist_images(tmp_path, "train")


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    class FailingMNIST:  # stands in for torchvision's MNIST: the network is unreachable
        def __init__(self, root, train, download):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...: no route")

    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.SimpleNamespace(MNIST=FailingMNIST)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", torchvision.datasets)
    with pytest.raises(ConfigError) as err:
        load_mnist_images(tmp_path, "train", download=True)
    assert str(err.value) == (
        f"MNIST download into {tmp_path} failed: "
        "Error downloading train-images-idx3-ubyte.gz: Tried https://...: no route"
    )
