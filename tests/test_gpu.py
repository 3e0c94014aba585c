"""On a CUDA machine: GPU training is deterministic and agrees with the CPU. Skips without a GPU."""

from __future__ import annotations

import pytest
import torch
from test_train import data, params, state, train  # noqa: F401  (data is a fixture)

from mnistpipe.data.prepared import normalize
from mnistpipe.evaluate import predict_logits

from conftest import same_weights, synthetic_digits

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def train_on_gpu(splits, **kw):
    """Two epochs on the GPU, with the settings the train stage makes at its entry point."""
    from mnistpipe.device import make_deterministic

    restore = make_deterministic(CUDA)
    try:
        return train(params(epochs=2, device="cuda", **kw), splits, device=CUDA)
    finally:
        restore()


@pytest.mark.parametrize("kw", [{}, {"arch": "cnn", "schedule": "onecycle", "augment": True, "lr": 0.01}])
def test_two_gpu_runs_are_identical(data, kw):  # noqa: F811
    a, b = train_on_gpu(data, **kw), train_on_gpu(data, **kw)
    assert a.history == b.history
    assert same_weights(state(a.model), state(b.model))


def test_same_weights_predict_the_same_on_cpu_and_gpu(data):  # noqa: F811
    model = train_on_gpu(data).model
    images, _ = synthetic_digits(1000, seed=5)
    x = normalize(torch.from_numpy(images), data[2].mean, data[2].std)
    gpu = predict_logits(model, x.to(CUDA), 1000).cpu()
    cpu = predict_logits(model.cpu(), x, 1000)
    agree = (gpu.argmax(1) == cpu.argmax(1)).float().mean().item()
    assert agree >= 0.999 and torch.allclose(gpu, cpu, atol=1e-3)
