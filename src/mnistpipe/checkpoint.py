"""The model file (models/model.pt): weights plus what is needed to rebuild and use them.

Files are data, never code: everything is loaded with weights_only=True, so a
crafted pickle cannot run anything, and the content is checked before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import save_torch
from .errors import UserError
from .models import build_model

MODEL_FORMAT = "mnistpipe-model/1"


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


def load_file(path: Path, what: str) -> dict[str, Any]:
    """torch.load with weights_only=True and clear errors for missing/foreign/unsafe files."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a loadable {what} (truncated, corrupt, or it holds code, "
                        f"which is refused): {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a mnistpipe {what}")
    return data


def load_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model in eval mode; returns (model, checkpoint dict)."""
    ckpt = load_file(path, "model checkpoint")
    if ckpt.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: not a mnistpipe model (format {ckpt.get('format')!r}, "
                        f"expected {MODEL_FORMAT!r}); train one with `dvc repro train`")
    norm = ckpt.get("normalization")
    if not (isinstance(norm, dict) and all(isinstance(norm.get(k), float) for k in ("mean", "std"))):
        raise UserError(f"{path}: checkpoint lacks its normalization constants; retrain it")
    try:
        model = build_model(ckpt["spec"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"{path}: weights do not fit the architecture it describes "
                        f"({str(exc).splitlines()[0]})") from None
    model.eval()
    return model, ckpt
