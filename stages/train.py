"""train: fit the model on the prepared training split; resume if a matching checkpoint exists."""

import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mnistpipe.atomic import write_csv, write_json
from mnistpipe.checkpoint import save_model
from mnistpipe.data.prepared import load_meta, load_split
from mnistpipe.device import choose_device, device_name
from mnistpipe.errors import exit_on_user_error
from mnistpipe.models import count_parameters, model_spec
from mnistpipe.params import load_params
from mnistpipe.train import fingerprint, run_training

PREPARED = Path("data/prepared")
MODEL, RESUME = Path("models/model.pt"), Path("models/resume.pt")


@exit_on_user_error
def main() -> None:
    t0 = time.perf_counter()
    params = load_params()
    device = choose_device(params.train.device)
    meta = load_meta(PREPARED)
    train, val = load_split(PREPARED, "train"), load_split(PREPARED, "val")
    spec = model_spec(params.model, meta.image_shape, meta.num_classes)
    run_id = fingerprint(params, spec, [PREPARED / f for f in ("train.pt", "val.pt", "meta.json")], device)

    result = run_training(params, spec, meta, train, val, device, RESUME, run_id)

    last = result.history[-1]
    save_model(MODEL, result.model, spec, meta.mean, meta.std)
    write_json("metrics/train.json", {
        "epochs": last.epoch, "train_loss": last.train_loss, "train_acc": last.train_acc,
        "val_loss": last.val_loss, "val_acc": last.val_acc,
        "parameters": count_parameters(result.model),
    })
    write_csv("plots/train.csv", [asdict(r) for r in result.history])
    # Facts that differ between machines or runs stay out of metrics/.
    write_json("logs/train.json", {
        "device": device.type, "device_name": device_name(device), "torch": torch.__version__,
        "python": platform.python_version(), "resumed_after_epoch": result.resumed_from_epoch,
        "seconds_per_epoch": [round(s, 3) for s in result.seconds_per_epoch],
        "seconds_total": round(time.perf_counter() - t0, 3),
    })
    RESUME.unlink(missing_ok=True)  # finished: the next run must start fresh


if __name__ == "__main__":
    main()
