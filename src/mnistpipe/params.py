"""params.yaml and dataset.yaml -> validated, typed config.

params.yaml holds the knobs (what `dvc exp run -S` changes and `dvc exp show` lists);
dataset.yaml the dataset's identity: each file's name and the SHA-256 of its decompressed
content, and the mirrors to look in. The dataset is not a knob, so it stays out of DVC's
params (and out of `dvc exp show`'s columns); the stages that read it list it as a file dep.

Every key is required and every unknown key is an error: the two files are the one source
of truth, so the code holds no defaults that could silently differ from them.

Both are read as untrusted input: a loader that refuses YAML aliases and deep nesting
before building any value, and bounds on every size and cross-field rules (`check_fits`
for the rules that need both files), so that whatever passes here can run to the end
instead of failing after DVC deleted the outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from . import paths
from .errors import UserError

Device = Literal["auto", "cpu", "cuda", "mps"]

MAX_FILE_BYTES = 1 << 16  # params.yaml is about 3 KB; reading 64 KB takes a fraction of a second
MAX_DEPTH = 16  # params.yaml nests 3 deep, dataset.yaml 2
MAX_WIDTH = 16384  # units or channels in one layer
MAX_LAYERS = 64  # MLP hidden layers
MAX_PARAMETERS = 100_000_000  # ~900x the default MLP (109,386): 1.6 GB with Adam's state
MAX_EPOCHS = 1000  # the recipes train 10 to 30
# Whether params are valid must not depend on the machine that checks them; the train stage
# checks the GPU count. 64 covers the GPUs of any one node and every core share worth a process.
MAX_PROCESSES = 64
MAX_SEEDS = 100  # each is a full training run


@dataclass(frozen=True)
class DataShape:
    """What params alone cannot say about a dataset: how many images, of what size."""
    n_train: int
    n_test: int
    image_shape: tuple[int, int]


# Keyed by the SHA-256 of the decompressed (training images, test images): the pinned MNIST.
# Rules that need these sizes are checked here only for known datasets.
KNOWN_DATA = {
    ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
     "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"): DataShape(60000, 10000, (28, 28)),
}
ASSUMED_IMAGE_SHAPE = (28, 28)  # for counting parameters of an unknown IDX dataset's network


@dataclass(frozen=True)
class DataFile:
    name: str  # file name on the mirror, e.g. train-images-idx3-ubyte.gz
    sha256: str  # SHA-256 of the *decompressed* content

    def validate(self, key: str) -> None:
        _check(re.fullmatch(r"[0-9a-f]{64}", self.sha256), f"{key}.sha256",
               "must be 64 lowercase hex digits", self.sha256)
        plain = self.name.isprintable() and not {"/", "\\"} & set(self.name) and len(self.name) <= 200
        _check(plain and self.name.endswith(".gz"), f"{key}.name", "must be a plain file name ending in "
               ".gz (at most 200 characters, no '/', '\\' or control characters such as NUL)", self.name)


@dataclass(frozen=True)
class Dataset:
    """dataset.yaml: the four IDX files (name, checksum) and where to fetch them."""
    mirrors: list[str]
    train_images: DataFile
    train_labels: DataFile
    test_images: DataFile
    test_labels: DataFile

    def validate(self, key: str) -> None:
        _check(self.mirrors, _join(key, "mirrors"), "must list at least one mirror")
        seen: dict[str, str] = {}
        for name, file in self.files.items():
            # casefold: on macOS and Windows file systems, names that differ in case are one file
            other = seen.setdefault(file.name.casefold(), name)
            _check(other == name, _join(key, f"{name}.name"), f"must differ from {_join(key, other)}.name: "
                   "each file is saved under its name", file.name)
        shape = self.shape
        _check(shape is None or shape.n_test >= 1, _join(key, "test_images"),
               "holds no images; evaluation needs a test set")

    @property
    def shape(self) -> DataShape | None:
        """The dataset's sizes, if its checksums are those of a known dataset."""
        return KNOWN_DATA.get((self.train_images.sha256, self.test_images.sha256))

    @property
    def files(self) -> dict[str, DataFile]:
        return {"train_images": self.train_images, "train_labels": self.train_labels,
                "test_images": self.test_images, "test_labels": self.test_labels}


@dataclass(frozen=True)
class DataConfig:
    """params.yaml's data section: the knobs of reading the dataset, not its identity."""
    num_classes: int
    timeout_s: float  # one file's whole download
    retries: int  # extra attempts per mirror and file

    def validate(self, key: str) -> None:
        _check(2 <= self.num_classes <= 256, f"{key}.num_classes", "must be in 2..256")
        _check(0 < self.timeout_s <= 3600, f"{key}.timeout_s", "must be in (0, 3600]")
        _check(0 <= self.retries <= 10, f"{key}.retries", "must be in 0..10")


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
    channels: list[int]  # one conv3x3-maxpool-BN-ReLU block per entry
    fc: int  # width of the dense layer before the classifier
    dropout: float

    def validate(self, key: str) -> None:
        _check(1 <= len(self.channels) <= 4, f"{key}.channels", "must list 1 to 4 widths")
        for i, width in enumerate(self.channels):
            _check(1 <= width <= MAX_WIDTH, f"{key}.channels[{i}]", f"must be in 1..{MAX_WIDTH}", width)
        _check(1 <= self.fc <= MAX_WIDTH, f"{key}.fc", f"must be in 1..{MAX_WIDTH}", self.fc)
        _check(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["mlp", "cnn"]
    hidden: list[int]  # MLP hidden widths; [] is logistic regression
    cnn: CNNConfig

    def validate(self, key: str) -> None:
        _check(len(self.hidden) <= MAX_LAYERS, f"{key}.hidden", f"must list at most {MAX_LAYERS} widths")
        for i, width in enumerate(self.hidden):
            _check(1 <= width <= MAX_WIDTH, f"{key}.hidden[{i}]", f"must be in 1..{MAX_WIDTH}", width)


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
        _check(1 <= self.epochs <= MAX_EPOCHS, f"{key}.epochs", f"must be in 1..{MAX_EPOCHS}", self.epochs)
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(1 <= self.processes <= MAX_PROCESSES, f"{key}.processes", f"must be in 1..{MAX_PROCESSES}",
               self.processes)
        _check(self.processes <= self.batch_size, f"{key}.processes",
               f"must be <= {key}.batch_size ({self.batch_size}): each process takes a share of every batch")
        _check(0 < self.lr <= 10, f"{key}.lr", "must be in (0, 10]", self.lr)
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
        _check(len(self.seeds) <= MAX_SEEDS, f"{key}.seeds", f"must list at most {MAX_SEEDS} seeds")
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


def check_fits(params: Params, dataset: Dataset) -> None:
    """The rules that need both files: the network's size on this dataset's images and, for a
    known dataset, a non-empty training split, a batch no larger than it and no more pooling
    blocks than the images can halve. A UserError names the params.yaml key to change."""
    shape = dataset.shape
    try:
        if shape is not None:
            _check_fits_shape(params, shape)
        image_shape = shape.image_shape if shape else ASSUMED_IMAGE_SHAPE
        count = parameter_count(params.model, image_shape, params.data.num_classes)
        if count > MAX_PARAMETERS:
            _fail(f"model.{'hidden' if params.model.arch == 'mlp' else 'cnn'}", f"makes a network of "
                  f"{count:,} parameters, more than {MAX_PARAMETERS:,}; use smaller widths")
    except _ParamError as exc:
        raise UserError(f"{paths.PARAMS}: {exc}") from None


def _check_fits_shape(params: Params, shape: DataShape) -> None:
    n_fit = shape.n_train - params.prepare.val_size
    _check(n_fit >= 1, "prepare.val_size", f"must leave training images: the training set has "
           f"{shape.n_train}, so at most {shape.n_train - 1}", params.prepare.val_size)
    _check(params.train.batch_size <= n_fit, "train.batch_size", f"must be at most the training split "
           f"({shape.n_train} images less prepare.val_size leaves {n_fit})", params.train.batch_size)
    if params.model.arch == "cnn":
        blocks, most = len(params.model.cnn.channels), max_pool_blocks(shape.image_shape)
        h, w = shape.image_shape
        _check(blocks <= most, "model.cnn.channels", f"lists {blocks} blocks, and {h}x{w} images allow "
               f"at most {most} (each block halves the side); list fewer widths")


def max_pool_blocks(image_shape: tuple[int, int]) -> int:
    """How many of models.CNN's 2x2 poolings (side // 2 each) leave at least one pixel."""
    return max(min(image_shape).bit_length() - 1, 0)


def parameter_count(model: ModelConfig, image_shape: tuple[int, int], num_classes: int) -> int:
    """The trainable parameters of the network models.build_model makes (a test holds them equal)."""
    h, w = image_shape
    if model.arch == "mlp":
        widths = [h * w, *model.hidden, num_classes]
        return sum((a + 1) * b for a, b in zip(widths, widths[1:]))
    c_in, total = 1, 0
    for c_out in model.cnn.channels:
        total += 9 * c_in * c_out + 2 * c_out  # conv3x3 without bias, then BatchNorm's scale and shift
        c_in, h, w = c_out, h // 2, w // 2
    return total + (c_in * h * w + 1) * model.cnn.fc + (model.cnn.fc + 1) * num_classes


def load_params(path: str | Path = paths.PARAMS) -> Params:
    """Read and validate params.yaml; every problem is a UserError naming the key."""
    return parse_params(_load_yaml(Path(path)), source=str(path))


def load_dataset(path: str | Path = paths.DATASET) -> Dataset:
    """Read and validate dataset.yaml; every problem is a UserError naming the key."""
    return parse_dataset(_load_yaml(Path(path)), source=str(path))


def _load_yaml(path: Path) -> Any:
    """A small YAML file's content, read as untrusted (see _read_yaml); a UserError naming it."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{path} not found: run from the repository root") from None
    except OSError as exc:
        raise UserError(f"{path} is unreadable ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes; it should be a few KB")
    try:
        return _read_yaml(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except _Refused as exc:
        raise UserError(f"{path}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4,300 digits
        raise UserError(f"{path} holds a value YAML cannot read ({exc})") from None
    except RecursionError:
        raise UserError(f"{path} nests too deeply to read; it needs 3 levels") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: "line L, column C: problem (context)"."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return " ".join(str(exc).split())
    mark = exc.problem_mark
    context = f" ({exc.context})" if exc.context else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{context}"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that params.yaml and dataset.yaml must not use."""


# libyaml where PyYAML has it: the pure-Python loader reads about 30 KB/s.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(text: str) -> Any:
    """yaml.safe_load, once the event stream shows no alias and no deep nesting: a few KB of
    aliases expand to gigabytes ("billion laughs"), and deep nesting exhausts the stack while
    composing. Neither file needs them."""
    depth = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(problem="found an alias (*name); this file takes no anchors or aliases: "
                           "write each value out", problem_mark=event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep; it needs 3",
                               problem_mark=event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.load(text, Loader=_YAML_LOADER)


def parse_params(raw: Any, source: str = str(paths.PARAMS)) -> Params:
    try:
        return _build(Params, raw, "")
    except _ParamError as exc:
        raise UserError(f"{source}: {exc}") from None


def parse_dataset(raw: Any, source: str = str(paths.DATASET)) -> Dataset:
    try:
        return _build(Dataset, raw, "")
    except _ParamError as exc:
        raise UserError(f"{source}: {exc}") from None


def as_dict(obj: Any) -> Any:
    """Params (or a section) back to plain YAML-able data."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """`params` with dotted keys set, e.g. {"train.lr": 0.01}, and validated again: what
    `dvc exp run -S train.lr=0.01` does to params.yaml."""
    raw = as_dict(params)
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = raw
        for name in sections:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            raise UserError(f"{dotted}: no such key in params.yaml")
        node[key] = value
    return parse_params(raw, source="params.yaml with overrides")


# The engine: a dataclass's type hints say what each key holds; its validate() holds the rules
# types can't say. Not pydantic: keeping these messages would need a translation table as long.

class _ParamError(Exception):
    """One problem, as "key: what is wrong and what to write instead"."""


_NOTHING = object()


def _check(condition: Any, key: str, message: str, got: Any = _NOTHING) -> None:
    """Raise "key: message, got <value>" unless condition holds. The value is shown only on
    failure, and shortened: a message never formats a whole (possibly huge) raw value."""
    if not condition:
        _fail(key, message, got)


def _fail(key: str, message: str, got: Any = _NOTHING) -> typing.NoReturn:
    raise _ParamError(f"{key}: {message}" + ("" if got is _NOTHING else f", got {_show(got)}"))


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int over 4,300 digits raises ValueError
        return repr(x) if x.bit_length() <= 128 else f"<an integer of {x.bit_length()} bits>"


_SHORT = _ShortRepr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 60, 60, 6, 4


def _show(value: Any) -> str:
    """A value as a message shows it: its repr, cut short."""
    text = _SHORT.repr(value)
    return text if len(text) <= 100 else f"{text[:80]}...{text[-16:]}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, raw: Any, key: str) -> Any:
    _check(isinstance(raw, dict), key or "(top level)", "expected a mapping", raw)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name in raw:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(names)}"
            plain = isinstance(name, str) and name.isprintable() and len(name) <= 60
            raise _ParamError(f"{_join(key, name if plain else _show(name))}: unknown key ({hint})")
    for name in names:
        _check(name in raw, _join(key, name), "missing (every key must be set)")
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
        if value not in args:
            *most, last = map(repr, args)
            _fail(key, f"must be {', '.join(most)} or {last}", value)
        return value
    if origin is list:
        _check(isinstance(value, list), key, "expected a list", value)
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        _check(isinstance(value, bool), key, "expected true or false", value)
        return value
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, "expected an integer", value)
        return value
    if hint is float:
        return _to_float(value, key)
    if hint is str:
        _check(isinstance(value, str) and value, key, "expected a non-empty string", value)
        return value
    raise TypeError(f"unsupported param type {hint!r} for {key}")  # a bug, not user error


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, "expected a number", value)
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    _check(math.isfinite(number), key, "expected a finite number", value)
    return number
