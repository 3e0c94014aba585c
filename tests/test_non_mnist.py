"""The non-MNIST benchmark set (benchmarks/non_mnist.py): deterministic, balanced, readable.

Hermetic: matplotlib's bundled fonts only, and synthetic digits in place of MNIST's.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from mnistpipe.predict import ImageError, load_image, preprocess

from conftest import load_benchmark, synthetic_digits


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("non_mnist")


@pytest.fixture(scope="module")
def faces(bench):
    return bench.font_faces(system=False)


def test_font_rule_keeps_digit_fonts_and_drops_the_others(faces):
    used, skipped = faces
    names = {(f.family, f.style) for f in used}
    assert {("DejaVu Sans", "Book"), ("DejaVu Serif", "Bold"), ("cmr10", "Regular")} <= names
    dropped = {Path(path).name: why for path, why in skipped}
    assert "no ten distinct digit glyphs" in dropped["DejaVuSansDisplay.ttf"]  # no digits at all
    assert "other glyphs" in dropped["cmsy10.ttf"]  # math symbols at the digit code points
    assert "other glyphs" in dropped["cmmi10.ttf"]  # named old-style figures
    assert not any("unreadable" in why for why in dropped.values())


def generate(bench, faces, out: Path, seed: int, n_font: int) -> list[dict]:
    images, labels = synthetic_digits(200, seed=3)  # stand-ins for MNIST test digits:
    images[images < 128] = 0  # a bright bar on black
    return bench.generate(out, seed, faces[0], n_font=n_font, mnist=(images, labels), n_mnist=10)


@pytest.fixture(scope="module")
def small_set(bench, faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("non_mnist")
    return out, generate(bench, faces, out, seed=0, n_font=20)


def test_same_seed_same_bytes_other_seed_other_images(bench, faces, small_set, tmp_path):
    out, rows = small_set
    # Every file has its own generator, so a smaller set holds the same first files.
    same = generate(bench, faces, tmp_path / "same", seed=0, n_font=10)
    other = generate(bench, faces, tmp_path / "other", seed=1, n_font=10)
    for row in same:
        assert (tmp_path / "same" / row["file"]).read_bytes() == (out / row["file"]).read_bytes(), row
    first = {r["file"][:11]: r["file"] for r in rows}  # font_00003 / mnist_00003 -> its file
    for row in other:
        assert (tmp_path / "other" / row["file"]).read_bytes() != (out / first[row["file"][:11]]).read_bytes(), row


def test_labels_balanced_and_images_readable(small_set):
    out, rows = small_set
    with open(out / "labels.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["file"] for r in table] == [r["file"] for r in rows]
    assert Counter((r["source"], r["label"]) for r in table) == {
        **{("font", str(d)): 2 for d in range(10)}, **{("mnist", str(d)): 1 for d in range(10)}}
    assert all(r["file"].split("label")[1][0] == r["label"] for r in table)  # label in the name too
    failed = 0
    for r in table:
        try:
            digit = preprocess(load_image(out / r["file"]))
        except ImageError:
            failed += 1
            continue
        assert digit.shape == (28, 28) and int(digit.max()) == 255
    assert failed <= 1, f"{failed} of {len(table)} generated images could not be read"
