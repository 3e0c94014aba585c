"""GPU leases without a GPU: MNISTPIPE_FAKE_GPUS stands in for the device count. Processes that
lease take different devices without waiting; one more waits until a device is free; a killed
holder's lease is free at once."""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import sys

import pytest
import torch
from test_train import Killed, data, kill_after_checkpoint, params, state, train  # noqa: F401  (data is a fixture)

from mnistpipe import lease
from mnistpipe.errors import UserError

# Lease a device of MNISTPIPE_FAKE_GPUS, print its index, hold it until stdin closes.
HOLDER = """
import sys
from mnistpipe.lease import acquire, device_count, lease_dir
held = acquire(device_count(), lease_dir(), poll_s=0.02)
print(held.index, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lease_env(tmp_path, monkeypatch):
    monkeypatch.setenv(lease.LEASE_DIR_ENV, str(tmp_path / "leases"))
    monkeypatch.setenv(lease.FAKE_GPUS_ENV, "2")
    return {**os.environ}


def holder(env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def leased_index(proc: subprocess.Popen, timeout: float) -> int | None:
    """The index the holder printed, or None if it printed nothing within `timeout` seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return int(proc.stdout.readline()) if ready else None


def end(proc: subprocess.Popen) -> str:
    """Let the holder go (its lease with it); its stderr."""
    if proc.poll() is None:
        proc.stdin.close()
    proc.wait(timeout=30)
    return proc.stderr.read()


def test_two_holders_take_different_devices_a_third_waits_for_a_release(lease_env):
    """Acceptance (at the lease level): with a fake count of 2, two processes, as two queue workers,
    hold different devices and neither waits; a third waits until one of them ends."""
    procs = [holder(lease_env), holder(lease_env)]
    try:
        assert {leased_index(procs[0], 60), leased_index(procs[1], 60)} == {0, 1}
        procs.append(holder(lease_env))
        assert leased_index(procs[2], 2) is None and procs[2].poll() is None  # both busy: it waits
        second = end(procs[1])
        assert leased_index(procs[2], 60) is not None  # the released device
    finally:
        first, _, third = [end(proc) for proc in procs] + [""] * (3 - len(procs))
    assert "waiting" not in first + second and "waiting for one" in third


def test_a_killed_holders_lease_is_free_at_once(lease_env, tmp_path):
    proc = holder({**lease_env, lease.FAKE_GPUS_ENV: "1"})
    assert leased_index(proc, 60) == 0
    directory = lease.lease_dir()
    assert lease.try_acquire(0, directory) is None  # held
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    taken = lease.try_acquire(0, directory)
    assert taken is not None  # no cleanup ran, and the kernel let the lock go
    taken.release()
    assert lease.try_acquire(0, directory) is not None


def test_only_cuda_with_several_gpus_is_leased(lease_env, monkeypatch):
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", set_to.append)
    monkeypatch.setattr(lease, "_held", [])
    cpu = torch.device("cpu")
    assert lease.lease_device(cpu, log=lambda s: None) is cpu
    monkeypatch.setenv(lease.FAKE_GPUS_ENV, "1")
    assert lease.lease_device(torch.device("cuda"), log=lambda s: None) == torch.device("cuda")
    assert lease._held == []
    monkeypatch.setenv(lease.FAKE_GPUS_ENV, "2")
    try:
        # Two leases in one process conflict too: flock belongs to each open file.
        got = [lease.lease_device(torch.device("cuda"), log=lambda s: None) for _ in range(2)]
        assert got == [torch.device("cuda", 0), torch.device("cuda", 1)] and set_to == [0, 1]
    finally:
        for held in lease._held:
            held.release()


def test_a_bad_fake_count_and_a_foreign_lease_folder_are_refused(lease_env, monkeypatch, tmp_path):
    monkeypatch.setenv(lease.FAKE_GPUS_ENV, "two")
    with pytest.raises(UserError, match="MNISTPIPE_FAKE_GPUS"):
        lease.device_count()
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(UserError, match="another user"):
        lease.lease_dir()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_resumed_on_a_gpu_gives_the_uninterrupted_result(data, tmp_path, monkeypatch):  # noqa: F811
    """The checkpoint keeps the training GPU's RNG state (dropout's stream), which a run resumed
    on another leased GPU restores to its own; on one GPU: the uninterrupted result, bit for bit."""
    from mnistpipe.device import make_deterministic
    from mnistpipe.train import Resume

    from conftest import same_weights

    cuda = torch.device("cuda", torch.cuda.device_count() - 1)
    p = params(epochs=3, device="cuda", arch="cnn", schedule="onecycle", augment=True, lr=0.01)
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, cnn=dataclasses.replace(p.model.cnn, dropout=0.25)))
    resume = Resume(tmp_path / "resume.pt", "run-a")
    restore = make_deterministic(cuda)
    try:
        full = train(p, data, device=cuda)
        with monkeypatch.context() as m:
            kill_after_checkpoint(m, epoch=2)
            with pytest.raises(Killed):
                train(p, data, device=cuda, resume=resume)
        resumed = train(p, data, device=cuda, resume=resume)
    finally:
        restore()
    assert p.model.cnn.dropout > 0 and "cuda" in torch.load(resume.path, weights_only=True)["rng"]
    assert resumed.resumed_from_epoch == 2 and resumed.history == full.history
    assert same_weights(state(resumed.model), state(full.model))
