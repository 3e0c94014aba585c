"""The trained model on real MNIST digits, photographed as users do (needs MNISTPIPE_MIRROR and a model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from mnistpipe.predict import load_image, predict_files

from conftest import REPO, load_benchmark
from digit_pictures import (
    phone_photo,
)

# --- user-style photos of real MNIST digits ------------------------------------------------------

MIRROR = os.environ.get("MNISTPIPE_MIRROR", "")
MODEL = Path(os.environ.get("MNISTPIPE_MODEL", REPO / "models" / "model.pt"))
T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.mark.mnist
@pytest.mark.skipif(not (MIRROR and all((Path(MIRROR) / f).is_file() for f in T10K)),
                    reason="needs MNISTPIPE_MIRROR: a directory with the MNIST t10k files")
@pytest.mark.skipif(not MODEL.is_file(), reason=f"needs a trained model at {MODEL} (MNISTPIPE_MODEL)")
def test_user_style_photos_of_mnist_digits():
    """The first 500 test digits re-rendered as photos (benchmarks/predict_robustness.py).

    Nothing in the preprocessing was tuned on these renderings. Measured with the
    784-128-64-10 MLP: clean 0.982, user-style 0.970 (seed 0), so the bar is 0.864.
    """
    r = load_benchmark("predict_robustness").evaluate(Path(MIRROR), MODEL, n=500, seed=0)
    print(f"clean accuracy {r['clean']:.4f}, user-style accuracy {r['user_style']:.4f}")
    assert r["failed"] == 0
    assert r["user_style"] >= 0.90 * r["clean"] - 0.02, r  # margin: sampling noise of 500 digits


@pytest.mark.slow
@pytest.mark.skipif(not MODEL.is_file(), reason=f"needs a trained model at {MODEL} (MNISTPIPE_MODEL)")
def test_48_mp_phone_photo_is_decoded_small_and_read(tmp_path):
    """A 48 MP JPEG (benchmarks/predict_photo.py) is decoded at 1/4 scale by libjpeg (Pillow's
    draft mode), turned upright by its EXIF tag, and read, in bounded time and memory."""
    bench = load_benchmark("predict_photo")
    path = tmp_path / "photo.jpg"
    bench.make_photo(path, (8000, 6000), digit=7, orientation=6)
    with Image.open(path) as stored:
        assert stored.format == "JPEG" and stored.size == (6000, 8000)  # 48 MP, stored sideways
    assert load_image(path).size == (2000, 1500)  # 1/4 of each side, upright
    result = bench.run_child(path, MODEL)  # a fresh process: its own peak memory
    print(result)
    assert result["digit"] == 7
    assert result["predict_s"] < 3
    assert result["vm_hwm_mb"] is None or result["vm_hwm_mb"] < 1500




@pytest.mark.mnist
@pytest.mark.skipif(not MODEL.is_file(), reason=f"needs a trained model at {MODEL} (MNISTPIPE_MODEL)")
def test_phone_photos_are_read_by_the_trained_model(tmp_path):
    """The issue's three photos with the trained model: the two digits read as 3, the blank
    sheet as no digit; and a seeded subset of benchmarks/phone_photos.py."""
    files = []
    for name, photo in [("thick", phone_photo()), ("shaded", phone_photo(fall_off=0.46, table=90)),
                        ("blank", phone_photo(digit=False, fall_off=0.46))]:
        files.append(tmp_path / f"{name}.jpg")
        photo.save(files[-1])
    thick, shaded, blank = predict_files(files, MODEL, top=1)
    assert thick["digit"] == 3 and shaded["digit"] == 3 and blank["digit"] is None, (thick, shaded, blank)

    bench = load_benchmark("phone_photos")
    rows = bench.generate(tmp_path / "set", seed=0, n_digits=30, n_blank=6)
    result = bench.evaluate(tmp_path / "set", rows, MODEL)["groups"]
    print(result["digits"], result["blank"])
    assert result["digits"]["rate"] >= 0.8 and result["blank"]["rate"] >= 5 / 6
