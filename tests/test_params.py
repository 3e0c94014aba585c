"""params.yaml and dataset.yaml validation (mnistpipe.params): every mistake is a UserError
naming the file and the key."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnistpipe.errors import UserError
from mnistpipe.params import (
    Params,
    as_dict,
    check_fits,
    load_dataset,
    load_params,
    parse_dataset,
    parse_params,
    with_overrides,
)

from conftest import REPO, repo_params_raw, tiny_params_raw

TRAIN_STAGE = REPO / "stages" / "train.py"


def repo_dataset_raw() -> dict:
    return yaml.safe_load((REPO / "dataset.yaml").read_text())


def fits(raw) -> Params:
    """What the validate stage checks: params `raw` on their own, then on the repository's dataset."""
    params = parse_params(raw)
    check_fits(params, load_dataset(REPO / "dataset.yaml"))
    return params


def rejected(raw, *fragments: str, source: str = "params.yaml", parse=fits) -> str:
    """parse(raw) must raise a one-line UserError starting with `source` and containing every
    fragment; return its message."""
    with pytest.raises(UserError) as info:
        parse(raw)
    message = str(info.value)
    assert message.startswith(f"{source}: "), message
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def with_value(section: str | None, key: str, value):
    raw = repo_params_raw()
    (raw if section is None else raw[section])[key] = value
    return raw


def dataset_rejected(raw, *fragments: str) -> str:
    return rejected(raw, *fragments, source="dataset.yaml", parse=parse_dataset)


def dataset_with(key: str, field: str | None, value) -> dict:
    raw = repo_dataset_raw()
    if field is None:
        raw[key] = value
    else:
        raw[key][field] = value
    return raw


# --- the repository's params.yaml ------------------------------------------------------------

def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.model.arch == "mlp" and params.model.hidden == [128, 64]
    assert params.train.batch_size == 64 and params.train.lr == pytest.approx(0.001)
    assert params.train.optimizer == "adam"
    assert params.data.num_classes == 10
    assert isinstance(params.train.lr, float) and isinstance(params.data.timeout_s, float)


def test_repository_dataset_loads_and_fits_the_params():
    dataset = load_dataset(REPO / "dataset.yaml")
    assert set(dataset.files) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert all(len(f.sha256) == 64 for f in dataset.files.values()) and dataset.mirrors
    check_fits(load_params(REPO / "params.yaml"), dataset)


def test_params_hold_knobs_only_with_the_most_swept_first():
    """The dataset's identity is not a param, and params.yaml's order is `dvc exp show`'s
    column order: the sections sweeps change come first."""
    raw = repo_params_raw()
    assert list(raw)[:3] == ["model", "train", "multiseed"]
    assert list(raw["data"]) == ["num_classes", "timeout_s", "retries"]
    assert not {"mirrors", "train_images", "sha256", "name"} & {k for v in raw.values() if isinstance(v, dict)
                                                                 for k in v}


def test_as_dict_round_trips():
    raw = repo_params_raw()
    again = parse_params(as_dict(parse_params(raw)))
    assert again == parse_params(raw)
    assert as_dict(again)["train"]["lr"] == raw["train"]["lr"]


def test_tiny_params_are_valid(tiny_params):
    assert tiny_params.train.device == "cpu" and tiny_params.data.retries == 0


def test_parse_params_does_not_mutate_input():
    raw = repo_params_raw()
    before = copy.deepcopy(raw)
    parse_params(raw)
    assert raw == before


def test_int_accepted_for_float():
    params = parse_params(with_value("train", "lr", 1))
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


def test_empty_hidden_is_logistic_regression():
    assert parse_params(with_value("model", "hidden", [])).model.hidden == []


def test_prepare_mean_and_std_both_set():
    raw = repo_params_raw()
    raw["prepare"].update(mean=0.1307, std=0.3081)
    params = parse_params(raw)
    assert (params.prepare.mean, params.prepare.std) == (pytest.approx(0.1307), pytest.approx(0.3081))


# --- rejected values: the message names the key ---------------------------------------------

@pytest.mark.parametrize("section, key, value, fragments", [
    ("train", "lr", -1, ["train.lr", "(0, 10]", "-1"]),
    ("train", "lr", 0, ["train.lr", "(0, 10]"]),
    ("train", "lr", "abc", ["train.lr", "expected a number", "'abc'"]),
    ("train", "batch_size", "abc", ["train.batch_size", "expected an integer", "'abc'"]),
    ("train", "batch_size", 0, ["train.batch_size", ">= 1"]),
    ("train", "batch_size", 64.0, ["train.batch_size", "expected an integer"]),
    ("train", "epochs", True, ["train.epochs", "expected an integer", "True"]),
    ("train", "lr", True, ["train.lr", "expected a number", "True"]),
    ("train", "tf32", 1, ["train.tf32", "expected true or false"]),
    ("train", "tf32", "yes please", ["train.tf32", "expected true or false"]),
    ("train", "optimizer", "rmsprop", ["train.optimizer", "'adam'", "'sgd'", "'rmsprop'"]),
    ("train", "device", "gpu", ["train.device", "'cuda'", "'gpu'"]),
    ("train", "momentum", 1.0, ["train.momentum", "[0, 1)"]),
    ("train", "weight_decay", -0.1, ["train.weight_decay", ">= 0"]),
    ("train", "label_smoothing", 1.0, ["train.label_smoothing", "[0, 1)"]),
    ("train", "processes", 0, ["train.processes", "1..64"]),
    ("train", "processes", 2.0, ["train.processes", "expected an integer"]),
    ("train", "processes", 65, ["train.processes", "1..64", "65"]),
    ("evaluate", "device", "tpu", ["evaluate.device", "'tpu'"]),
    ("evaluate", "batch_size", 0, ["evaluate.batch_size"]),
    ("model", "arch", "transformer", ["model.arch", "'mlp'"]),
    ("model", "hidden", 128, ["model.hidden", "expected a list"]),
    ("model", "hidden", [0], ["model.hidden[0]", "1..16384", "got 0"]),
    ("model", "hidden", [128, -5], ["model.hidden[1]", "got -5"]),
    ("model", "hidden", [128, "64"], ["model.hidden[1]", "expected an integer"]),
    ("data", "num_classes", 1, ["data.num_classes", "2..256"]),
    ("data", "timeout_s", 0, ["data.timeout_s", "(0, 3600]"]),
    ("data", "retries", 11, ["data.retries", "0..10"]),
    ("data", "retries", -1, ["data.retries", "0..10"]),
    ("data", "mirrors", [], ["data.mirrors", "unknown key"]),  # dataset.yaml's now
    ("prepare", "val_size", 0, ["prepare.val_size", ">= 1"]),
    ("prepare", "std", 0.3, ["prepare.mean", "both"]),
    ("report", "dpi", 10, ["report.dpi", "30..300"]),
    ("report", "sample_grid", 11, ["report.sample_grid", "1..10"]),
    ("report", "n_wrong", -1, ["report.n_wrong", "0..100"]),
    (None, "seed", -1, ["seed", "2**63"]),
    (None, "seed", 2**63, ["seed", "2**63"]),
    (None, "seed", "42", ["seed", "expected an integer"]),
])
def test_bad_value_names_key(section, key, value, fragments):
    rejected(with_value(section, key, value), *fragments)


def test_key_is_first_in_message():
    message = rejected(with_value("train", "lr", -1))
    assert message.startswith("params.yaml: train.lr: ")


def test_mean_set_but_std_null():
    raw = repo_params_raw()
    raw["prepare"].update(mean=0.13, std=None)
    rejected(raw, "prepare.mean", "both be numbers or both be null")


def test_std_must_be_positive():
    raw = repo_params_raw()
    raw["prepare"].update(mean=0.13, std=0.0)
    rejected(raw, "prepare.std", "> 0")


@pytest.mark.parametrize("sha, fragment", [
    ("abc", "'abc'"),
    ("BA891046E6505D7AADCBBE25680A0738AD16AEC93BDE7F9B65E87A2FC25776DB", "lowercase"),
    ("g" * 64, "64 lowercase hex"),
    ("a" * 65, "64 lowercase hex"),
])
def test_bad_sha256(sha, fragment):
    dataset_rejected(dataset_with("test_labels", "sha256", sha), "test_labels.sha256", fragment)


@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte", "../etc/passwd.gz", "sub/dir.gz"])
def test_bad_file_name(name):
    dataset_rejected(dataset_with("test_labels", "name", name), "test_labels.name", ".gz")


@pytest.mark.parametrize("key, value, fragments", [
    ("mirrors", [], ["mirrors", "at least one"]),
    ("mirrors", "http://x/", ["mirrors", "expected a list"]),
    ("mirrors", [""], ["mirrors[0]", "non-empty string"]),
    ("train_images", None, ["train_images", "expected a mapping"]),
])
def test_bad_dataset_value_names_key(key, value, fragments):
    dataset_rejected(dataset_with(key, None, value), *fragments)


def test_dataset_keys_are_checked_as_params_are():
    raw = repo_dataset_raw()
    raw["mirror"] = raw.pop("mirrors")
    dataset_rejected(raw, "mirror", "unknown key", "did you mean 'mirrors'")
    raw = repo_dataset_raw()
    del raw["train_images"]["sha256"]
    dataset_rejected(raw, "train_images.sha256", "missing")


# --- structure: unknown, misspelt and missing keys ------------------------------------------

@pytest.mark.parametrize("section, bad, correct", [
    ("train", "batchsize", "batch_size"),
    ("train", "optimiser", "optimizer"),
    ("model", "hiden", "hidden"),
    ("data", "retry", "retries"),
])
def test_misspelt_key_suggests(section, bad, correct):
    raw = repo_params_raw()
    raw[section][bad] = raw[section].pop(correct)
    rejected(raw, f"{section}.{bad}", "unknown key", f"did you mean {correct!r}")


def test_misspelt_section_suggests():
    raw = repo_params_raw()
    raw["trian"] = raw.pop("train")
    rejected(raw, "trian", "unknown key", "did you mean 'train'")


def test_unknown_key_lists_known_keys():
    raw = repo_params_raw()
    raw["train"]["learning_rate"] = 0.01
    rejected(raw, "train.learning_rate", "unknown key", "lr", "batch_size")


def test_extra_key_is_an_error_even_if_everything_else_is_set():
    raw = repo_params_raw()
    raw["model"]["dropout"] = 0.5
    rejected(raw, "model.dropout", "unknown key")


@pytest.mark.parametrize("section, key", [
    ("train", "lr"), ("data", "num_classes"), ("prepare", "mean"), (None, "seed"), (None, "report"),
])
def test_missing_key(section, key):
    raw = repo_params_raw()
    del (raw if section is None else raw[section])[key]
    rejected(raw, key if section is None else f"{section}.{key}", "missing")


def test_missing_nested_key():
    raw = repo_params_raw()
    del raw["model"]["cnn"]["fc"]
    rejected(raw, "model.cnn.fc", "missing")


@pytest.mark.parametrize("raw", [None, [], "seed: 1", 42])
def test_top_level_not_a_mapping(raw):
    rejected(raw, "top level", "expected a mapping")


def test_section_not_a_mapping():
    rejected(with_value(None, "train", [1, 2]), "train", "expected a mapping")


# --- non-finite numbers ---------------------------------------------------------------------

def test_infinite_timeout_rejected():
    rejected(with_value("data", "timeout_s", math.inf), "data.timeout_s")


def test_nan_mean_rejected():
    raw = repo_params_raw()
    raw["prepare"].update(mean=math.nan, std=0.3)
    rejected(raw, "prepare.mean")


def test_nan_lr_rejected():
    rejected(with_value("train", "lr", math.nan), "train.lr")


# --- load_params: the file itself -----------------------------------------------------------

def test_load_params_from_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(repo_params_raw()))
    assert load_params(path) == parse_params(repo_params_raw())


def test_load_params_error_names_the_file(tmp_path):
    raw = repo_params_raw()
    raw["train"]["lr"] = -1
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"custom\.yaml: train\.lr: "):
        load_params(path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: [0.1\n  epochs: 3\n")
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message and "not valid YAML" in message and "line" in message


def test_tab_indented_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n\tlr: 0.1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(path)


def test_empty_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    with pytest.raises(UserError, match="expected a mapping"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_yaml_exponent_without_dot(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; a number param still accepts it."""
    text = (REPO / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-3")
    assert "lr: 1e-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).train.lr == 0.001


def test_numeric_string_for_an_int_is_still_rejected():
    rejected(with_value("train", "batch_size", "64"), "train.batch_size", "expected an integer")


# --- a stage with bad params: one line, exit 2, no traceback, no outputs -------------------

def test_train_stage_with_bad_params(tmp_path):
    """The real entry script, in a directory holding only a bad params.yaml (one subprocess:
    importing torch costs seconds, and the error path is the same for every bad key)."""
    raw = tiny_params_raw()
    raw["train"]["lr"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    result = subprocess.run([sys.executable, str(TRAIN_STAGE)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: params.yaml: train.lr: "), lines[0]
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no data/, models/, ...


# --- hostile files: refused quickly, before any value is built -------------------------------

BASE_TEXT = (REPO / "params.yaml").read_text()

# A small "billion laughs": three levels of nine aliases (the full nine levels, 9**9 strings,
# is tested on the validate stage, in a process with capped memory).
LAUGHS = ('lol0: &lol0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
          + "".join(f"lol{i}: &lol{i} [{','.join([f'*lol{i - 1}'] * 9)}]\n" for i in range(1, 3)))


@pytest.fixture(params=["libyaml", "python"])
def yaml_loader(request, monkeypatch):
    """Both of PyYAML's loaders: the C one where PyYAML was built with libyaml, else pure Python."""
    from mnistpipe import params

    if request.param == "libyaml":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.skip("PyYAML without libyaml")
        monkeypatch.setattr(params, "_YAML_LOADER", yaml.CSafeLoader, raising=False)
    else:
        monkeypatch.setattr(params, "_YAML_LOADER", yaml.SafeLoader, raising=False)


def load_text(tmp_path, text: str) -> str:
    """load_params on `text` must raise a one-line UserError naming the file; return the rest
    of its message (the path holds the test's name)."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message.removeprefix(str(path))


@pytest.mark.parametrize("text", [
    LAUGHS + BASE_TEXT,  # refused for the aliases alone, so no bomb ever goes off
    BASE_TEXT.replace("lr: 0.001", "lr: &lr 0.001").replace("batch_size: 10000", "batch_size: *lr"),
    BASE_TEXT.replace("evaluate:\n", "base: &d {device: auto}\nevaluate:\n  <<: *d\n"),  # a merge key
])
def test_aliases_refused(tmp_path, yaml_loader, text):
    message = load_text(tmp_path, text)
    assert "alias" in message and "line " in message


@pytest.mark.parametrize("text", [
    "a: " + "[" * 20000 + "]" * 20000 + "\n",
    "a: " + "{b: " * 5000 + "1" + "}" * 5000 + "\n",
    "".join(" " * i + "k:\n" for i in range(300)) + " " * 300 + "v\n",  # block style
])
def test_deep_nesting_refused(tmp_path, yaml_loader, text):
    assert "nest" in load_text(tmp_path, text)  # ours, or libyaml's own limit of 1000 levels


def test_an_anchor_without_alias_is_harmless(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(BASE_TEXT.replace("lr: 0.001", "lr: &lr 0.001"))
    assert load_params(path) == load_params(REPO / "params.yaml")


def test_oversized_file_refused(tmp_path):
    message = load_text(tmp_path, BASE_TEXT + "#" * 70_000 + "\n")
    assert "larger than" in message


def test_huge_integer_literal_refused(tmp_path):
    message = load_text(tmp_path, BASE_TEXT.replace("seed: 42", "seed: " + "9" * 5000))
    assert "cannot read" in message


def test_not_utf8_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(BASE_TEXT.encode() + b"# caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_params(path)


def test_syntax_error_is_one_line_with_its_place(tmp_path):
    message = load_text(tmp_path, "train:\n  lr: [0.1\n  epochs: 3\n")
    assert "not valid YAML" in message and "line 3" in message


DATASET_TEXT = (REPO / "dataset.yaml").read_text()


@pytest.mark.parametrize("text, fragment", [
    (LAUGHS + DATASET_TEXT, "alias"),
    ("a: " + "[" * 20000 + "]" * 20000 + "\n", "nest"),
    (DATASET_TEXT + "#" * 70_000 + "\n", "larger than"),
    ("mirrors: [http://x/\n", "not valid YAML"),
    (DATASET_TEXT.replace("mirrors:", "mirrorz:"), "did you mean 'mirrors'"),
])
def test_dataset_file_is_read_as_params_are(tmp_path, yaml_loader, text, fragment):
    """dataset.yaml goes through the same bounded loader: one line naming the file."""
    path = tmp_path / "dataset.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and fragment in message, message


def test_missing_dataset_file(tmp_path):
    with pytest.raises(UserError, match=r"dataset\.yaml not found"):
        load_dataset(tmp_path / "dataset.yaml")


# --- values validate once accepted that no stage could run ----------------------------------

@pytest.mark.parametrize("section, key, value, fragments", [
    ("model", "hidden", [1_000_000_000], ["model.hidden[0]", "1..16384", "1000000000"]),
    ("model", "hidden", [16384, 16384, 16384], ["model.hidden", "parameters", "100,000,000"]),
    ("model", "hidden", [8] * 65, ["model.hidden", "at most 64"]),
    ("train", "epochs", 10**100, ["train.epochs", "1..1000"]),
    ("train", "epochs", 1e100, ["train.epochs", "expected an integer"]),
    ("train", "epochs", "1e100", ["train.epochs", "expected an integer"]),
    ("train", "processes", 100_000, ["train.processes", "1..64", "100000"]),
    ("train", "batch_size", 55_001, ["train.batch_size", "training split", "55000", "55001"]),
    ("prepare", "val_size", 60_000, ["prepare.val_size", "at most 59999"]),
    ("train", "lr", 10**400, ["train.lr", "finite"]),
    ("multiseed", "seeds", list(range(101)), ["multiseed.seeds", "at most 100"]),
])
def test_unrunnable_value_names_key(section, key, value, fragments):
    rejected(with_value(section, key, value), *fragments)


def test_largest_runnable_values_accepted():
    raw = repo_params_raw()
    raw["train"].update(batch_size=55_000, epochs=1000, processes=64)
    raw["model"]["hidden"] = [16384, 4096]
    raw["multiseed"]["seeds"] = list(range(100))
    assert fits(raw).train.batch_size == 55_000


def test_the_size_rules_hold_for_an_unknown_dataset_too():
    """A dataset of unknown checksums: its image size is assumed, so the network's size is still capped."""
    dataset = parse_dataset(dataset_with("train_images", "sha256", "0" * 64))
    assert dataset.shape is None
    check_fits(parse_params(with_value("train", "batch_size", 10**6)), dataset)  # sizes unknown: not checked
    with pytest.raises(UserError, match="params.yaml: model.hidden: makes a network of"):
        check_fits(parse_params(with_value("model", "hidden", [16384, 16384, 16384])), dataset)


@pytest.mark.parametrize("name", ["train\0.gz", "a\\b.gz", "tab\there.gz", "x" * 200 + ".gz"])
def test_unusable_file_name(name):
    dataset_rejected(dataset_with("test_labels", "name", name), "test_labels.name", "plain file name")


@pytest.mark.parametrize("name", ["train-labels-idx1-ubyte.gz", "TRAIN-labels-idx1-ubyte.gz"])
def test_two_files_with_one_name(name):
    dataset_rejected(dataset_with("test_labels", "name", name), "test_labels.name",
                     "must differ from train_labels.name")


def cnn_raw(channels: list[int]) -> dict:
    raw = repo_params_raw()
    raw["model"]["arch"] = "cnn"
    raw["model"]["cnn"]["channels"] = channels
    return raw


@pytest.fixture
def small_images(monkeypatch):
    """The repository's dataset as if its images were 8x8 (at most 3 pooling blocks)."""
    from mnistpipe import params

    key = next(iter(params.KNOWN_DATA))
    monkeypatch.setitem(params.KNOWN_DATA, key, params.DataShape(60000, 10000, (8, 8)))


def test_cnn_deeper_than_the_images_allow(small_images):
    fits(cnn_raw([4, 4, 4]))
    rejected(cnn_raw([4, 4, 4, 4]), "model.cnn.channels", "8x8", "at most 3")


def test_empty_test_set_refused(monkeypatch):
    from mnistpipe import params

    key = next(iter(params.KNOWN_DATA))
    monkeypatch.setitem(params.KNOWN_DATA, key, params.DataShape(60000, 0, (28, 28)))
    dataset_rejected(repo_dataset_raw(), "test_images", "no images")


def test_known_data_is_the_repository_dataset():
    """The sizes used for the cross-field rules belong to the checksums dataset.yaml pins."""
    from mnistpipe.params import DataShape

    assert load_dataset(REPO / "dataset.yaml").shape == DataShape(60000, 10000, (28, 28))


def test_cnn_as_deep_as_mnist_allows():
    """28 -> 14 -> 7 -> 3 -> 1: four blocks fit MNIST's images, and such a network runs."""
    import torch

    from mnistpipe.models import build_model, model_spec

    params = parse_params(cnn_raw([4, 4, 4, 4]))
    net = build_model(model_spec(params.model, (28, 28), 10))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


# --- properties ------------------------------------------------------------------------------

widths = st.lists(st.integers(1, 24), max_size=4)


@settings(max_examples=40, deadline=None)
@given(arch=st.sampled_from(["mlp", "cnn"]), hidden=widths, channels=widths.filter(bool),
       fc=st.integers(1, 24), side=st.integers(1, 40), num_classes=st.integers(2, 12))
def test_parameter_count_is_the_models(arch, hidden, channels, fc, side, num_classes):
    """params.py counts without torch what models.py builds."""
    from mnistpipe.models import build_model, count_parameters, model_spec
    from mnistpipe.params import CNNConfig, ModelConfig, max_pool_blocks, parameter_count

    config = ModelConfig(arch, hidden, CNNConfig(channels, fc, 0.0))
    shape = (side, side + 3)
    if arch == "cnn" and len(channels) > max_pool_blocks(shape):
        return  # refused by validation; such a network fails on its first batch
    net = build_model(model_spec(config, shape, num_classes))
    assert parameter_count(config, shape, num_classes) == count_parameters(net)


@pytest.mark.parametrize("side, blocks", [(1, 0), (2, 1), (3, 1), (7, 2), (8, 3), (28, 4), (32, 5)])
def test_max_pool_blocks(side, blocks):
    """A side s allows floor(log2 s) halvings before it would reach zero."""
    import torch
    from torch import nn

    from mnistpipe.params import max_pool_blocks

    assert max_pool_blocks((side, side + 5)) == blocks
    x = torch.zeros(1, 1, side, side)
    for _ in range(blocks):
        x = nn.MaxPool2d(2)(x)
    assert x.shape[-1] >= 1
    with pytest.raises(RuntimeError):
        nn.MaxPool2d(2)(x)


hostile = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(300, 1200).map(lambda n: 10**n) | st.floats()
    | st.text(max_size=30) | st.integers(5000, 6000).map(lambda n: "\0x" * n),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def paths_in(raw: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in raw.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += paths_in(v, (*prefix, k))
    return out


PATHS = paths_in(repo_params_raw())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(PATHS), value=hostile)
def test_any_value_gives_a_short_user_error_or_params(where, value):
    """Whatever value lands at whatever key: valid params, or one short line naming the key."""
    raw = repo_params_raw()
    node = raw
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    try:
        parse_params(raw)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 400, message
        assert message.startswith(f"params.yaml: {where[0]}"), message


def test_overrides_set_dotted_keys_and_validate_again():
    params = parse_params(repo_params_raw())
    changed = with_overrides(params, {"train.lr": 0.01, "model.cnn.fc": 64, "seed": 7})
    assert (changed.train.lr, changed.model.cnn.fc, changed.seed) == (0.01, 64, 7)
    assert changed.train.epochs == params.train.epochs and params.train.lr != 0.01  # the original is untouched
    with pytest.raises(UserError, match="train.lrr: no such key"):
        with_overrides(params, {"train.lrr": 0.01})
    with pytest.raises(UserError, match="train.epochs"):
        with_overrides(params, {"train.epochs": 0})
