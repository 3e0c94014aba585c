"""The train stage: fit the model on the prepared training split (and once more per extra seed).

Every seed keeps its resume checkpoint until the stage has written all of its outputs, so
a killed run, when `dvc repro` runs again, resumes the seed it was training and trains no
finished seed again. The outputs (the models, metrics/train.json, plots/train.csv) are
written as one set at the end: a run that fails part-way, a diverged one included, leaves
the previous files. dvc.yaml keeps them (persist: true), so this stage itself removes the
models of seeds no longer listed. With train.processes > 1 the stage restarts itself under
torchrun, one process per rank (DistributedDataParallel); rank 0 alone writes the outputs. While
it trains, each epoch adds a row to logs/train_live.csv (mnistpipe.live), outside the outputs;
on a machine with several GPUs a single-process run leases one of its own (mnistpipe.lease).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .. import paths
from ..atomic import OutputSet, output_set, write_json
from ..calibration import fit_temperature
from ..checkpoint import model_file
from ..data.prepared import Meta, Split, load_meta, load_split
from ..device import choose_device, device_name, make_deterministic, peak_rss_mb
from ..distributed import close_distributed, init_distributed, is_main, rank_and_world
from ..errors import UserError
from ..lease import lease_device
from ..live import LiveLog
from ..machine import machine_facts, share_of_cores
from ..models import ModelSpec, count_parameters, model_spec
from ..numerics import BUDGET_ENV
from ..params import Params
from ..train import Resume, TrainResult, data_digest, run_fingerprint, run_training


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


def train_and_calibrate(params: Params, seed: int, prepared: Prepared, device,
                        live: LiveLog | None = None) -> tuple[TrainResult, dict | None]:
    """Train with `seed` (resuming its checkpoint if a killed run left one), each epoch's row
    into `live`, and fit the calibration temperature on the validation split; (result, the
    model file's content), the content None in ranks other than 0. The checkpoint stays until
    the stage is done."""
    meta, spec, val = prepared.meta, prepared.spec, prepared.val
    seeded = dataclasses.replace(params, seed=seed)
    resume = Resume(paths.resume_checkpoint(None if seed == params.seed else seed),
                    run_fingerprint(seeded, spec, prepared.data_sha, device))
    on_epoch = (lambda record, seconds: None) if live is None else live.for_seed(seed)
    result = run_training(seeded, spec, meta, prepared.train, val, device, resume, on_epoch)
    if not is_main():  # rank 0 alone calibrates and writes
        return result, None
    temperature = fit_temperature(result.val_logits, val.labels)  # the last epoch's validation
    return result, model_file(result.model, spec, meta.mean, meta.std, temperature)


def write_main_outputs(out: OutputSet, result: TrainResult, model: dict) -> None:
    """The main seed's model, its final epoch's metrics and its per-epoch curves, into `out`."""
    out.save_torch(paths.MODEL, model)
    last = asdict(result.history[-1])  # the final epoch's record, its number as "epochs"
    out.write_json(paths.TRAIN_METRICS, {"epochs": last.pop("epoch"), **last, "temperature": model["temperature"],
                                         "parameters": count_parameters(result.model)})
    out.write_csv(paths.HISTORY, [asdict(r) for r in result.history])


def tidy_up(params: Params) -> None:
    """After the outputs are in place: remove whatever in models/seeds is not this run's (a seed
    no longer listed, a killed writer's temporary), so evaluate sees exactly these seeds; then
    every seed's resume checkpoint, so a later run starts fresh."""
    keep = {paths.SEED_LIST, *(paths.seed_model(seed) for seed in params.multiseed.seeds)}
    for entry in paths.SEED_MODELS.iterdir():
        if entry not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for seed in [*params.multiseed.seeds, None]:
        paths.resume_checkpoint(seed).unlink(missing_ok=True)


def start(params: Params) -> torch.device:
    """The training device, under torchrun when train.processes > 1, with deterministic settings."""
    device = choose_device(params.train.device)
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        device = init_distributed(device)
    elif params.train.processes > 1:
        relaunch_under_torchrun(params.train.processes, device)  # does not return
    else:  # several GPUs: a leased one of its own, so that queued runs in parallel do not share
        device = lease_device(device)
    make_deterministic(device, params.train.tf32)
    return device


def run(params: Params) -> None:
    """The train stage: each extra seed, then the main one; models, metrics, curves and machine facts."""
    t0 = time.perf_counter()
    device = start(params)
    meta = load_meta(paths.PREPARED)
    prepared = Prepared(meta, load_split(paths.PREPARED, "train"), load_split(paths.PREPARED, "val"),
                        model_spec(params.model, meta.image_shape, meta.num_classes),
                        data_digest(paths.prepared_files()))
    live = LiveLog().start() if is_main() else None  # rows to watch while training runs
    with output_set() as out:  # rank 0 alone writes into it
        if is_main():  # the folder lists its seeds, so it is never empty (DVC warns about empty outputs)
            out.write_json(paths.SEED_LIST, {"seeds": params.multiseed.seeds})
        for seed in params.multiseed.seeds:
            if is_main():
                print(f"extra seed {seed}:", file=sys.stderr)
            model = train_and_calibrate(params, seed, prepared, device, live)[1]
            if model is not None:
                out.save_torch(paths.seed_model(seed), model)
        result, model = train_and_calibrate(params, params.seed, prepared, device, live)
        if model is not None:
            write_main_outputs(out, result, model)
    rank, processes = rank_and_world()
    close_distributed()
    if rank > 0:
        return
    tidy_up(params)
    # Facts that differ between machines or runs: read by people, not by DVC or git.
    write_json(paths.TRAIN_LOG, {
        "device": device.type, "device_name": device_name(device), "processes": processes,
        **machine_facts(params.numerics),
        "resumed_after_epoch": result.resumed_from_epoch,
        "seconds_per_epoch": [round(s, 3) for s in result.seconds_per_epoch],
        "seconds_total": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })
