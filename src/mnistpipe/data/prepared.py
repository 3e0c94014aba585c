"""The prepared cache: uint8 images and int64 labels per split, plus normalization constants.

Prepared once by the prepare stage, loaded whole by the others: training then runs
from one in-memory tensor instead of converting images one by one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import save_torch, write_json
from ..errors import UserError
from ..params import Dataset
from . import idx

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Meta:
    mean: float
    std: float
    num_classes: int
    image_shape: tuple[int, int]
    sizes: dict[str, int]


def read_raw(raw_dir: Path, dataset: Dataset, num_classes: int) -> tuple[Split, Split]:
    """The training and test sets from the raw IDX files `dataset` names, validated."""
    files = {key: raw_dir / spec.name for key, spec in dataset.files.items()}
    for path in files.values():
        if not path.exists():
            raise UserError(f"{path} is missing: run the fetch stage first (dvc repro fetch)")
    sets = []
    for part in ("train", "test"):
        images = idx.load_images(files[f"{part}_images"])
        labels = idx.load_labels(files[f"{part}_labels"], num_classes)
        if len(images) != len(labels):
            raise UserError(f"{part}: {len(images)} images but {len(labels)} labels "
                            f"({files[f'{part}_images'].name}, {files[f'{part}_labels'].name})")
        sets.append(Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype("int64"))))
    train, test = sets
    if len(test) == 0:  # params can't say how many images a file holds: known only now
        raise UserError(f"{files['test_images']} holds no images: evaluation needs a test set; "
                        "point test_images and test_labels in dataset.yaml at a non-empty one")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise UserError(f"train images are {tuple(train.images.shape[1:])} but test images "
                        f"are {tuple(test.images.shape[1:])}")
    return train, test


def split_validation(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Hold out `val_size` random training images (seeded) as the validation split."""
    if val_size >= len(train):
        raise UserError(f"params.yaml: prepare.val_size: {val_size} leaves no training images "
                        f"(the training set has {len(train)}); choose a smaller value")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    pick = lambda i: Split(train.images[i].clone(), train.labels[i].clone())  # noqa: E731
    return pick(train_idx), pick(val_idx)


def pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and (sample) standard deviation of uint8 pixel values scaled to [0, 1].

    Computed from exact integer sums, so the result is the same on every machine
    (a float sum's rounding depends on how the threads and vector units split it).
    """
    counts = torch.bincount(images.reshape(-1).to(torch.int64), minlength=256).tolist()
    n = sum(counts)
    total = sum(v * c for v, c in enumerate(counts))
    squares = sum(v * v * c for v, c in enumerate(counts))
    mean = total / (255 * n)
    std = math.sqrt((n * squares - total * total) / (n * (n - 1))) / 255
    return mean, std


def normalize(images: torch.Tensor, mean: float, std: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, H, W], (x/255 - mean)/std, in one vectorized pass."""
    x = images.to(device).unsqueeze(1).to(torch.float32, copy=True)  # never the caller's tensor
    return x.mul_(1 / 255).sub_(mean).div_(std)


def write_prepared(out_dir: Path, splits: dict[str, Split], mean: float, std: float,
                   num_classes: int) -> None:
    for name, split in splits.items():
        save_torch(out_dir / f"{name}.pt", {"images": split.images.contiguous(),
                                            "labels": split.labels.contiguous()})
    write_json(out_dir / "meta.json", {
        "mean": mean, "std": std, "num_classes": num_classes,
        "image_shape": list(splits["train"].images.shape[1:]),
        "sizes": {name: len(split) for name, split in splits.items()},
    })


def _prepared_file(prepared_dir: Path, name: str) -> Path:
    path = Path(prepared_dir) / name
    if not path.exists():
        raise UserError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    return path


def load_split(prepared_dir: Path, name: str) -> Split:
    path = _prepared_file(prepared_dir, f"{name}.pt")
    try:
        data = torch.load(path, weights_only=True)
        return Split(data["images"], data["labels"])
    except Exception as exc:  # a truncated or foreign file: say which, not a pickle traceback
        raise UserError(f"{path} is unreadable ({exc}); rerun the prepare stage") from None


def load_meta(prepared_dir: Path) -> Meta:
    raw = json.loads(_prepared_file(prepared_dir, "meta.json").read_text())
    return Meta(raw["mean"], raw["std"], raw["num_classes"], tuple(raw["image_shape"]), raw["sizes"])
