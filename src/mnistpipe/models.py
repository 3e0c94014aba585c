"""Network architectures, built from a ModelSpec (stored in checkpoints as a plain dict)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .params import ModelConfig


class MLP(nn.Sequential):
    """Flatten, then Linear+ReLU for each hidden width, then a Linear to the classes."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int):
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """Blocks of conv3x3-maxpool-BatchNorm-ReLU, then dropout, a dense layer and the classifier."""

    def __init__(self, image_shape: tuple[int, int], channels: list[int], fc: int,
                 dropout: float, num_classes: int):
        layers: list[nn.Module] = []
        c_in, (h, w) = 1, image_shape
        for c_out in channels:
            # No conv bias: BatchNorm's shift makes it redundant. Pooling first: BatchNorm and ReLU
            # then work on a quarter of the values, at the same accuracy (benchmarks/RESULTS.md).
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2),
                       nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in, h, w = c_out, h // 2, w // 2
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * h * w, fc), nn.ReLU(),
                   nn.Dropout(dropout), nn.Linear(fc, num_classes)]
        super().__init__(*layers)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: its architecture's sizes and the data's shape.
    Checkpoints store it as the plain dict `to_dict` gives; `from_dict` reads it back, checked."""
    arch: str  # "mlp" or "cnn"
    image_shape: tuple[int, int]
    num_classes: int
    hidden: tuple[int, ...] = ()  # mlp: hidden widths
    channels: tuple[int, ...] = ()  # cnn: channels per conv block
    fc: int = 0  # cnn: width of the dense layer
    dropout: float = 0.0  # cnn

    def to_dict(self) -> dict[str, Any]:
        common = {"arch": self.arch, "image_shape": list(self.image_shape), "num_classes": self.num_classes}
        if self.arch == "mlp":
            return {**common, "hidden": list(self.hidden)}
        return {**common, "channels": list(self.channels), "fc": self.fc, "dropout": self.dropout}

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSpec:
        """The spec a dict describes; ValueError unless it names a known architecture with
        well-formed sizes. How large the sizes are is not judged here: a checkpoint's are
        checked against its weights' shapes."""
        keys = _check_keys(raw)
        _sizes(raw, "image_shape", 2)
        _sizes(raw, keys[0])
        for key in ["num_classes", *keys[1:2]]:
            if not _positive(raw[key]):
                raise ValueError(f"spec {key} must be a positive integer, not {raw[key]!r}")
        dropout = raw.get("dropout", 0.0)
        if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
            raise ValueError(f"spec dropout must be a number in [0, 1), not {dropout!r}")
        sizes = {key: tuple(raw[key]) if key in ("hidden", "channels") else raw[key] for key in keys}
        return cls(raw["arch"], tuple(raw["image_shape"]), raw["num_classes"], **sizes)


def model_spec(config: ModelConfig, image_shape: tuple[int, int], num_classes: int) -> ModelSpec:
    """The spec of params' model for images of `image_shape` and `num_classes` classes."""
    if config.arch == "mlp":
        return ModelSpec("mlp", tuple(image_shape), num_classes, hidden=tuple(config.hidden))
    return ModelSpec("cnn", tuple(image_shape), num_classes, channels=tuple(config.cnn.channels),
                     fc=config.cnn.fc, dropout=config.cnn.dropout)


# Far deeper than any useful network here: bounds the work of building a spec read from a file.
MAX_LAYERS = 1000


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_keys(raw: Any) -> list[str]:
    """The architecture's own keys, once `raw` is a mapping with every key the architecture needs."""
    if not isinstance(raw, dict):
        raise ValueError(f"the spec is a {type(raw).__name__}, not a mapping")
    keys = {"mlp": ["hidden"], "cnn": ["channels", "fc", "dropout"]}.get(raw.get("arch"))
    if keys is None:
        raise ValueError(f"unknown architecture {raw.get('arch')!r}")
    missing = [k for k in ["image_shape", "num_classes", *keys] if k not in raw]
    if missing:
        raise ValueError(f"the spec lacks {', '.join(missing)}")
    return keys


def _sizes(raw: dict[str, Any], key: str, count: int | None = None) -> None:
    """ValueError unless raw[key] is a list of positive integers (`count` of them, if given)."""
    values = raw[key]
    if not isinstance(values, (list, tuple)) or (count is not None and len(values) != count):
        raise ValueError(f"spec {key} must be a list of {count or 'some'} sizes, not {values!r}")
    if len(values) > MAX_LAYERS:
        raise ValueError(f"spec {key} lists {len(values):,} sizes, over the limit of {MAX_LAYERS}")
    if not all(map(_positive, values)):
        raise ValueError(f"spec {key} must hold positive integers, not {values!r}")


def build_model(spec: ModelSpec) -> nn.Module:
    """The network a spec describes. Build it under `torch.device("meta")` to learn its
    shapes without allocating anything."""
    h, w = spec.image_shape
    if spec.arch == "mlp":
        return MLP(h * w, list(spec.hidden), spec.num_classes)
    return CNN((h, w), list(spec.channels), spec.fc, spec.dropout, spec.num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(spec: ModelSpec) -> str:
    """A short human name, e.g. 'MLP 784-128-64-10'."""
    h, w = spec.image_shape
    if spec.arch == "mlp":
        return "MLP " + "-".join(str(n) for n in [h * w, *spec.hidden, spec.num_classes])
    return f"CNN {'-'.join(map(str, spec.channels))} fc{spec.fc}"


def layer_table(model: nn.Module, image_shape: tuple[int, int]) -> list[tuple[str, str, int]]:
    """(layer, output shape, parameter count) for each leaf module, traced on one input."""
    rows: list[tuple[str, str, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            def hook(mod, _inp, out, name=name):
                rows.append((f"{name}: {mod.__class__.__name__}", str(list(out.shape[1:])),
                             sum(p.numel() for p in mod.parameters())))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        model(torch.zeros(1, 1, *image_shape))
    model.train(was_training)
    for handle in hooks:
        handle.remove()
    return rows
