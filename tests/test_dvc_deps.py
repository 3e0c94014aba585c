"""dvc.yaml's code deps are each stage's whole import closure within the project: editing a
module a stage imports must rerun it, editing one it does not import must not."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from dvc_deps import DVC_YAML, import_closure, rewrite, stages

SRC = REPO / "src"


@pytest.mark.parametrize("stage", sorted(stages()))
def test_code_deps_are_the_stage_import_closure(stage):
    spec = stages()[stage]
    script = REPO / spec["cmd"].split()[-1]
    code_deps = {d for d in spec["deps"] if d.endswith(".py")}
    expected = import_closure(script)
    assert code_deps == expected, (
        f"dvc.yaml stage {stage!r}: missing {sorted(expected - code_deps)}, "
        f"not imported {sorted(code_deps - expected)}; its code deps should be:\n  - "
        + "\n  - ".join(sorted(expected)) + "\n(python tools/dvc_deps.py --write fixes it)")


def test_the_deps_tool_writes_what_the_test_expects():
    assert rewrite(DVC_YAML.read_text()) == DVC_YAML.read_text()


def test_closure_follows_relative_lazy_and_package_imports():
    closure = import_closure(REPO / "stages/train.py")
    # train.py imports .checkpoint at module level, which imports .models, which imports .params
    assert {"src/mnistpipe/checkpoint.py", "src/mnistpipe/models.py", "src/mnistpipe/params.py",
            "src/mnistpipe/__init__.py", "src/mnistpipe/data/__init__.py"} <= closure
    assert "src/mnistpipe/predict.py" not in closure
    # machine.machine_facts imports .numerics inside the function body
    assert "src/mnistpipe/numerics.py" in import_closure(SRC / "mnistpipe/machine.py")


def test_paths_module_and_dvc_yaml_name_the_same_files():
    """src/mnistpipe/paths.py is where the code takes its paths from; dvc.yaml spells them out."""
    from mnistpipe import paths

    in_code = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    named = {key: set() for key in ("deps", "outs", "metrics")}
    for spec in stages().values():
        for key, names in named.items():
            for entry in spec.get(key, []):
                name = entry if isinstance(entry, str) else next(iter(entry))
                if not name.endswith(".py"):
                    names.add(name)
    logs = {str(paths.TRAIN_LOG), str(paths.EVAL_LOG)}  # machine facts: outside DVC on purpose
    outputs = named["outs"] | named["metrics"]
    inside_an_output = {p for p in in_code if any(p.startswith(q + "/") for q in outputs)}
    assert set().union(*named.values()) == in_code - logs - inside_an_output
