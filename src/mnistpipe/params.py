"""params.yaml -> validated, typed config.

Every key is required and every unknown key is an error: params.yaml is the one
source of truth, so the code holds no defaults that could silently differ from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError

Device = Literal["auto", "cpu", "cuda", "mps"]


@dataclass(frozen=True)
class DataFile:
    name: str  # file name on the mirror, e.g. train-images-idx3-ubyte.gz
    sha256: str  # SHA-256 of the *decompressed* content

    def validate(self, key: str) -> None:
        _check(re.fullmatch(r"[0-9a-f]{64}", self.sha256), f"{key}.sha256",
               f"must be 64 lowercase hex digits, got {self.sha256!r}")
        _check(self.name.endswith(".gz") and "/" not in self.name, f"{key}.name",
               f"must be a plain file name ending in .gz, got {self.name!r}")


@dataclass(frozen=True)
class DataConfig:
    mirrors: list[str]
    train_images: DataFile
    train_labels: DataFile
    test_images: DataFile
    test_labels: DataFile
    num_classes: int
    timeout_s: float
    retries: int

    def validate(self, key: str) -> None:
        _check(self.mirrors, f"{key}.mirrors", "must list at least one mirror")
        _check(2 <= self.num_classes <= 256, f"{key}.num_classes", "must be in 2..256")
        _check(0 < self.timeout_s <= 3600, f"{key}.timeout_s", "must be in (0, 3600]")
        _check(0 <= self.retries <= 10, f"{key}.retries", "must be in 0..10")

    @property
    def files(self) -> dict[str, DataFile]:
        return {"train_images": self.train_images, "train_labels": self.train_labels,
                "test_images": self.test_images, "test_labels": self.test_labels}


@dataclass(frozen=True)
class PrepareConfig:
    val_size: int
    mean: float | None  # null: computed from the training split
    std: float | None

    def validate(self, key: str) -> None:
        _check(self.val_size >= 1, f"{key}.val_size", "must be >= 1 (validation curves need it)")
        _check((self.mean is None) == (self.std is None), f"{key}.mean",
               "mean and std must both be numbers or both be null")
        _check(self.std is None or self.std > 0, f"{key}.std", "must be > 0")


@dataclass(frozen=True)
class CNNConfig:
    channels: list[int]  # one conv3x3-BN-ReLU-maxpool block per entry
    fc: int  # width of the dense layer before the classifier
    dropout: float

    def validate(self, key: str) -> None:
        _check(1 <= len(self.channels) <= 4, f"{key}.channels", "must list 1 to 4 widths")
        for i, width in enumerate(self.channels):
            _check(width >= 1, f"{key}.channels[{i}]", f"must be >= 1, got {width}")
        _check(self.fc >= 1, f"{key}.fc", "must be >= 1")
        _check(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["mlp", "cnn"]
    hidden: list[int]  # MLP hidden widths; [] is logistic regression
    cnn: CNNConfig

    def validate(self, key: str) -> None:
        for i, width in enumerate(self.hidden):
            _check(width >= 1, f"{key}.hidden[{i}]", f"must be >= 1, got {width}")


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool
    shift: float  # pixels, at most, each way
    rotate: float  # degrees, at most, each way
    scale: float  # relative, at most, each way

    def validate(self, key: str) -> None:
        _check(0 <= self.shift <= 8, f"{key}.shift", "must be in [0, 8] pixels")
        _check(0 <= self.rotate <= 45, f"{key}.rotate", "must be in [0, 45] degrees")
        _check(0 <= self.scale < 0.5, f"{key}.scale", "must be in [0, 0.5)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float  # the peak rate with the onecycle schedule
    schedule: Literal["constant", "onecycle"]
    optimizer: Literal["adam", "sgd"]
    momentum: float  # SGD only
    weight_decay: float
    label_smoothing: float  # targets (1 - e) on the label, e spread evenly over every class
    augment: AugmentConfig
    device: Device
    tf32: bool  # TF32 matmuls on CUDA: faster, less comparable across devices
    processes: int  # data-parallel processes (torchrun + DDP); batch_size is their global batch

    def validate(self, key: str) -> None:
        _check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(self.processes >= 1, f"{key}.processes", "must be >= 1")
        _check(self.processes <= self.batch_size, f"{key}.processes",
               f"must be <= {key}.batch_size ({self.batch_size}): each process takes a share of every batch")
        _check(0 < self.lr <= 10, f"{key}.lr", f"must be in (0, 10], got {self.lr}")
        _check(0 <= self.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _check(0 <= self.label_smoothing < 1, f"{key}.label_smoothing", "must be in [0, 1)")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int
    device: Device

    def validate(self, key: str) -> None:
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")


@dataclass(frozen=True)
class ReportConfig:
    sample_grid: int  # the sample figure shows sample_grid x sample_grid digits
    n_wrong: int  # most confidently wrong test digits in the gallery
    dpi: int

    def validate(self, key: str) -> None:
        _check(1 <= self.sample_grid <= 10, f"{key}.sample_grid", "must be in 1..10")
        _check(0 <= self.n_wrong <= 100, f"{key}.n_wrong", "must be in 0..100")
        _check(30 <= self.dpi <= 300, f"{key}.dpi", "must be in 30..300")


@dataclass(frozen=True)
class MultiSeedConfig:
    seeds: list[int]  # extra training seeds; [] skips the multi-seed summary

    def validate(self, key: str) -> None:
        _check(len(set(self.seeds)) == len(self.seeds), f"{key}.seeds", "must not repeat a seed")
        for i, s in enumerate(self.seeds):
            _check(0 <= s < 2**63, f"{key}.seeds[{i}]", "must be in 0..2**63-1")


@dataclass(frozen=True)
class Params:
    seed: int
    numerics: Literal["portable", "fast"]  # see numerics.py
    data: DataConfig
    prepare: PrepareConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    report: ReportConfig
    multiseed: MultiSeedConfig

    def validate(self, key: str) -> None:
        _check(0 <= self.seed < 2**63, "seed", "must be in 0..2**63-1")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every problem is a UserError naming the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run from the repository root") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    try:
        return _build(Params, raw, "")
    except _ParamError as exc:
        raise UserError(f"{source}: {exc}") from None


def as_dict(obj: Any) -> Any:
    """Params (or a section) back to plain YAML-able data."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


# The engine: a dataclass's type hints say what each key holds; its validate() holds the rules
# types can't say. pydantic v2 was tried instead (issue 15): keeping these messages took an
# error-translation table about as long as this engine (274 -> 266 lines) and made importing
# this module 3x slower (about 30 -> 100 ms), so a dependency wasn't worth it.

class _ParamError(Exception):
    """One problem, as "key: what is wrong and what to write instead"."""


def _check(condition: Any, key: str, message: str) -> None:
    if not condition:
        raise _ParamError(f"{key}: {message}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, raw: Any, key: str) -> Any:
    _check(isinstance(raw, dict), key or "(top level)", f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name in raw:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(names)}"
            raise _ParamError(f"{_join(key, str(name))}: unknown key ({hint})")
    for name in names:
        _check(name in raw, _join(key, name), "missing (every key must be set in params.yaml)")
    obj = cls(**{name: _convert(hints[name], raw[name], _join(key, name)) for name in names})
    obj.validate(key)
    return obj


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key)
    if origin is Literal:
        _check(value in args, key, f"must be one of {', '.join(map(repr, args))}; got {value!r}")
        return value
    if origin is list:
        _check(isinstance(value, list), key, f"expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        _check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _check(ok, key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(ok, key, f"expected a number, got {value!r}")
        _check(math.isfinite(value), key, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        _check(isinstance(value, str) and value, key, f"expected a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported param type {hint!r} for {key}")  # a bug, not user error
