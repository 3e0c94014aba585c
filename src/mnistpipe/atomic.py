"""Outputs appear whole or not at all: write beside the target, then os.replace."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import naming


def _temp_name(path: Path) -> Path:
    """A fresh name beside `path` that _remove_leftovers recognizes."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


@contextlib.contextmanager
def _blaming(tmp: Path, path: Path) -> Iterator[None]:
    """An error while writing `tmp` names `path`, the file the user knows: a full disk shows
    as "No space left on device: metrics/eval.json", not as a temporary name or no name."""
    try:
        with naming(path):
            yield
    except OSError as exc:
        name = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
        if name is not None and (name == str(tmp) or name.startswith(f"{tmp}{os.sep}")):
            exc.filename = str(path) + name[len(str(tmp)):]
        raise


def _remove_leftovers(path: Path) -> None:
    """Temporaries of `path` left by a killed writer (SIGKILL skips every cleanup)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = _temp_name(path)
    with _blaming(tmp, path):
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as usual
    try:
        with _blaming(tmp, path):
            yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = _temp_name(path)
    tmp.mkdir(0o777)  # the umask applies, as usual
    try:
        with _blaming(tmp, path):
            yield tmp
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put directory `tmp` at `path` by renames alone: the old one moves aside whole (deleting it
    in place could stop halfway and leave part of the last run) and goes once the new one is in."""
    old = _temp_name(path)
    if os.path.lexists(path):
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(old):
            os.replace(old, path)
        raise
    # The new one is in place: the old one, if it cannot go now, goes with the next run's leftovers.
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys -> CSV with a header line (the format dvc plots reads)."""
    header = list(rows[0]) if rows else []
    lines = [",".join(header)] + [",".join(str(row[k]) for k in header) for row in rows]
    return "\n".join(lines) + "\n"


def torch_bytes(obj: Any) -> bytes:
    """torch.save, byte-stable: saved to a file, torch names the archive's records after the
    file (here a random temp name); saved to a buffer, they are always archive/..."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json_text(data))


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, torch_bytes(obj))


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    write_text(path, csv_text(rows))


class OutputSet:
    """A stage's output files, replaced together: see `output_set`."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary, target)

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
        tmp = _temp_name(path)
        self.pending.append((tmp, path))
        with _blaming(tmp, path), open(tmp, "xb") as f:  # the umask applies, as usual
            f.write(data)

    def write_text(self, path: str | os.PathLike, text: str) -> None:
        self.write_bytes(path, text.encode())

    def write_json(self, path: str | os.PathLike, data: Any) -> None:
        self.write_text(path, json_text(data))

    def write_csv(self, path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
        self.write_text(path, csv_text(rows))

    def save_torch(self, path: str | os.PathLike, obj: Any) -> None:
        self.write_bytes(path, torch_bytes(obj))


@contextlib.contextmanager
def output_set() -> Iterator[OutputSet]:
    """Write a stage's outputs as one set. Each write goes whole to a temporary file beside its
    target, where a full disk shows; only when the block ends without error are they all moved
    into place, by renames, which take no space. A failure anywhere leaves every previous
    file as it was."""
    outputs = OutputSet()
    try:
        yield outputs
        for tmp, path in outputs.pending:
            os.replace(tmp, path)
    finally:
        for tmp, _ in outputs.pending:
            tmp.unlink(missing_ok=True)
