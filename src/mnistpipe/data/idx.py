"""The IDX file format (MNIST's): parse with validation. (Tests write it: tests/conftest.py.)

Layout: 2 zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
then each dimension as a big-endian uint32, then the data in C order.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError

UBYTE = 0x08


def read_header(raw: bytes, source: str, ndim: int | None = None) -> tuple[int, tuple[int, ...]]:
    """(header length, shape) from the start of IDX bytes holding uint8 data; `ndim`, if given, is checked."""
    if len(raw) < 4:
        raise UserError(f"{source}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != UBYTE:
        expected = f"0x0000080{ndim}" if ndim is not None else "0x000008 and a dimension count"
        raise UserError(f"{source}: bad IDX magic number 0x{raw[:4].hex()} "
                        f"(expected {expected}, unsigned-byte data)")
    if ndim is not None and dims != ndim:
        raise UserError(f"{source}: IDX file has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise UserError(f"{source}: IDX header truncated")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    if 0 in shape[1:]:
        raise UserError(f"{source}: IDX dimension of size 0 in {shape}")
    return header, shape


def data_length(shape: tuple[int, ...]) -> int:
    """Bytes of uint8 data `shape` holds; exact (Python ints), so a forged header cannot overflow it."""
    return math.prod(shape)


def parse_idx(raw: bytes, source: str, ndim: int) -> np.ndarray:
    """Parse uncompressed IDX bytes holding uint8 data of `ndim` dimensions."""
    header, shape = read_header(raw, source, ndim)
    expected = header + data_length(shape)
    if len(raw) != expected:
        raise UserError(f"{source}: IDX data length {len(raw) - header} does not match "
                        f"dimensions {shape} ({expected - header} bytes): file truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_gz(path: Path) -> bytes:
    """Decompress a .gz file; a truncated or non-gzip file is a UserError."""
    try:
        return gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: not a valid gzip file ({exc}); delete it and fetch again") from None


def load_images(path: Path) -> np.ndarray:
    """uint8 images [N, H, W] from a gzipped IDX3 file."""
    return parse_idx(read_gz(path), str(path), ndim=3)


def load_labels(path: Path, num_classes: int) -> np.ndarray:
    """uint8 labels [N] from a gzipped IDX1 file, each checked to be < num_classes."""
    labels = parse_idx(read_gz(path), str(path), ndim=1)
    if labels.size and labels.max() >= num_classes:
        raise UserError(f"{path}: label {int(labels.max())} out of range 0..{num_classes - 1} "
                        "(check data.num_classes)")
    return labels
