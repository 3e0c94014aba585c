"""benchmarks/RESULTS.md: each benchmark adds its rows under its own marker and table header."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from mnistpipe.atomic import write_text
from mnistpipe.numerics import cpu_model

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = RESULTS.parents[1]


def machine() -> str:
    """How rows name the machine: the CPU's model name and its core count."""
    return f"{cpu_model()[0] or platform.machine()}, {os.cpu_count()} cores"


def run_worker(script: str, *args: str, show_stderr: bool = False) -> dict:
    """`python script --worker *args` from the project root, in a process of its own (the
    libraries read their numerics settings when torch loads); its last output line, as JSON."""
    out = subprocess.run([sys.executable, script, "--worker", *args], text=True, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=None if show_stderr else subprocess.PIPE)
    if out.returncode:
        sys.exit(f"{Path(script).name} --worker {' '.join(args)} failed:\n{out.stderr or ''}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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
