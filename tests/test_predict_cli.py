"""`mnistpipe predict` on what a file system may hold besides images: locked directories, FIFOs,
names that are not UTF-8. Each gets its own line, the other files are still read, and nothing
ends in a traceback or waits forever."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from mnistpipe import predict
from mnistpipe.checkpoint import save_model
from mnistpipe.cli import main
from mnistpipe.models import ModelSpec, build_model
from mnistpipe.predict import ImageError, image_files, load_image, shown

SPEC = ModelSpec("mlp", (28, 28), 10, hidden=(16,))


@contextlib.contextmanager
def deadline(seconds: float):
    """Turns a hang (an open() of a FIFO waits for a writer) into a failure."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def digit_image(path: Path) -> Path:
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(10, 6), (16, 4), (16, 24)], fill=255, width=3)
    image.save(path, "PNG")
    return path


@pytest.fixture
def model_path(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_model(path, build_model(SPEC), SPEC, mean=0.13, std=0.31)
    return path


@pytest.fixture
def locked(tmp_path, monkeypatch) -> Path:
    """A directory that cannot be listed (root may list anything, so there it is made to fail)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    digit_image(folder / "inside.png")
    folder.chmod(0)
    if os.geteuid() == 0:
        real = Path.iterdir

        def iterdir(self):
            if self == folder:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)
        monkeypatch.setattr(Path, "iterdir", iterdir)
    yield folder
    folder.chmod(0o755)


@pytest.fixture
def odd_files(tmp_path, locked) -> dict[str, Path]:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    return {"good": digit_image(tmp_path / "good.png"), "locked": locked, "fifo": fifo,
            "latin1": digit_image(Path(os.fsdecode(os.fsencode(tmp_path) + b"/Ziffer_\xe4.png")))}


def test_each_odd_entry_gets_its_line(model_path, odd_files, tmp_path, capsys):
    with deadline(20):
        code = main(["predict", *map(str, odd_files.values()), "--model", str(model_path)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert [line.split(": digit ")[0] for line in out.splitlines()] == [
        str(odd_files["good"]), f"{tmp_path}/Ziffer_\\xe4.png"]
    assert err.splitlines() == [
        f"{odd_files['locked']}: error: cannot list this directory: Permission denied",
        f"{odd_files['fifo']}: error: skipped: a FIFO (named pipe), not a regular file",
        "2 of 4 files could not be read",
    ]


def test_odd_entries_in_json(model_path, odd_files, tmp_path, capsys):
    with deadline(20):
        assert main(["predict", *map(str, odd_files.values()), "--model", str(model_path), "--json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [*map(str, list(odd_files.values())[:3]), f"{tmp_path}/Ziffer_\\xe4.png"]
    assert [sorted(r) for r in results] == [["digit", "path", "probability", "top", "unsure"], ["error", "path"],
                                           ["error", "path"], ["digit", "path", "probability", "top", "unsure"]]


def test_a_fifo_is_never_opened(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    with deadline(10), pytest.raises(ImageError, match="FIFO"):
        load_image(fifo)
    assert opened == []


def test_fifos_and_folders_inside_a_directory_are_passed_over(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "sub.png").mkdir()
    digit_image(folder / "a.png")
    assert image_files([folder]) == [(folder / "a.png", None)]


def test_a_directory_with_only_a_fifo_has_no_images(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    [(path, error)] = image_files([tmp_path])
    assert path == tmp_path and "no image files" in str(error)


@pytest.mark.parametrize("name, expected", [
    (b"plain.png", "plain.png"),
    (b"Ziffer_\xc3\xa4.png", "Ziffer_\u00e4.png"),  # UTF-8: shown as it is
    (b"Ziffer_\xe4.png", "Ziffer_\\xe4.png"),  # Latin-1: not UTF-8
    (b"two\nlines.png", "two\\nlines.png"),
    (b"\x1b[31mred.png", "\\x1b[31mred.png"),  # a terminal escape is not obeyed
])
def test_shown_names_are_one_printable_line(name, expected):
    assert shown(Path(os.fsdecode(name))) == expected


def test_missing_file_behind_a_locked_directory(model_path, tmp_path, locked, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can read through a locked directory")
    assert main(["predict", str(locked / "inside.png"), "--model", str(model_path)]) == 1
    assert capsys.readouterr().err.startswith(f"{locked / 'inside.png'}: error: cannot read: Permission denied")


@pytest.mark.slow
def test_real_streams_no_traceback(model_path, odd_files, tmp_path):
    """As a user runs it: a real process, real stdout and stderr, an ASCII terminal, where
    even a UTF-8 name cannot be printed as it is. (The locked directory is left out: the
    child process cannot be made to fail listing it when it runs as root.)"""
    utf8 = digit_image(tmp_path / "Ziffer_\u00e4.png")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    files = [odd_files["good"], odd_files["fifo"], odd_files["latin1"], utf8]
    run = subprocess.run([sys.executable, "-m", "mnistpipe.cli", "predict", *map(os.fsencode, files),
                          "--model", str(model_path)], capture_output=True, timeout=120, env=env)
    assert run.returncode == 1 and b"Traceback" not in run.stderr, run.stderr.decode(errors="replace")
    assert [line.split(b": digit ")[0] for line in run.stdout.splitlines()] == [
        os.fsencode(odd_files["good"]), *[f"{tmp_path}/Ziffer_\\xe4.png".encode()] * 2]
    assert len(run.stderr.splitlines()) == 2


def test_open_regular_refuses_what_is_not_a_file(tmp_path):
    with pytest.raises(ImageError, match="a directory, not a regular file"):
        predict.open_regular(tmp_path)
    with pytest.raises(ImageError, match="cannot read: No such file"):
        predict.open_regular(tmp_path / "missing.png")
