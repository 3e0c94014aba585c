"""How well `mnistpipe predict` reads digits that are not MNIST: a generated, fixed test set.

Writes a set of digit pictures, balanced over 0-9 and fully determined by --seed, into --out
(default: a temporary directory), the label in each file name and in labels.csv; runs the
files through `predict_files` for each --model; prints accuracy (with a 95% Wilson interval)
overall, per source, per font family and per digit, and how many files could not be read
(those count as wrong). Everything comes from what is installed, nothing is downloaded.

Sources:
  font   digits rendered from fonts: matplotlib's bundled ones (DejaVu, STIX, Computer
         Modern) and the system's (/usr/share/fonts, /usr/local/share/fonts; none is fine).
         The rule for a font file, fixed before any model saw the set: '0'-'9' must be
         ten distinct glyphs (drops fonts without digits and Last Resort's placeholders),
         named as digits, zero..nine or uni... (drops symbol fonts with other glyphs at
         the digit code points, cmsy10 and cmex10, and cmmi10's old-style figures), and
         lining: no digit under 80% of the median digit height (drops old-style figures
         under ordinary names; handwriting has none). Nothing else is judged: the dotted
         zeros of the monospaced fonts and serif ones with a foot stay. A face is used
         once per (family, style), matplotlib's copy first; faces take turns, each writing
         all ten digits.
  mnist  MNIST test digits (a seeded sample, the same number per digit, read from
         $MNISTPIPE_MIRROR) re-rendered by predict_robustness.user_style, JPEG quality 70.

How a font digit becomes a "phone photo of a handwritten-looking digit". The ranges were
fixed from what such photos look like, before any model saw the set, and were not changed
after; all are uniform unless said otherwise (h = the glyph's height):
  pen      strokes moved to a width of 4-20% of h (ballpoint to marker; MNIST's is ~13%),
           but thinned by at most 20% of the font's own width (so serifs don't vanish)
  hand     rotation +-15 deg, slant (shear) +-0.3, width 0.8-1.2x; elastic distortion
           (Simard et al. 2003): a Gaussian-smoothed random field (smoothness 0.15 h)
           displacing points by 0-4% of h (standard deviation)
  sheet    longer side 192-480 px, 4:3 either way round; digit 30-80% of the sheet's height
           (less where it would not fit the width), anywhere on it; paper grey level 150-245
           with a +-4% colour cast; ink black to grey (level 0-100) or, one time in three,
           blue ballpoint
  camera   lighting falling off linearly across the sheet by 0-35% in a random direction;
           Gaussian blur sigma 0-1.5 px; Gaussian noise sigma 2-10 levels per channel;
           saved as JPEG (quality 50-95) three times in four, else PNG
Not covered: ruled or squared paper, other marks on the sheet, perspective, several digits.

The same seed gives the same files byte for byte with the same fonts and library versions
(FreeType, libjpeg, numpy, scipy); the printed sha256 of the set says whether two sets agree.

    MNISTPIPE_MIRROR=../shared/mnist python benchmarks/non_mnist.py [--model PATH]... [--json]
        [--out DIR] [--seed N] [--no-system-fonts] [--record]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mnistpipe import paths

REPO = Path(__file__).resolve().parents[1]
BUNDLED_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
SYSTEM_FONTS = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts")]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
GLYPH_PX = 128  # font size the glyphs are rendered at, before being sized for the sheet


# ---------------------------------------------------------------- fonts

class Face(NamedTuple):
    path: str
    family: str
    style: str


@cache
def _font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, GLYPH_PX)


@cache
def glyph(path: str, digit: int) -> np.ndarray:
    """The digit's ink coverage in [0, 1], cropped to the ink (cached: don't modify)."""
    canvas = Image.new("L", (3 * GLYPH_PX, 3 * GLYPH_PX))
    ImageDraw.Draw(canvas).text((1.5 * GLYPH_PX, 1.5 * GLYPH_PX), str(digit), fill=255, font=_font(path), anchor="mm")
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"{path}: '{digit}' renders blank")
    return np.asarray(canvas.crop(box), dtype=np.float32) / 255


def digit_problem(path: Path) -> str | None:
    """Why this font file can't stand for handwritten digits, or None if it can."""
    try:
        font = FT2Font(str(path))
        cmap = font.get_charmap()
        glyphs = [cmap.get(ord(str(d)), 0) for d in range(10)]
        if 0 in glyphs or len(set(glyphs)) < 10:
            return "no ten distinct digit glyphs"
        names = [font.get_glyph_name(g) for g in glyphs]
        if any(not (n == DIGIT_NAMES[d] or n.startswith("uni")) for d, n in enumerate(names)):
            return f"the digit code points hold other glyphs ({', '.join(names[:3])}, ...)"
        heights = [glyph(str(path), d).shape[0] for d in range(10)]
    except Exception as exc:  # FreeType/Pillow can't open or render it
        return f"unreadable ({exc})"
    if min(heights) < 0.8 * np.median(heights):  # old-style 0, 1, 2 are only x-height tall
        return f"old-style figures (heights {min(heights)}-{max(heights)} px)"
    return None


def font_faces(system: bool = True) -> tuple[list[Face], list[tuple[str, str]]]:
    """Faces usable for digits (one per family and style) and the skipped files with the reason."""
    files = sorted(BUNDLED_FONTS.glob("*.ttf"))
    if system:
        files += sorted(p for d in SYSTEM_FONTS if d.is_dir() for p in d.rglob("*")
                        if p.suffix.lower() in (".ttf", ".otf") and p.is_file())
    faces, skipped, seen = [], [], set()
    for path in files:
        problem = digit_problem(path)
        if problem:
            skipped.append((str(path), problem))
            continue
        font = FT2Font(str(path))
        if (font.family_name, font.style_name) not in seen:  # same face installed twice
            seen.add((font.family_name, font.style_name))
            faces.append(Face(str(path), font.family_name, font.style_name))
    return faces, skipped


# ---------------------------------------------------------------- a font digit, handwritten and photographed

def restroke(ink: np.ndarray, h: int, rng: np.random.Generator) -> np.ndarray:
    """Move the outline so the strokes get a pen's width (4-20% of the glyph's height h)."""
    mask = ink > 0.5
    outline = (mask & ~ndimage.binary_erosion(mask)).sum()
    width = 2 * mask.sum() / max(outline, 1)  # mean stroke width: exact for long strokes
    offset = max((rng.uniform(0.04, 0.20) * h - width) / 2, -0.2 * width)
    # Signed distance to the outline (positive inside), shifted by the offset, 1 px anti-aliasing.
    inside = np.where(mask, ndimage.distance_transform_edt(mask) - 0.5, 0.5 - ndimage.distance_transform_edt(~mask))
    return np.clip(inside + offset + 0.5, 0, 1).astype(np.float32)


def handwrite(ink: np.ndarray, h: int, rng: np.random.Generator) -> np.ndarray:
    """Rotate, slant, widen/narrow and elastically distort the glyph (one resampling), crop to the ink."""
    angle = np.deg2rad(rng.uniform(-15, 15))
    shear, width = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.2)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotate @ np.array([[1.0, 0.0], [shear, 1.0]]) @ np.diag([1.0, width])  # on (row, col)
    # Elastic field: smoothed white noise scaled to a chosen standard deviation (in pixels).
    fields = [ndimage.gaussian_filter(rng.standard_normal(ink.shape), 0.15 * h) for _ in range(2)]
    displacement = rng.uniform(0, 0.04) * h
    fields = [f * displacement / f.std() for f in fields]
    centre = (np.array(ink.shape)[:, None] - 1) / 2
    grid = np.indices(ink.shape).reshape(2, -1).astype(np.float64)
    source = np.linalg.inv(forward) @ (grid - centre) + centre  # where each output pixel comes from
    source += np.stack([f.ravel() for f in fields])
    warped = ndimage.map_coordinates(ink, source, order=1).reshape(ink.shape)
    rows, cols = np.nonzero(warped > 0.02)
    return warped[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def photograph(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The ink on a sheet of paper as a phone sees it: colour cast, uneven light, blur, noise."""
    long = int(rng.integers(192, 481))
    height, width = (long * 3 // 4, long) if rng.random() < 0.5 else (long, long * 3 // 4)
    scale = min(rng.uniform(0.3, 0.8) * height / ink.shape[0], 0.95 * width / ink.shape[1])
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS)).clip(0, 1)
    coverage = np.zeros((height, width), dtype=np.float64)
    top, left = int(rng.integers(0, height - size[1] + 1)), int(rng.integers(0, width - size[0] + 1))
    coverage[top:top + size[1], left:left + size[0]] = digit

    paper = rng.uniform(150, 245) * (1 + rng.uniform(-0.04, 0.04, 3))
    if rng.random() < 1 / 3:
        pen = np.array([rng.uniform(10, 60), rng.uniform(20, 80), rng.uniform(100, 180)])  # blue ballpoint
    else:
        pen = np.full(3, rng.uniform(0, 100))
    image = paper * (1 - coverage[..., None]) + pen * coverage[..., None]
    direction = rng.uniform(0, 2 * np.pi)
    y, x = np.indices((height, width)) / max(height, width)
    ramp = x * np.cos(direction) + y * np.sin(direction)
    image *= (1 - rng.uniform(0, 0.35) * (ramp - ramp.min()) / np.ptp(ramp))[..., None]
    sigma = rng.uniform(0, 1.5)
    image = ndimage.gaussian_filter(image, (sigma, sigma, 0))
    image += rng.normal(0, rng.uniform(2, 10), image.shape)
    return Image.fromarray(image.clip(0, 255).round().astype(np.uint8), "RGB")


def font_digit(face: Face, digit: int, rng: np.random.Generator) -> Image.Image:
    ink = glyph(face.path, digit)
    h = ink.shape[0]
    ink = np.pad(ink, 3 * h // 4)  # room for a thicker pen, slant and rotation
    return photograph(handwrite(restroke(ink, h, rng), h, rng), rng)


def encode(image: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """JPEG (quality 50-95) three times in four, else PNG; neither format stores a date."""
    buffer = io.BytesIO()
    if rng.random() < 0.75:
        image.save(buffer, "JPEG", quality=int(rng.integers(50, 96)))
        return buffer.getvalue(), "jpg"
    image.save(buffer, "PNG")
    return buffer.getvalue(), "png"


# ---------------------------------------------------------------- the set

def generate(out: Path, seed: int, faces: list[Face], n_font: int,
             mnist: tuple[np.ndarray, np.ndarray] | None = None, n_mnist: int = 0) -> list[dict]:
    """Write the set into `out` (+ labels.csv); one row per file: file, label, source, family, style.

    Image k of a source draws from its own Generator (seed, source, k), so a file doesn't
    depend on how many others are made; digits go round 0-9, font faces take turns.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n_font):
        digit, face = k % 10, faces[(k // 10) % len(faces)]
        rng = np.random.default_rng([seed, 0, k])
        data, ext = encode(font_digit(face, digit, rng), rng)
        rows.append({"file": f"font_{k:05d}_label{digit}.{ext}", "label": digit, "source": "font",
                     "family": face.family, "style": face.style})
        (out / rows[-1]["file"]).write_bytes(data)
    if n_mnist:
        from predict_robustness import user_style  # benchmarks/, beside this script
        images, labels = mnist
        pick = np.random.default_rng([seed, 1])
        chosen = [pick.choice(np.flatnonzero(labels == d), n_mnist // 10, replace=False) for d in range(10)]
        for k in range(n_mnist):
            digit = k % 10
            index = int(chosen[digit][k // 10])
            rows.append({"file": f"mnist_{k:05d}_label{digit}.jpg", "label": digit, "source": "mnist",
                         "family": f"MNIST test #{index}", "style": ""})
            user_style(images[index], np.random.default_rng([seed, 2, k])).save(out / rows[-1]["file"], quality=70)
    write_labels(out, rows, ["file", "label", "source", "family", "style"])
    return rows


def write_labels(out: Path, rows: list[dict], fields: list[str]) -> None:
    """labels.csv: one row per file of the set, in order."""
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def set_sha256(out: Path, rows: list[dict]) -> str:
    """One hash over labels.csv and every file, in order: equal hashes, equal sets."""
    digest = hashlib.sha256((out / "labels.csv").read_bytes())
    for row in rows:
        digest.update((out / row["file"]).read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- evaluation

def evaluate(out: Path, rows: list[dict], model_path: Path) -> dict:
    """Accuracy of one model overall, per source, font family and digit; unreadable files count as wrong."""
    from mnistpipe.evaluate import wilson_interval
    from mnistpipe.predict import predict_files

    results = predict_files([out / r["file"] for r in rows], model_path, top=1)
    groups: dict[str, list[bool]] = {}
    for row, result in zip(rows, results):
        right = result.get("digit") == row["label"]
        keys = ["overall", f"source {row['source']}", f"digit {row['label']}"]
        if row["source"] == "font":
            keys.append(f"family {row['family']}")
        for key in keys:
            groups.setdefault(key, []).append(right)
    summary = {key: {"n": len(v), "accuracy": float(np.mean(v)), "ci95": list(wilson_interval(sum(v), len(v)))}
               for key, v in sorted(groups.items())}
    errors = [f"{Path(r['path']).name}: {r['error']}" for r in results if "error" in r]
    return {"model": shown(model_path), "groups": summary, "failed": len(errors), "errors": errors[:20]}


def shown(model_path: Path) -> str:
    """A model's path as a row names it: relative to the repository when inside it."""
    full = model_path.resolve()
    return str(full.relative_to(REPO) if full.is_relative_to(REPO) else model_path)


def check_out(parser: argparse.ArgumentParser, out: Path | None) -> Path | None:
    """--out resolved, or a usage error: it must be outside the repository and empty."""
    if out is None:
        return None
    out = out.resolve()
    if out.is_relative_to(REPO):
        parser.error(f"--out {out} is inside the repository; choose a directory outside it")
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty")
    return out


def model_name(model_path: Path) -> str:
    from mnistpipe.checkpoint import load_model

    spec = load_model(model_path)[1].spec.to_dict()
    return " ".join([spec["arch"]] + [f"{k}={v}" for k, v in spec.items()
                                      if k not in ("arch", "image_shape", "num_classes")])


def report(result: dict) -> str:
    g = result["groups"]
    line = lambda key, label: (f"  {label:<34} {g[key]['accuracy']:.4f}  "  # noqa: E731
                               f"[{g[key]['ci95'][0]:.4f}, {g[key]['ci95'][1]:.4f}]  n={g[key]['n']}")
    lines = [f"model {result['model']} ({result['name']})", line("overall", "overall")]
    sources = {"font": "font-rendered", "mnist": "MNIST test digits photographed"}
    lines += [line(f"source {s}", label) for s, label in sources.items() if f"source {s}" in g]
    lines += ["  per font family:"] + [line(k, k[len("family "):]) for k in g if k.startswith("family ")]
    lines += ["  per digit:"] + [line(f"digit {d}", str(d)) for d in range(10) if f"digit {d}" in g]
    lines.append(f"  files that could not be read: {result['failed']} (counted as wrong)")
    lines += [f"    {e}" for e in result["errors"]]
    return "\n".join(lines)


def record(info: dict, result: dict) -> None:
    """Add a row under this benchmark's own heading in RESULTS.md."""
    import results  # benchmarks/results.py, beside this script

    header = ("| date | machine | model | set | overall (95% CI) | font-rendered | MNIST photographed | failed |\n"
              "|---|---|---|---|---|---|---|---|\n")
    g = result["groups"]
    acc = lambda key: f"{g[key]['accuracy']:.4f}" if key in g else "—"  # noqa: E731
    row = (f"| {datetime.date.today()} | {results.machine()} | "
           f"{result['name']} (`{result['model']}`) | {info['n_font']} font ({info['faces']} faces) + "
           f"{info['n_mnist']} MNIST, seed {info['seed']}, sha256 {info['sha256'][:12]} | "
           f"{acc('overall')} ({g['overall']['ci95'][0]:.4f}–{g['overall']['ci95'][1]:.4f}) | "
           f"{acc('source font')} | {acc('source mnist')} | {result['failed']} |\n")
    results.add_row("non_mnist rows", header, row, (
        "## Non-MNIST digits (`python benchmarks/non_mnist.py`)\n\n"
        "Digits rendered from fonts, distorted like handwriting and photographed, plus MNIST test\n"
        "digits photographed; seeded, every range in the script's docstring. Unreadable files count\n"
        "as wrong. The set depends on the fonts installed: compare rows with the same sha256."))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=Path,
                        help="checkpoint to evaluate; repeat for several (default: models/model.pt)")
    parser.add_argument("--out", type=Path, help="empty directory for the images, outside the repository "
                        "(default: a temporary directory, deleted afterwards)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-font", type=int, default=3000, help="font-rendered digits (a multiple of 10)")
    parser.add_argument("--n-mnist", type=int, default=1000, help="MNIST test digits photographed (a multiple of 10)")
    parser.add_argument("--no-system-fonts", action="store_true",
                        help="only matplotlib's fonts: the same set on every machine")
    parser.add_argument("--mirror", default=os.environ.get("MNISTPIPE_MIRROR"),
                        help="directory with the t10k IDX .gz files (default: $MNISTPIPE_MIRROR)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--record", action="store_true", help="add a row per model to benchmarks/RESULTS.md")
    args = parser.parse_args()
    models = args.model or [REPO / paths.MODEL]
    if args.n_font % 10 or args.n_mnist % 10 or args.n_font < 0 or args.n_mnist < 0:
        parser.error("--n-font and --n-mnist must be non-negative multiples of 10 (the set is balanced)")
    if args.n_mnist and not args.mirror:
        parser.error("set MNISTPIPE_MIRROR (or --mirror) to a directory with the MNIST files, or give --n-mnist 0")
    for model in models:
        if not model.is_file():
            parser.error(f"{model}: no such checkpoint")
    args.out = check_out(parser, args.out)
    args.models = models
    args.faces, args.skipped = font_faces(system=not args.no_system_fonts)
    if args.n_font and not args.faces:
        parser.error("no usable fonts found")
    return args


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    faces, skipped, models = args.faces, args.skipped, args.models
    mnist = None
    if args.n_mnist:
        from mnistpipe.data.idx import load_images, load_labels

        mirror = Path(args.mirror)
        mnist = (load_images(mirror / "t10k-images-idx3-ubyte.gz"),
                 load_labels(mirror / "t10k-labels-idx1-ubyte.gz", 10))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = generate(out, args.seed, faces, args.n_font, mnist, args.n_mnist)
        info = {"seed": args.seed, "n_font": args.n_font, "n_mnist": args.n_mnist, "faces": len(faces),
                "sha256": set_sha256(out, rows), "generation_s": round(time.perf_counter() - start, 1),
                "out": str(args.out) if args.out else None,
                "fonts": [f"{f.family} {f.style} ({Path(f.path).name})" for f in faces],
                "skipped_fonts": [f"{Path(p).name}: {why}" for p, why in skipped]}
        results = []
        for model in models:
            results.append(evaluate(out, rows, model) | {"name": model_name(model)})
    if args.json:
        print(json.dumps({"set": info, "results": results}, indent=2))
    else:
        print_text(args, info, results)
    if args.record:
        for result in results:
            record(info, result)
        print("recorded in benchmarks/RESULTS.md", file=sys.stderr)


def print_text(args: argparse.Namespace, info: dict, results: list[dict]) -> None:
    faces, skipped = args.faces, args.skipped
    print(f"non-MNIST set: {args.n_font} font-rendered digits from {len(faces)} faces and {args.n_mnist} "
          f"MNIST test digits photographed; seed {args.seed}; sha256 {info['sha256'][:16]}; "
          f"generated in {info['generation_s']} s{' into ' + info['out'] if info['out'] else ''}")
    families = len({f.family for f in faces})
    print(f"fonts: {len(faces)} faces of {families} families; {len(skipped)} files skipped:")
    for why in sorted({why for _, why in skipped}):
        print(f"  {why}: {', '.join(Path(p).name for p, w in skipped if w == why)}")
    for result in results:
        print(report(result))


if __name__ == "__main__":
    main()
