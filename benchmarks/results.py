"""What benchmarks share: workers in processes of their own, and benchmarks/RESULTS.md, where
each benchmark adds its rows under its own marker and table header.

A worker is a benchmark's `worker(**job)` function, run by this file in a fresh process that
pins its numerics mode first, as the stages do, so that the script may import torch at the top.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from mnistpipe.atomic import write_text
from mnistpipe.machine import cpu_model, vector_unit
from mnistpipe.numerics import pin

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = RESULTS.parents[1]


def machine() -> str:
    """How rows name the machine: the CPU's model name, its widest vector unit and its core count."""
    vectors = f" ({vector_unit()})" if vector_unit() else ""
    return f"{cpu_model()[0] or platform.machine()}{vectors}, {os.cpu_count()} cores"


def run_worker(script: str, numerics: str, show_stderr: bool = False, **job) -> dict:
    """`script`'s `worker(**job)` in a process of its own, from the project root, with `numerics`
    pinned before torch loads (the libraries read their settings then); its result, a JSON dict."""
    out = subprocess.run([sys.executable, __file__, script, numerics, json.dumps(job)], text=True, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=None if show_stderr else subprocess.PIPE)
    if out.returncode:
        sys.exit(f"{Path(script).name}: worker({job}) failed:\n{out.stderr or ''}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _work(script: str, numerics: str, job: str) -> None:
    pin(numerics)
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    print(json.dumps(module.worker(**json.loads(job))))


def add_row(marker: str, header: str, row: str, section: str) -> None:
    """Put `row` first in the table that follows `marker` and `header`. Without the marker,
    `section` (a heading and its text) starts a new section at the end; without the header
    (an older table), it goes in above the rows. Written whole, then replaced."""
    marker = f"<!-- {marker} -->\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if marker not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{marker}"
    if marker + header not in text:
        text = text.replace(marker, marker + header)
    write_text(RESULTS, text.replace(marker + header, marker + header + row))


if __name__ == "__main__":
    _work(*sys.argv[1:])
