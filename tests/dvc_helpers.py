"""Helpers for tests that run the real pipeline under git + DVC in a temporary repository."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from conftest import REPO, tiny_params_raw, write_dataset, write_synthetic_mirror

GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
PROJECT_FILES = ["stages", "src", "tools", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config"]


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(repo: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo, env, check)


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w@.-]+)'", output)


def set_param(repo: Path, section: str, key: str, value, rename: str | None = None) -> None:
    """params.yaml's section.key = value; with `rename`, move the key to that name instead."""
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    if rename:
        raw[section][rename] = raw[section].pop(key)
    else:
        raw[section][key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def make_repo(base: Path, **overrides: dict) -> tuple[Path, dict]:
    """A git+DVC copy of this project on synthetic data (nothing run yet).

    `overrides` maps a params section to the keys to change, e.g. train={"epochs": 2}.
    """
    mirror = base / "mirror"
    checksums = write_synthetic_mirror(mirror)
    repo = base / "repo"
    repo.mkdir()
    for name in PROJECT_FILES:
        src, dst = REPO / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dst)
    raw = tiny_params_raw()
    for section, values in overrides.items():
        raw[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_dataset(repo, checksums)
    # PYTHONPATH: stages import the repo's copy of the package, not the editable install's
    # live source, which may change while a test runs.
    env = {**os.environ, **GIT_ENV, "MNISTPIPE_MIRROR": str(mirror), "PYTHONPATH": str(repo / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run(["git", "init", "-q", "-b", "main"], repo, env)
    dvc(repo, env, "init", "-q", "--force")
    shutil.copy(REPO / ".dvc/config", repo / ".dvc/config")
    return repo, env


def commit_all(repo: Path, env: dict, message: str) -> None:
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", message], repo, env)


def copy_repo(repo: Path, dest: Path) -> Path:
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def weights(repo: Path) -> dict[str, torch.Tensor]:
    """The trained model's state dict in `repo`."""
    return torch.load(repo / "models/model.pt", weights_only=True)["state_dict"]


def start_in_own_session(cmd: list[str], repo: Path, env: dict) -> subprocess.Popen:
    """`cmd` in `repo`, silent, as the leader of a process group that `kill` ends whole."""
    return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything in its group (dvc and the stage it runs; a stage and
    torchrun): nothing gets to clean up."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def kill_after_first_checkpoint(repo: Path, env: dict, cmd: list[str], timeout: float = 120,
                                poll: float = 0.02) -> Path:
    """Run `cmd`, SIGKILL it as soon as training has written a resume checkpoint; its path."""
    proc = start_in_own_session(cmd, repo, env)
    resume = repo / "models/resume.pt"
    deadline = time.monotonic() + timeout
    while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(poll)
    assert resume.exists(), "training finished or failed before writing a resume checkpoint"
    kill(proc)
    return resume
