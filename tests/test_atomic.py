"""Atomic writes give files the mode any new file would get, and leave no temporaries."""

from __future__ import annotations

from mnistpipe.atomic import atomic_dir, write_text


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
