"""Atomic writes give files the mode any new file would get, and leave no temporaries; an
output set is replaced whole or not at all, and a failed write names the file the user knows."""

from __future__ import annotations

import errno
import os

import pytest

from mnistpipe import atomic
from mnistpipe.atomic import atomic_dir, output_set, write_text


def current_umask() -> int:
    """Read without changing it (os.umask can only set it)."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)


def test_modes_follow_the_umask_and_no_temporaries_remain(tmp_path):
    write_text(tmp_path / "a.txt", "hello\n")
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("x")
    umask = current_umask()
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]


# ---------------------------------------------------------------- output sets


class FullDisk:
    """`open` for mnistpipe.atomic whose `n`th file opened for writing runs out of space halfway
    through its first write, as a real full disk does: the file exists, part written, and the
    error names no file."""

    def __init__(self, n: int) -> None:
        self.n, self.opened = n, 0

    def __call__(self, file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wxa"):
            self.opened += 1
            if self.opened == self.n:
                return HalfWritten(f)
        return f


class HalfWritten:
    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data) -> int:
        self.f.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def previous_run(tmp_path) -> dict:
    """Three files of a "previous run", by path: their bytes."""
    files = {tmp_path / "metrics" / "a.json": b'{"accuracy": 0.9767}\n',
             tmp_path / "plots" / "b.csv": b"index,predicted\n0,7\n",
             tmp_path / "plots" / "c.csv": b"x\n1\n"}
    for path, data in files.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    return files


def listing(tmp_path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def test_output_set_replaces_every_file_and_leaves_no_temporaries(tmp_path):
    files = previous_run(tmp_path)
    a, b, c = files
    before = listing(tmp_path)
    with output_set() as out:
        out.write_json(a, {"accuracy": 0.9571})
        out.write_csv(b, [{"index": 0, "predicted": 1}])
        out.write_text(c, "x\n2\n")
        assert a.read_bytes() == files[a]  # nothing moves before the block ends
    assert a.read_text() == '{\n  "accuracy": 0.9571\n}\n'
    assert b.read_text() == "index,predicted\n0,1\n" and c.read_text() == "x\n2\n"
    assert listing(tmp_path) == before


@pytest.mark.parametrize("fail_after", [0, 1, 2, 3])
def test_an_error_in_an_output_set_leaves_every_previous_file(tmp_path, fail_after):
    files = previous_run(tmp_path)
    before = listing(tmp_path)
    with pytest.raises(RuntimeError, match="midway"), output_set() as out:
        for path in list(files)[:fail_after]:
            out.write_bytes(path, b"new run\n")
        raise RuntimeError("midway")
    assert {path: path.read_bytes() for path in files} == files
    assert listing(tmp_path) == before


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_full_disk_on_the_nth_write_leaves_every_previous_file_and_names_the_target(tmp_path, monkeypatch, n):
    files = previous_run(tmp_path)
    before = listing(tmp_path)
    monkeypatch.setattr(atomic, "open", FullDisk(n), raising=False)
    with pytest.raises(OSError) as exc, output_set() as out:
        for path in files:
            out.write_bytes(path, b"new run\n" * 1000)
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(list(files)[n - 1])
    assert {path: path.read_bytes() for path in files} == files
    assert listing(tmp_path) == before


def test_a_failed_single_write_names_the_target_not_its_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    target.write_text("old\n")

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(target), "write_bytes", full)
    with pytest.raises(OSError) as exc:
        atomic.write_text(target, "new\n")
    assert exc.value.filename == str(target)
    monkeypatch.undo()
    assert target.read_text() == "old\n" and listing(tmp_path) == ["a.json"]


def test_a_directory_that_cannot_be_moved_in_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """atomic_dir swaps by renames: the previous directory is never half deleted."""
    old = tmp_path / "reports"
    (old / "figures").mkdir(parents=True)
    (old / "report.md").write_text("previous\n")
    (old / "figures" / "a.png").write_bytes(b"png")
    real_replace, refused = os.replace, []

    def refuse_new(src, dst):
        if "reports." in str(src) and str(dst) == str(old) and not refused:  # the new directory moving in
            refused.append(src)
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse_new)
    with pytest.raises(OSError), atomic_dir(old) as new:
        (new / "report.md").write_text("new\n")
    assert (old / "report.md").read_text() == "previous\n" and (old / "figures" / "a.png").read_bytes() == b"png"
    assert listing(tmp_path) == ["reports", "reports/figures", "reports/figures/a.png", "reports/report.md"]


def test_a_directory_write_that_fails_names_the_final_path(tmp_path):
    with pytest.raises(OSError) as exc, atomic_dir(tmp_path / "reports") as new:
        (new / "missing" / "x.png").write_bytes(b"")
    assert exc.value.filename == str(tmp_path / "reports" / "missing" / "x.png")
    assert listing(tmp_path) == []
