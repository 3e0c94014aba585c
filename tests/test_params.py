"""params.yaml validation (mnistpipe.params): every mistake is a UserError naming the key."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import yaml

from mnistpipe.errors import UserError
from mnistpipe.params import Params, as_dict, load_params, parse_params

from conftest import REPO, repo_params_raw, tiny_params_raw

TRAIN_STAGE = REPO / "stages" / "train.py"


def rejected(raw, *fragments: str, source: str = "params.yaml") -> str:
    """parse_params(raw) must raise a UserError containing every fragment; return its message."""
    with pytest.raises(UserError) as info:
        parse_params(raw)
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


# --- the repository's params.yaml ------------------------------------------------------------

def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.model.arch == "mlp" and params.model.hidden == [128, 64]
    assert params.train.batch_size == 64 and params.train.lr == pytest.approx(0.001)
    assert params.train.optimizer == "adam"
    assert params.data.num_classes == 10
    assert set(params.data.files) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert all(len(f.sha256) == 64 for f in params.data.files.values())
    assert isinstance(params.train.lr, float) and isinstance(params.data.timeout_s, float)


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
    ("train", "processes", 0, ["train.processes", ">= 1"]),
    ("train", "processes", 2.0, ["train.processes", "expected an integer"]),
    ("train", "processes", 65, ["train.processes", "<= train.batch_size (64)"]),
    ("evaluate", "device", "tpu", ["evaluate.device", "'tpu'"]),
    ("evaluate", "batch_size", 0, ["evaluate.batch_size"]),
    ("model", "arch", "transformer", ["model.arch", "'mlp'"]),
    ("model", "hidden", 128, ["model.hidden", "expected a list"]),
    ("model", "hidden", [0], ["model.hidden[0]", ">= 1", "got 0"]),
    ("model", "hidden", [128, -5], ["model.hidden[1]", "got -5"]),
    ("model", "hidden", [128, "64"], ["model.hidden[1]", "expected an integer"]),
    ("data", "num_classes", 1, ["data.num_classes", "2..256"]),
    ("data", "timeout_s", 0, ["data.timeout_s", "(0, 3600]"]),
    ("data", "retries", 11, ["data.retries", "0..10"]),
    ("data", "retries", -1, ["data.retries", "0..10"]),
    ("data", "mirrors", [], ["data.mirrors", "at least one"]),
    ("data", "mirrors", "http://x/", ["data.mirrors", "expected a list"]),
    ("data", "mirrors", [""], ["data.mirrors[0]", "non-empty string"]),
    ("data", "train_images", None, ["data.train_images", "expected a mapping"]),
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
    raw = repo_params_raw()
    raw["data"]["test_labels"]["sha256"] = sha
    rejected(raw, "data.test_labels.sha256", fragment)


@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte", "../etc/passwd.gz", "sub/dir.gz"])
def test_bad_file_name(name):
    raw = repo_params_raw()
    raw["data"]["test_labels"]["name"] = name
    rejected(raw, "data.test_labels.name", ".gz")


# --- structure: unknown, misspelt and missing keys ------------------------------------------

@pytest.mark.parametrize("section, bad, correct", [
    ("train", "batchsize", "batch_size"),
    ("train", "optimiser", "optimizer"),
    ("model", "hiden", "hidden"),
    ("data", "mirror", "mirrors"),
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
    del raw["data"]["train_images"]["sha256"]
    rejected(raw, "data.train_images.sha256", "missing")


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
    raw = tiny_params_raw({})
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
