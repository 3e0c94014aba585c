"""The model file (models/model.pt): weights plus what is needed to rebuild and use them.

Files are data, never code: everything is loaded with weights_only=True, so a
crafted pickle cannot run anything, and the content is checked before use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import save_torch
from .errors import UserError
from .models import build_model

MODEL_FORMAT = "mnistpipe-model/1"
MODEL_HINT = "a model file written by the train stage, such as models/model.pt"


def save_model(path: Path, model: nn.Module, spec: dict[str, Any], mean: float, std: float,
               temperature: float = 1.0) -> None:
    """`temperature`: divide the logits by it for calibrated probabilities (calibration.py)."""
    save_torch(path, {
        "format": MODEL_FORMAT,
        "spec": spec,
        "normalization": {"mean": mean, "std": std},
        "temperature": temperature,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    })


def _not_torch(head: bytes) -> str | None:
    """Why a file that starts with `head` cannot be a torch.save file, or None if it might be one."""
    if head.startswith((b"PK\x03\x04", b"\x80")):  # a zip archive (torch >= 1.6) or a pickle
        return None
    if not head:
        return "the file is empty"
    if all(byte >= 32 or byte in b"\t\n\r" for byte in head):  # no control characters
        return "it is a text file"
    return "it is another binary format"


def load_file(path: Path, what: str, expected: str = "") -> dict[str, Any]:
    """torch.load with weights_only=True and clear errors for missing/foreign/unsafe files.

    `expected` describes the right file, for the errors (e.g. "a model file such as models/model.pt")."""
    path = Path(path)
    instead = f"; expected {expected or 'a ' + what}"
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if path.is_dir():
        raise UserError(f"{path}: a directory, not a {what}{instead}")
    with open(path, "rb") as f:
        why = _not_torch(f.read(64))
    if why:
        raise UserError(f"{path}: not a PyTorch checkpoint ({why}){instead}")
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


def temperature_of(ckpt: dict[str, Any]) -> float:
    """A model checkpoint's calibration temperature (logits / T); 1.0 in files from before calibration."""
    return ckpt.get("temperature", 1.0)


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model in eval mode; returns (model, checkpoint dict)."""
    ckpt = load_file(path, "model checkpoint", MODEL_HINT)
    if ckpt.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: not a mnistpipe model (format {ckpt.get('format')!r}, "
                        f"expected {MODEL_FORMAT!r}); train one with `dvc repro train`")
    norm = ckpt.get("normalization")
    if not (isinstance(norm, dict) and all(isinstance(norm.get(k), float) for k in ("mean", "std"))):
        raise UserError(f"{path}: checkpoint lacks its normalization constants; retrain it")
    temperature = temperature_of(ckpt)
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature > 0):
        raise UserError(f"{path}: calibration temperature must be a positive number, "
                        f"not {temperature!r}; recalibrate or retrain it")
    try:
        model = build_model(ckpt["spec"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"{path}: weights do not fit the architecture it describes "
                        f"({str(exc).splitlines()[0]})") from None
    model.eval()
    return model, ckpt
