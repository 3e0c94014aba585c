"""dvc.yaml's code deps: each stage's whole import closure within the project.

    python tools/dvc_deps.py          # say which stages' code deps are out of step
    python tools/dvc_deps.py --write  # rewrite them in dvc.yaml (other lines untouched)

Editing a module a stage imports must rerun that stage, so its file must be a dep;
tests/test_dvc_deps.py fails when one is missing or extra.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DVC_YAML = REPO / "dvc.yaml"


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
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def expected_code_deps(stage: dict) -> list[str]:
    """The stage's script first, then the library files it loads, sorted."""
    script = stage["cmd"].split()[-1]
    return [script] + sorted(import_closure(REPO / script) - {script})


def rewrite(text: str) -> str:
    """dvc.yaml with each stage's .py deps replaced by its import closure, in place."""
    for name, stage in stages().items():
        block = re.search(rf"^  {re.escape(name)}:\n(?:(?:    .*|)\n)*?    deps:\n((?:      - .*\n)+)", text, re.M)
        entries = block.group(1).splitlines(keepends=True)
        code = [i for i, line in enumerate(entries) if line.strip().endswith(".py")]
        new = [f"      - {dep}\n" for dep in expected_code_deps(stage)]
        entries = entries[:code[0]] + new + [e for i, e in enumerate(entries) if i > code[0] and i not in code]
        text = text[:block.start(1)] + "".join(entries) + text[block.end(1):]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    args = parser.parse_args()
    text = DVC_YAML.read_text()
    new = rewrite(text)
    if args.write:
        DVC_YAML.write_text(new)
    elif new != text:
        sys.exit("dvc.yaml's code deps are out of step with the stages' imports; run: python tools/dvc_deps.py --write")
    print("dvc.yaml's code deps are each stage's import closure")


if __name__ == "__main__":
    main()
