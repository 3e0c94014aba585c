"""train: fit the model on the prepared training split (and once more per extra seed).

A killed run resumes from its checkpoint when `dvc repro` runs again. With
train.processes > 1 the stage restarts itself under torchrun, one process per rank
(DistributedDataParallel); rank 0 alone writes the outputs.
"""

from mnistpipe.numerics import pin_from_params

PARAMS = pin_from_params()  # first: the math libraries read their code paths as they load

import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from mnistpipe import paths  # noqa: E402
from mnistpipe.atomic import write_csv, write_json  # noqa: E402
from mnistpipe.calibration import fit_temperature  # noqa: E402
from mnistpipe.checkpoint import save_model  # noqa: E402
from mnistpipe.data.prepared import load_meta, load_split  # noqa: E402
from mnistpipe.device import choose_device, device_name, make_deterministic, peak_rss_mb  # noqa: E402
from mnistpipe.errors import UserError, exit_on_user_error  # noqa: E402
from mnistpipe.models import count_parameters, model_spec  # noqa: E402
from mnistpipe.numerics import BUDGET_ENV, machine_facts, share_of_cores  # noqa: E402
from mnistpipe.distributed import close_distributed, init_distributed, is_main, rank_and_world  # noqa: E402
from mnistpipe.train import Resume, data_digest, run_fingerprint, run_training  # noqa: E402


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


def train_and_calibrate(seed: int, model_path: Path, prepared: dict[str, Any], device) -> tuple:
    """Train with `seed` (resuming its checkpoint if a killed run left one), fit the
    calibration temperature on the validation split, save the model; (result, temperature)."""
    params = dataclasses.replace(PARAMS, seed=seed)
    meta, spec, val = prepared["meta"], prepared["spec"], prepared["val"]
    resume = Resume(paths.resume_checkpoint(None if seed == PARAMS.seed else seed),
                    run_fingerprint(params, spec, prepared["data_sha"], device))
    result = run_training(params, spec, meta, prepared["train"], val, device, resume)
    if not is_main():  # rank 0 alone calibrates and writes
        return result, None
    temperature = fit_temperature(result.val_logits, val.labels)  # the last epoch's validation
    save_model(model_path, result.model, spec, meta.mean, meta.std, temperature)
    resume.path.unlink(missing_ok=True)  # finished: a later run must start fresh
    return result, temperature


@exit_on_user_error
def main() -> None:
    t0 = time.perf_counter()
    device = choose_device(PARAMS.train.device)
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        device = init_distributed(device)
    elif PARAMS.train.processes > 1:
        relaunch_under_torchrun(PARAMS.train.processes, device)  # does not return
    make_deterministic(device, PARAMS.train.tf32)
    meta = load_meta(paths.PREPARED)
    prepared = {"meta": meta, **{name: load_split(paths.PREPARED, name) for name in ("train", "val")},
                "spec": model_spec(PARAMS.model, meta.image_shape, meta.num_classes),
                "data_sha": data_digest(paths.prepared_files())}

    # The folder lists its seeds, so it is never empty (DVC warns about empty outputs).
    if is_main():
        write_json(paths.SEED_LIST, {"seeds": PARAMS.multiseed.seeds})
    for seed in PARAMS.multiseed.seeds:
        if is_main():
            print(f"extra seed {seed}:", file=sys.stderr)
        train_and_calibrate(seed, paths.seed_model(seed), prepared, device)

    result, temperature = train_and_calibrate(PARAMS.seed, paths.MODEL, prepared, device)
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
        **machine_facts(PARAMS.numerics),
        "resumed_after_epoch": result.resumed_from_epoch,
        "seconds_per_epoch": [round(s, 3) for s in result.seconds_per_epoch],
        "seconds_total": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })


if __name__ == "__main__":
    main()
