"""Portable numerics: the same params give the same bytes whatever the thread count or the
environment variables that steer MKL, oneDNN and ATen onto other code paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnistpipe.numerics import OVERRIDDEN_PREFIXES, PORTABLE_ENV

from conftest import output_files
from dvc_helpers import copy_repo, make_repo, run

pytestmark = pytest.mark.slow

HOSTILE = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "3 threads": {"OMP_NUM_THREADS": "3"},
    "budget of 1 thread": {"MNISTPIPE_THREADS": "1"},
    "AVX-512 everywhere": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO",
                           "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "ALL"},
    "no vector units": {"ATEN_CPU_CAPABILITY": "default", "MKL_DEBUG_CPU_TYPE": "5",
                        "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
}


def clean_env(env: dict, **extra: str) -> dict:
    """`env` without any setting portable numerics overrides, plus `extra`."""
    out = {k: v for k, v in env.items() if not k.startswith(OVERRIDDEN_PREFIXES) and k not in PORTABLE_ENV}
    return {**out, **extra}


def stage(repo: Path, env: dict, name: str) -> None:
    run([sys.executable, f"stages/{name}.py"], repo, env)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    repo, env = make_repo(tmp_path_factory.mktemp("repro"))
    for name in ("fetch", "prepare"):
        stage(repo, env, name)
    return repo, env


def train_and_evaluate(prepared, dest: Path, env_extra: dict, **params) -> dict[str, bytes]:
    """Copy the prepared repo, set params, run train + evaluate; the outputs' bytes."""
    repo, env = prepared
    work = copy_repo(repo, dest / "repo")
    raw = yaml.safe_load((work / "params.yaml").read_text())
    for dotted, value in params.items():
        section, key = dotted.split("__") if "__" in dotted else (None, dotted)
        (raw[section] if section else raw)[key] = value
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = clean_env(env, **env_extra)
    for name in ("train", "evaluate"):
        stage(work, env, name)
    outputs = {p: (work / p).read_bytes() for p in output_files(work, "train", "evaluate")}
    return outputs | {"log": (work / "logs/train.json").read_bytes()}


def assert_same_outputs(runs: dict[str, dict[str, bytes]]) -> None:
    first_name, first = next(iter(runs.items()))
    for name, outputs in runs.items():
        assert outputs.keys() == first.keys()
        differ = [p for p in outputs if p != "log" and outputs[p] != first[p]]
        assert not differ, f"{name} vs {first_name}: {differ} differ"


def test_mlp_same_bytes_for_any_thread_count_and_environment(prepared, tmp_path):
    runs = {name: train_and_evaluate(prepared, tmp_path / name.replace(" ", "_"), extra)
            for name, extra in HOSTILE.items()}
    assert_same_outputs(runs)
    log = json.loads(runs["AVX-512 everywhere"]["log"])
    assert (log["numerics"], log["threads"], log["mkl_cbwr"], log["convolutions"], log["float32_matmul"]) == \
        ("portable", 2, "COMPATIBLE", "sliding windows x oneDNN AVX2 matmul (index-order chains)",
         "oneDNN AVX2 (index-order chains)")
    assert json.loads(runs["budget of 1 thread"]["log"])["threads"] == 1


def test_cnn_same_bytes_for_any_thread_count_and_environment(prepared, tmp_path):
    """The quick CNN recipe (docs/cnn.md) for two epochs: its convolutions, BatchNorm,
    max-pooling and augmentation give the same weights and metrics everywhere."""
    raw = yaml.safe_load((prepared[0] / "params.yaml").read_text())
    quick = {"model__arch": "cnn", "model__cnn": {**raw["model"]["cnn"], "channels": [10, 48], "dropout": 0.0},
             "train__epochs": 2, "train__batch_size": 128, "train__lr": 0.01, "train__schedule": "onecycle",
             "train__label_smoothing": 0.1, "train__augment": {**raw["train"]["augment"], "enabled": True}}
    runs = {name: train_and_evaluate(prepared, tmp_path / name.replace(" ", "_"), extra, **quick)
            for name, extra in HOSTILE.items()}
    assert_same_outputs(runs)


def test_fast_mode_lets_the_environment_choose(prepared, tmp_path):
    """The settings portable overrides are real: in fast mode they change the code path."""
    outputs = train_and_evaluate(prepared, tmp_path, {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
                                 numerics="fast")
    log = json.loads(outputs["log"])
    assert (log["numerics"], log["threads"], log["aten_cpu_capability"]) == ("fast", 1, "DEFAULT")
    assert (log["convolutions"], log["float32_matmul"]) == ("oneDNN", "MKL")


def test_thread_budget_must_be_a_positive_number(prepared, tmp_path):
    repo, env = prepared
    work = copy_repo(repo, tmp_path / "repo")  # were the check lost, it would train here
    bad = subprocess.run([sys.executable, "stages/train.py"], cwd=work, capture_output=True, text=True,
                         env=clean_env(env, MNISTPIPE_THREADS="two"))
    assert bad.returncode == 2 and "MNISTPIPE_THREADS='two'" in bad.stderr and "Traceback" not in bad.stderr


def test_pin_refuses_to_run_after_torch_is_loaded():
    code = "import torch\nfrom mnistpipe.numerics import pin\npin('portable')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=clean_env(dict(os.environ)))
    assert result.returncode != 0 and "before torch is imported" in result.stderr
