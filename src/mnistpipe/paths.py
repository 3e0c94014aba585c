"""Where the pipeline's files live, relative to the project root.

The one home of every path the stages, `compare` and the CLI use. dvc.yaml names the
same paths, spelled out so that it reads on its own; tests/test_dvc_deps.py checks that
the two agree.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
DATASET = Path("dataset.yaml")  # the dataset's files, checksums and mirrors: git-tracked, not params
PARAMS_VALID = Path("logs/params_valid.txt")  # validate's output: params.yaml and dataset.yaml checked
RAW = Path("data/raw")
PREPARED = Path("data/prepared")
MODEL = Path("models/model.pt")
SEED_MODELS = Path("models/seeds")  # one model per extra training seed
SEED_LIST = SEED_MODELS / "seeds.json"  # the seeds, so that the folder is never empty
METRICS = Path("metrics")  # train's and evaluate's numbers: small, in git
TRAIN_METRICS = METRICS / "train.json"  # not a DVC metric: `dvc exp show` stays narrow
EVAL_METRICS = METRICS / "eval.json"  # the headline: the DVC metrics `dvc exp show` leads with
EVAL_DETAIL = METRICS / "eval_detail.json"  # the rest of evaluate's numbers: not a DVC metric
SEEDS_METRICS = METRICS / "seeds.json"
PLOTS = Path("plots")  # the data behind the report's figures: small, in git
HISTORY = PLOTS / "train.csv"  # per-epoch loss and accuracy
PREDICTIONS = PLOTS / "predictions.csv"
PER_CLASS = PLOTS / "per_class.csv"
RELIABILITY = PLOTS / "reliability.csv"
REPORTS = Path("reports")
TRAIN_LOG = Path("logs/train.json")  # machine facts: outside DVC and git
EVAL_LOG = Path("logs/evaluate.json")


# `mnistpipe export` writes models/model.onnx or .pt2 beside the checkpoint, by format.
EXPORT_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2"}


def prepared_files() -> list[Path]:
    """The prepared files training reads (their digest is part of a run's fingerprint)."""
    return [PREPARED / name for name in ("train.pt", "val.pt", "meta.json")]


def seed_model(seed: int) -> Path:
    return SEED_MODELS / f"seed{seed}.pt"


def seed_models() -> dict[int, Path]:
    """The extra seeds' models on disk, by seed, in seed order."""
    found = {int(p.stem.removeprefix("seed")): p for p in SEED_MODELS.glob("seed*.pt")}
    return dict(sorted(found.items()))


def resume_checkpoint(seed: int | None = None) -> Path:
    """Where a run leaves its per-epoch checkpoint: the main run's, or an extra seed's."""
    return Path("models/resume.pt") if seed is None else Path(f"models/resume-seed{seed}.pt")
