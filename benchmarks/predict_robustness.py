"""How well `mnistpipe predict` reads digits photographed the way a user would.

Takes MNIST test digits, re-renders each one as a user-style photo (enlarged 4-6x and
placed off-centre on a 200x150 sheet, dark ink on greyish paper, strokes thickened or
thinned, light Gaussian noise, saved as JPEG quality 70), runs the files through
`predict_files` (decode, preprocess, classify) and prints the accuracy next to the
model's accuracy on the clean originals. The rendering is fixed and seeded; the
preprocessing was not tuned on it.

    MNISTPIPE_MIRROR=../shared/mnist python benchmarks/predict_robustness.py --n 500
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from mnistpipe import paths
from mnistpipe.checkpoint import load_model
from mnistpipe.data.idx import load_images, load_labels
from mnistpipe.data.prepared import normalize
from mnistpipe.predict import predict_files

REPO = Path(__file__).resolve().parents[1]
STROKES = [None, ImageFilter.MaxFilter(3), ImageFilter.MaxFilter(5), ImageFilter.MaxFilter(7),
           ImageFilter.MinFilter(3), ImageFilter.MinFilter(5)]


def user_style(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One 28x28 uint8 MNIST digit as a user's photo of it: 200x150, dark on light, noisy."""
    size = round(28 * rng.uniform(4, 6))
    big = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    stroke = STROKES[rng.integers(len(STROKES))]
    if stroke is not None:
        big = big.filter(stroke)
    big = big.crop(big.getbbox())
    sheet = Image.new("L", (200, 150))
    sheet.paste(big, (int(rng.integers(0, 201 - big.width)), int(rng.integers(0, 151 - big.height))))
    paper, ink = rng.uniform(180, 250), rng.uniform(0, 70)
    photo = paper - (paper - ink) * np.asarray(sheet, dtype=np.float64) / 255
    photo += rng.normal(0, rng.uniform(2, 8), photo.shape)
    return Image.fromarray(photo.clip(0, 255).round().astype(np.uint8))


def evaluate(mirror: Path, model_path: Path, n: int = 500, start: int = 0, seed: int = 0) -> dict[str, float]:
    """Accuracy on test digits start..start+n: clean originals, and user-style photos via predict."""
    images = load_images(Path(mirror) / "t10k-images-idx3-ubyte.gz")[start:start + n]
    labels = load_labels(Path(mirror) / "t10k-labels-idx1-ubyte.gz", 10)[start:start + n].astype(np.int64)
    model, info = load_model(model_path)
    with torch.inference_mode():
        x = normalize(torch.from_numpy(images.copy()), info.mean, info.std)
        clean = (model(x).argmax(1).numpy() == labels).mean()
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, digit in enumerate(images):
            paths.append(Path(tmp) / f"{i:05d}.jpg")
            user_style(digit, rng).save(paths[-1], "JPEG", quality=70)
        results = predict_files(paths, model_path, top=1)
    user = np.mean([r.get("digit") == y for r, y in zip(results, labels)])
    return {"n": len(labels), "clean": float(clean), "user_style": float(user),
            "failed": sum("error" in r for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default=os.environ.get("MNISTPIPE_MIRROR"),
                        help="directory with the t10k IDX .gz files (default: $MNISTPIPE_MIRROR)")
    parser.add_argument("--model", default=REPO / paths.MODEL, type=Path)
    parser.add_argument("--n", type=int, default=500, help="number of test digits")
    parser.add_argument("--start", type=int, default=0, help="first test digit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendering")
    args = parser.parse_args()
    if not args.mirror:
        parser.error("give --mirror or set MNISTPIPE_MIRROR to a directory with the MNIST files")
    r = evaluate(Path(args.mirror), args.model, args.n, args.start, args.seed)
    print(f"{r['n']} test digits from #{args.start}, model {args.model}")
    print(f"clean originals:    accuracy {r['clean']:.4f}")
    print(f"user-style photos:  accuracy {r['user_style']:.4f}  "
          f"({r['user_style'] / r['clean']:.1%} of clean; {r['failed']} files failed)")


if __name__ == "__main__":
    main()
