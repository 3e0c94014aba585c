"""MNIST-style preprocessing of users' pictures: geometry, ink, paper, phone photos."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from mnistpipe import predict
from mnistpipe.predict import ImageError, load_image, preprocess

from conftest import load_benchmark
from digit_pictures import (
    REFERENCE,
    THREE,
    blurry_zero,
    centre_of_mass,
    difference,
    drawing,
    ink_box,
    noisy,
    phone_photo,
)

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


@pytest.mark.parametrize("dark_on_light", [True, False], ids=["dark-on-light", "light-on-dark"])
@pytest.mark.parametrize("margin", [0, 1])
def test_digit_cropped_tight_is_read_as_with_paper_around(dark_on_light, margin):
    """A digit cropped to its ink (a trimmed render, a drawing that fills its canvas): its strokes
    touch every edge, and it is read as the same digit with paper around it."""
    image = drawing(canvas=(140, 140), box=(30, 20, 100, 120), dark_on_light=dark_on_light)
    left, top, right, bottom = (ImageOps.invert(image) if dark_on_light else image).getbbox()
    tight = image.crop((left - margin, top - margin, right + margin, bottom + margin))
    assert difference(preprocess(tight), preprocess(image)) < 1


@pytest.mark.parametrize("digit", "0123456789")
def test_bold_printed_digit_cropped_tight_is_read_as_with_paper_around(digit):
    """A bold printed digit cropped to its ink (as benchmarks/tight_crops.py renders it) covers
    half of its picture or more: the paper is still the paper, not the ink."""
    crop = load_benchmark("tight_crops").crop
    tight, image = (crop("DejaVuSans-Bold.ttf", digit, stroke=0, margin=m, dark_on_light=True) for m in (0, 50))
    assert np.mean(np.asarray(tight) < 128) > 0.45  # as much ink as paper, or more
    assert difference(preprocess(tight), preprocess(image)) < 1


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




# --- phone photos: a sheet of paper on a table, as people photograph a digit ---------------------

@pytest.mark.parametrize("photo", [{}, {"fall_off": 0.46, "table": 90}, {"thick": False}],
                         ids=["thick-digit-dark-corners", "light-falling-off", "thin-pen"])
def test_phone_photo_of_a_digit_gives_the_digit(photo):
    """The sheet, not the table, is the paper; shading is not ink: the 28x28 image is the "3"
    drawn plainly on white, up to stroke width."""
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
