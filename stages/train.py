"""train: fit the model on the prepared training split (and once more per extra seed).

A killed run resumes from its checkpoint when `dvc repro` runs again.
"""

from mnistpipe.numerics import pin_from_params

PARAMS = pin_from_params()  # first: the math libraries read their code paths as they load

import dataclasses  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from mnistpipe.atomic import write_csv, write_json  # noqa: E402
from mnistpipe.calibration import fit_temperature  # noqa: E402
from mnistpipe.checkpoint import save_model  # noqa: E402
from mnistpipe.data.prepared import load_meta, load_split, normalize  # noqa: E402
from mnistpipe.device import choose_device, device_name, peak_rss_mb  # noqa: E402
from mnistpipe.errors import exit_on_user_error  # noqa: E402
from mnistpipe.evaluate import predict_logits  # noqa: E402
from mnistpipe.models import count_parameters, model_spec  # noqa: E402
from mnistpipe.numerics import machine_facts  # noqa: E402
from mnistpipe.train import data_digest, fingerprint, run_training  # noqa: E402

PREPARED = Path("data/prepared")
MODEL, SEED_MODELS = Path("models/model.pt"), Path("models/seeds")


@exit_on_user_error
def main() -> None:
    t0 = time.perf_counter()
    device = choose_device(PARAMS.train.device)
    meta = load_meta(PREPARED)
    train, val = load_split(PREPARED, "train"), load_split(PREPARED, "val")
    spec = model_spec(PARAMS.model, meta.image_shape, meta.num_classes)
    data = data_digest([PREPARED / f for f in ("train.pt", "val.pt", "meta.json")])

    x_val = normalize(val.images, meta.mean, meta.std, device)

    def train_with_seed(seed: int, resume: Path, path: Path):
        """Train, fit the calibration temperature on the validation split, save to `path`."""
        run_params = dataclasses.replace(PARAMS, seed=seed)
        run_id = fingerprint(run_params, spec, data, device)
        result = run_training(run_params, spec, meta, train, val, device, resume, run_id)
        temperature = fit_temperature(predict_logits(result.model, x_val, 2048), val.labels)
        save_model(path, result.model, spec, meta.mean, meta.std, temperature)
        resume.unlink(missing_ok=True)  # finished: a later run must start fresh
        return result, temperature

    # The folder lists its seeds, so it is never empty (DVC warns about empty outputs).
    write_json(SEED_MODELS / "seeds.json", {"seeds": PARAMS.multiseed.seeds})
    for seed in PARAMS.multiseed.seeds:
        print(f"extra seed {seed}:")
        train_with_seed(seed, Path(f"models/resume-seed{seed}.pt"), SEED_MODELS / f"seed{seed}.pt")

    result, temperature = train_with_seed(PARAMS.seed, Path("models/resume.pt"), MODEL)
    last = result.history[-1]
    write_json("metrics/train.json", {
        "epochs": last.epoch, "train_loss": last.train_loss, "train_acc": last.train_acc,
        "val_loss": last.val_loss, "val_acc": last.val_acc, "temperature": temperature,
        "parameters": count_parameters(result.model),
    })
    write_csv("plots/train.csv", [asdict(r) for r in result.history])
    # Facts that differ between machines or runs: read by people, not by DVC or git.
    write_json("logs/train.json", {
        "device": device.type, "device_name": device_name(device), **machine_facts(PARAMS.numerics),
        "resumed_after_epoch": result.resumed_from_epoch,
        "seconds_per_epoch": [round(s, 3) for s in result.seconds_per_epoch],
        "seconds_total": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    })


if __name__ == "__main__":
    main()
