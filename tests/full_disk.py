"""A simulated full (or read-only, or forbidden) disk for tests: an `open` that fails on the
nth file opened for writing. Plain standard library, so a stage run in its own process can
install it before anything else loads."""

from __future__ import annotations

import builtins
import errno
import io
import os


class FullDisk:
    """`open` whose `n`th file opened for writing fails as a full disk does (ENOSPC halfway
    through a write, naming no file), or, with `at_open`, as a read-only or forbidden place does
    (the error raised by open, naming the file)."""

    def __init__(self, n: int, code: int = errno.ENOSPC, at_open: bool = False) -> None:
        self.n, self.code, self.at_open, self.opened = n, code, at_open, 0
        self.real = builtins.open

    def __call__(self, file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wxa"):
            self.opened += 1
            if self.opened == self.n:
                if self.at_open:
                    raise OSError(self.code, os.strerror(self.code), os.fsdecode(file))
                return HalfWritten(self.real(file, mode, *args, **kwargs), self.code)
        return self.real(file, mode, *args, **kwargs)

    def install(self) -> None:
        builtins.open = io.open = self  # io.open: what pathlib's write_bytes calls


class HalfWritten:
    """A file that takes half of its first write, then reports the disk full."""

    def __init__(self, f, code: int) -> None:
        self.f, self.code = f, code

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def write(self, data) -> int:
        self.f.write(data[:len(data) // 2])
        raise OSError(self.code, os.strerror(self.code))
