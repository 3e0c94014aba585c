"""Training in-process on tiny synthetic data: it learns, it is deterministic, it resumes exactly,
it stops when it diverges; the stage's tidying of models/seeds and checkpoints."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from mnistpipe.data.prepared import Meta, Split, normalize, pixel_stats
from mnistpipe.errors import UserError
from mnistpipe.models import count_parameters, model_spec
from mnistpipe.params import parse_params
from mnistpipe.train import (
    Resume,
    TrainingState,
    check_finite,
    data_digest,
    make_augment,
    run_fingerprint,
    run_training,
    train_epoch,
)

from conftest import same_weights, synthetic_digits, tiny_params_raw

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("deterministic_torch")  # as the train stage sets it
QUIET = lambda line: None  # noqa: E731


def split(n: int, seed: int) -> Split:
    images, labels = synthetic_digits(n, seed)
    return Split(torch.from_numpy(images), torch.from_numpy(labels).long())


@pytest.fixture(scope="module")
def data():
    train, val = split(400, 1), split(100, 2)
    mean, std = pixel_stats(train.images)
    return train, val, Meta(mean, std, 10, (28, 28), {"train": 400, "val": 100})


def params(**train):
    raw = tiny_params_raw()
    augment = train.pop("augment", None)
    arch = train.pop("arch", "mlp")
    raw["train"].update(train)
    raw["model"]["arch"] = arch
    raw["model"]["cnn"].update(channels=[4, 8], fc=16)
    if augment is not None:
        raw["train"]["augment"]["enabled"] = augment
    return parse_params(raw)


def train(p, data, device=CPU, **kw):
    tr, val, meta = data
    kw.setdefault("log", QUIET)
    return run_training(p, model_spec(p.model, (28, 28), 10), meta, tr, val, device, **kw)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kw", [{}, {"optimizer": "sgd", "lr": 0.05}, {"arch": "cnn", "schedule": "onecycle",
                                                                       "augment": True, "lr": 0.01}])
def test_loss_decreases_and_model_learns(data, kw):
    result = train(params(epochs=4, **kw), data)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0] * 0.7, losses
    assert result.history[-1].val_acc > 0.6  # chance is 0.1


def test_same_params_same_weights_and_history(data):
    a, b = train(params(epochs=2), data), train(params(epochs=2), data)
    assert a.history == b.history and same_weights(state(a.model), state(b.model))
    c = train(dataclasses.replace(params(epochs=2), seed=7), data)
    assert not same_weights(state(a.model), state(c.model)), "the seed must matter"


def test_batch_order_comes_from_the_seed(data, monkeypatch):
    """Two seeds must differ in batch order too, not only in their initial weights."""
    import mnistpipe.train as train_module

    first_orders = {}
    original = train_module.train_epoch

    def recording(model, optimizer, x, y, batch_size, generator, *args, **kw):
        probe = torch.Generator().manual_seed(0)
        probe.set_state(generator.get_state())
        first_orders.setdefault(generator.initial_seed(), torch.randperm(len(y), generator=probe))
        return original(model, optimizer, x, y, batch_size, generator, *args, **kw)

    monkeypatch.setattr(train_module, "train_epoch", recording)
    for seed in (42, 7):
        train(dataclasses.replace(params(epochs=1), seed=seed), data)
    assert sorted(first_orders) == [7, 42]
    assert not torch.equal(first_orders[7], first_orders[42])


def test_label_smoothing_is_the_training_objective(data):
    plain, smooth = train(params(epochs=2), data), train(params(epochs=2, label_smoothing=0.2), data)
    assert not same_weights(state(plain.model), state(smooth.model))
    # A smoothed target can't be met exactly: its loss stays above the plain one's.
    assert smooth.history[-1].train_loss > plain.history[-1].train_loss + 0.1
    assert smooth.history[-1].val_acc > 0.6  # and the model still learns


@pytest.mark.parametrize("kw", [{}, {"arch": "cnn", "augment": True}])
def test_no_kernel_reads_uninitialized_memory(data, kw, monkeypatch):
    """make_deterministic skips torch's NaN fill of new tensors; it must change nothing."""
    runs = []
    for fill in (True, False):
        monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", fill)
        runs.append(train(params(epochs=2, **kw), data))
    assert runs[0].history == runs[1].history and same_weights(state(runs[0].model), state(runs[1].model))


def test_each_epoch_sees_every_sample_exactly_once():
    n, batch_size = 50, 8  # a last, partial batch of 2
    x, y = torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n, dtype=torch.long)
    model = torch.nn.Linear(1, 10)
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.extend(inputs[0][:, 0].long().tolist()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_epoch(model, optimizer, x, y, batch_size, torch.Generator().manual_seed(0))
    assert sorted(seen) == list(range(n))


class Killed(Exception):
    """Stands for a SIGKILL: the run stops right after a checkpoint, nothing else happens."""


def kill_after_checkpoint(monkeypatch, epoch: int) -> None:
    """The next run stops once it has saved its checkpoint of `epoch`."""
    original = TrainingState.save

    def save(self, resume, done, history):
        original(self, resume, done, history)
        if done == epoch:
            raise Killed

    monkeypatch.setattr(TrainingState, "save", save)


@pytest.mark.parametrize("kw", [{}, {"arch": "cnn", "schedule": "onecycle", "augment": True, "lr": 0.01}])
def test_resume_gives_the_uninterrupted_result(data, tmp_path, kw, monkeypatch):
    p = params(epochs=3, **kw)
    full = train(p, data)
    resume = tmp_path / "resume.pt"
    with monkeypatch.context() as m:
        kill_after_checkpoint(m, epoch=2)
        with pytest.raises(Killed):
            train(p, data, resume=Resume(resume, "run-a"))

    lines = []
    resumed = train(p, data, resume=Resume(resume, "run-a"), log=lines.append)
    assert resumed.resumed_from_epoch == 2 and any("resuming" in line for line in lines)
    assert resumed.history == full.history
    assert same_weights(state(resumed.model), state(full.model))
    assert torch.equal(resumed.val_logits, full.val_logits)


@pytest.mark.parametrize("kw", [{}, {"arch": "cnn", "schedule": "onecycle", "augment": True, "lr": 0.01}])
def test_a_finished_run_keeps_its_checkpoint_and_is_never_trained_again(data, tmp_path, kw, monkeypatch):
    """A stage killed after this run finished (another seed training, outputs being written)
    gets this run's result back from its last checkpoint, without training."""
    p = params(epochs=3, **kw)
    resume = tmp_path / "resume.pt"
    full = train(p, data, resume=Resume(resume, "run-a"))
    assert resume.exists()  # the last epoch's; the stage deletes it once its outputs are written

    import mnistpipe.train as train_module

    monkeypatch.setattr(train_module, "train_epoch", lambda *a, **kw: pytest.fail("trained again"))
    lines = []
    again = train(p, data, resume=Resume(resume, "run-a"), log=lines.append)
    assert again.resumed_from_epoch == 3 and again.seconds_per_epoch == []
    assert any("after epoch 3: every epoch is done" in line for line in lines), lines
    assert again.history == full.history
    assert same_weights(state(again.model), state(full.model))
    assert torch.equal(again.val_logits, full.val_logits)  # the calibration temperature's input


@pytest.mark.parametrize("kw", [{}, {"schedule": "onecycle"}])
def test_a_diverging_run_stops_with_the_cause_before_its_checkpoint(data, tmp_path, kw):
    resume = tmp_path / "resume.pt"
    with pytest.raises(UserError) as error:
        train(params(epochs=3, optimizer="sgd", lr=10, **kw), data, resume=Resume(resume, "run-a"))
    message = str(error.value)
    assert "train: the training loss is NaN after epoch 1 (seed 42): the run diverged" in message
    assert "lower train.lr in params.yaml (10 is high for sgd, which usually trains at 0.01 to 0.1" in message
    assert ("onecycle" in message) == bool(kw)
    assert not resume.exists()


@pytest.mark.parametrize("losses, words", [
    ((1.0, math.inf), "the validation loss is infinite after epoch 2 (seed 42)"),
    ((math.nan, 1.0), "(0.001 now; try a tenth of it)"),
])
def test_every_non_finite_loss_is_refused(losses, words):
    with pytest.raises(UserError, match=re.escape(words)):
        check_finite(params(), 2, *losses)
    check_finite(params(), 2, 1e30, 0.0)  # finite, however large: not this check's business


def test_checkpoint_of_another_run_is_never_resumed(data, tmp_path):
    p = params(epochs=2)
    resume = tmp_path / "resume.pt"
    train(p, data, resume=Resume(resume, "run-a"))
    lines = []
    fresh = train(p, data, resume=Resume(resume, "run-b"), log=lines.append)
    assert fresh.resumed_from_epoch == 0 and any("starting fresh" in line for line in lines)


def test_fingerprint_changes_with_params_data_and_device(data, tmp_path):
    files = [tmp_path / "a.pt"]
    files[0].write_bytes(b"data")
    digest = data_digest(files)
    p = params(epochs=2)
    spec = model_spec(p.model, (28, 28), 10)
    base = run_fingerprint(p, spec, digest, CPU)
    assert run_fingerprint(p, spec, digest, CPU) == base
    assert run_fingerprint(params(epochs=3), spec, digest, CPU) != base
    assert run_fingerprint(dataclasses.replace(p, seed=1), spec, digest, CPU) != base
    assert run_fingerprint(p, spec, digest, torch.device("meta")) != base
    files[0].write_bytes(b"other data")
    assert data_digest(files) != digest
    assert run_fingerprint(p, spec, data_digest(files), CPU) != base


def test_augment_moves_digits_but_keeps_background(data):
    _, _, meta = data
    images = torch.zeros(64, 28, 28, dtype=torch.uint8)
    images[:, 10:18, 12:16] = 255  # a bar on a clean background
    x = normalize(images, meta.mean, meta.std)
    background = -meta.mean / meta.std
    p = params(augment=True)
    out = make_augment(p.train.augment, background, torch.Generator().manual_seed(0))(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    corners = out[:, :, 0, 0]  # uncovered corners are filled with background, not zeros
    assert torch.allclose(corners, torch.full_like(corners, background), atol=1e-5)
    ink = (out > background + 1).float().sum((1, 2, 3))
    assert ((ink > 16) & (ink < 60)).all(), "the bar (32 pixels) is moved, not lost or smeared"
    again = make_augment(p.train.augment, background, torch.Generator().manual_seed(0))(x)
    assert torch.equal(out, again), "augmentation is seeded"
    assert make_augment(params(augment=False).train.augment, background, torch.Generator()) is None


def test_cnn_parameter_count_and_shapes():
    p = params(arch="cnn")
    spec = model_spec(dataclasses.replace(p.model, cnn=dataclasses.replace(p.model.cnn, channels=[32, 64], fc=128)),
                      (28, 28), 10)
    from mnistpipe.models import build_model

    model = build_model(spec)
    # conv 1->32 (288) + BN (64) + conv 32->64 (18432) + BN (128) + fc 3136->128 (401536) + 128->10 (1290)
    assert count_parameters(model) == 288 + 64 + 18432 + 128 + 401536 + 1290
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_the_stage_tidies_seed_models_and_checkpoints_once_its_outputs_are_written(tmp_path, monkeypatch):
    """models/seeds survives runs (persist: true in dvc.yaml), so the stage must remove what is
    not this run's: evaluate takes every models/seeds/seed*.pt for a seed of this run."""
    from mnistpipe import paths
    from mnistpipe.pipeline.train import tidy_up

    monkeypatch.chdir(tmp_path)
    names = ["seeds/seeds.json", "seeds/seed1.pt", "seeds/seed2.pt", "seeds/.seed3.pt.0123456789ab.tmp",
             "resume.pt", "resume-seed1.pt", "resume-seed2.pt", "model.pt"]
    for name in names:
        (tmp_path / "models" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / name).write_bytes(b"x")
    tidy_up(dataclasses.replace(params(), multiseed=dataclasses.replace(params().multiseed, seeds=[1])))
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "models").rglob("*"))
    assert left == ["models/model.pt", "models/resume-seed2.pt", "models/seeds", "models/seeds/seed1.pt",
                    "models/seeds/seeds.json"]
    assert list(paths.seed_models()) == [1]


def test_dvc_keeps_the_train_stages_outputs_while_it_runs():
    """DVC deletes a stage's outputs before running it unless they persist; the stage replaces
    them itself, all together, so a failed run leaves the last good ones."""
    import yaml

    from conftest import REPO

    outs = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    entries = [next(iter(e.items())) for e in outs["outs"]]
    assert {name: options.get("persist") for name, options in entries} == {
        "models/model.pt": True, "models/seeds": True, "plots/train.csv": True, "metrics/train.json": True}
