"""The prepare stage refuses a dataset that would leave a split empty (params can't say how
many images a file holds, so this is the first place that knows)."""

from __future__ import annotations

import pytest

from mnistpipe.data.prepared import read_raw, split_validation
from mnistpipe.errors import UserError
from mnistpipe.params import parse_dataset

from conftest import tiny_dataset_raw, write_synthetic_mirror


def test_empty_test_set_refused_at_prepare(tmp_path):
    dataset = parse_dataset(tiny_dataset_raw(write_synthetic_mirror(tmp_path, n_train=50, n_test=0)))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz holds no images.*test_images .*dataset\.yaml"):
        read_raw(tmp_path, dataset, 10)


def test_val_size_leaving_no_training_images_refused_at_prepare(tmp_path):
    dataset = parse_dataset(tiny_dataset_raw(write_synthetic_mirror(tmp_path, n_train=50, n_test=10)))
    train, _ = read_raw(tmp_path, dataset, 10)
    with pytest.raises(UserError, match=r"prepare\.val_size: 50 leaves no training images"):
        split_validation(train, 50, seed=0)
