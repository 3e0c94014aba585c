"""Printed digits cropped tight, as people trim a scan, a render or a drawing: does `predict`
read them, call them blank, or misread them?

Each of the ten digits is rendered at 120 px in matplotlib's DejaVu Sans, DejaVu Sans Bold
and DejaVu Serif Bold, with its strokes as they are or thickened by 4 or 8 px (a marker),
and cropped to its ink with 0, 2 or 10 px of paper left around it, dark on light and light
on dark: 540 clean PNG files. Prints, per stroke, margin and polarity, how many of the 30
were read right, read as another digit, or called blank. "Read as another digit" counts
the model's own mistakes on font digits too: compare with the 10 px rows.

    python benchmarks/tight_crops.py [--model PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from mnistpipe import paths
from mnistpipe.predict import predict_files

from non_mnist import BUNDLED_FONTS  # benchmarks/non_mnist.py: matplotlib's own fonts

FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf")
STROKES, MARGINS = (0, 4, 8), (0, 2, 10)


def crop(face: str, digit: str, stroke: int, margin: int, dark_on_light: bool) -> Image.Image:
    font = ImageFont.truetype(str(BUNDLED_FONTS / face), 120)
    image = Image.new("L", (220, 220), 255)
    ImageDraw.Draw(image).text((50, 30), digit, font=font, fill=0, stroke_width=stroke, stroke_fill=0)
    left, top, right, bottom = ImageOps.invert(image).getbbox()
    image = image.crop((left - margin, top - margin, right + margin, bottom + margin))
    return image if dark_on_light else ImageOps.invert(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=paths.MODEL)
    args = parser.parse_args()
    counts: dict[tuple, Counter] = {}
    with tempfile.TemporaryDirectory() as folder:
        files, cases = [], []
        for face in FACES:
            for digit in "0123456789":
                for case in ((s, m, dark) for s in STROKES for m in MARGINS for dark in (True, False)):
                    files.append(Path(folder, f"{len(files):04d}.png"))
                    crop(face, digit, *case).save(files[-1])
                    cases.append((case, int(digit)))
        for (case, digit), result in zip(cases, predict_files(files, args.model)):
            read = "blank" if "reason" in result else "right" if result.get("digit") == digit else "other"
            counts.setdefault(case, Counter())[read] += 1
    print(f"model {args.model}: of 30 digits (3 faces x 10), read right / as another digit / called blank")
    print(f"{'stroke +px':>10} {'margin px':>10}  {'dark on light':>14}  {'light on dark':>14}")
    for stroke in STROKES:
        for margin in MARGINS:
            cells = ("{right:>4} {other:>4} {blank:>4}".format_map(counts[stroke, margin, dark])
                     for dark in (True, False))
            print(f"{stroke:>10} {margin:>10}  " + "  ".join(f"{cell:>14}" for cell in cells))
    total = sum(counts.values(), Counter())
    print(f"all {total.total()}: {total['right']} right, {total['other']} another digit, {total['blank']} blank")


if __name__ == "__main__":
    main()
