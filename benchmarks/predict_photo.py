"""Time and memory of `mnistpipe predict` on phone photos of a digit, up to 200 MP.

Generates JPEG photos deterministically (a digit drawn large with a marker, dark ink on
greyish, unevenly lit paper, sensor noise, colour, 4:2:0 JPEG quality 90; the 48 MP one is
stored sideways with an EXIF orientation tag, as a phone held upright stores it), then
predicts each in a fresh subprocess and prints, per photo: the digit read, the time
`predict_files` took (decode, preprocess, classify), the child's whole wall time (Python
and torch start-up included) and its peak RSS: getrusage of that child (from os.wait4; it
includes the helper processes torch starts) and the child's own VmHWM (Linux). Photos are
made in another process: a child forked from a big parent inherits its peak RSS. A tiny
photo comes first, so the start-up's own time and memory can be told apart.

    python benchmarks/predict_photo.py [--sizes tiny 12 48 200 200p] [--repeat 3] [--model PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mnistpipe import paths

REPO = Path(__file__).resolve().parents[1]
# name: (width, height) as displayed, the digit drawn, EXIF orientation (6: stored sideways),
# progressive JPEG (cameras write baseline ones; progressive is the decoder's worst case)
PHOTOS = {
    "tiny": ((800, 600), 3, 1, False),
    "12": ((4000, 3000), 5, 1, False),
    "48": ((8000, 6000), 7, 6, False),
    "200": ((16320, 12240), 2, 1, False),  # a 200 MP phone sensor (Samsung ISOCELL HP2/HP3)
    "200p": ((16320, 12240), 2, 1, True),
}
DIGITS = {  # polylines in unit coordinates of the digit's box
    2: [[(0.05, 0.25), (0.25, 0.03), (0.6, 0.0), (0.9, 0.2), (0.85, 0.45), (0.05, 1.0), (0.95, 1.0)]],
    3: [[(0.1, 0.05), (0.85, 0.05), (0.4, 0.45), (0.85, 0.6), (0.9, 0.85), (0.6, 1.0), (0.1, 0.92)]],
    5: [[(0.9, 0.0), (0.2, 0.0), (0.12, 0.42), (0.6, 0.38), (0.9, 0.6), (0.8, 0.92), (0.45, 1.0), (0.05, 0.88)]],
    7: [[(0.05, 0.02), (0.95, 0.02), (0.35, 1.0)]],
}
PAPER, INK = (192, 188, 178), (45, 48, 60)  # greyish, slightly warm paper; blue-black ink
STRIP = 256  # rows at a time when adding noise: a 200 MP photo needs ~1 GB to make (progressive 1.4)


def make_photo(path: Path, size: tuple[int, int], digit: int, orientation: int = 1,
               progressive: bool = False, seed: int = 0) -> None:
    """Write a deterministic JPEG photo of `digit`, `size` as displayed."""
    rng = np.random.default_rng([seed, digit, *size])
    w, h = size
    photo = Image.new("RGB", size, PAPER)
    draw = ImageDraw.Draw(photo)
    dh = 0.55 * h  # the digit's height; a bit off-centre
    dw, x0, y0 = 0.7 * dh, 0.42 * w - 0.35 * dh, 0.2 * h
    for line in DIGITS[digit]:
        draw.line([(x0 + u * dw, y0 + v * dh) for u, v in line], fill=INK, width=round(dh / 12), joint="curve")
    light = np.linspace(1.0, 0.85, w, dtype=np.float32)[:, None]  # lit from the left
    for top in range(0, h, STRIP):
        box = (0, top, w, min(h, top + STRIP))
        strip = np.asarray(photo.crop(box), dtype=np.float32) * light
        strip += rng.normal(0, 5, strip.shape[:2]).astype(np.float32)[..., None]  # luma noise
        photo.paste(Image.fromarray(strip.clip(0, 255).round().astype(np.uint8)), box)
    exif = Image.Exif()
    if orientation == 6:  # the camera stores the pixels turned; the tag says how to turn them back
        photo = photo.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    photo.save(path, "JPEG", quality=90, exif=exif, progressive=progressive)


CHILD = """
import json, sys, time
t0 = time.perf_counter()
from mnistpipe.predict import predict_files
t1 = time.perf_counter()
[result] = predict_files([sys.argv[1]], sys.argv[2], top=1)
t2 = time.perf_counter()
status = open("/proc/self/status").read() if sys.platform == "linux" else ""
hwm = [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
print(json.dumps({"startup_s": t1 - t0, "predict_s": t2 - t1, "vm_hwm_mb": (hwm or [None])[0], **result}))
"""


def run_child(photo: Path, model: Path) -> dict:
    """predict_files on one photo in a fresh Python; its timings, result and peak RSS."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(photo), str(model)],
                             stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"predict failed on {photo} (exit {child.returncode})")
    return {**json.loads(out), "wall_s": time.perf_counter() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(PHOTOS), default=list(PHOTOS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per photo; the minimum is reported")
    parser.add_argument("--model", type=Path, default=REPO / paths.MODEL)
    parser.add_argument("--keep", type=Path, help="write the photos here (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"model {args.model}; {os.cpu_count()} CPUs; {args.repeat} runs each: min-max")
        print(f"{'photo':<32} {'MB':>5} {'digit':>5} {'predict s':>11} {'child s':>11} "
              f"{'peak RSS MB':>11} {'VmHWM MB':>11}")
        for name in args.sizes:
            (w, h), digit, orientation, progressive = PHOTOS[name]
            path = folder / f"digit{digit}_{w}x{h}{'_progressive' if progressive else ''}.jpg"
            if not path.exists():  # in another process: a child forked from a big parent starts big
                maker = multiprocessing.get_context("spawn").Process(
                    target=make_photo, args=(path, (w, h), digit, orientation, progressive))
                maker.start()
                maker.join()
                if maker.exitcode:
                    raise SystemExit(f"could not make {path} (exit {maker.exitcode})")
            runs = [run_child(path, args.model) for _ in range(args.repeat)]
            read = {r.get("digit", r.get("error")) for r in runs}
            spread = {k: (min(r[k] or 0 for r in runs), max(r[k] or 0 for r in runs))
                      for k in ("predict_s", "wall_s", "peak_rss_mb", "vm_hwm_mb")}
            label = (f"{w * h / 1e6:.1f} MP {w}x{h}" + (" EXIF-rotated" if orientation != 1 else "")
                     + (" progressive" if progressive else ""))
            print(f"{label:<32} {path.stat().st_size / 1e6:5.1f} {'/'.join(map(str, read)):>5} "
                  + " ".join(f"{lo:5.2f}-{hi:<5.2f}" for lo, hi in list(spread.values())[:2]) + " "
                  + " ".join(f"{lo:5.0f}-{hi:<5.0f}" for lo, hi in list(spread.values())[2:])
                  + ("" if read == {digit} else f"  WRONG: drawn {digit}"))


if __name__ == "__main__":
    main()
