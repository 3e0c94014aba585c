"""A stage's outputs are replaced as one set or not at all, and every entry point ends an
environment error (full disk, permission denied, read-only filesystem, undecodable text) with
one line naming the file and a non-zero exit, never a traceback; bugs keep theirs."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnistpipe import paths
from mnistpipe.errors import ENVIRONMENT_EXIT, UserError, exit_on_user_error, naming

from conftest import REPO, tiny_project
from full_disk import FullDisk

EVALUATE_OUTPUTS = [paths.EVAL_METRICS, paths.EVAL_DETAIL, paths.PER_CLASS, paths.RELIABILITY, paths.SEEDS_METRICS,
                    paths.PREDICTIONS, paths.EVAL_LOG]  # the order evaluate writes them in


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A project directory after prepare, train and evaluate on the tiny synthetic dataset."""
    return tiny_project(tmp_path_factory.mktemp("run"), ("prepare", "train", "evaluate"))


@pytest.fixture
def previous_run(finished_run, tmp_path, monkeypatch):
    """A copy of the finished run whose metrics/, plots/ and logs/ files each end in one more
    newline, readable still, but not the bytes a rerun writes; the working directory is the copy."""
    project = shutil.copytree(finished_run[0], tmp_path / "project")
    for path in snapshot(project, ("metrics", "plots", "logs")):
        (project / path).write_bytes((project / path).read_bytes() + b"\n")
    monkeypatch.chdir(project)
    return project, finished_run[1]


def snapshot(root: Path, folders=("metrics", "plots", "logs", "data/prepared")) -> dict[str, bytes]:
    """Every file (temporaries included) in those folders, by path: its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for folder in folders
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


def fill_disk(monkeypatch, disk: FullDisk) -> None:
    monkeypatch.setattr(builtins, "open", disk)
    monkeypatch.setattr(io, "open", disk)  # what pathlib's write_bytes calls


def exit_code_on_full_disk(monkeypatch, stage, params, n: int) -> int:
    """Run `stage(params)` through the stage boundary with the disk full on the nth write."""
    fill_disk(monkeypatch, FullDisk(n))
    with pytest.raises(SystemExit) as exc:
        exit_on_user_error(stage)(params)
    monkeypatch.undo()
    return exc.value.code


@pytest.mark.parametrize("n", [1, 3, 5, 6])
def test_a_full_disk_during_evaluate_leaves_every_previous_file(previous_run, monkeypatch, capsys, n):
    """Acceptance: with the disk full on evaluate's nth write, every file in metrics/ and plots/
    (and logs/) is the previous run's, byte for byte; one line names the file; exit 3."""
    from mnistpipe.pipeline import evaluate

    project, params = previous_run
    before = snapshot(project)
    assert exit_code_on_full_disk(monkeypatch, evaluate.run, params, n) == ENVIRONMENT_EXIT
    assert snapshot(project) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: No space left on device: {EVALUATE_OUTPUTS[n - 1]}"


@pytest.mark.parametrize("n", [1, 2, 4])
def test_a_full_disk_during_prepare_leaves_the_previous_tensors(previous_run, monkeypatch, capsys, n):
    from mnistpipe.pipeline import prepare

    project, params = previous_run
    before = snapshot(project)
    assert exit_code_on_full_disk(monkeypatch, prepare.run, params, n) == ENVIRONMENT_EXIT
    assert snapshot(project) == before
    assert sorted(p.name for p in (project / "data").iterdir()) == ["prepared", "raw"]
    name = ["train.pt", "val.pt", "test.pt", "meta.json"][n - 1]
    assert capsys.readouterr().err.strip() == f"error: No space left on device: {paths.PREPARED / name}"


# The real stage script, in its own process, with open() failing on the nth write.
RUN_STAGE = """
import errno, runpy, sys
sys.path.insert(0, sys.argv[4])
from full_disk import FullDisk
FullDisk(int(sys.argv[2]), getattr(errno, sys.argv[3]), at_open=sys.argv[3] != "ENOSPC").install()
runpy.run_path(sys.argv[1], run_name="__main__")
"""
OUTPUT_FOLDERS = ("metrics", "plots", "logs", "data", "reports")


@pytest.mark.slow
@pytest.mark.parametrize("stage, n, code, blamed", [
    ("evaluate", 3, "ENOSPC", paths.PER_CLASS),
    ("evaluate", 6, "EACCES", paths.PREDICTIONS),
    ("evaluate", 1, "EROFS", paths.EVAL_METRICS),
    ("prepare", 3, "ENOSPC", paths.PREPARED / "test.pt"),
    ("report", 2, "ENOSPC", paths.REPORTS / "figures" / "class_counts.png"),
])
def test_a_stage_script_that_cannot_write_says_so_in_one_line(previous_run, stage, n, code, blamed):
    project, _ = previous_run
    before = snapshot(project, OUTPUT_FOLDERS), sorted(os.listdir(project))
    script = str(REPO / "stages" / f"{stage}.py")
    result = subprocess.run([sys.executable, "-c", RUN_STAGE, script, str(n), code, str(Path(__file__).parent)],
                            cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode == ENVIRONMENT_EXIT, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {os.strerror(getattr(errno, code))}: {blamed}"
    assert (snapshot(project, OUTPUT_FOLDERS), sorted(os.listdir(project))) == before


# ---------------------------------------------------------------- the boundary itself

def ends(exc: BaseException, capsys) -> tuple[int, str]:
    """How an entry point that raises `exc` ends: exit code, stderr."""
    def main():
        raise exc

    with pytest.raises(SystemExit) as code:
        exit_on_user_error(main)()
    return code.value.code, capsys.readouterr().err


@pytest.mark.parametrize("exc, line", [
    (OSError(errno.ENOSPC, "No space left on device", "metrics/eval.json"),
     "error: No space left on device: metrics/eval.json"),
    (PermissionError(errno.EACCES, "Permission denied", "models/model.pt"),
     "error: Permission denied: models/model.pt"),
    (OSError(errno.EROFS, "Read-only file system", b"plots/x.csv"), "error: Read-only file system: plots/x.csv"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), "error: Invalid cross-device link: a -> b"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "bad\nname"),
     "error: No such file or directory: bad name"),
    (ConnectionResetError("peer went away"), "error: peer went away"),
    (MemoryError(), "error: out of memory; use a smaller batch_size or free memory"),
])
def test_environment_errors_end_in_one_line_and_exit_3(exc, line, capsys):
    code, err = ends(exc, capsys)
    assert code == ENVIRONMENT_EXIT and err == line + "\n"


def test_an_undecodable_file_is_named(tmp_path, capsys):
    path = tmp_path / "predictions.csv"
    path.write_bytes(b"index\n\xff\n")

    def main():
        with naming(path):
            path.read_text(encoding="utf-8")

    with pytest.raises(SystemExit) as code:
        exit_on_user_error(main)()
    err = capsys.readouterr().err
    assert code.value.code == ENVIRONMENT_EXIT and err.startswith(f"error: {path}: not valid text (")
    assert len(err.splitlines()) == 1


def test_user_errors_and_interrupts_keep_their_codes(capsys):
    message = "params.yaml: train.lr must be > 0"
    assert ends(UserError(message), capsys) == (2, f"error: {message}\n")
    assert ends(KeyboardInterrupt(), capsys) == (130, "interrupted\n")
    assert ends(BrokenPipeError(errno.EPIPE, "Broken pipe"), capsys) == (141, "")


@pytest.mark.parametrize("bug", [AssertionError("invariant"), TypeError("bad call"), KeyError("k"),
                                 ValueError("bad value"), RuntimeError("torch says no")])
def test_bugs_keep_their_traceback(bug):
    def main():
        raise bug

    with pytest.raises(type(bug)):
        exit_on_user_error(main)()


def test_the_cli_names_the_file_it_cannot_read(tmp_path, monkeypatch, capsys):
    from mnistpipe import checkpoint, cli

    model = tmp_path / "model.pt"
    model.write_bytes(b"")

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(checkpoint, "load_model", refused)
    with pytest.raises(SystemExit) as code:
        cli.main(["info", "--model", str(model)])
    assert code.value.code == ENVIRONMENT_EXIT
    assert capsys.readouterr().err == f"error: Permission denied: {model}\n"


def test_the_cli_command_ends_an_unreadable_file_without_a_traceback(tmp_path):
    """The installed entry point, on a file the kernel refuses to read (EIO)."""
    result = subprocess.run([sys.executable, "-m", "mnistpipe.cli", "info", "--model", "/proc/self/mem"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == ENVIRONMENT_EXIT, result.stderr
    assert result.stderr == "error: Input/output error: /proc/self/mem\n"
