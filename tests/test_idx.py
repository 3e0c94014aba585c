"""IDX parsing (mnistpipe.data.idx): round trips, and malformed files as clear UserErrors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mnistpipe.data.idx import data_length, load_images, load_labels, parse_idx, read_gz, read_header
from mnistpipe.errors import UserError

from conftest import FILES, encode_idx, write_idx_gz


def _images(n: int = 5, h: int = 28, w: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w), dtype=np.uint8)


def _gz(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw, mtime=0))
    return path


# --- round trips -------------------------------------------------------------------------------

def test_encode_idx_header_layout():
    raw = encode_idx(np.zeros((3, 2, 4), dtype=np.uint8))
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert struct.unpack(">3I", raw[4:16]) == (3, 2, 4)
    assert len(raw) == 16 + 3 * 2 * 4


def test_parse_idx_round_trip_images_and_labels():
    images = _images(7, 28, 28)
    labels = np.arange(7, dtype=np.uint8)
    got_x = parse_idx(encode_idx(images), "x", ndim=3)
    got_y = parse_idx(encode_idx(labels), "y", ndim=1)
    assert got_x.dtype == np.uint8 and got_x.shape == (7, 28, 28)
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, labels)


def test_parse_idx_non_square_shape_kept():
    images = _images(3, 5, 9)
    got = parse_idx(encode_idx(images), "x", ndim=3)
    assert got.shape == (3, 5, 9)
    np.testing.assert_array_equal(got, images)


def test_load_images_and_labels_from_gz(tmp_path):
    images, labels = _images(11), np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9], dtype=np.uint8)
    raw_x = write_idx_gz(tmp_path / "x.gz", images)
    write_idx_gz(tmp_path / "y.gz", labels)
    assert raw_x == encode_idx(images)
    assert gzip.decompress((tmp_path / "x.gz").read_bytes()) == raw_x
    np.testing.assert_array_equal(load_images(tmp_path / "x.gz"), images)
    np.testing.assert_array_equal(load_labels(tmp_path / "y.gz", num_classes=10), labels)


def test_synthetic_mirror_loads(synthetic_mirror):
    mirror, _ = synthetic_mirror
    x = load_images(mirror / FILES["train_images"])
    y = load_labels(mirror / FILES["train_labels"], num_classes=10)
    assert x.shape == (600, 28, 28) and y.shape == (600,)
    assert x.dtype == np.uint8 and y.dtype == np.uint8
    assert int(y.max()) <= 9


def test_empty_label_file_is_accepted(tmp_path):
    """Zero items (first dimension 0) is a valid, if useless, IDX file."""
    write_idx_gz(tmp_path / "y.gz", np.zeros((0,), dtype=np.uint8))
    assert load_labels(tmp_path / "y.gz", num_classes=10).shape == (0,)


# --- malformed content -------------------------------------------------------------------------

def _expect_error(raw: bytes, ndim: int, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        parse_idx(raw, "some/file.idx", ndim=ndim)
    message = str(info.value)
    assert "some/file.idx" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_bad_magic_zero_bytes():
    raw = bytearray(encode_idx(_images(2)))
    raw[0] = 0x12
    _expect_error(bytes(raw), 3, "bad IDX magic", "0x1200")


def test_wrong_type_code():
    raw = bytearray(encode_idx(_images(2)))
    raw[2] = 0x0D  # float data
    _expect_error(bytes(raw), 3, "bad IDX magic", "0x00000d03", "unsigned-byte")


def test_wrong_ndim_labels_file_read_as_images():
    raw = encode_idx(np.zeros(4, dtype=np.uint8))
    _expect_error(raw, 3, "1 dimensions", "expected 3")


def test_wrong_ndim_images_file_read_as_labels():
    _expect_error(encode_idx(_images(2)), 1, "3 dimensions", "expected 1")


@pytest.mark.parametrize("size", [0, 1, 3])
def test_shorter_than_magic(size):
    _expect_error(b"\x00\x00\x08"[:size], 3, "not an IDX file", f"{size} bytes")


@pytest.mark.parametrize("cut", [4, 8, 15])
def test_truncated_header(cut):
    raw = encode_idx(_images(2))[:cut]
    _expect_error(raw, 3, "header truncated")


def test_truncated_data():
    raw = encode_idx(_images(3))
    _expect_error(raw[:-1], 3, "data length", "truncated")


def test_data_too_long():
    raw = encode_idx(_images(3)) + b"\x00"
    _expect_error(raw, 3, "data length", "does not match")


def test_header_claims_more_items_than_present():
    raw = bytearray(encode_idx(_images(3)))
    raw[4:8] = struct.pack(">I", 60000)
    _expect_error(bytes(raw), 3, "data length", "60000")


def test_zero_image_dimension_rejected():
    raw = struct.pack(">HBB3I", 0, 8, 3, 5, 0, 28)
    _expect_error(raw, 3, "size 0")


def test_label_out_of_range(tmp_path):
    write_idx_gz(tmp_path / "y.gz", np.array([0, 3, 10, 2], dtype=np.uint8))
    with pytest.raises(UserError) as info:
        load_labels(tmp_path / "y.gz", num_classes=10)
    message = str(info.value)
    assert "label 10" in message and "0..9" in message and "num_classes" in message
    assert str(tmp_path / "y.gz") in message


def test_label_range_follows_num_classes(tmp_path):
    write_idx_gz(tmp_path / "y.gz", np.array([0, 1, 2], dtype=np.uint8))
    assert load_labels(tmp_path / "y.gz", num_classes=3).tolist() == [0, 1, 2]
    with pytest.raises(UserError, match="label 2 out of range 0..1"):
        load_labels(tmp_path / "y.gz", num_classes=2)


def test_load_images_on_label_file_names_file(tmp_path):
    path = tmp_path / "y.gz"
    write_idx_gz(path, np.arange(5, dtype=np.uint8))
    with pytest.raises(UserError, match="1 dimensions, expected 3") as info:
        load_images(path)
    assert str(path) in str(info.value)


# --- gzip layer --------------------------------------------------------------------------------

def test_read_gz_round_trip(tmp_path):
    assert read_gz(_gz(tmp_path / "a.gz", b"hello idx")) == b"hello idx"


def test_read_gz_not_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(encode_idx(_images(1)))  # uncompressed IDX with a .gz name
    with pytest.raises(UserError) as info:
        read_gz(path)
    message = str(info.value)
    assert str(path) in message and "not a valid gzip file" in message and "fetch again" in message


def test_read_gz_html_page(tmp_path):
    path = tmp_path / "x.gz"
    path.write_text("<html><body>404 Not Found</body></html>")
    with pytest.raises(UserError, match="not a valid gzip file"):
        read_gz(path)


@pytest.mark.parametrize("keep", [5, 20, -8, -1])
def test_read_gz_truncated(tmp_path, keep):
    data = gzip.compress(encode_idx(_images(4)), mtime=0)
    path = tmp_path / "x.gz"
    path.write_bytes(data[:keep])
    with pytest.raises(UserError, match="not a valid gzip file") as info:
        read_gz(path)
    assert str(path) in str(info.value)


def test_read_gz_corrupt_crc(tmp_path):
    data = bytearray(gzip.compress(encode_idx(_images(2)), mtime=0))
    data[-6] ^= 0xFF  # inside the CRC32 trailer
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a valid gzip file"):
        read_gz(path)


def test_load_images_truncated_gz_is_user_error(tmp_path):
    data = gzip.compress(encode_idx(_images(4)), mtime=0)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        load_images(path)


def test_load_images_valid_gzip_truncated_idx(tmp_path):
    """A complete gzip stream around an incomplete IDX payload is caught by the IDX layer."""
    path = _gz(tmp_path / "x.gz", encode_idx(_images(4))[:-100])
    with pytest.raises(UserError, match="file truncated or corrupt"):
        load_images(path)


# --- forged headers ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2**31, 2**31, 4), (2**32 - 1, 2**32 - 1, 2**32 - 1)])
def test_header_whose_size_overflows_int64(shape):
    """2^31 * 2^31 * 4 wraps to 0 in int64: the length check passed and numpy failed to reshape."""
    raw = struct.pack(">HBB3I", 0, 8, 3, *shape)
    _expect_error(raw, 3, "data length 0", "does not match", str(shape[0] * shape[1] * shape[2]))


def test_read_header_any_ndim():
    header, shape = read_header(encode_idx(_images(2, 3, 4)), "x")
    assert (header, shape, data_length(shape)) == (16, (2, 3, 4), 24)
    assert read_header(encode_idx(np.zeros(7, dtype=np.uint8)), "y") == (8, (7,))
    with pytest.raises(UserError, match="bad IDX magic.*0x000008 and a dimension count"):
        read_header(b"\x1f\x8b\x08\x00", "z")
