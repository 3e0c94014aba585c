"""The code keeps a shape a newcomer reads in one sitting: short functions, and no imports
that must come after code (a sign of work done at import time)."""

from __future__ import annotations

import ast

import pytest

from conftest import REPO

MAX_FUNCTION_LINES = 40
FOLDERS = ("src", "stages", "benchmarks", "tools")


def python_files():
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_functions_are_short(path):
    tree = ast.parse(path.read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, from line {node.lineno})"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(REPO)}: over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_import_waits_for_code(path):
    assert "noqa: E402" not in path.read_text(), f"{path.relative_to(REPO)}: an import placed after code"
