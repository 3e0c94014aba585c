"""evaluate: test-set accuracy, loss, per-class precision/recall/F1 and every prediction."""

import sys
import time
from pathlib import Path

import torch

from mnistpipe.atomic import write_csv, write_json
from mnistpipe.checkpoint import load_model
from mnistpipe.data.prepared import load_split, normalize
from mnistpipe.device import choose_device, device_name, synchronize
from mnistpipe.errors import exit_on_user_error
from mnistpipe.evaluate import classification_metrics, predict_logits
from mnistpipe.params import load_params

PREPARED, MODEL = Path("data/prepared"), Path("models/model.pt")


@exit_on_user_error
def main() -> None:
    params = load_params()
    device = choose_device(params.evaluate.device, "evaluate.device")
    model, ckpt = load_model(MODEL)
    model.to(device)
    test = load_split(PREPARED, "test")

    t0 = time.perf_counter()
    x = normalize(test.images, ckpt["normalization"]["mean"], ckpt["normalization"]["std"], device)
    logits = predict_logits(model, x, params.evaluate.batch_size)
    synchronize(device)
    seconds = time.perf_counter() - t0

    metrics = classification_metrics(logits, test.labels)
    probs = logits.float().softmax(1).cpu()
    confidence, predicted = probs.max(1)
    write_json("metrics/eval.json", metrics)
    write_csv("plots/predictions.csv", [
        {"index": i, "actual": a, "predicted": p, "confidence": f"{c:.6f}"}
        for i, (a, p, c) in enumerate(zip(test.labels.tolist(), predicted.tolist(), confidence.tolist()))
    ])
    write_json("logs/evaluate.json", {"device": device.type, "device_name": device_name(device),
                                      "torch": torch.__version__, "images": len(test),
                                      "seconds": round(seconds, 4)})
    print(f"test accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  "
          f"macro F1 {metrics['macro_f1']:.4f}  ({len(test)} images, {seconds:.3f}s on {device.type})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
