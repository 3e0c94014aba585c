"""The prepare stage: parse the IDX files, split off validation, fix normalization, cache tensors.

The files' names come from dataset.yaml, read here as data/raw is: both are the stage's inputs."""

from __future__ import annotations

import sys

from .. import paths
from ..atomic import atomic_dir
from ..data.prepared import pixel_stats, read_raw, split_validation, write_prepared
from ..params import Params, load_dataset


def run(params: Params) -> None:
    """The prepare stage: data/raw's IDX files to data/prepared's tensors, written as one."""
    train, test = read_raw(paths.RAW, load_dataset(paths.DATASET), params.data.num_classes)
    train, val = split_validation(train, params.prepare.val_size, params.seed)
    if params.prepare.mean is None:
        mean, std = pixel_stats(train.images)
    else:
        mean, std = params.prepare.mean, params.prepare.std
    with atomic_dir(paths.PREPARED) as tmp:
        write_prepared(tmp, {"train": train, "val": val, "test": test}, mean, std,
                       params.data.num_classes)
    print(f"prepared {len(train)} train, {len(val)} val, {len(test)} test images; "
          f"normalization mean {mean:.4f} std {std:.4f}", file=sys.stderr)
