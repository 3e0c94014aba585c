"""The train stage: fit the model on the prepared training split (and once more per extra seed).

A killed run resumes from its checkpoint when `dvc repro` runs again. With
train.processes > 1 the stage restarts itself under torchrun, one process per rank
(DistributedDataParallel); rank 0 alone writes the outputs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import paths
from ..atomic import write_csv, write_json
from ..calibration import fit_temperature
from ..checkpoint import save_model
from ..data.prepared import Meta, Split, load_meta, load_split
from ..device import choose_device, device_name, make_deterministic, peak_rss_mb
from ..distributed import close_distributed, init_distributed, is_main, rank_and_world
from ..errors import UserError
from ..machine import machine_facts, share_of_cores
from ..models import ModelSpec, count_parameters, model_spec
from ..numerics import BUDGET_ENV
from ..params import Params
from ..train import Resume, data_digest, run_fingerprint, run_training


def relaunch_under_torchrun(processes: int, device) -> None:
    """Become `torchrun --standalone --nproc-per-node N stages/train.py`, so dvc.yaml's command
    stays `python stages/train.py`. Each process gets an even share of the cores unless
    MNISTPIPE_THREADS says otherwise (2 cores, 2 processes: 1 thread each)."""
    if device.type == "mps":
        raise UserError("params.yaml: train.processes: several processes need CUDA GPUs or the CPU, "
                        "not mps; set train.processes: 1 or train.device: cpu")
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise UserError(f"params.yaml: train.processes: {processes} processes need as many GPUs, and this "
                        f"machine has {torch.cuda.device_count()}; lower train.processes")
    os.environ.setdefault(BUDGET_ENV, str(share_of_cores(processes)))
    print(f"train.processes is {processes}: restarting under torchrun", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc-per-node={processes}", *sys.argv])


@dataclass(frozen=True)
class Prepared:
    """What every seed trains on: the prepared splits, the model's spec and the data's digest."""
    meta: Meta
    train: Split
    val: Split
    spec: ModelSpec
    data_sha: str


def train_and_calibrate(params: Params, seed: int, model_path: Path, prepared: Prepared, device) -> tuple:
    """Train with `seed` (resuming its checkpoint if a killed run left one), fit the
    calibration temperature on the validation split, save the model; (result, temperature)."""
    meta, spec, val = prepared.meta, prepared.spec, prepared.val
    seeded = dataclasses.replace(params, seed=seed)
    resume = Resume(paths.resume_checkpoint(None if seed == params.seed else seed),
                    run_fingerprint(seeded, spec, prepared.data_sha, device))
    result = run_training(seeded, spec, meta, prepared.train, val, device, resume)
    if not is_main():  # rank 0 alone calibrates and writes
        return result, None
    temperature = fit_temperature(result.val_logits, val.labels)  # the last epoch's validation
    save_model(model_path, result.model, spec, meta.mean, meta.std, temperature)
    resume.path.unlink(missing_ok=True)  # finished: a later run must start fresh
    return result, temperature


def run(params: Params) -> None:
    """The train stage: each extra seed, then the main one; metrics, curves and machine facts."""
    t0 = time.perf_counter()
    device = choose_device(params.train.device)
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        device = init_distributed(device)
    elif params.train.processes > 1:
        relaunch_under_torchrun(params.train.processes, device)  # does not return
    make_deterministic(device, params.train.tf32)
    meta = load_meta(paths.PREPARED)
    prepared = Prepared(meta, load_split(paths.PREPARED, "train"), load_split(paths.PREPARED, "val"),
                        model_spec(params.model, meta.image_shape, meta.num_classes),
                        data_digest(paths.prepared_files()))

    # The folder lists its seeds, so it is never empty (DVC warns about empty outputs).
    if is_main():
        write_json(paths.SEED_LIST, {"seeds": params.multiseed.seeds})
    for seed in params.multiseed.seeds:
        if is_main():
            print(f"extra seed {seed}:", file=sys.stderr)
        train_and_calibrate(params, seed, paths.seed_model(seed), prepared, device)

    result, temperature = train_and_calibrate(params, params.seed, paths.MODEL, prepared, device)
    rank, processes = rank_and_world()
    close_distributed()
    if rank > 0:
        return
    last = asdict(result.history[-1])  # the final epoch's record, its number as "epochs"
    write_json(paths.TRAIN_METRICS, {"epochs": last.pop("epoch"), **last, "temperature": temperature,
                                     "parameters": count_parameters(result.model)})
    write_csv(paths.HISTORY, [asdict(r) for r in result.history])
    # Facts that differ between machines or runs: read by people, not by DVC or git.
    write_json(paths.TRAIN_LOG, {
        "device": device.type, "device_name": device_name(device), "processes": processes,
        **machine_facts(params.numerics),
        "resumed_after_epoch": result.resumed_from_epoch,
        "seconds_per_epoch": [round(s, 3) for s in result.seconds_per_epoch],
        "seconds_total": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })
