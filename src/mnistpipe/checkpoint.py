"""The model file (models/model.pt): weights plus what is needed to rebuild and use them.

Files are data, never code: everything is loaded with weights_only=True, so a
crafted pickle cannot run anything, and the content is checked before use. A file is also
checked before it costs anything: the sizes its zip archive declares are bounded before
torch.load (a small file may hold a record that inflates to gigabytes), and a model's spec
is built on the meta device and compared with the weights' shapes before any memory is
given to it (a spec may claim millions of units next to tiny tensors).
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import save_torch
from .errors import UserError, naming
from .models import ModelSpec, build_model

MODEL_FORMAT = "mnistpipe-model/1"
MODEL_HINT = "a model file written by the train stage, such as models/model.pt"
# What a checkpoint may expand to when loaded: far above any real one (the default MLP's file
# is 0.4 MB, a resume checkpoint with Adam's state three times that), far below a machine's memory.
MAX_CHECKPOINT_BYTES = 1 << 30
# The pickled structure alone (a few kB in real files): unpickled objects outgrow their bytes.
MAX_PICKLE_BYTES = 16 << 20


@dataclass(frozen=True)
class ModelFile:
    """What a model file says besides its weights."""
    spec: ModelSpec
    mean: float  # normalization constants of the training split
    std: float
    temperature: float  # calibration: divide the logits by it for probabilities (calibration.py)


def model_file(model: nn.Module, spec: ModelSpec, mean: float, std: float,
               temperature: float = 1.0) -> dict[str, Any]:
    """What a model file holds, for save_torch (alone, or as one file of a stage's output set).
    `temperature`: divide the logits by it for calibrated probabilities (calibration.py)."""
    return {
        "format": MODEL_FORMAT,
        "spec": spec.to_dict(),
        "normalization": {"mean": mean, "std": std},
        "temperature": temperature,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_model(path: Path, model: nn.Module, spec: ModelSpec, mean: float, std: float,
               temperature: float = 1.0) -> None:
    save_torch(path, model_file(model, spec, mean, std, temperature))


def _not_torch(head: bytes) -> str | None:
    """Why a file that starts with `head` cannot be a torch.save file, or None if it might be one."""
    if head.startswith(b"PK\x03\x04"):  # a zip archive: torch.save's format since torch 1.6
        return None
    if head.startswith(b"\x80"):  # its storages' sizes cannot be bounded before they are allocated
        return "it is a pickle, or PyTorch's legacy format from before 1.6, which is not read; save it again"
    if not head:
        return "the file is empty"
    if all(byte >= 32 or byte in b"\t\n\r" for byte in head):  # no control characters
        return "it is a text file"
    return "it is another binary format"


def _check_expansion(path: Path) -> None:
    """UserError if the zip archive declares more uncompressed bytes than a checkpoint may hold.
    torch.load allocates each record at the size the archive's central directory declares,
    the same directory zipfile reads, so the declared sizes bound what loading can cost."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # damaged: torch.load says so in the words load_file shows
    total = sum(m.file_size for m in members)
    pickled = sum(m.file_size for m in members if m.filename.endswith(".pkl"))
    if total > MAX_CHECKPOINT_BYTES or pickled > MAX_PICKLE_BYTES:
        what, size, limit = (("its pickled objects", pickled, MAX_PICKLE_BYTES) if pickled > MAX_PICKLE_BYTES
                             else ("it", total, MAX_CHECKPOINT_BYTES))
        raise UserError(f"{path}: refused: {what} would expand to {size:,} bytes when loaded, over the "
                        f"limit of {limit:,} (far above any real checkpoint); the file is damaged or crafted")


def load_file(path: Path, what: str, expected: str = "") -> dict[str, Any]:
    """torch.load with weights_only=True and clear errors for missing/foreign/unsafe files.

    `expected` describes the right file, for the errors (e.g. "a model file such as models/model.pt")."""
    path = Path(path)
    instead = f"; expected {expected or 'a ' + what}"
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if path.is_dir():
        raise UserError(f"{path}: a directory, not a {what}{instead}")
    with naming(path), open(path, "rb") as f:
        why = _not_torch(f.read(64))
    if why:
        raise UserError(f"{path}: not a PyTorch checkpoint ({why}){instead}")
    _check_expansion(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).strip()
        # torch's weights-only refusal is a long advice text (how to allow the code to run!);
        # only the cause it names, the first sentence after "WeightsUnpickler error:", is shown
        cause = text.split("WeightsUnpickler error:")[-1].strip()
        first = (cause.splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise UserError(f"{path}: not a loadable {what} (truncated, corrupt, or it holds code, "
                        f"which is refused): {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a mnistpipe {what}{instead if expected else ''}")
    return data


def _temperature(ckpt: dict[str, Any]) -> float:
    """A model checkpoint's calibration temperature (logits / T); 1.0 in files from before calibration."""
    return ckpt.get("temperature", 1.0)


def _check_constants(path: Path, ckpt: dict[str, Any]) -> None:
    """Normalization constants and temperature that give numbers, not NaN, for every input."""
    norm = ckpt.get("normalization")
    if not (isinstance(norm, dict) and all(isinstance(norm.get(k), float) for k in ("mean", "std"))):
        raise UserError(f"{path}: checkpoint lacks its normalization constants; retrain it")
    if not (math.isfinite(norm["mean"]) and math.isfinite(norm["std"]) and norm["std"] > 0):
        raise UserError(f"{path}: normalization constants must be finite with std > 0, not mean "
                        f"{norm['mean']!r}, std {norm['std']!r}; the prepared data was degenerate: "
                        "prepare and train again")
    temperature = _temperature(ckpt)
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature > 0):
        raise UserError(f"{path}: calibration temperature must be a positive number, "
                        f"not {temperature!r}; recalibrate or retrain it")


def _misfit(expected: dict[str, torch.Tensor], state: Any) -> str | None:
    """How a state dict differs from the tensors a model expects (names, types, shapes), or None."""
    if not isinstance(state, dict):
        return f"state_dict is a {type(state).__name__}, not a mapping of tensors"
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys(), key=str)
    if missing or unexpected:
        return f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}"
    for key, want in expected.items():
        have = state[key]
        if not isinstance(have, torch.Tensor):
            return f"{key} is a {type(have).__name__}, not a tensor"
        if have.shape != want.shape:
            return f"{key} has shape {list(have.shape)}, the spec needs {list(want.shape)}"
    return None


def _rebuild(path: Path, spec: Any, state: Any) -> tuple[nn.Module, ModelSpec]:
    """The spec's model holding the file's weights. It is built on the meta device, which
    allocates nothing, and takes the file's tensors as its own (assign=True) once their
    shapes match: no memory goes to sizes the spec merely claims."""
    try:
        spec = ModelSpec.from_dict(spec)
        with torch.device("meta"):
            model = build_model(spec)
        expected = model.state_dict()
        why = _misfit(expected, state)
        if why is None:
            model.load_state_dict({k: state[k].to(v.dtype).contiguous() for k, v in expected.items()},
                                  assign=True)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
    batchnorm_first = (isinstance(spec, ModelSpec) and spec.arch == "cnn" and isinstance(state, dict)
                       and "1.running_mean" in state)
    if why is not None and batchnorm_first:  # the CNN's layer 1 is a pooling, without weights
        raise UserError(f"{path}: a CNN whose blocks apply BatchNorm before max-pooling; mnistpipe's CNN "
                        "pools first, so these weights mean another function: retrain it (dvc repro)")
    if why is not None:
        raise UserError(f"{path}: weights do not fit the architecture it describes ({why}); "
                        f"expected {MODEL_HINT}")
    broken = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()),
                  None)
    if broken is not None:
        raise UserError(f"{path}: weights {broken} hold NaN or infinite values (training diverged?); "
                        "retrain it, e.g. with a lower train.lr")
    return model, spec


def load_model(path: Path) -> tuple[nn.Module, ModelFile]:
    """Rebuild the model in eval mode; returns it with what its file says besides the weights."""
    ckpt = load_file(path, "model checkpoint", MODEL_HINT)
    if ckpt.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: not a mnistpipe model (format {ckpt.get('format')!r}, "
                        f"expected {MODEL_FORMAT!r}); train one with `dvc repro train`")
    _check_constants(path, ckpt)
    model, spec = _rebuild(path, ckpt.get("spec"), ckpt.get("state_dict"))
    model.eval()
    norm = ckpt["normalization"]
    return model, ModelFile(spec, norm["mean"], norm["std"], float(_temperature(ckpt)))
