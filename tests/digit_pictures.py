"""Pictures of digits made by the tests: drawings, noise, and phone photos of a sheet of paper."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from mnistpipe.models import ModelSpec

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




def blurry_zero(stroke: int = 20, blur: float = 8, noise: float = 8, seed: int = 0) -> Image.Image:
    """A thick, out-of-focus "0" photographed on grey paper: 264x169, grayscale, noisy."""
    ink = Image.new("L", (264, 169))
    ImageDraw.Draw(ink).ellipse((80, 17, 185, 152), outline=255, width=stroke)
    ink = np.asarray(ink.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64)
    photo = 200 - ink * 150 / 255 + np.random.default_rng(seed).normal(0, noise, ink.shape)
    return Image.fromarray(photo.clip(0, 255).round().astype(np.uint8))
