"""Data-parallel training (train.processes > 1): the train stage restarts itself under torchrun
and trains with DistributedDataParallel (gloo on the CPU), on tiny synthetic data.

The stage runs in subprocesses, in a copy of the project: torchrun's workers are processes
of their own, and portable numerics must be pinned before torch loads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from test_train import data, params, train  # noqa: F401  (data is a fixture)

from mnistpipe.distributed import is_main, rank_and_world, shard
from mnistpipe.errors import UserError
from mnistpipe.machine import share_of_cores
from mnistpipe.numerics import BUDGET_ENV, THREADS
from mnistpipe.train import make_augment

from conftest import REPO, tiny_params_raw, write_dataset, write_synthetic_mirror
from dvc_helpers import kill_after_first_checkpoint, weights

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

# 501 training rows in batches of 5: with 2 processes every batch splits 3 + 2 rows, and the
# last batch (1 row) leaves rank 1 nothing, so the uneven cases run on every test.
TINY = {"prepare": {"val_size": 99}, "train": {"epochs": 4, "batch_size": 5}}
# Dropout, augmentation and BatchNorm: what each rank draws and normalizes on its own.
CNN = {"model": {"arch": "cnn", "cnn": {"channels": [4, 8], "fc": 16, "dropout": 0.25}},
       "train": {"schedule": "onecycle", "lr": 0.01, "augment": {"enabled": True}}}
# SHA-256 of the weights (see `digest`) that the single-process stage writes with TINY's params:
# portable numerics, torch 2.14.1, an AVX2 x86-64 CPU. Recorded before data parallelism existed
# (e570b996...), and again when the last batch's single row moved onto the products' chain
# kernel (numerics.py; it had gone to oneDNN's sgemm), which changed these weights.
SINGLE_PROCESS_DIGEST = "39f1909bdd85db796408b30db79fc13209d2e692221a723f4cc1f4c239b0cde1"
OUTPUTS = ["models/model.pt", "models/seeds/seeds.json", "metrics/train.json", "plots/train.csv",
           "logs/train.json"]


# --- in-process: the pieces ---------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_split_every_batch_once_in_rank_order(world):
    for n in range(0, 23):
        shares = [shard(n, rank, world) for rank in range(world)]
        assert [i for s in shares for i in range(n)[s]] == list(range(n))
        sizes = [s.stop - s.start for s in shares]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1


def test_a_plain_process_is_rank_0_of_1():
    assert not dist.is_initialized()
    assert rank_and_world() == (0, 1) and is_main()


def test_augmenting_a_share_transforms_its_rows_as_the_whole_batch_would():
    """Every rank draws the whole global batch's augmentation, so its generator stays in step
    with the other ranks' and each row gets the transform a single process would give it."""
    p = params(augment=True)
    x = torch.randn(7, 1, 28, 28)
    whole_gen, share_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    whole = make_augment(p.train.augment, 0.0, whole_gen)(x)
    rows = shard(7, 1, 2)
    share = make_augment(p.train.augment, 0.0, share_gen)(x[rows], rows, 7)
    assert torch.allclose(share, whole[rows], atol=1e-6)
    assert torch.equal(share_gen.get_state(), whole_gen.get_state())

    # Rank 1's share of a 1-row last batch is empty: nothing to transform, the same draws.
    one_gen, none_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    make_augment(p.train.augment, 0.0, one_gen)(x[:1])
    nothing = shard(1, 1, 2)
    assert make_augment(p.train.augment, 0.0, none_gen)(x[:1][nothing], nothing, 1).shape == (0, 1, 28, 28)
    assert torch.equal(none_gen.get_state(), one_gen.get_state())


def test_processes_must_match_the_processes_running(data):  # noqa: F811
    with pytest.raises(UserError, match=r"train.processes is 2, but 1 process\(es\) are running"):
        train(params(epochs=1, processes=2), data)


# --- the train stage, in subprocesses -----------------------------------------------------------

def digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key, tensor in state_dict.items():
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def metrics(repo: Path) -> dict:
    return yaml.safe_load((repo / "metrics/train.json").read_text())


def log(repo: Path) -> dict:
    return yaml.safe_load((repo / "logs/train.json").read_text())


# Records, in every process of a run, each file that an atomic write puts in place (os.replace)
# and the torchrun rank that put it there ("-": not started by torchrun).
WRITE_RECORDER = '''
import os
_replace = os.replace
def _recording_replace(src, dst, *args, **kwargs):
    with open(os.environ["WRITES_LOG"], "a") as f:
        f.write(f"{os.environ.get('RANK', '-')} {os.fspath(dst)}\\n")
    return _replace(src, dst, *args, **kwargs)
os.replace = _recording_replace
'''


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A copy of the project with the synthetic dataset fetched and prepared; its environment."""
    base = tmp_path_factory.mktemp("distributed")
    repo = base / "repo"
    for name in ("stages", "src"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_dataset(repo, write_synthetic_mirror(base / "mirror"))
    raw = tiny_params_raw()
    merge(raw, TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (base / "hook").mkdir()
    (base / "hook/sitecustomize.py").write_text(WRITE_RECORDER)
    env = {k: v for k, v in os.environ.items() if k not in (BUDGET_ENV, "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    # PYTHONPATH: the copy's own package (not the editable install), and the write recorder.
    env.update(MNISTPIPE_MIRROR=str(base / "mirror"), PYTHONPATH=f"{base / 'hook'}{os.pathsep}{repo / 'src'}",
               WRITES_LOG=str(base / "unused.log"))
    for stage in ("fetch", "prepare"):
        subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def copy_with(prepared, dest: Path, processes: int, changes: dict | None = None, **train) -> tuple[Path, dict]:
    """A copy of the prepared project with train.processes, train.<key> from `train`, and any
    other `changes` (nested, like params.yaml) set; its env logs writes to dest/writes.log."""
    repo, env = prepared
    shutil.copytree(repo, dest)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    merge(raw, changes or {})
    raw["train"].update(train, processes=processes)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest, {**env, "WRITES_LOG": str(dest / "writes.log")}


def merge(raw: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict):
            merge(raw[key], value)
        else:
            raw[key] = value


def run_stage(repo: Path, env: dict, *launcher: str) -> subprocess.CompletedProcess:
    """`python stages/train.py` (or `python <launcher...> stages/train.py`); must succeed."""
    result = subprocess.run([sys.executable, *launcher, "stages/train.py"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def writes(repo: Path) -> list[tuple[str, str]]:
    """(rank, path relative to repo) of each file put in place inside `repo`."""
    out = []
    for line in (repo / "writes.log").read_text().splitlines():
        rank, path = line.split(" ", 1)
        path = Path(path) if Path(path).is_absolute() else repo / path
        if path.resolve().is_relative_to(repo.resolve()):
            out.append((rank, path.resolve().relative_to(repo.resolve()).as_posix()))
    return out


@pytest.fixture(scope="module")
def one_process(prepared, tmp_path_factory):
    repo, env = copy_with(prepared, tmp_path_factory.mktemp("one") / "repo", processes=1)
    return repo, run_stage(repo, env)


@pytest.fixture(scope="module")
def two_processes(prepared, tmp_path_factory):
    repo, env = copy_with(prepared, tmp_path_factory.mktemp("two") / "repo", processes=2)
    return repo, run_stage(repo, env)


@pytest.mark.slow
def test_two_processes_write_once_and_train_like_one(one_process, two_processes):
    one, _ = one_process
    two, result = two_processes
    facts = log(two)
    assert facts["processes"] == 2
    assert facts["threads"] == min(THREADS, share_of_cores(2)), "each process takes its share of the cores"

    # Rank 0 alone writes: each output once, the resume checkpoint after every epoch (removed at the end).
    recorded = writes(two)
    assert {rank for rank, _ in recorded} == {"0"}, recorded
    assert sorted(path for _, path in recorded) == sorted(OUTPUTS + ["models/resume.pt"] * 4)
    assert not (two / "models/resume.pt").exists()
    for epoch in range(1, 5):
        assert result.stderr.count(f"epoch   {epoch}/4 ") == 1, result.stderr

    # The same optimization as one process with the same global batch, up to rounding.
    m_one, m_two = metrics(one), metrics(two)
    assert m_two["train_loss"] == pytest.approx(m_one["train_loss"], rel=0.01)
    assert m_two["val_acc"] == pytest.approx(m_one["val_acc"], abs=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_killed_two_process_run_resumes_to_the_uninterrupted_result(prepared, two_processes, tmp_path, arch):
    if arch == "mlp":
        reference, _ = two_processes
    else:  # each rank's own dropout stream must come back from the checkpoint too
        reference, env = copy_with(prepared, tmp_path / "reference", processes=2, changes=CNN)
        run_stage(reference, env)
    repo, env = copy_with(prepared, tmp_path / "repo", processes=2, changes=CNN if arch == "cnn" else None)
    # The stage's process group is killed, as a killed `dvc repro`'s would be.
    resume = kill_after_first_checkpoint(repo, env, [sys.executable, "stages/train.py"], timeout=300, poll=0.005)

    # torchrun's workers run in sessions of their own; they must die with it, not train on.
    time.sleep(1.0)
    if Path("/proc").is_dir():
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _cwd(pid) == repo.resolve()]
    assert not (repo / "models/model.pt").exists()

    rerun = run_stage(repo, env)
    assert "resuming from models/resume.pt after epoch" in rerun.stderr
    assert log(repo)["resumed_after_epoch"] >= 1 and not resume.exists()
    assert digest(weights(repo)) == digest(weights(reference))
    assert (repo / "plots/train.csv").read_bytes() == (reference / "plots/train.csv").read_bytes()
    assert metrics(repo) == metrics(reference)


def _cwd(pid: str) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None


@pytest.mark.slow
def test_single_process_weights_are_those_of_before_data_parallelism(one_process):
    repo, result = one_process
    facts = log(repo)
    assert facts["processes"] == 1 and "torch.distributed" not in result.stderr
    if not (torch.__version__.startswith("2.14.") and facts["aten_cpu_capability"] == "AVX2"
            and facts["numerics"] == "portable"):
        pytest.skip("the pinned digest was recorded with torch 2.14 on AVX2 kernels")
    assert digest(weights(repo)) == SINGLE_PROCESS_DIGEST


@pytest.mark.slow
def test_torchrun_with_one_process_gives_the_plain_run_bytes(prepared, one_process, tmp_path):
    """One process under torchrun joins a process group of 1 and trains exactly as the plain run."""
    repo, env = copy_with(prepared, tmp_path / "repo", processes=1)
    run_stage(repo, env, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1")
    plain, _ = one_process
    assert digest(weights(repo)) == digest(weights(plain))
    assert (repo / "metrics/train.json").read_bytes() == (plain / "metrics/train.json").read_bytes()


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torchrun_with_one_gpu_process_matches_the_plain_cuda_run(prepared, tmp_path):
    plain, env = copy_with(prepared, tmp_path / "plain", processes=1, device="cuda")
    run_stage(plain, env)
    under, env = copy_with(prepared, tmp_path / "torchrun", processes=1, device="cuda")
    run_stage(under, env, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1")
    assert log(under)["device"] == "cuda"
    assert digest(weights(under)) == digest(weights(plain))
