"""dvc.yaml's code deps are each stage's whole import closure within the project: editing a
module a stage imports must rerun it, editing one it does not import must not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """src/ file of a project module (package or plain), or None if it is not ours."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts if parts[-1] == "__init__" else parts[:-1])


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement anywhere in `path` names (function bodies too),
    with `from pkg import name` counted as pkg.name where that is a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative to this file's package
                anchor = package_of(path).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_closure(script: Path) -> set[str]:
    """Project files `script` loads: its imports, theirs, and every enclosing __init__.py."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                found = module_file(".".join(parts[:i]))
                if found is not None:
                    todo.append(found)
    return {p.relative_to(REPO).as_posix() for p in seen}


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(stages()))
def test_code_deps_are_the_stage_import_closure(stage):
    spec = stages()[stage]
    script = REPO / spec["cmd"].split()[-1]
    code_deps = {d for d in spec["deps"] if d.endswith(".py")}
    expected = import_closure(script)
    assert code_deps == expected, (
        f"dvc.yaml stage {stage!r}: missing {sorted(expected - code_deps)}, "
        f"not imported {sorted(code_deps - expected)}; its code deps should be:\n  - "
        + "\n  - ".join(sorted(expected)))


def test_closure_follows_relative_lazy_and_package_imports():
    closure = import_closure(REPO / "stages/train.py")
    # train.py imports .checkpoint at module level, which imports .models, which imports .params
    assert {"src/mnistpipe/checkpoint.py", "src/mnistpipe/models.py", "src/mnistpipe/params.py",
            "src/mnistpipe/__init__.py", "src/mnistpipe/data/__init__.py"} <= closure
    assert "src/mnistpipe/predict.py" not in closure
    # numerics.pin_from_params imports .errors inside the function body
    assert "src/mnistpipe/errors.py" in import_closure(SRC / "mnistpipe/numerics.py")


def test_paths_module_and_dvc_yaml_name_the_same_files():
    """src/mnistpipe/paths.py is where the code takes its paths from; dvc.yaml spells them out."""
    from mnistpipe import paths

    in_code = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    in_dvc = set()
    for spec in stages().values():
        for key in ("deps", "outs", "metrics"):
            for entry in spec.get(key, []):
                name = entry if isinstance(entry, str) else next(iter(entry))
                if not name.endswith(".py"):
                    in_dvc.add(name)
    logs = {str(paths.TRAIN_LOG), str(paths.EVAL_LOG)}  # machine facts: outside DVC on purpose
    inside_an_output = {p for p in in_code if any(p.startswith(q + "/") for q in in_code)}
    assert in_dvc == in_code - logs - inside_an_output
