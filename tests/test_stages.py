"""The stage scripts are thin shells: importing one changes nothing, and the work they call
(`mnistpipe.pipeline.*.run`) runs in-process from its params."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SNAPSHOT = """
import json, os, sys, importlib.util
import torch

def state():
    return {"env": dict(os.environ), "threads": torch.get_num_threads(),
            "interop": torch.get_num_interop_threads(), "mkldnn": torch.backends.mkldnn.enabled,
            "capability": torch.backends.cpu.get_cpu_capability(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "matmul": torch.get_float32_matmul_precision(), "modules": "torch" in sys.modules}

before = state()
spec = importlib.util.spec_from_file_location("stage", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps({"before": before, "after": state()}))
"""


@pytest.mark.parametrize("stage", sorted(p.name for p in (REPO / "stages").glob("*.py")))
def test_importing_a_stage_changes_nothing(stage, tmp_path):
    """No environment variable, torch setting or kernel choice moves when a stage is imported
    (in a fresh process, from a directory without params.yaml: nothing is read either)."""
    out = subprocess.run([sys.executable, "-c", SNAPSHOT, str(REPO / "stages" / stage)], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["after"] == result["before"]


def stage_module(name: str):
    """stages/<name>.py as a module (importing it does nothing, as tested above)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_stage", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_and_evaluate_run_in_process(tiny_params, synthetic_mirror, tmp_path, monkeypatch,
                                           deterministic_torch):
    import shutil

    import yaml

    from mnistpipe import paths
    from mnistpipe.pipeline import evaluate, train

    from conftest import tiny_params_raw

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_raw(synthetic_mirror[1])))
    shutil.copytree(synthetic_mirror[0], paths.RAW)
    stage_module("prepare").main()

    train.run(tiny_params)
    metrics = json.loads(Path(paths.TRAIN_METRICS).read_text())
    assert metrics["epochs"] == tiny_params.train.epochs and Path(paths.MODEL).is_file()
    evaluate.run(tiny_params)
    assert json.loads(Path(paths.EVAL_METRICS).read_text())["accuracy"] > 0.5  # bars at class-specific rows


def test_validate_stage_stops_on_bad_params(tmp_path, monkeypatch, capsys):
    """The validate stage is what stops a bad params.yaml before DVC deletes any output."""
    import yaml

    from mnistpipe import paths

    from conftest import repo_params_raw

    raw = repo_params_raw()
    raw["train"]["lr"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        stage_module("validate").main()
    assert exc.value.code == 2 and "train.lr" in capsys.readouterr().err
    assert not paths.PARAMS_VALID.exists()
