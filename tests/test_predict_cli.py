"""`mnistpipe predict` on what a file system may hold besides images: locked directories, FIFOs,
names that are not UTF-8. Each gets its own line, the other files are still read, and nothing
ends in a traceback or waits forever."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import re
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
from mnistpipe.data.prepared import normalize
from mnistpipe.models import ModelSpec, build_model
from mnistpipe.predict import ImageError, image_files, load_image, predict_files, preprocess, shown

from digit_pictures import blurry_zero, drawing, noisy

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


# --- the CLI -----------------------------------------------------------------------------------

LINE = re.compile(r"^(?P<path>.+): digit (?P<d>\d) \(p=(?P<p>[01]\.\d{3})(?P<unsure>, unsure)?\)  top3: "
                  r"(?P<top>\d [01]\.\d{3}, \d [01]\.\d{3}, \d [01]\.\d{3})$")


@pytest.fixture
def good_files(tmp_path) -> list[Path]:
    folder = tmp_path / "good"
    folder.mkdir()
    drawing().save(folder / "a.png")
    drawing(canvas=(200, 150), box=(20, 30, 90, 130), dark_on_light=True).convert("RGB").save(folder / "b.jpg")
    drawing(canvas=(30, 30), box=(6, 3, 24, 27)).save(folder / "c.gif")  # under the bomb test's limit
    (folder / "notes.txt").write_text("not an image, and not looked at")
    return [folder / "a.png", folder / "b.jpg", folder / "c.gif"]


def test_predict_prints_one_line_per_file(model_path, good_files, capsys):
    folder = good_files[0].parent
    assert main(["predict", str(folder), str(good_files[0]), "--model", str(model_path)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [LINE.match(line)["path"] for line in lines] == [str(p) for p in good_files + good_files[:1]]
    for line in lines:
        m = LINE.match(line)
        ranked = [(int(d), float(p)) for d, p in (pair.split() for pair in m["top"].split(", "))]
        assert ranked[0] == (int(m["d"]), float(m["p"]))
        assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    assert err == ""


def test_predict_json(model_path, good_files, capsys):
    assert main(["predict", *map(str, good_files), "--model", str(model_path), "--json", "--top", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [str(p) for p in good_files]
    for r in results:
        assert set(r) == {"path", "digit", "probability", "unsure", "top"}
        assert r["unsure"] == (r["probability"] < predict.UNSURE_BELOW)
        assert len(r["top"]) == 2 and r["top"][0] == {"digit": r["digit"], "probability": r["probability"]}
        assert 0 < r["top"][1]["probability"] <= r["probability"] <= 1


@pytest.fixture
def bad_files(tmp_path, monkeypatch) -> dict[str, tuple[Path, str]]:
    """Each kind of bad file, with the words its error must contain."""
    monkeypatch.setattr(predict, "MAX_IMAGE_PIXELS", 1000)  # 28x28 files are below it
    folder = tmp_path / "bad"
    folder.mkdir()
    png = io.BytesIO()
    drawing(canvas=(28, 28)).save(png, "PNG")
    files = {
        "text": ("x.png", b"hello, I am text\n", "not an image"),
        "empty": ("empty.png", b"", "not an image"),
        "truncated": ("truncated.png", png.getvalue()[: len(png.getvalue()) // 2], "truncated"),
    }
    out = {}
    for key, (name, data, words) in files.items():
        (folder / name).write_bytes(data)
        out[key] = (folder / name, words)
    drawing(canvas=(40, 40), box=(10, 5, 30, 35)).save(folder / "bomb.png")  # 1,600 px: warning
    out["bomb"] = (folder / "bomb.png", "decompression bomb")
    drawing(canvas=(400, 400), box=(100, 50, 300, 350)).save(folder / "bigbomb.png")  # over 2x: error
    out["bigbomb"] = (folder / "bigbomb.png", "decompression bomb")
    out["missing"] = (folder / "missing.png", "cannot read")
    return out


def test_blank_page_is_an_answer_not_an_error(model_path, good_files, tmp_path, capsys):
    """A blank page gets its own line on stdout and null in JSON; the run fails only when no
    file had a digit on it."""
    blank = tmp_path / "blank.png"
    noisy(Image.new("L", (300, 200), 235), sigma=6).save(blank)
    assert main(["predict", str(good_files[0]), str(blank), "--model", str(model_path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == f"{blank}: no digit found: the page is blank, nothing stands out from the paper"
    assert err == ""
    assert main(["predict", str(blank), "--model", str(model_path), "--json"]) == 1
    [result] = json.loads(capsys.readouterr().out)
    assert result == {"path": str(blank), "digit": None,
                      "reason": "no digit found: the page is blank, nothing stands out from the paper"}


def test_bad_files_fail_alone(model_path, good_files, bad_files, capsys):
    bad = [path for path, _ in bad_files.values()]
    argv = ["predict", str(good_files[0]), *map(str, bad), str(good_files[2]), "--model", str(model_path)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert [LINE.match(line)["path"] for line in out.splitlines()] == [str(good_files[0]), str(good_files[2])]
    for path, words in bad_files.values():
        [line] = [line for line in err.splitlines() if line.startswith(f"{path}: error: ")]
        assert words in line
    assert "Traceback" not in err

    assert main([*argv, "--json"]) == 1
    results = {r["path"]: r for r in json.loads(capsys.readouterr().out)}
    assert len(results) == len(bad) + 2
    for path, words in bad_files.values():
        assert set(results[str(path)]) == {"path", "error"} and words in results[str(path)]["error"]
    assert results[str(good_files[0])]["digit"] in range(10)


def test_pillow_limit_is_restored(tmp_path, good_files):
    before = Image.MAX_IMAGE_PIXELS
    load_image(good_files[0])
    with pytest.raises(ImageError):
        load_image(tmp_path / "missing.png")
    assert Image.MAX_IMAGE_PIXELS == before


def test_directory_without_images_is_a_failed_entry(model_path, tmp_path, capsys):
    (tmp_path / "empty_dir").mkdir()
    assert main(["predict", str(tmp_path / "empty_dir"), "--model", str(model_path)]) == 1
    assert "no image files" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["missing.pt", "garbage.pt"])
def test_bad_model_is_a_usage_error(model, good_files, tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(good_files[0]), "--model", str(tmp_path / model)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and model in err and "Traceback" not in err


@pytest.mark.parametrize("odd", ["unreadable", "bug", "blurry-zero"])
def test_one_odd_file_among_300(odd, model_path, tmp_path, monkeypatch, capsys):
    """The issue's case: one odd file among 300 must never cost the other 299 their digits."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(300):
        drawing(box=(4 + i % 5, 4, 18 + i % 5, 24)).save(folder / f"{i:03d}.png")
    odd_file = folder / "150.png"
    if odd == "unreadable":
        odd_file.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    elif odd == "bug":  # any exception other than ImageError, from inside preprocessing
        real = predict.preprocess
        monkeypatch.setattr(predict, "preprocess", lambda image: 1 / 0 if image.size == (29, 28) else real(image))
        drawing(canvas=(29, 28)).save(odd_file)
    else:
        blurry_zero().save(odd_file)
    code = main(["predict", str(folder), "--model", str(model_path)])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert all(LINE.match(line) for line in lines) and "Traceback" not in err
    if odd == "blurry-zero":  # it crashed the whole run before
        assert (code, len(lines), err) == (0, 300, "")
        return
    assert code == 1 and len(lines) == 299 and str(odd_file) not in out
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"{odd_file}: error: ")
    if odd == "bug":
        assert errors[0].endswith("could not read a digit: ZeroDivisionError: division by zero")
    assert err.splitlines()[-1] == "1 of 300 files could not be read"


def test_temperature_divides_the_logits(model_path, good_files, tmp_path, capsys):
    """A calibrated checkpoint (ckpt["temperature"]) gives softmax(logits / T); older ones T = 1."""
    ckpt = torch.load(model_path, weights_only=True)
    older, calibrated = tmp_path / "older.pt", tmp_path / "calibrated.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "temperature"}, older)
    torch.save({**ckpt, "temperature": 3.0}, calibrated)
    model = build_model(SPEC)
    model.load_state_dict(ckpt["state_dict"])
    x = normalize(torch.stack([preprocess(load_image(p)) for p in good_files]), 0.13, 0.31)
    with torch.no_grad():
        logits = model.eval()(x)
    tops = {}
    for path, t in [(older, 1.0), (calibrated, 3.0)]:
        results = predict_files(good_files, path, top=10)
        for r, p in zip(results, (logits / t).softmax(1)):
            assert [e["probability"] for e in r["top"]] == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-6)
        tops[t] = [r["probability"] for r in results]
    assert all(hot < plain for plain, hot in zip(tops[1.0], tops[3.0]))  # softer, not the same
    assert main(["info", "--model", str(calibrated)]) == 0
    assert "calibration temperature: 3.0000" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"mnistpipe {importlib.metadata.version('mnistpipe')}\n"


@pytest.mark.parametrize("command", ["info", "predict", "export"])
def test_no_model_outside_a_project_says_where_to_run(command, good_files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no models/model.pt here
    with pytest.raises(SystemExit) as exc:
        main([command] + ([str(good_files[0])] if command == "predict" else []))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: models/model.pt: model checkpoint not found; run mnistpipe from the "
                          "project's root after `dvc repro`")
    assert err.endswith("or pass --model PATH\n") and err.count("\n") == 1


@pytest.mark.parametrize("name, content", [("train.csv", b"epoch,train_loss\n1,0.31\n"),
                                           ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
                                           ("seeds.json", b'{"seeds": []}')])
def test_model_of_the_wrong_type(name, content, tmp_path, capsys):
    """Today's plots/train.csv answered "pop from empty list"; say what it is not and what to pass."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["info", "--model", str(tmp_path / name)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / name}: not a PyTorch checkpoint (")
    assert "models/model.pt" in err and err.count("\n") == 1


def test_top_must_be_positive(model_path, good_files, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(good_files[0]), "--model", str(model_path), "--top", "0"])
    assert exc.value.code == 2




def test_a_model_whose_outputs_overflow_is_refused(tmp_path, good_files, capsys):
    """Finite weights of 1e30 pass the checkpoint's checks but overflow the logits: no "p=nan" reading."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e30)
    path = tmp_path / "huge.pt"
    save_model(path, model, SPEC, mean=0.13, std=0.31)
    with pytest.raises(SystemExit) as exit_:
        main(["predict", *map(str, good_files), "--model", str(path)])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == "" and "not finite" in err and "p=nan" not in out + err
