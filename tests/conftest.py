"""Shared fixtures: a tiny synthetic IDX dataset (made here, never downloaded), its
dataset.yaml and params for it."""

from __future__ import annotations

import copy
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnistpipe.data.idx import UBYTE
from mnistpipe.params import parse_dataset, parse_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def deterministic_torch():
    """What the train stage sets at its entry point (flush-to-zero included), undone after:
    hypothesis, for one, refuses to run with denormals flushed."""
    import torch

    from mnistpipe.device import make_deterministic

    restore = make_deterministic(torch.device("cpu"))
    yield
    restore()


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (pyproject puts benchmarks/ on the tests' path, as
    running a benchmark puts it on the benchmark's, so their imports of each other work)."""
    import importlib

    return importlib.import_module(name)


def same_weights(a: dict, b: dict) -> bool:
    """Two state dicts hold the same tensors, bit for bit: the one way tests compare weights."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def synthetic_digits(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class is a bright bar at a class-specific place, plus noise
    and 5% wrong labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        row = 3 + 2 * int(c)
        images[i, row:row + 3, 4:24] = 255
    noisy = rng.random(n) < 0.05  # some mislabelled digits, so the error gallery has content
    labels[noisy] = rng.integers(0, num_classes, int(noisy.sum()))
    return images, labels


def write_synthetic_mirror(directory: Path, n_train: int = 600, n_test: int = 200) -> dict[str, str]:
    """Write the four .gz IDX files into `directory`; return {key: sha256 of decompressed}."""
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_digits(n_train, seed=1)
    test_x, test_y = synthetic_digits(n_test, seed=2)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    return {key: hashlib.sha256(write_idx_gz(directory / FILES[key], arrays[key])).hexdigest()
            for key in FILES}


def declared_outputs(*stages: str) -> list[str]:
    """What dvc.yaml declares as the outputs (outs, metrics, plots) of `stages`, or of every stage."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [entry if isinstance(entry, str) else next(iter(entry))
            for name in (stages or spec) for kind in ("outs", "metrics", "plots")
            for entry in spec[name].get(kind, [])]


def output_files(repo: Path, *stages: str) -> list[str]:
    """The files of `stages`' declared outputs in `repo`, directories expanded, in sorted order."""
    found = []
    for out in declared_outputs(*stages):
        path = repo / out
        found += [str(p.relative_to(repo)) for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() \
            else [out] if path.exists() else []
    return sorted(found)


def tiny_project(root: Path, stages: tuple[str, ...], **sections: dict):
    """A project folder under `root` on the tiny synthetic dataset, params sections updated from
    `sections` (e.g. train={"epochs": 2}), with `stages` of mnistpipe.pipeline run in it in-process
    under the stages' deterministic settings; (its folder, its params)."""
    import contextlib
    import importlib
    import shutil

    import torch

    from mnistpipe import paths
    from mnistpipe.device import make_deterministic

    raw = tiny_params_raw()
    for section, changes in sections.items():
        raw[section].update(changes)
    project = root / "project"
    write_dataset(project, write_synthetic_mirror(root / "mirror"))
    shutil.copytree(root / "mirror", project / paths.RAW)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    restore = make_deterministic(torch.device("cpu"))
    try:
        with contextlib.chdir(project):
            for stage in stages:
                importlib.import_module(f"mnistpipe.pipeline.{stage}").run(params)
    finally:
        restore()
    return project, params


def repo_params_raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_dataset_raw(checksums: dict[str, str]) -> dict:
    """dataset.yaml for the synthetic dataset whose checksums are `checksums`."""
    return {"mirrors": ["http://127.0.0.1:9/"],  # never used: tests set MNISTPIPE_MIRROR
            **{key: {"name": FILES[key], "sha256": sha} for key, sha in checksums.items()}}


def write_dataset(project: Path, checksums: dict[str, str]) -> None:
    """The synthetic dataset's dataset.yaml in `project`."""
    project.mkdir(parents=True, exist_ok=True)
    (project / "dataset.yaml").write_text(yaml.safe_dump(tiny_dataset_raw(checksums), sort_keys=False))


def tiny_params_raw() -> dict:
    """The repository's params.yaml shrunk for fast runs on the synthetic dataset."""
    raw = copy.deepcopy(repo_params_raw())
    raw["data"]["retries"] = 0
    raw["data"]["timeout_s"] = 5
    raw["prepare"]["val_size"] = 100
    raw["train"].update(epochs=3, batch_size=32, device="cpu")
    raw["evaluate"]["device"] = "cpu"
    raw["report"]["n_wrong"] = 4
    raw["report"]["dpi"] = 40
    return raw


@pytest.fixture
def synthetic_mirror(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory mirror holding the synthetic dataset, and its checksums."""
    mirror = tmp_path / "mirror"
    return mirror, write_synthetic_mirror(mirror)


@pytest.fixture
def tiny_params():
    return parse_params(tiny_params_raw())


@pytest.fixture
def tiny_dataset(synthetic_mirror):
    return parse_dataset(tiny_dataset_raw(synthetic_mirror[1]))


# IDX writing: only tests make IDX files (the pipeline only reads them).
def encode_idx(array: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes (uncompressed)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> bytes:
    """Write `array` as a gzipped IDX file; return the uncompressed bytes (for checksums)."""
    raw = encode_idx(array)
    Path(path).write_bytes(gzip.compress(raw, mtime=0))
    return raw
