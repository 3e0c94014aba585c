"""Phone photos of handwritten digits on paper, as people take them: does `predict` read them?

Writes a seeded set of photos into --out (default: a temporary directory) and runs them
through `predict_files` for each --model. Reports the share of digits read right and the
share of blank sheets reported as "no digit" (each with a 95% Wilson interval), by
condition (table, ink, shadow) and by digit, and how many digits were reported as unsure.

The digits are not MNIST: each is drawn here as pen strokes along a smooth path through
jittered control points of one of a few handwritten shapes per digit (open and closed 4,
7 with and without a bar, ...), then slanted, rotated and elastically distorted like
handwriting (benchmarks/non_mnist.py's `handwrite`). predict's thresholds were chosen
looking at seed 0's photos; seed 1 is the held-out set the recorded rows come from. Ranges
are uniform unless said otherwise (h = the digit's height, S = the sheet's shorter side):

  scene    the photo is 4:3, 960-1600 px on its longer side, portrait or landscape; a table
           fills it: dark (level 15-90, wood-like grain) or light (150-215), half each
  sheet    white paper (level 215-250, +-3% colour cast), A4-shaped, its shorter side
           0.65-1.25x the photo's shorter side (so the table may not show at all), rotated
           +-12 deg, centred within +-8% of the photo, each corner moved by up to 5% of S
           (perspective)
  digit    h = 25-55% of S, centred within +-10% of the sheet; pen width 4-14% of h
           (pencil 4-9%); ink: black or dark grey ballpoint/marker (level 10-70), blue
           pen, or pencil (grey level 80-140, grainy), a third each
  light    brightness falling off linearly across the photo by 0-50% in a random
           direction (240 -> 120), vignetting darkening the corners by 0-35%, and one
           time in two a soft shadow (a half-plane at a random angle, 15-45% darker,
           penumbra 5-40 px)
  camera   Gaussian blur sigma 0-2 px, Gaussian noise sigma 2-8 levels, JPEG quality 60-95
  blank    --blank sheets under the same conditions, with no digit

The same seed gives the same files byte for byte with the same library versions (numpy,
scipy, Pillow, libjpeg); the printed sha256 says whether two sets agree.

    python benchmarks/phone_photos.py [--model PATH]... [--n 500] [--blank 100] [--seed 1]
        [--out DIR] [--json] [--record] [--figure PNG]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from non_mnist import check_out, handwrite, set_sha256, shown, write_labels  # benchmarks/, beside this script

REPO = Path(__file__).resolve().parents[1]
CANVAS = 160  # px: the digit's height when its strokes are drawn, before it goes on the sheet

# Handwritten shapes: strokes through control points in a box of width 0.7 and height 1
# (x right, y down). A stroke is drawn as a smooth curve through its points.
SHAPES: dict[int, list[list[list[tuple[float, float]]]]] = {
    0: [[[(0.35, 0.0), (0.08, 0.15), (0.0, 0.5), (0.1, 0.88), (0.35, 1.0), (0.6, 0.86), (0.7, 0.5),
          (0.6, 0.12), (0.35, 0.0), (0.25, 0.05)]]],
    1: [[[(0.35, 0.0), (0.33, 1.0)]],
        [[(0.22, 0.15), (0.4, 0.0), (0.38, 1.0)]],
        [[(0.22, 0.15), (0.4, 0.0), (0.38, 1.0)], [(0.15, 1.0), (0.6, 1.0)]]],
    2: [[[(0.05, 0.25), (0.3, 0.02), (0.6, 0.1), (0.62, 0.38), (0.3, 0.7), (0.02, 1.0), (0.35, 0.97),
          (0.7, 0.98)]],
        [[(0.05, 0.22), (0.35, 0.0), (0.65, 0.2), (0.5, 0.5), (0.05, 0.98), (0.7, 0.95)]]],
    3: [[[(0.05, 0.12), (0.35, 0.0), (0.62, 0.15), (0.55, 0.38), (0.25, 0.48), (0.58, 0.58), (0.68, 0.8),
          (0.4, 1.0), (0.02, 0.88)]],
        [[(0.05, 0.02), (0.65, 0.02), (0.3, 0.42), (0.62, 0.6), (0.62, 0.88), (0.35, 1.0), (0.02, 0.9)]]],
    4: [[[(0.5, 0.0), (0.02, 0.65), (0.7, 0.65)], [(0.55, 0.3), (0.55, 1.0)]],
        [[(0.12, 0.0), (0.05, 0.55), (0.68, 0.55)], [(0.55, 0.0), (0.55, 1.0)]]],
    5: [[[(0.65, 0.0), (0.12, 0.02), (0.08, 0.42), (0.4, 0.36), (0.66, 0.55), (0.62, 0.85), (0.35, 1.0),
          (0.02, 0.9)]],
        [[(0.12, 0.02), (0.08, 0.42), (0.4, 0.36), (0.66, 0.55), (0.62, 0.85), (0.35, 1.0), (0.02, 0.9)],
         [(0.12, 0.02), (0.68, 0.0)]]],
    6: [[[(0.55, 0.0), (0.2, 0.28), (0.02, 0.65), (0.15, 0.95), (0.45, 0.98), (0.65, 0.75), (0.5, 0.52),
          (0.2, 0.55), (0.05, 0.7)]]],
    7: [[[(0.0, 0.03), (0.7, 0.0), (0.35, 0.55), (0.22, 1.0)]],
        [[(0.0, 0.03), (0.7, 0.0), (0.35, 0.55), (0.22, 1.0)], [(0.15, 0.5), (0.6, 0.48)]]],
    8: [[[(0.6, 0.12), (0.35, 0.0), (0.1, 0.12), (0.15, 0.35), (0.55, 0.58), (0.65, 0.85), (0.35, 1.0),
          (0.05, 0.85), (0.12, 0.6), (0.55, 0.38), (0.62, 0.15)]]],
    9: [[[(0.62, 0.2), (0.35, 0.0), (0.05, 0.15), (0.08, 0.42), (0.38, 0.5), (0.65, 0.3), (0.62, 0.15),
          (0.6, 0.6), (0.55, 1.0)]],
        [[(0.62, 0.25), (0.35, 0.02), (0.05, 0.2), (0.12, 0.45), (0.45, 0.45), (0.65, 0.25), (0.6, 0.7),
          (0.4, 1.0), (0.1, 0.92)]]],
}


# ---------------------------------------------------------------- a handwritten digit

def smooth_path(points: np.ndarray, per_segment: int = 24) -> np.ndarray:
    """A Catmull-Rom curve through the points (ends repeated), as a dense polyline."""
    p = np.vstack([points[:1], points, points[-1:]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    curve = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        curve.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                            + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    return np.vstack(curve + [p[-2:-1]])


def write_digit(digit: int, pen: float, rng: np.random.Generator) -> np.ndarray:
    """Ink coverage in [0, 1] of one handwritten digit, about CANVAS px tall, cropped to the ink."""
    strokes = SHAPES[digit][rng.integers(len(SHAPES[digit]))]
    size, margin = CANVAS, CANVAS // 2
    canvas = Image.new("L", (size + 2 * margin, size + 2 * margin))
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(pen * size))
    for stroke in strokes:
        points = np.array(stroke) + rng.normal(0, 0.03, (len(stroke), 2))  # no two hands alike
        path = smooth_path(points) * size + margin
        draw.line([tuple(p) for p in path], fill=255, width=width, joint="curve")
        for end in (path[0], path[-1]):  # round pen ends
            draw.ellipse([*(end - width / 2), *(end + width / 2)], fill=255)
    ink = np.asarray(canvas, dtype=np.float32) / 255
    ink = handwrite(np.pad(ink, margin), size, rng)
    return ink


# ---------------------------------------------------------------- the scene

def table(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A dark wood-like or a light plain table top, RGB float."""
    if rng.random() < 0.5:  # dark wood: grain stretched along one direction
        level, tint = rng.uniform(15, 90), np.array([1.0, 0.8, 0.6])
        grain = ndimage.gaussian_filter(rng.standard_normal((height // 8 + 1, width // 8 + 1)),
                                        (3, 0.4) if rng.random() < 0.5 else (0.4, 3))
        grain = np.asarray(Image.fromarray((grain / grain.std()).astype(np.float32)).resize(
            (width, height), Image.Resampling.BILINEAR))
        surface = level * (1 + 0.2 * grain)
    else:
        level, tint = rng.uniform(150, 215), 1 + rng.uniform(-0.06, 0.06, 3)
        surface = np.full((height, width), level)
    return surface[..., None] * tint


def perspective_coefficients(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PIL's 8 PERSPECTIVE coefficients mapping target (output) points to source (input) points."""
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(rows, dtype=np.float64), source.reshape(-1).astype(np.float64))


def light(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative light field: a linear fall-off, vignetting, maybe a soft shadow."""
    y, x = np.indices((height, width), dtype=np.float64)
    y, x = y / max(height, width), x / max(height, width)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = x * np.cos(direction) + y * np.sin(direction)
    field = 1 - rng.uniform(0, 0.5) * (ramp - ramp.min()) / np.ptp(ramp)
    r2 = ((y - y.mean()) ** 2 + (x - x.mean()) ** 2) / ((y.max() / 2) ** 2 + (x.max() / 2) ** 2)
    field *= 1 - rng.uniform(0, 0.35) * r2
    shadow = rng.random() < 0.5
    if shadow:
        angle = rng.uniform(0, 2 * np.pi)
        x0, y0 = rng.uniform(0.2, 0.8) * x.max(), rng.uniform(0.2, 0.8) * y.max()
        side = (x - x0) * np.cos(angle) + (y - y0) * np.sin(angle)
        penumbra = rng.uniform(5, 40) / max(height, width)
        field *= 1 - rng.uniform(0.15, 0.45) * (1 / (1 + np.exp(-side / (penumbra / 2))))
    return field, shadow


def photograph(digit: int | None, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """One photo of a sheet on a table, with the digit written on it (None: a blank sheet)."""
    long = int(rng.integers(960, 1601))
    height, width = (long * 3 // 4, long) if rng.random() < 0.5 else (long, long * 3 // 4)
    scene = table(height, width, rng)
    dark_table = scene.mean() < 120
    short = rng.uniform(0.65, 1.25) * min(height, width)
    sheet_image, ink_kind = sheet(digit, round(short), round(short * 1.414), rng)
    scene = on_table(scene, sheet_image, rng)
    photo, shadow = camera(scene, rng)
    conditions = {"table": "dark" if dark_table else "light", "ink": ink_kind if digit is not None else "",
                  "shadow": "shadow" if shadow else "no shadow"}
    return photo, conditions


def sheet(digit: int | None, sw: int, sh: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """The sheet, flat: paper with the digit in ink, pen or pencil; and which ink."""
    paper = rng.uniform(215, 250) * (1 + rng.uniform(-0.03, 0.03, 3))
    coverage = np.zeros((sh, sw), dtype=np.float32)
    ink_kind = ["dark", "blue", "pencil"][rng.integers(3)]
    if digit is not None:
        pen = rng.uniform(0.04, 0.09) if ink_kind == "pencil" else rng.uniform(0.04, 0.14)
        ink = write_digit(digit, pen, rng)
        h = rng.uniform(0.25, 0.55) * sw
        scale = h / ink.shape[0]
        size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
        glyph = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS)).clip(0, 1)
        cy = sh / 2 + rng.uniform(-0.1, 0.1) * sh
        cx = sw / 2 + rng.uniform(-0.1, 0.1) * sw
        top = int(np.clip(cy - size[1] / 2, 0, sh - size[1]))
        left = int(np.clip(cx - size[0] / 2, 0, sw - size[0]))
        if ink_kind == "pencil":  # graphite leaves grains
            glyph = glyph * rng.uniform(0.55, 1.0, glyph.shape).astype(np.float32)
        coverage[top:top + size[1], left:left + size[0]] = glyph
    pen_colour = {"dark": lambda: np.full(3, rng.uniform(10, 70)),
                  "blue": lambda: np.array([rng.uniform(15, 60), rng.uniform(25, 80), rng.uniform(110, 190)]),
                  "pencil": lambda: np.full(3, rng.uniform(80, 140))}[ink_kind]()
    sheet = paper * (1 - coverage[..., None]) + pen_colour * coverage[..., None]
    return Image.fromarray(sheet.clip(0, 255).round().astype(np.uint8), "RGB"), ink_kind


def on_table(scene: np.ndarray, sheet_image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """The sheet laid on the table: turned, shifted and seen in perspective."""
    (height, width), (sw, sh) = scene.shape[:2], sheet_image.size
    angle = np.deg2rad(rng.uniform(-12, 12))
    centre = np.array([width / 2, height / 2]) * (1 + rng.uniform(-0.08, 0.08, 2))
    corners = np.array([[-sw / 2, -sh / 2], [sw / 2, -sh / 2], [sw / 2, sh / 2], [-sw / 2, sh / 2]])
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = corners @ turn.T + centre + rng.uniform(-0.05, 0.05, (4, 2)) * sw
    source = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], dtype=np.float64)
    coeffs = perspective_coefficients(source, target)
    warped = sheet_image.transform((width, height), Image.Transform.PERSPECTIVE, tuple(coeffs),
                                   Image.Resampling.BILINEAR)
    mask = Image.new("L", (sw, sh), 255).transform((width, height), Image.Transform.PERSPECTIVE, tuple(coeffs),
                                                   Image.Resampling.BILINEAR)
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255
    return scene * (1 - alpha) + np.asarray(warped, dtype=np.float64) * alpha


def camera(scene: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, bool]:
    """The photo: uneven light (and maybe a shadow), blur and sensor noise; whether a shadow fell."""
    height, width = scene.shape[:2]
    field, shadow = light(height, width, rng)
    scene = scene * field[..., None]
    sigma = rng.uniform(0, 2)
    photo = Image.fromarray(scene.clip(0, 255).round().astype(np.uint8), "RGB")
    if sigma > 0.3:
        photo = photo.filter(ImageFilter.GaussianBlur(sigma))
    noisy = np.asarray(photo, dtype=np.float64) + rng.normal(0, rng.uniform(2, 8), (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8), "RGB"), shadow


# ---------------------------------------------------------------- the set

def generate(out: Path, seed: int, n_digits: int, n_blank: int) -> list[dict]:
    """Write the set into `out` (+ labels.csv): n_digits photos, digits going round 0-9, then
    n_blank blank sheets. Photo k draws from its own Generator (seed, k): a file doesn't depend
    on how many others are made."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n_digits + n_blank):
        digit = k % 10 if k < n_digits else None
        rng = np.random.default_rng([seed, 0 if digit is not None else 1, k])
        photo, conditions = photograph(digit, rng)
        name = f"photo_{k:05d}_{'blank' if digit is None else f'label{digit}'}.jpg"
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=int(rng.integers(60, 96)))
        (out / name).write_bytes(buffer.getvalue())
        rows.append({"file": name, "label": "" if digit is None else digit, **conditions})
    write_labels(out, rows, ["file", "label", "table", "ink", "shadow"])
    return rows


# ---------------------------------------------------------------- evaluation

def evaluate(out: Path, rows: list[dict], model_path: Path) -> dict:
    """Digits read right and blank sheets reported as blank, overall and by condition."""
    from mnistpipe.evaluate import wilson_interval
    from mnistpipe.predict import predict_files

    results = predict_files([out / r["file"] for r in rows], model_path, top=1)
    groups: dict[str, list[bool]] = {}
    unsure = unsure_wrong = 0
    for row, result in zip(rows, results):
        if row["label"] == "":
            keys = ["blank", f"blank, {row['table']} table", f"blank, {row['shadow']}"]
            right = "digit" in result and result["digit"] is None
        else:
            keys = ["digits", f"{row['table']} table", f"{row['ink']} ink", row["shadow"], f"digit {row['label']}"]
            right = result.get("digit") == int(row["label"])
            unsure += bool(result.get("unsure"))
            unsure_wrong += bool(result.get("unsure")) and not right
        for key in keys:
            groups.setdefault(key, []).append(right)
    summary = {key: {"n": len(v), "rate": float(np.mean(v)), "ci95": list(wilson_interval(sum(v), len(v)))}
               for key, v in groups.items()}
    errors = [f"{Path(r['path']).name}: {r['error']}" for r in results if "error" in r]
    wrong = [f"{Path(r['path']).name}: {r.get('digit')}" for row, r in zip(rows, results)
             if row["label"] != "" and r.get("digit") != int(row["label"])]
    return {"model": shown(model_path), "groups": summary, "unsure": unsure, "unsure_wrong": unsure_wrong,
            "failed": len(errors),
            "errors": errors[:20], "wrong": wrong}


def report(result: dict) -> str:
    g = result["groups"]

    def line(key: str) -> str:
        return (f"  {key:<28} {g[key]['rate']:.4f}  [{g[key]['ci95'][0]:.4f}, {g[key]['ci95'][1]:.4f}]"
                f"  n={g[key]['n']}")

    lines = [f"model {result['model']} ({result['name']})", "  digits read right:", line("digits")]
    lines += [line(k) for k in sorted(g) if k not in ("digits", "blank") and not k.startswith(("blank", "digit "))]
    lines += [line(f"digit {d}") for d in range(10) if f"digit {d}" in g]
    if "blank" in g:
        lines += ["  blank sheets reported as no digit:", line("blank")]
        lines += [line(k) for k in sorted(g) if k.startswith("blank, ")]
    lines.append(f"  digits marked unsure: {result['unsure']} ({result['unsure_wrong']} of them wrong); "
                 f"files that could not be read: {result['failed']}")
    lines += [f"    {e}" for e in result["errors"]]
    return "\n".join(lines)


def record(info: dict, result: dict) -> None:
    import results  # benchmarks/results.py, beside this script

    header = ("| date | machine | model | set | digits read right (95% CI) | blank sheets called blank (95% CI) "
              "| dark / light table | dark / blue / pencil ink | marked unsure |\n" + "|---" * 9 + "|\n")
    g = result["groups"]

    def rate(key: str) -> str:
        return f"{g[key]['rate']:.3f}" if key in g else "—"

    def ci(key: str) -> str:
        return f"{rate(key)} ({g[key]['ci95'][0]:.3f}–{g[key]['ci95'][1]:.3f})" if key in g else "—"

    row = (f"| {datetime.date.today()} | {results.machine()} | {result['name']} (`{result['model']}`) | "
           f"{info['n']} digits + {info['blank']} blank, seed {info['seed']}, sha256 {info['sha256'][:12]} | "
           f"{ci('digits')} | {ci('blank')} | {rate('dark table')} / {rate('light table')} | "
           f"{rate('dark ink')} / {rate('blue ink')} / {rate('pencil ink')} | "
           f"{result['unsure']} ({result['unsure_wrong']} wrong) |\n")
    results.add_row("phone_photos rows", header, row, (
        "## Phone photos of handwritten digits (`python benchmarks/phone_photos.py`)\n\n"
        "Digits drawn as pen strokes (not MNIST), written on a sheet of paper lying on a table and\n"
        "photographed: rotation, perspective, uneven light, vignetting, shadows, blur, noise, JPEG\n"
        "60-95; plus blank sheets. Every range is in the script's docstring."))


def figure(out: Path, rows: list[dict], path: Path, count: int = 3) -> None:
    """A PNG of the first `count` digit photos and one blank sheet, each above the 28x28 image
    `predict` makes of it (or a grey square for "no digit")."""
    from mnistpipe.predict import NoDigit, load_image, preprocess

    chosen = [r for r in rows if r["label"] != ""][:count] + [r for r in rows if r["label"] == ""][:1]
    side = 240
    canvas = Image.new("RGB", (side * len(chosen), 2 * side), "white")
    for i, row in enumerate(chosen):
        photo = Image.open(out / row["file"]).convert("RGB")
        photo.thumbnail((side, side))
        canvas.paste(photo, (i * side + (side - photo.width) // 2, (side - photo.height) // 2))
        try:
            digit = Image.fromarray(preprocess(load_image(out / row["file"])).numpy())
        except NoDigit:
            digit = Image.new("L", (28, 28), 96)
        canvas.paste(digit.resize((168, 168), Image.Resampling.NEAREST).convert("RGB"), (i * side + 36, side + 36))
    canvas.save(path, optimize=True)


def parse_args() -> argparse.Namespace:
    from mnistpipe import paths

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=Path,
                        help="checkpoint to evaluate; repeat for several (default: models/model.pt)")
    parser.add_argument("--n", type=int, default=500, help="photos of digits (a multiple of 10)")
    parser.add_argument("--blank", type=int, default=100, help="photos of blank sheets")
    parser.add_argument("--seed", type=int, default=1, help="1: the held-out set (default); 0: the one "
                        "predict's thresholds were chosen on")
    parser.add_argument("--out", type=Path, help="empty directory for the photos, outside the repository "
                        "(default: a temporary directory, deleted afterwards)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--record", action="store_true", help="add a row per model to benchmarks/RESULTS.md")
    parser.add_argument("--figure", type=Path, help="also write a PNG: three photos and a blank sheet, each "
                        "above the 28x28 image predict makes of it")
    args = parser.parse_args()
    args.models = args.model or [REPO / paths.MODEL]
    if args.n % 10 or args.n < 0 or args.blank < 0:
        parser.error("--n must be a non-negative multiple of 10 (the set is balanced), --blank non-negative")
    for model in args.models:
        if not model.is_file():
            parser.error(f"{model}: no such checkpoint")
    args.out = check_out(parser, args.out)
    return args


def main() -> None:
    from non_mnist import model_name

    args = parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = generate(out, args.seed, args.n, args.blank)
        info = {"seed": args.seed, "n": args.n, "blank": args.blank, "sha256": set_sha256(out, rows),
                "generation_s": round(time.perf_counter() - start, 1)}
        results = [evaluate(out, rows, model) | {"name": model_name(model)} for model in args.models]
        if args.figure:
            figure(out, rows, args.figure)
    if args.json:
        print(json.dumps({"set": info, "results": results}, indent=2))
    else:
        print(f"phone photos: {args.n} digits + {args.blank} blank sheets, seed {args.seed}; "
              f"sha256 {info['sha256'][:16]}; generated in {info['generation_s']} s")
        for result in results:
            print(report(result))
    if args.record:
        for result in results:
            record(info, result)
        print("recorded in benchmarks/RESULTS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
