"""`mnistpipe predict`: MNIST-style preprocessing of users' images, per-file errors, the CLI."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

from mnistpipe import predict
from mnistpipe.checkpoint import save_model
from mnistpipe.cli import main
from mnistpipe.data.prepared import normalize
from mnistpipe.models import ModelSpec, build_model
from mnistpipe.predict import ImageError, load_image, predict_files, preprocess

from conftest import REPO, load_benchmark

SPEC = ModelSpec("mlp", (28, 28), 10, hidden=(16,))
# A "4"-like figure in unit coordinates: asymmetric, so its centre of mass is not its box centre.
STROKES = [[(0.65, 0.0), (0.0, 0.62), (0.9, 0.62)], [(0.65, 0.0), (0.65, 1.0)]]


def drawing(canvas=(28, 28), box=(6, 4, 20, 24), dark_on_light=False) -> Image.Image:
    """The figure drawn into `box` (x0, y0, x1, y1) of a canvas, stroke width ~1/7 of its height."""
    x0, y0, x1, y1 = box
    ink, paper = (0, 255) if dark_on_light else (255, 0)
    image = Image.new("L", canvas, paper)
    draw = ImageDraw.Draw(image)
    for line in STROKES:
        draw.line([(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in line], fill=ink,
                  width=max(1, round((y1 - y0) / 7)), joint="curve")
    return image


def ink_box(digit: torch.Tensor) -> tuple[int, int]:
    rows, cols = np.flatnonzero(digit.numpy().any(1)), np.flatnonzero(digit.numpy().any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(digit: torch.Tensor) -> tuple[float, float]:
    d = digit.double()
    return (float((d.sum(1) * torch.arange(28)).sum() / d.sum()),
            float((d.sum(0) * torch.arange(28)).sum() / d.sum()))


def difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute pixel difference (0..255), allowing a 1-pixel shift: MNIST's centring
    moves by whole pixels, so a centre of mass near x.5 may round either way."""
    return min(float((a.float() - b.float().roll((dy, dx), (0, 1))).abs().mean())
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def noisy(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    x = np.asarray(image, dtype=np.float64) + np.random.default_rng(seed).normal(0, sigma, image.size[::-1])
    return Image.fromarray(x.clip(0, 255).round().astype(np.uint8))


REFERENCE = drawing(canvas=(280, 280), box=(60, 40, 200, 240))  # centred, light on dark

# --- preprocessing -----------------------------------------------------------------------------


@pytest.mark.parametrize("image", [
    drawing(),
    drawing(dark_on_light=True),
    drawing(canvas=(1200, 900), box=(900, 30, 1150, 380), dark_on_light=True),
    drawing(canvas=(50, 300), box=(5, 5, 45, 40)).convert("RGB"),
    drawing(canvas=(300, 100), box=(20, 30, 280, 80)),  # wider than tall
], ids=["mnist-size", "dark-on-light", "big-off-centre", "rgb-tall-canvas", "wide"])
def test_preprocess_gives_mnist_geometry(image):
    digit = preprocess(image)
    assert digit.shape == (28, 28) and digit.dtype == torch.uint8
    height, width = ink_box(digit)
    assert max(height, width) <= 20 and max(height, width) >= 19  # longer side scaled to 20
    row, col = centre_of_mass(digit)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    assert digit.max() >= 250  # strokes at full brightness, as in MNIST
    assert (digit[0] == 0).all() and (digit[:, 0] == 0).all()  # black frame


def test_centred_by_centre_of_mass_not_by_box():
    """A heavy bar on the left and a thin arm to the right: their centre of mass lies well left
    of the box's centre, and MNIST centres the centre of mass."""
    image = Image.new("L", (300, 300))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 40, 110, 260), fill=255)  # heavy
    draw.rectangle((110, 120, 260, 180), fill=255)  # thinner
    digit = preprocess(image)
    row, col = centre_of_mass(digit)
    cols = np.flatnonzero(digit.numpy().any(0))
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    assert abs((cols[0] + cols[-1]) / 2 - 14) > 2  # the box is not centred: the test tells them apart


def test_dark_on_light_matches_light_on_dark():
    light = preprocess(drawing(canvas=(140, 140), box=(30, 20, 100, 120)))
    dark = preprocess(drawing(canvas=(140, 140), box=(30, 20, 100, 120), dark_on_light=True))
    assert difference(light, dark) < 1


def test_large_off_centre_digit_matches_centred_one():
    big = drawing(canvas=(2000, 1500), box=(1300, 100, 1860, 900), dark_on_light=True)
    assert difference(preprocess(big), preprocess(REFERENCE)) < 8  # of 255: anti-aliasing differs


def test_grey_paper_noise_and_specks_are_ignored():
    photo = np.asarray(drawing(canvas=(280, 280), box=(60, 40, 200, 240), dark_on_light=True), dtype=float)
    photo = 200 - photo * (200 - 40) / 255  # dark grey ink on grey paper
    photo[10, 10] = photo[270, 5] = photo[5, 270] = 30  # dust specks far from the digit
    image = noisy(Image.fromarray(photo.astype(np.uint8)), sigma=6)
    digit = preprocess(image)
    assert max(ink_box(digit)) == 20
    assert difference(digit, preprocess(REFERENCE)) < 6


@pytest.mark.parametrize("pen", [3, 100], ids=["ballpoint", "marker"])
def test_stroke_width_ends_mnist_like(pen):
    """A thin pen is thickened to MNIST's stroke width (about 2-3.6 px); a thick one is kept."""
    image = Image.new("L", (600, 600), 255)
    ImageDraw.Draw(image).line([(150, 100), (450, 100), (250, 500)], fill=0, width=pen)  # a "7"
    width = predict._stroke_width(preprocess(image).numpy() / 255)
    assert 2 <= width <= 3.6 if pen == 3 else width > 4


def test_preprocess_never_crashes_on_odd_images():
    """Random sizes, modes and contents: a 28x28 digit or an ImageError, nothing else; and both
    outcomes happen where they must (a drawn figure is a digit, a flat image is an error)."""
    rng = np.random.default_rng(0)
    outcomes = Counter()
    for i in range(60):
        h, w = (int(n) for n in rng.integers(20, 120, 2))
        kind = ["figure", "flat", "noise", "gradient"][i % 4]
        if kind == "figure":
            pixels = np.asarray(drawing(canvas=(w, h), box=(w // 5, h // 6, w - w // 5, h - h // 6)))
        elif kind == "flat":
            pixels = np.full((h, w), rng.integers(256))
        elif kind == "noise":
            pixels = rng.integers(0, 256, (h, w))
        else:
            pixels = np.linspace(0, 255, w)[None].repeat(h, 0)
        mode = ["L", "RGB", "RGBA", "P", "1"][rng.integers(5)]
        image = Image.fromarray(pixels.astype(np.uint8)).convert(mode, dither=Image.Dither.NONE)
        try:
            digit = preprocess(image)
            assert digit.shape == (28, 28) and digit.dtype == torch.uint8 and digit.max() == 255
            outcomes[kind, "digit"] += 1
        except ImageError as exc:
            assert "no digit found" in str(exc)
            outcomes[kind, "error"] += 1
    assert outcomes["figure", "digit"] == 15 and outcomes["flat", "error"] == 15, outcomes


def blurry_zero(stroke: int = 20, blur: float = 8, noise: float = 8, seed: int = 0) -> Image.Image:
    """A thick, out-of-focus "0" photographed on grey paper: 264x169, grayscale, noisy."""
    ink = Image.new("L", (264, 169))
    ImageDraw.Draw(ink).ellipse((80, 17, 185, 152), outline=255, width=stroke)
    ink = np.asarray(ink.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64)
    photo = 200 - ink * 150 / 255 + np.random.default_rng(seed).normal(0, noise, ink.shape)
    return Image.fromarray(photo.clip(0, 255).round().astype(np.uint8))


@pytest.mark.parametrize("stroke, blur, noise", [(20, 8, 8), (30, 12, 8), (40, 5, 16), (10, 12, 4)])
def test_thick_blurry_zero_is_read(stroke, blur, noise):
    """Regression: noise on the soft edges of blurred strokes made the full-size stroke width
    look thin, the 4x one did not, and the dilation size came out negative (np.pad crashed)."""
    digit = preprocess(blurry_zero(stroke, blur, noise))
    assert max(ink_box(digit)) == 20 and digit.max() == 255
    assert digit[12:16, 12:16].float().mean() < 64  # the 0's hole is still there, not thickened shut


def test_preprocess_is_idempotent():
    once = preprocess(REFERENCE)
    assert difference(preprocess(Image.fromarray(once.numpy())), once) < 2


@pytest.mark.parametrize("image", [Image.new("L", (100, 80), 255), Image.new("RGB", (30, 30)),
                                   noisy(Image.new("L", (300, 200), 235), sigma=6)],
                         ids=["white", "black", "noisy-paper"])
def test_blank_page_is_an_error(image):
    with pytest.raises(ImageError, match="no digit found"):
        preprocess(image)


def test_alpha_is_flattened_onto_white(tmp_path):
    ink = drawing(canvas=(140, 140), box=(30, 20, 100, 120))
    rgba = Image.new("RGBA", ink.size, (0, 0, 0, 0))  # transparent, black where the ink is
    rgba.putalpha(ink)
    rgba.save(tmp_path / "a.png")
    assert difference(preprocess(load_image(tmp_path / "a.png")), preprocess(ink)) < 1


def test_exif_orientation_is_honoured(tmp_path):
    upright = drawing(canvas=(140, 100), box=(40, 10, 100, 90), dark_on_light=True)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a sideways camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "photo.jpg", quality=95, exif=exif)
    loaded = load_image(tmp_path / "photo.jpg")
    assert loaded.size == upright.size
    assert difference(preprocess(loaded), preprocess(upright)) < 4


# --- property tests: any picture gives a digit or an ImageError -----------------------------------

EXAMPLES = int(os.environ.get("MNISTPIPE_PROPERTY_EXAMPLES", "200"))  # raise it for a longer hunt
PROPERTY = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "F"]
FORMATS = {"1": ["PNG", "BMP", "GIF", "TIFF"], "L": ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"],
           "LA": ["PNG", "TIFF"], "P": ["PNG", "GIF", "BMP", "TIFF"],
           "RGB": ["PNG", "JPEG", "BMP", "WEBP", "TIFF"], "RGBA": ["PNG", "WEBP", "TIFF"],
           "I;16": ["PNG", "TIFF"], "F": ["TIFF"]}
SHAPES = {"4": STROKES, "7": [[(0.0, 0.0), (1.0, 0.0), (0.4, 1.0)]], "1": [[(0.5, 0.0), (0.5, 1.0)]]}


def side(large: bool, least: int = 1):
    return st.integers(65, 3000) if large else st.integers(least, 64)


@st.composite
def pictures(draw) -> tuple[Image.Image, bool]:
    """(image, clear): a figure or a stranger picture of any size and mode, blurred, thick or thin,
    inverted, low-contrast, noisy, off-centre, rotated, cut by the border. Most are small, so that
    a few hundred run in seconds. A third of the figures are drawn `clear` (high contrast, inside
    the frame, upright, sharp, opaque): those must give a digit."""
    kind = draw(st.sampled_from(["figure"] * 6 + ["blank", "noise", "dots"]))
    clear = kind == "figure" and draw(st.integers(0, 2)) == 0

    def pick(anything, if_clear):
        return draw(if_clear if clear else anything)

    w = draw(side(draw(st.integers(0, 7)) == 0, 24 if clear else 1))  # one side in 8 large
    h = draw(side(draw(st.integers(0, 7)) == 0, 24 if clear else 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = Image.new("L", (w, h))  # 255 where the ink is
    if kind == "figure":
        fx, fy = (pick(st.floats(-0.3, 0.9), st.floats(0.05, 0.3)) for _ in "xy")  # may cross the border
        fw, fh = (pick(st.floats(0.05, 1.2), st.floats(0.5, 0.7)) for _ in "wh")
        x0, y0, x1, y1 = fx * w, fy * h, (fx + fw) * w, (fy + fh) * h
        thickness = pick(st.sampled_from([0, 0, 0.5, 0.8]), st.just(0)) or draw(st.floats(0.08, 0.3))
        width = max(1, round((y1 - y0) * thickness))  # 1 px (very thin) up to a blob
        shape = pick(st.sampled_from(["4", "7", "1", "0"]), st.sampled_from(["4", "7", "0"]))
        paint = ImageDraw.Draw(mask)
        if shape == "0":
            paint.ellipse((x0, y0, x1, y1), outline=255, width=width)
        for line in SHAPES.get(shape, []):
            paint.line([(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in line], fill=255, width=width)
    elif kind == "noise":
        mask = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    elif kind == "dots":
        mask = Image.fromarray((rng.random((h, w)) < 0.01).astype(np.uint8) * 255)
    angle = pick(st.sampled_from([0, 0, 5, -20, 90, 180, 33.3]), st.just(0))
    if angle:
        mask = mask.rotate(angle, Image.Resampling.BICUBIC, expand=draw(st.booleans()))
    blur = pick(st.sampled_from([0, 0, 1, 0.05, 0.2]), st.just(0)) * max(mask.size)
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))

    paper = draw(st.integers(0, 255))  # ink below the paper: dark on light; above: inverted
    ink = pick(st.integers(0, 255), st.integers(0, paper - 128) if paper >= 128 else st.integers(paper + 128, 255))
    noise = pick(st.sampled_from([0, 0, 3, 10, 40]), st.sampled_from([0, 3, 10]))
    photo = paper + (ink - paper) * np.asarray(mask, dtype=np.float64) / 255
    photo = (photo + rng.normal(0, noise, photo.shape)).clip(0, 255).round().astype(np.uint8)
    gray = Image.fromarray(photo)

    mode = pick(st.sampled_from(MODES), st.sampled_from(MODES[1:]))  # "1" may lose a faint figure
    if mode in ("LA", "RGBA"):  # opaque, or the paper transparent and the ink opaque
        image = gray.convert(mode)
        image.putalpha(255 if pick(st.booleans(), st.just(True)) else mask.resize(image.size))
    elif mode == "I;16":
        image = Image.fromarray(photo.astype(np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(photo.astype(np.float32) / draw(st.sampled_from([1, 255])))
    elif mode in ("P", "RGB"):
        tint = draw(st.sampled_from([(1, 1, 1), (1, 0.9, 0.7), (0.6, 0.8, 1)]))
        rgb = Image.fromarray((photo[..., None] * np.array(tint)).round().astype(np.uint8))
        image = rgb if mode == "RGB" else rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        image = gray.convert(mode)
    return image, clear


def outcome(read) -> str:
    """Run `read()`: "digit" for an MNIST-like 28x28 frame, "error" for an ImageError; else fail."""
    with np.errstate(divide="raise", invalid="raise", over="raise"):  # no silent NaN either
        try:
            digit = read()
        except ImageError as exc:
            assert str(exc).strip(), "an ImageError must say what is wrong"
            return "error"
    assert digit.shape == (28, 28) and digit.dtype == torch.uint8
    assert digit.max() == 255  # strokes at full brightness
    return "digit"


def test_any_picture_gives_a_digit_or_an_image_error():
    outcomes = Counter()

    @PROPERTY
    @given(pictures())
    def check(picture):
        image, clear = picture
        result = outcome(lambda: preprocess(image))
        assert result == "digit" or not clear, "a clear figure must be read as a digit"
        outcomes[result, clear] += 1

    check()
    assert outcomes["digit", True] >= EXAMPLES // 10 and outcomes["error", False] >= EXAMPLES // 20, outcomes


def test_any_file_gives_a_digit_or_an_image_error(tmp_path_factory):
    """The pictures above saved as PNG, JPEG, BMP, GIF, WEBP or TIFF, some truncated or corrupted."""
    folder = tmp_path_factory.mktemp("pictures")
    outcomes = Counter()

    @PROPERTY
    @given(pictures(), st.data())
    def check(picture, data):
        image, _ = picture
        fmt = data.draw(st.sampled_from(FORMATS[image.mode]))
        buffer = io.BytesIO()
        options = {"JPEG": {"quality": data.draw(st.integers(20, 95))},  # the rest: for speed
                   "PNG": {"compress_level": 1}, "WEBP": {"method": 0}}.get(fmt, {})
        image.save(buffer, fmt, **options)
        content = bytearray(buffer.getvalue())
        damage = data.draw(st.sampled_from([None, None, None, "truncate", "flip"]))
        if damage == "truncate":
            content = content[:data.draw(st.integers(0, len(content) - 1))]
        elif damage == "flip":
            for _ in range(data.draw(st.integers(1, 8))):
                content[data.draw(st.integers(0, len(content) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        path = folder / f"picture.{fmt.lower()}"
        path.write_bytes(content)
        result = outcome(lambda: preprocess(load_image(path)))
        outcomes[result, damage] += 1

    check()
    assert outcomes["digit", None] >= EXAMPLES // 5 and outcomes["error", "truncate"] >= 1, outcomes


# --- the CLI -----------------------------------------------------------------------------------

LINE = re.compile(r"^(?P<path>.+): digit (?P<d>\d) \(p=(?P<p>[01]\.\d{3})(?P<unsure>, unsure)?\)  top3: "
                  r"(?P<top>\d [01]\.\d{3}, \d [01]\.\d{3}, \d [01]\.\d{3})$")


@pytest.fixture
def model_path(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_model(path, build_model(SPEC), SPEC, mean=0.13, std=0.31)
    return path


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


# --- user-style photos of real MNIST digits ------------------------------------------------------

MIRROR = os.environ.get("MNISTPIPE_MIRROR", "")
MODEL = Path(os.environ.get("MNISTPIPE_MODEL", REPO / "models" / "model.pt"))
T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.mark.mnist
@pytest.mark.skipif(not (MIRROR and all((Path(MIRROR) / f).is_file() for f in T10K)),
                    reason="needs MNISTPIPE_MIRROR: a directory with the MNIST t10k files")
@pytest.mark.skipif(not MODEL.is_file(), reason=f"needs a trained model at {MODEL} (MNISTPIPE_MODEL)")
def test_user_style_photos_of_mnist_digits():
    """The first 500 test digits re-rendered as photos (benchmarks/predict_robustness.py).

    Nothing in the preprocessing was tuned on these renderings. Measured with the
    784-128-64-10 MLP: clean 0.982, user-style 0.970 (seed 0), so the bar is 0.864.
    """
    r = load_benchmark("predict_robustness").evaluate(Path(MIRROR), MODEL, n=500, seed=0)
    print(f"clean accuracy {r['clean']:.4f}, user-style accuracy {r['user_style']:.4f}")
    assert r["failed"] == 0
    assert r["user_style"] >= 0.90 * r["clean"] - 0.02, r  # margin: sampling noise of 500 digits


@pytest.mark.slow
@pytest.mark.skipif(not MODEL.is_file(), reason=f"needs a trained model at {MODEL} (MNISTPIPE_MODEL)")
def test_48_mp_phone_photo_is_decoded_small_and_read(tmp_path):
    """A 48 MP JPEG (benchmarks/predict_photo.py) is decoded at 1/4 scale by libjpeg (Pillow's
    draft mode), turned upright by its EXIF tag, and read, in bounded time and memory."""
    bench = load_benchmark("predict_photo")
    path = tmp_path / "photo.jpg"
    bench.make_photo(path, (8000, 6000), digit=7, orientation=6)
    with Image.open(path) as stored:
        assert stored.format == "JPEG" and stored.size == (6000, 8000)  # 48 MP, stored sideways
    assert load_image(path).size == (2000, 1500)  # 1/4 of each side, upright
    result = bench.run_child(path, MODEL)  # a fresh process: its own peak memory
    print(result)
    assert result["digit"] == 7
    assert result["predict_s"] < 3
    assert result["vm_hwm_mb"] is None or result["vm_hwm_mb"] < 1500


# --- phone photos: a sheet of paper on a table, as people photograph a digit ---------------------

THREE = [[(0.1, 0.05), (0.85, 0.05), (0.4, 0.45), (0.85, 0.6), (0.9, 0.85), (0.6, 1.0), (0.1, 0.92)]]


def phone_photo(digit=True, table=40, fall_off=0.0, thick=True, seed=0) -> Image.Image:
    """A 1200x1600 photo of a sheet (rotated 6 degrees, a dark table showing in the corners)
    with a thick or thin dark "3" on it, the light falling off across the page by `fall_off`
    (240 -> 130 is 0.46), sensor noise; saved and read back as a JPEG, as predict reads it."""
    sheet = Image.new("L", (1000, 1400), 235)
    if digit:
        draw = ImageDraw.Draw(sheet)
        for line in THREE:
            draw.line([(300 + u * 400, 400 + v * 560) for u, v in line], fill=30, width=70 if thick else 12,
                      joint="curve")
    photo = Image.new("L", (1200, 1600), table)
    mask = Image.new("L", sheet.size, 255).rotate(6, expand=True)
    sheet = sheet.rotate(6, expand=True, fillcolor=table)
    photo.paste(sheet, ((1200 - sheet.width) // 2, (1600 - sheet.height) // 2), mask)
    light = 1 - fall_off * np.linspace(0, 1, 1200)[None, :]
    x = np.asarray(photo, dtype=np.float64) * light + np.random.default_rng(seed).normal(0, 4, (1600, 1200))
    buffer = io.BytesIO()
    Image.fromarray(x.clip(0, 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return Image.open(buffer)


@pytest.mark.parametrize("photo", [{}, {"fall_off": 0.46, "table": 90}, {"thick": False}],
                         ids=["thick-digit-dark-corners", "light-falling-off", "thin-pen"])
def test_phone_photo_of_a_digit_gives_the_digit(photo):
    """The sheet, not the table, is the paper; shading is not ink: the 28x28 image is the "3"
    drawn plainly on white, up to stroke width (today's code made the whole sheet the digit)."""
    plain = Image.new("L", (500, 700), 255)
    for line in THREE:
        ImageDraw.Draw(plain).line([(50 + u * 400, 70 + v * 560) for u, v in line], fill=0, width=40,
                                   joint="curve")
    assert difference(preprocess(phone_photo(**photo)), preprocess(plain)) < 12


@pytest.mark.parametrize("photo", [{"fall_off": 0.46}, {"table": 90}, {"table": 200, "fall_off": 0.3}],
                         ids=["uneven-light", "dark-table", "light-table"])
def test_blank_sheet_photo_is_no_digit(photo):
    with pytest.raises(predict.NoDigit, match="no digit found"):
        preprocess(phone_photo(digit=False, **photo))


@pytest.mark.mnist
@pytest.mark.skipif(not MODEL.is_file(), reason=f"needs a trained model at {MODEL} (MNISTPIPE_MODEL)")
def test_phone_photos_are_read_by_the_trained_model(tmp_path):
    """The issue's three photos with the trained model: the two digits read as 3, the blank
    sheet as no digit; and a seeded subset of benchmarks/phone_photos.py."""
    files = []
    for name, photo in [("thick", phone_photo()), ("shaded", phone_photo(fall_off=0.46, table=90)),
                        ("blank", phone_photo(digit=False, fall_off=0.46))]:
        files.append(tmp_path / f"{name}.jpg")
        photo.save(files[-1])
    thick, shaded, blank = predict_files(files, MODEL, top=1)
    assert thick["digit"] == 3 and shaded["digit"] == 3 and blank["digit"] is None, (thick, shaded, blank)

    bench = load_benchmark("phone_photos")
    rows = bench.generate(tmp_path / "set", seed=0, n_digits=30, n_blank=6)
    result = bench.evaluate(tmp_path / "set", rows, MODEL)["groups"]
    print(result["digits"], result["blank"])
    assert result["digits"]["rate"] >= 0.8 and result["blank"]["rate"] >= 5 / 6
