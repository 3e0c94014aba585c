"""The prepare stage refuses a dataset that would leave a split empty (params can't say how
many images a file holds, so this is the first place that knows)."""

from __future__ import annotations

import pytest

from mnistpipe.data.prepared import read_raw, split_validation
from mnistpipe.errors import UserError
from mnistpipe.params import parse_params

from conftest import tiny_params_raw, write_synthetic_mirror


def test_empty_test_set_refused_at_prepare(tmp_path):
    checksums = write_synthetic_mirror(tmp_path, n_train=50, n_test=0)
    params = parse_params(tiny_params_raw(checksums))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz holds no images.*data\.test_images"):
        read_raw(tmp_path, params)


def test_val_size_leaving_no_training_images_refused_at_prepare(tmp_path):
    checksums = write_synthetic_mirror(tmp_path, n_train=50, n_test=10)
    params = parse_params(tiny_params_raw(checksums))
    train, _ = read_raw(tmp_path, params)
    with pytest.raises(UserError, match=r"prepare\.val_size: 50 leaves no training images"):
        split_validation(train, 50, seed=0)
