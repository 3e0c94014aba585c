"""Digits from a user's own images: decode safely, find the digit, frame it as MNIST's were, classify.

Most pictures are phone photos of a digit on paper: a sheet on a table, unevenly lit, maybe
half in shadow. So `preprocess` finds the paper first (its light at each pixel, by a grey
closing wider than any stroke, and the sheet's extent), then the ink as darkness relative to
the paper under it (hysteresis thresholds, so shading is not ink), then the digit as the main
stroke component(s), and says "no digit" when nothing digit-like is there. Then MNIST's recipe
(LeCun et al.): light digit on black, its box scaled (anti-aliased, aspect kept) to fit 20x20,
centre of mass at the centre of a 28x28 frame. scikit-image and SciPy do the image work.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, JpegImagePlugin, UnidentifiedImageError
from scipy import ndimage
from skimage import filters, measure, morphology

from .calibration import probabilities
from .checkpoint import load_model
from .data.prepared import normalize
from .errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_IMAGE_PIXELS = 40_000_000  # a larger image is refused as a possible decompression bomb
# JPEGs are decoded at 1/8-1/2 scale, but time and (for progressive ones) memory still grow
# with the full size: the cap lies just above the largest phone sensors (docs/predicting.md).
MAX_JPEG_PIXELS = 250_000_000
WORK_SIZE = 1024     # larger images are first shrunk to this longer side (the digit ends up 20 px)
PAPER_SCALE = 256    # the paper's light is estimated at this longer side: it varies slowly
PAPER_WINDOW = 0.25  # of the longer side: the closing window, wider than a marker's stroke
INK_LOW, INK_HIGH = 0.12, 0.35  # darkness (1 - pixel / paper): ink, and ink for sure (hysteresis);
                     # half of each on evenly lit paper, where no shadow can pass for ink
MIN_DIGIT = 0.04     # of the image's longer side: a smaller mark is a speck, not a digit
NEAR = 0.3           # of the main stroke's size: strokes this close belong to the digit
BLOB = 0.35          # of its size: a mark with strokes this wide is a blob (a photo's shadow), not ink
SHEET = 0.85         # of the paper's light: what is this light is the sheet (the digit's strokes are thin)
EVEN = 24            # levels (of 255): a ground this even is a screen's or a scan's, not a photo's
UNSURE_BELOW = 0.6   # a calibrated probability below this marks the reading as unsure
FRAME, BOX = 28, 20  # MNIST: a 28x28 frame, the digit scaled to fit 20x20
MARGIN = 0.3         # of the longer side: paper added around a clean picture, so that a digit
                     # cropped tight (a drawing that fills its canvas, a trimmed render) lies on paper
FLAT = 0.2           # of the pixels at one exact level: a clean picture (a drawing, a render; noise spreads a photo's)
STROKE = 2.6         # MNIST's median stroke width in pixels (test set, 2 * area / outline)


class ImageError(Exception):
    """A file that cannot be used as a digit image; reported per file, the others go on."""


class NoDigit(ImageError):
    """A readable image with no digit on it (a blank page): an answer, not a failure."""


_NOT_REGULAR = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket",
                stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR.items() if test(mode)), "an unknown kind of file")
        raise ImageError(f"skipped: {kind}, not a regular file")


def open_regular(path: Path) -> BinaryIO:
    """A regular file opened for reading; anything else (a FIFO, a device) is refused unopened,
    as reading it may block forever. O_NONBLOCK keeps the open itself from blocking when a
    FIFO takes the file's place after the check, and fstat then refuses it."""
    try:
        _check_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    try:
        _check_regular(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def shown(path: Path | str) -> str:
    """A path as printable text on one line: undecodable bytes of its name as \\xNN, and
    control characters (a newline, a terminal escape) escaped as in a Python string."""
    text = os.fsencode(path).decode(sys.getfilesystemencoding(), "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def load_image(path: Path) -> Image.Image:
    """Decode one image file within the pixel limits; JPEGs at reduced size; EXIF orientation applied."""
    saved = Image.MAX_IMAGE_PIXELS
    # Pillow's own check (at open) with the larger limit; the per-format limit is checked below.
    Image.MAX_IMAGE_PIXELS = max(MAX_IMAGE_PIXELS, MAX_JPEG_PIXELS)  # read here, so tests can lower them
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the image may still be fine
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_regular(path) as file, Image.open(file) as image:
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


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a mask (all False if it is empty)."""
    labels = measure.label(mask, connectivity=1)
    return labels == 1 + np.argmax(np.bincount(labels.ravel())[1:]) if labels.any() else mask


def _paper_light(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How bright the bare paper would be at each pixel, and where the sheet is.

    The light is a grey closing (the local maximum, then minimum) over windows wider than
    any stroke: the ink is filled in, while shading, a light fall-off and the edges of
    shadows are kept. A dark table around the sheet is wider than the window, so it stays
    dark; the sheet is the largest region that is as light as that estimate, with what it
    encloses (the digit). Both are computed at a small scale and brought back to full size."""
    scale = min(1.0, PAPER_SCALE / max(x.shape))
    size = (max(1, round(x.shape[1] * scale)), max(1, round(x.shape[0] * scale)))
    small = ndimage.gaussian_filter(np.asarray(Image.fromarray(x).resize(size, Image.Resampling.BOX)), 1)
    window = 2 * round(max(PAPER_WINDOW * max(size), 15) / 2) + 1  # small images: the whole image
    closed = ndimage.grey_closing(small, size=(window, window), mode="nearest")
    light = np.asarray(Image.fromarray(closed).resize(x.shape[::-1], Image.Resampling.BILINEAR))
    # Away from its edges (the light of the table next to them is taken from the paper), and
    # cut off from what the grain of a table joins to it.
    sheet = _largest(ndimage.binary_fill_holes(_largest(small >= SHEET * closed)))
    sheet = _largest(ndimage.binary_erosion(sheet, iterations=max(1, round(0.02 * min(size)))))
    sheet = morphology.convex_hull_image(sheet) if sheet.any() else sheet  # shadows may bite into it
    sheet = np.asarray(Image.fromarray(sheet).resize(x.shape[::-1], Image.Resampling.NEAREST))
    return np.maximum(light, x), sheet  # the paper is never darker than what lies on it


def _even(light: np.ndarray) -> bool:
    """Evenly lit paper, as in a scan or a drawing made on a screen; not a photo."""
    low, high = np.percentile(light, [1, 99])
    return high - low < EVEN


WHOLE = (slice(None), slice(None))  # where the picture lies in an image with no frame around it


def _framed_paper(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, slice]] | None:
    """A clean picture in a frame of its rim's colour (mostly paper), MARGIN of its longer side
    wide: (the framed image, the paper's light, the sheet, where the picture lies in it); None
    where its paper is not evenly lit even so (a photo's shading and table stay uneven)."""
    m = round(MARGIN * max(x.shape))
    framed = np.pad(x, m, constant_values=np.median(_rim(x)))
    inside = (slice(m, m + x.shape[0]), slice(m, m + x.shape[1]))
    light, sheet = _paper_light(framed)
    return (framed, light, sheet, inside) if _even(light[inside]) else None


def _dark_ink(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, slice]]:
    """(image with dark ink on light paper, the paper's light, the sheet, where the picture
    lies in the image). Paper is light in a photo, whatever lies around the sheet or falls
    on it. A clean picture (a drawing, a rendered digit, a sheet overexposed to white: much
    of it at one exact level) whose paper is evenly lit once framed is read in that frame:
    a digit cropped tight then lies on paper, as in a photo, and a bold dark one (more ink
    than paper, but not on the rim) stays dark. Otherwise light ink is taken only where the
    ink strays further from the median pixel (the ground: ink covers less than half of most
    digit pictures) on the light side, and the inverted image is evenly lit paper (a drawing
    on a dark screen, an MNIST image): not a light sheet on a dark table."""
    clean = np.bincount(x.astype(np.uint8).ravel()).max() >= FLAT * x.size
    if clean and (framed := _framed_paper(x)):
        return framed
    smooth = ndimage.gaussian_filter(x, 1.5)  # specks and noise are not ink
    ground = np.median(smooth)
    if smooth.max() - ground > ground - smooth.min():
        light, sheet = _paper_light(255 - x)
        if _even(light):
            return (clean and _framed_paper(255 - x)) or (255 - x, light, sheet, WHOLE)
    return x, *_paper_light(x), WHOLE  # a photo or a scan: its border is its own


def _paper_lift(darkness: np.ndarray, sheet: np.ndarray) -> float:
    """The bare paper's darkness (noise lifts the closing a little): the sheet's median, or where
    ink covers most of the sheet (a bold digit cropped tight), the median of what is not ink."""
    lift = np.median(darkness[sheet]) if sheet.any() else 0.0
    if lift < INK_HIGH:
        return lift
    paper = sheet & (darkness < INK_HIGH)
    return np.median(darkness[paper]) if paper.any() else 0.0


def _rim(a: np.ndarray) -> np.ndarray:
    """The pixels along the picture's four edges."""
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def _noise(a: np.ndarray) -> float:
    """The pixel noise: a robust standard deviation of what a 5x5 mean does not explain."""
    return 1.4826 * float(np.median(np.abs(a - ndimage.uniform_filter(a, 5))))


def _ink_labels(darkness: np.ndarray, even: bool, noise: float) -> np.ndarray:
    """Connected ink marks, labelled: strong ink, and the weaker ink connected to it
    (hysteresis), both above the picture's own noise."""
    low, high = (INK_LOW / 2, INK_HIGH / 2) if even else (INK_LOW, INK_HIGH)  # no shadows to take for ink
    low, high = min(max(low, 4 * noise), 0.5), min(max(high, 8 * noise), 0.6)
    return measure.label(filters.apply_hysteresis_threshold(darkness, low, high), connectivity=2)


def _digit_components(darkness: np.ndarray, sheet: np.ndarray, even: bool,
                      picture: tuple[slice, slice]) -> np.ndarray:
    """The pixels of the digit's strokes: the main ink mark on the sheet and the marks near
    it. In a photo, what touches the border is table or the sheet's edge; on evenly lit
    paper (a scan, a drawing), it may be the digit, cut by the frame. Sizes and noise are
    the picture's, not those of a frame around it."""
    labels = _ink_labels(darkness, even, _noise(darkness[picture]))
    regions = measure.regionprops(labels, intensity_image=darkness)
    contact = np.bincount(_rim(labels), minlength=labels.max() + 1)
    contact[0] = 0
    on_sheet = np.bincount(labels.ravel(), sheet.ravel(), labels.max() + 1) > 0.5 * np.bincount(labels.ravel())

    def size(r) -> int:
        return max(r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1])

    def width(r) -> float:  # typical stroke width: 2 * area / outline, exact for long strokes
        return 2 * r.area / max(r.perimeter, 1)

    big = MIN_DIGIT * max(darkness[picture].shape)
    strokes = [r for r in regions if even or width(r) < BLOB * size(r)]  # a filled corner is a blob
    inside = [r for r in strokes if on_sheet[r.label] and not contact[r.label]]
    if any(size(r) >= big for r in inside):
        candidates = inside
    elif even:
        candidates = regions
    else:  # a stroke may run out of a photo, a band of table along its edge may not
        candidates = inside + [r for r in strokes if on_sheet[r.label] and 0 < contact[r.label] <= 2 * width(r) + 2]
    if not candidates:
        raise NoDigit("no digit found: the page is blank, nothing stands out from the paper")
    mass = {r.label: r.area * r.intensity_mean for r in candidates}
    main = max(candidates, key=lambda r: mass[r.label])
    top, left, bottom, right = main.bbox
    if size(main) < big:
        raise NoDigit("no digit found: only specks stand out from the paper")
    # Strokes near the main one belong to the digit (the bar of a 5, a broken pencil line).
    reach = NEAR * max(bottom - top, right - left)
    keep = [r.label for r in candidates if mass[r.label] >= 0.05 * mass[main.label]
            and r.bbox[0] < bottom + reach and r.bbox[2] > top - reach
            and r.bbox[1] < right + reach and r.bbox[3] > left - reach]
    return np.isin(labels, keep)


def _ink(image: Image.Image) -> np.ndarray:
    """The digit's ink, cropped to it: float in [0, 1], light on black, paper at 0.

    Find the paper, then the ink: which side is ink, the paper's light at each pixel (so
    that shading and shadows are not ink) and the sheet (so that the table is not), the
    ink as darkness relative to that light, then the digit as the main stroke component(s)."""
    gray = _grayscale(image)
    if max(gray.size) > WORK_SIZE:
        gray.thumbnail((WORK_SIZE, WORK_SIZE), Image.Resampling.LANCZOS)
    x, light, sheet, picture = _dark_ink(np.asarray(gray, dtype=np.float32))
    darkness = (light - x) / np.maximum(light, 1)  # 0: bare paper, 1: black ink
    darkness -= _paper_lift(darkness[picture], sheet[picture])  # the picture's paper: a frame has no noise
    smooth = ndimage.gaussian_filter(darkness, 0.7)  # noise is not ink
    even = _even(light[picture]) and np.mean(_rim(smooth) < INK_LOW) > 0.9  # no table in the corners either
    strokes = _digit_components(smooth, sheet, even, picture)
    # Contrast: paper (within 3 noise std) -> 0, the strokes' typical darkness -> 1; nothing else kept.
    high = np.percentile(darkness[strokes], 90)
    low = min(3 * _noise(darkness[picture]), high / 2)
    ink = np.clip((darkness - low) / (high - low), 0, 1) * ndimage.binary_dilation(strokes, iterations=2)
    rows, cols = np.flatnonzero((ink > 0.05).any(1)), np.flatnonzero((ink > 0.05).any(0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)


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


def _images_in(folder: Path) -> list[Path]:
    """The image files directly inside a directory, sorted; ImageError if it has none or
    cannot be listed. Only regular files count (is_file() stats, never opens)."""
    try:
        inside = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise ImageError(f"cannot list this directory: {exc.strerror or exc}") from None
    if not inside:
        raise ImageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in this directory")
    return inside


def image_files(paths: list[Path]) -> list[tuple[Path, ImageError | None]]:
    """The given files, and the image files directly inside given directories (sorted), each
    with None; a directory that yields none stands for itself, with the reason."""
    files: list[tuple[Path, ImageError | None]] = []
    for path in map(Path, paths):
        try:
            folder = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:  # missing, or behind a locked directory: reading it says which
            folder = False
        try:
            files += [(p, None) for p in _images_in(path)] if folder else [(path, None)]
        except ImageError as exc:
            files.append((path, exc))
    return files


def predict_files(paths: list[Path], model_path: Path, top: int = 3) -> list[dict[str, Any]]:
    """One result per file: {path, digit, probability, unsure, top: [{digit, probability}]};
    {path, digit: None, reason} for a picture with no digit on it; or {path, error}."""
    if top < 1:
        raise UserError(f"--top must be at least 1 (got {top})")
    model, info = load_model(model_path)
    if info.spec.image_shape != (FRAME, FRAME):
        raise UserError(f"{model_path}: the model takes {list(info.spec.image_shape)} images; "
                        f"predict makes MNIST-style {FRAME}x{FRAME} ones")
    results, images = [], []
    for path, unusable in image_files(paths):
        name = shown(path)
        try:
            if unusable:
                raise unusable
            images.append(preprocess(load_image(path)))
            results.append({"path": name})
        except NoDigit as exc:  # an answer about this picture, not a failure to read it
            results.append({"path": name, "digit": None, "reason": str(exc)})
        except ImageError as exc:
            results.append({"path": name, "error": str(exc)})
        except Exception as exc:  # a bug on one odd image must not cost the other files their digits
            results.append({"path": name, "error": f"could not read a digit: {type(exc).__name__}: {exc}"})
    if images:
        with torch.inference_mode():
            logits = model(normalize(torch.stack(images), info.mean, info.std))
            probs = probabilities(logits, info.temperature)
        if not probs.isfinite().all():  # finite but huge weights can still overflow the logits
            raise UserError(f"{model_path}: the model's outputs are not finite numbers (NaN or infinite "
                            "logits); its weights are broken: retrain it, e.g. with a lower train.lr")
        values, digits = probs.topk(min(top, probs.shape[1]), dim=1)
        read = (r for r in results if set(r) == {"path"})
        for result, v, d in zip(read, values.tolist(), digits.tolist()):
            result.update(digit=d[0], probability=round(v[0], 6), unsure=v[0] < UNSURE_BELOW,
                          top=[{"digit": di, "probability": round(vi, 6)} for di, vi in zip(d, v)])
    return results


def print_results(results: list[dict[str, Any]], as_json: bool = False) -> int:
    """Text lines (errors to stderr) or one JSON document; returns the exit code: 1 if a file
    could not be read, or if no file had a digit on it."""
    failed = sum("error" in r for r in results)
    blank = sum("reason" in r for r in results)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}: error: {r['error']}", file=sys.stderr)
            elif "reason" in r:
                print(f"{r['path']}: {r['reason']}")
            else:
                ranked = ", ".join(f"{t['digit']} {t['probability']:.3f}" for t in r["top"])
                print(f"{r['path']}: digit {r['digit']} (p={r['probability']:.3f}{', unsure' if r['unsure'] else ''})"
                      f"  top{len(r['top'])}: {ranked}")
        if failed:
            print(f"{failed} of {len(results)} files could not be read", file=sys.stderr)
    return 1 if failed or blank == len(results) else 0
