"""Digits from a user's own images: decode safely, preprocess the way MNIST was made, classify.

MNIST's recipe (LeCun et al.): light digits on black, the digit's bounding box scaled
(anti-aliased, aspect kept) to fit 20x20, then placed in a 28x28 frame so that its centre
of mass lies at the centre. Photos and scans differ from that in polarity, background,
contrast, size and position; `preprocess` removes those differences, nothing more.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, JpegImagePlugin, UnidentifiedImageError

from .calibration import probabilities
from .checkpoint import load_model, temperature_of
from .data.prepared import normalize
from .errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_IMAGE_PIXELS = 40_000_000  # a larger image is refused as a possible decompression bomb
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale, in grayscale (libjpeg's DCT scaling, Pillow's
# draft mode): a 200 MP phone photo (16320x12240) becomes 2040x1530 pixels in ~0.4 s and
# ~10 MB. Decoding time still grows with the full size, and so does memory for progressive
# JPEGs (libjpeg keeps all their DCT coefficients: 0.6 GB and ~1.8 s at 200 MP with 4:2:0
# chroma; benchmarks/predict_photo.py). Hence a cap for JPEGs too, a bit above the largest
# phone sensors, whose worst case (progressive, no chroma subsampling) needs 1.5 GB; a JPEG
# header can claim up to 65535x65535 pixels.
MAX_JPEG_PIXELS = 250_000_000
WORK_SIZE = 1024     # larger images are first shrunk to this longer side (the digit ends up 20 px)
MIN_CONTRAST = 32    # ink must stand out from the background by this much (of 255), else "blank"
INK_THRESHOLD = 0.25  # of the peak ink level (after a light blur): what counts as ink for the box
FRAME, BOX = 28, 20  # MNIST: a 28x28 frame, the digit scaled to fit 20x20
STROKE = 2.6         # MNIST's median stroke width in pixels (test set, 2 * area / outline)


class ImageError(Exception):
    """A file that cannot be used as a digit image; reported per file, the others go on."""


def load_image(path: Path) -> Image.Image:
    """Decode one image file within the pixel limits; JPEGs at reduced size; EXIF orientation applied."""
    saved = Image.MAX_IMAGE_PIXELS
    # Pillow's own check (at open) with the larger limit; the per-format limit is checked below.
    Image.MAX_IMAGE_PIXELS = max(MAX_IMAGE_PIXELS, MAX_JPEG_PIXELS)  # read here, so tests can lower them
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the image may still be fine
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                jpeg = isinstance(image, JpegImagePlugin.JpegImageFile)  # MPO (phone photos) too
                pixels, limit = image.width * image.height, MAX_JPEG_PIXELS if jpeg else MAX_IMAGE_PIXELS
                if pixels > limit:
                    raise ImageError(f"image too large ({pixels:,} pixels, over {limit:,}), refused as a "
                                     "possible decompression bomb")
                if jpeg:  # grayscale, scaled by 1/2, 1/4 or 1/8 while staying >= WORK_SIZE a side
                    image.draft("L", (WORK_SIZE, WORK_SIZE))
                image.load()
                return ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image too large (over {Image.MAX_IMAGE_PIXELS:,} pixels), refused as a "
                         "possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read (empty, or another format)") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise ImageError(f"cannot read: {exc.strerror}") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, ... on bad data
        raise ImageError(f"corrupt or truncated image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _grayscale(image: Image.Image) -> Image.Image:
    """Mode L: transparency flattened onto white, 16-bit scaled to 8-bit, floats in 0..1 to 0..255."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    elif image.mode.startswith("I"):  # 16-bit PNG or TIFF (mode I;16, or I in older Pillows)
        x = np.asarray(image, dtype=np.float64) / 257
        return Image.fromarray(x.clip(0, 255).round().astype(np.uint8))
    elif image.mode == "F":  # floating-point TIFF: 0..1 or 0..255 (convert clips, NaN -> 0)
        x = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if x.min() >= 0 and x.max() <= 1:
            image = Image.fromarray((x * 255).round().astype(np.uint8))
    try:
        return image.convert("L")
    except ValueError as exc:  # e.g. LAB or HSV images Pillow cannot convert to grayscale
        raise ImageError(f"unsupported image mode {image.mode} ({exc})") from None


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        raise ImageError("no digit found: no ink stands out from the paper")
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _fit(ink: np.ndarray, side: int) -> np.ndarray:
    """Resize (anti-aliased) so that the longer side is `side` pixels, keeping the aspect ratio."""
    h, w = ink.shape
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    return np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS)).clip(0, 1)


def _stroke_width(ink: np.ndarray) -> float:
    """Typical stroke width in pixels: 2 * area / outline of the ink (> 0.5), exact for long strokes."""
    mask = np.pad(ink > 0.5, 1)
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    area = mask.sum()
    return 2 * area / max(area - inner.sum(), 1)


def _ink(image: Image.Image) -> np.ndarray:
    """The digit's ink, cropped to it: float in [0, 1], light on black, paper at 0."""
    gray = _grayscale(image)
    if max(gray.size) > WORK_SIZE:
        gray.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.LANCZOS)
    x = np.asarray(gray, dtype=np.float32)
    smooth = np.asarray(gray.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)  # noise, specks

    # The paper is the border's median; the ink is whichever side deviates more from it.
    paper = np.median(_border(smooth))
    if paper - smooth.min() > smooth.max() - paper:
        x, smooth, paper = 255 - x, 255 - smooth, 255 - paper  # dark on light -> light on dark
    edge = _border(x)
    background = np.median(edge)
    noise = 1.4826 * np.median(np.abs(edge - background))  # robust std of the paper
    ink, smooth = x - background, smooth - paper

    peak = smooth.max()
    if peak < MIN_CONTRAST:
        raise ImageError("no digit found: the image is blank or has too little contrast")
    ink = ink[_box(smooth > INK_THRESHOLD * peak)]

    # Contrast: paper (within 3 noise std) -> 0, the strokes' typical level -> 1.
    strokes = ink[ink > INK_THRESHOLD * peak]
    high = np.percentile(strokes, 90) if strokes.size else peak
    low = min(3 * noise, high / 2)
    ink = np.clip((ink - low) / (high - low), 0, 1)
    return ink[_box(ink > 0.05)]


def _mnist_strokes(ink: np.ndarray) -> np.ndarray:
    """A thin pen (a ballpoint photographed large) leaves far thinner strokes than MNIST's:
    thicken them, at 4x the final size, to MNIST's typical width. The width is measured
    once, at that size: at full size, noise frays the edges of blurred strokes and makes
    thick ones look thin (a blurry "0" once got a negative dilation size from two measurements)."""
    large = _fit(ink, 4 * BOX)
    width = _stroke_width(large)
    if width >= 0.75 * 4 * STROKE:
        return ink
    k = 2 * round((4 * STROKE - width) / 2) + 1  # odd, at least 3 here; dilation adds k - 1
    return np.asarray(Image.fromarray(np.pad(large, k // 2)).filter(ImageFilter.MaxFilter(k)))


def _centred_frame(digit: np.ndarray) -> np.ndarray:
    """Into the 28x28 frame with the centre of mass at (14, 14), as far as the frame allows."""
    total = digit.sum()
    com = [(digit.sum(axis=1 - a) * np.arange(digit.shape[a])).sum() / total for a in (0, 1)]
    top, left = (int(np.clip(round(FRAME / 2 - c), 0, FRAME - n)) for c, n in zip(com, digit.shape))
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    frame[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return frame


def preprocess(image: Image.Image) -> torch.Tensor:
    """Any digit picture -> uint8 [28, 28], light digit on black, as MNIST's were made."""
    digit = _fit(_mnist_strokes(_ink(image)), BOX)  # longer side 20 px, aspect kept
    digit /= digit.max()  # MNIST's strokes reach full brightness
    return torch.from_numpy((_centred_frame(digit) * 255).round().astype(np.uint8))


def image_files(paths: list[Path]) -> list[Path]:
    """The given files, plus the image files directly inside given directories (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            files += inside or [path]  # an empty directory is reported as a failed entry
        else:
            files.append(path)
    return files


def predict_files(paths: list[Path], model_path: Path, top: int = 3) -> list[dict[str, Any]]:
    """One result per file: {path, digit, probability, top: [{digit, probability}]} or {path, error}."""
    if top < 1:
        raise UserError(f"--top must be at least 1 (got {top})")
    model, ckpt = load_model(model_path)
    if list(ckpt["spec"]["image_shape"]) != [FRAME, FRAME]:
        raise UserError(f"{model_path}: the model takes {ckpt['spec']['image_shape']} images; "
                        f"predict makes MNIST-style {FRAME}x{FRAME} ones")
    results, images = [], []
    for path in image_files(paths):
        try:
            if path.is_dir():
                raise ImageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in this directory")
            images.append(preprocess(load_image(path)))
            results.append({"path": str(path)})
        except ImageError as exc:
            results.append({"path": str(path), "error": str(exc)})
        except Exception as exc:  # a bug on one odd image must not cost the other files their digits
            results.append({"path": str(path), "error": f"could not read a digit: {type(exc).__name__}: {exc}"})
    if images:
        norm = ckpt["normalization"]
        with torch.inference_mode():
            logits = model(normalize(torch.stack(images), norm["mean"], norm["std"]))
            probs = probabilities(logits, temperature_of(ckpt))
        values, digits = probs.topk(min(top, probs.shape[1]), dim=1)
        good = (r for r in results if "error" not in r)
        for result, v, d in zip(good, values.tolist(), digits.tolist()):
            result.update(digit=d[0], probability=round(v[0], 6),
                          top=[{"digit": di, "probability": round(vi, 6)} for di, vi in zip(d, v)])
    return results


def print_results(results: list[dict[str, Any]], as_json: bool = False) -> int:
    """Text lines (errors to stderr) or one JSON document; returns the exit code (1 if any failed)."""
    failed = sum("error" in r for r in results)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}: error: {r['error']}", file=sys.stderr)
            else:
                ranked = ", ".join(f"{t['digit']} {t['probability']:.3f}" for t in r["top"])
                print(f"{r['path']}: digit {r['digit']} (p={r['probability']:.3f})  "
                      f"top{len(r['top'])}: {ranked}")
        if failed:
            print(f"{failed} of {len(results)} files could not be read", file=sys.stderr)
    return 1 if failed else 0
