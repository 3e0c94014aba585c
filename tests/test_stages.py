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

    from conftest import tiny_params_raw, write_dataset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_raw()))
    write_dataset(tmp_path, synthetic_mirror[1])
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


LAUGHS = ('lol0: &lol0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
          + "".join(f"lol{i}: &lol{i} [{','.join([f'*lol{i - 1}'] * 9)}]\n" for i in range(1, 9)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit via setrlimit")
@pytest.mark.parametrize("hostile, fragment", [
    (LAUGHS, "alias"),  # "billion laughs": 9**9 strings from 1 KB, once expanded
    ("deep: " + "[" * 20000 + "]" * 20000 + "\n", "nest"),
])
def test_validate_stage_refuses_hostile_yaml_within_bounds(tmp_path, hostile, fragment):
    """The real entry script, capped at 300 MB of address space and 60 s: one line, exit 2,
    and no params_valid marker. (By hand it takes about 0.1 s and 20 MB.)"""
    import resource

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (300 << 20, 300 << 20))

    (tmp_path / "params.yaml").write_text(hostile + (REPO / "params.yaml").read_text())
    result = subprocess.run([sys.executable, str(REPO / "stages" / "validate.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, preexec_fn=cap_memory)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: params.yaml"), result.stderr
    assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
