"""Model files (mnistpipe.checkpoint) and model sizes (mnistpipe.models).

A model file is data, never code: foreign, damaged or malicious files are UserErrors, and a
crafted pickle must not run anything."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from mnistpipe import checkpoint
from mnistpipe.checkpoint import MODEL_FORMAT, load_file, load_model, save_model
from mnistpipe.cli import main
from mnistpipe.errors import UserError
from mnistpipe.models import MLP, ModelSpec, build_model, count_parameters, describe, model_spec
from mnistpipe.params import parse_params

from conftest import repo_params_raw


def spec(hidden: list[int], image_shape=(28, 28), num_classes: int = 10) -> dict:
    return {"arch": "mlp", "hidden": list(hidden), "image_shape": list(image_shape),
            "num_classes": num_classes}


def typed(hidden: list[int], **shape) -> ModelSpec:
    return ModelSpec.from_dict(spec(hidden, **shape))


def make_model(hidden: list[int], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(typed(hidden))


def saved(tmp_path: Path, hidden=(128, 64), seed: int = 0) -> tuple[Path, torch.nn.Module]:
    model = make_model(list(hidden), seed)
    path = tmp_path / "models" / "model.pt"
    save_model(path, model, typed(list(hidden)), mean=0.1307, std=0.3081)
    return path, model


def load_error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


# --- parameter counts --------------------------------------------------------------------------

@pytest.mark.parametrize("hidden, expected", [
    ([128, 64], 109_386),  # the tutorial's 784-128-64-10 network
    ([128], 101_770),  # 784-128-10 (the number the tutorial quotes)
    ([], 7_850),  # logistic regression: 784*10 + 10
])
def test_parameter_count(hidden, expected):
    model = build_model(typed(hidden))
    assert count_parameters(model) == expected


def test_parameter_count_from_params_config():
    s = model_spec(parse_params(repo_params_raw()).model, (28, 28), 10)
    assert s.to_dict() == spec([128, 64])
    assert count_parameters(build_model(s)) == 109_386
    assert describe(s) == "MLP 784-128-64-10"


def test_logistic_regression_is_one_linear_layer():
    model = build_model(typed([]))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and (linears[0].in_features, linears[0].out_features) == (784, 10)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert describe(typed([])) == "MLP 784-10"


def test_forward_shape_and_architecture():
    model = build_model(typed([128, 64], image_shape=(20, 24), num_classes=7))
    assert isinstance(model, MLP)
    assert model(torch.zeros(5, 1, 20, 24)).shape == (5, 7)
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [(480, 128), (128, 64), (64, 7)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 2


def test_unknown_arch_in_a_spec():
    with pytest.raises(ValueError, match="unknown architecture 'cnn3d'"):
        ModelSpec.from_dict({**spec([8]), "arch": "cnn3d"})


# --- save / load round trip -------------------------------------------------------------------

def test_round_trip_identical_logits(tmp_path):
    path, model = saved(tmp_path, hidden=(128, 64), seed=3)
    loaded, info = load_model(path)
    x = torch.rand(16, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert torch.load(path, weights_only=True)["format"] == MODEL_FORMAT
    assert info.spec == typed([128, 64]) and torch.load(path, weights_only=True)["spec"] == spec([128, 64])
    assert (info.mean, info.std) == (pytest.approx(0.1307), pytest.approx(0.3081))
    assert count_parameters(loaded) == 109_386


def test_round_trip_differs_from_other_weights(tmp_path):
    """Control for the test above: another seed's weights give other logits."""
    path, _ = saved(tmp_path, seed=3)
    loaded, _ = load_model(path)
    other = make_model([128, 64], seed=4).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert not torch.equal(other(x), loaded(x))


def test_round_trip_logistic_regression(tmp_path):
    path, model = saved(tmp_path, hidden=())
    loaded, _ = load_model(path)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_save_is_atomic_and_overwrites(tmp_path):
    path, _ = saved(tmp_path, seed=1)
    first = path.read_bytes()
    saved(tmp_path, seed=2)
    assert path.read_bytes() != first
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp leftovers


def test_saved_tensors_are_detached_cpu(tmp_path):
    path, _ = saved(tmp_path)
    data = torch.load(path, weights_only=True)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in data["state_dict"].values())


# --- damaged and foreign files ----------------------------------------------------------------

def test_missing_file(tmp_path):
    message = load_error(tmp_path / "model.pt")
    assert "not found" in message


@pytest.mark.parametrize("keep", [0.5, 0.9, 100])
def test_truncated_model(tmp_path, keep):
    path, _ = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    message = load_error(path)
    assert "not a loadable model checkpoint" in message


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty"),
    (b"epoch,train_loss,val_loss\n1,0.31,0.18\n", "it is a text file"),  # plots/train.csv
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "it is another binary format"),
])
def test_not_a_torch_file(tmp_path, content, why):
    """Said before torch.load, whose errors for these ("pop from empty list") mean nothing to a user."""
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    message = load_error(path)
    assert f"not a PyTorch checkpoint ({why}" in message
    assert message.endswith("expected a model file written by the train stage, such as models/model.pt")


def test_a_zip_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    assert "not a loadable model checkpoint" in load_error(path)


def test_directory_is_not_a_model(tmp_path):
    assert "a directory, not a model checkpoint" in load_error(tmp_path)


@pytest.mark.parametrize("temperature", [0.0, -1.5, float("nan"), float("inf"), "1.5", True, None])
def test_bad_temperature(tmp_path, temperature):
    path, _ = saved(tmp_path)
    torch.save({**torch.load(path, weights_only=True), "temperature": temperature}, path)
    assert "temperature must be a positive number" in load_error(path)


@pytest.mark.parametrize("temperature", [1.7, 2, None])
def test_temperature_is_optional(tmp_path, temperature):
    path, _ = saved(tmp_path)
    ckpt = {k: v for k, v in torch.load(path, weights_only=True).items() if k != "temperature"}
    torch.save(ckpt if temperature is None else {**ckpt, "temperature": temperature}, path)
    assert load_model(path)[1].temperature == (1.0 if temperature is None else temperature)


def test_other_architecture(tmp_path):
    """Weights of a [32] network under a spec claiming [128, 64]."""
    small = make_model([32])
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "spec": spec([128, 64]),
                "normalization": {"mean": 0.1, "std": 0.3},
                "state_dict": small.state_dict()}, path)
    message = load_error(path)
    assert "architecture" in message
    assert "Traceback" not in message and "\n" not in message


def test_state_dict_with_missing_layer(tmp_path):
    state = make_model([128, 64]).state_dict()
    del state["5.bias"]
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "spec": spec([128, 64]), "normalization": {"mean": 0.1, "std": 0.3},
                "state_dict": state}, path)
    assert "architecture" in load_error(path)


@pytest.mark.parametrize("bad_spec", [
    {"arch": "mlp"},  # keys missing
    {**spec([8]), "arch": "transformer"},  # unknown architecture
    {**spec([8]), "hidden": [-3]},  # impossible width
    "mlp",  # not a mapping
    {**spec([8]), "hidden": [True]},
    {**spec([8]), "hidden": ["8"]},
    {**spec([8]), "hidden": 8},
    {**spec([8]), "hidden": [8] * 5000},  # more layers than anything is built for
    {**spec([8]), "image_shape": [784]},
    {**spec([8]), "num_classes": 0},
    {**spec([8]), "arch": "cnn", "channels": [4], "fc": 8, "dropout": 1.5},
])
def test_bad_spec(tmp_path, bad_spec):
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "spec": bad_spec, "normalization": {"mean": 0.1, "std": 0.3},
                "state_dict": make_model([8]).state_dict()}, path)
    assert "architecture" in load_error(path)


# --- checked before they cost anything ---------------------------------------------------------

def crafted(tmp_path: Path, claimed: dict, weights: torch.nn.Module, **fields) -> Path:
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "spec": claimed, "normalization": {"mean": 0.1, "std": 0.3},
                "state_dict": weights.state_dict(), **fields}, path)
    return path


@pytest.fixture
def nothing_big_is_allocated(monkeypatch):
    """Fails fast where a claimed size would be allocated (and filled, which is the slow part)."""
    for layer in (torch.nn.Linear, torch.nn.Conv2d):
        def reset(self, real=layer.reset_parameters):
            assert self.weight.is_meta or self.weight.numel() < 10**7, f"allocated {list(self.weight.shape)}"
            real(self)
        monkeypatch.setattr(layer, "reset_parameters", reset)


@pytest.mark.parametrize("claimed", [
    spec([3_000_000]),  # 9.4 GB of weights next to a few kB of tensors
    {"arch": "cnn", "image_shape": [28, 28], "num_classes": 10, "channels": [4], "fc": 50_000_000, "dropout": 0.1},
], ids=["mlp", "cnn"])
def test_claimed_sizes_are_checked_before_allocating(tmp_path, claimed, nothing_big_is_allocated):
    path = crafted(tmp_path, claimed, make_model([8]))
    message = load_error(path)
    assert "do not fit the architecture" in message
    assert "the spec needs" in message or "missing" in message


@pytest.mark.parametrize("command", ["info", "predict"])
def test_cli_refuses_a_huge_claimed_model(tmp_path, command, nothing_big_is_allocated, capsys):
    path = crafted(tmp_path, spec([3_000_000]), make_model([8]))
    image = tmp_path / "digit.png"
    image.write_bytes(b"not looked at: the model is refused first")
    with pytest.raises(SystemExit) as exc:
        main([command, *([str(image)] if command == "predict" else []), "--model", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err == (f"error: {path}: weights do not fit the architecture it describes (1.weight has shape "
                   f"[8, 784], the spec needs [3000000, 784]); expected {checkpoint.MODEL_HINT}\n")


def test_a_cnn_with_batchnorm_before_pooling_is_refused_with_its_reason(tmp_path):
    """The same layer sizes in the other block order are another function: its weights load
    into nothing, and the message says why rather than listing keys."""
    nn = torch.nn
    batchnorm_first = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                    nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.0), nn.Linear(4 * 14 * 14, 8),
                                    nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 10))
    cnn = {"arch": "cnn", "image_shape": [28, 28], "num_classes": 10, "channels": [4], "fc": 8, "dropout": 0.0}
    message = load_error(crafted(tmp_path, cnn, batchnorm_first))
    assert "BatchNorm before max-pooling" in message and "retrain it" in message
    pooling_first = build_model(ModelSpec.from_dict(cnn))
    pooling_first.load_state_dict({k.replace("1.", "2.", 1) if k.startswith("1.") else k: v
                                   for k, v in batchnorm_first.state_dict().items()})
    loaded, _ = load_model(crafted(tmp_path, cnn, pooling_first))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), pooling_first.state_dict().values()))


def test_loaded_model_holds_the_file_tensors_as_float32(tmp_path):
    """Weights saved in another dtype are converted, as copying into a fresh model did."""
    model = make_model([8])
    path = crafted(tmp_path, spec([8]), model.double())
    loaded, _ = load_model(path)
    assert all(p.dtype == torch.float32 and not p.is_meta for p in loaded.parameters())
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.float().eval()(x))


@pytest.mark.parametrize("mean, std", [
    (0.1307, 0.0), (0.1307, -0.3), (float("nan"), 0.3), (0.1307, float("nan")), (float("inf"), 0.3),
    (0.1307, float("inf")),
])
def test_degenerate_normalization(tmp_path, mean, std):
    path = crafted(tmp_path, spec([8]), make_model([8]), normalization={"mean": mean, "std": std})
    assert "normalization constants must be finite with std > 0" in load_error(path)


def test_predict_refuses_a_zero_std_checkpoint(tmp_path, capsys):
    """Once it printed `digit 8 (p=nan)` and exited 0."""
    path = crafted(tmp_path, spec([8]), make_model([8]), normalization={"mean": 0.1307, "std": 0.0})
    image = tmp_path / "digit.png"
    image.write_bytes(b"not looked at: the model is refused first")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(image), "--model", str(path)])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert err.startswith(f"error: {path}: normalization constants must be finite with std > 0")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights(tmp_path, value):
    model = make_model([8])
    with torch.no_grad():
        model[3].weight[4, 2] = value
    message = load_error(crafted(tmp_path, spec([8]), model))
    assert "weights 3.weight hold NaN or infinite values" in message


def deflated(path: Path) -> Path:
    """The same torch.save archive with every record deflate-compressed (torch reads those too)."""
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in records:
            archive.writestr(name, data)
    return path


def test_a_record_that_inflates_past_the_limit(tmp_path, monkeypatch):
    """A 1 GiB record of zeros deflates to about 1 MB; here 2 MB under a 1 MB limit."""
    path = deflated(crafted(tmp_path, spec([8]), make_model([8]), padding=torch.zeros(2**19)))
    assert path.stat().st_size < 50_000
    load_model(path)  # control: within the real limit it loads, so the refusal below is the limit's
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 2**20)
    message = load_error(path)
    assert "would expand to 2,1" in message and "over the limit of 1,048,576" in message


def test_a_pickle_that_inflates_past_its_limit(tmp_path, monkeypatch):
    path = crafted(tmp_path, spec([8]), make_model([8]))
    monkeypatch.setattr(checkpoint, "MAX_PICKLE_BYTES", 100)
    assert "its pickled objects would expand to" in load_error(path)


def test_legacy_format_is_refused(tmp_path):
    """Its storages are allocated at the sizes its pickle claims, which no check can bound beforehand."""
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT}, path, _use_new_zipfile_serialization=False)
    assert "legacy format" in load_error(path)


def test_checkpoint_without_normalization(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "spec": spec([8]), "state_dict": make_model([8]).state_dict()}, path)
    assert "normalization" in load_error(path)


def test_foreign_torch_dict(tmp_path):
    """A plain state_dict (what most PyTorch code saves) is not a mnistpipe model."""
    path = tmp_path / "model.pt"
    torch.save(make_model([128, 64]).state_dict(), path)
    message = load_error(path)
    assert "not a mnistpipe model" in message and MODEL_FORMAT in message


def test_other_format_version(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": "mnistpipe-model/999", "spec": spec([8]), "state_dict": {}}, path)
    message = load_error(path)
    assert "mnistpipe-model/999" in message


def test_torch_file_not_a_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.zeros(3), path)
    assert "not a mnistpipe model checkpoint" in load_error(path)


def test_load_file_names_what(tmp_path):
    path = tmp_path / "resume.pt"
    path.write_text("garbage")
    with pytest.raises(UserError, match="resume checkpoint"):
        load_file(path, "resume checkpoint")


# --- a crafted pickle must not run ------------------------------------------------------------

class Payload:
    """Unpickling this writes `marker`: what an attacker's model.pt would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_payload_really_runs_without_weights_only(tmp_path):
    """Control: the payload is live, so the next test's 'no marker' means something."""
    marker = tmp_path / "control-marker"
    path = tmp_path / "evil.pt"
    torch.save({"format": MODEL_FORMAT, "spec": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("where", ["top", "inside"])
def test_malicious_pickle_is_refused(tmp_path, where):
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt"
    payload = Payload(marker)
    obj = payload if where == "top" else {
        "format": MODEL_FORMAT, "spec": payload, "normalization": {"mean": 0.1, "std": 0.3},
        "state_dict": make_model([8]).state_dict()}
    torch.save(obj, path)
    message = load_error(path)
    assert "not a loadable model checkpoint" in message and "GLOBAL exec" in message
    assert "safe_globals" not in message and "weights_only" not in message  # not torch's how-to-run-it
    assert not marker.exists()
