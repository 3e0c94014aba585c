"""Export a trained model for use outside this package: ONNX, or a torch.export archive (.pt2).

The exported network is exactly the checkpoint's network, without preprocessing.
Its input is a float32 tensor [batch, 1, H, W] that is ALREADY NORMALIZED:

    x = (pixels / 255 - mean) / std      pixels: uint8 0..255, white digit on black (as MNIST)

and its output is the raw logits [batch, num_classes] (argmax = predicted digit;
softmax for probabilities). The constants travel with the file: ONNX models carry
them as metadata_props (readable with onnxruntime's
`session.get_modelmeta().custom_metadata_map` or `onnx.load(f).metadata_props`),
.pt2 archives as the extra file `mnistpipe.json`. Keys (all strings): format, spec
(JSON), mean, std, num_classes, image_shape (JSON), input, output, preprocessing,
source_sha256.

ONNX export uses PyTorch's torch.export-based exporter (`dynamo=True`, torch >= 2.6,
needs the packages onnx and onnxscript: `pip install 'mnistpipe[export]'`); the
TorchScript-based one is deprecated. Every file is checked before it replaces
anything: onnx.checker, then (if onnxruntime is installed) the same inputs through
PyTorch and the exported model must agree.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import paths
from .atomic import atomic_path
from .checkpoint import ModelFile, load_model
from .errors import UserError
from .models import ModelSpec

ONNX_FORMAT = "mnistpipe-onnx/1"
PT2_FORMAT = "mnistpipe-pt2/1"
SUFFIXES = paths.EXPORT_SUFFIXES
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# Pinned rather than the exporter's default (which changes with torch versions): 18 is
# the lowest the torch.export-based exporter implements natively, and runs in
# onnxruntime >= 1.14 and most other runtimes.
OPSET = 18
TOLERANCE = 1e-4  # max |logit difference| allowed between PyTorch and the exported model
EXTRAS_HINT = "pip install 'mnistpipe[export]'"


@dataclass
class ExportResult:
    path: Path
    format: str
    size: int
    max_diff: float | None  # None: not verified (onnxruntime missing)


def default_output(model_path: str | Path, fmt: str) -> Path:
    """models/model.pt -> models/model.onnx (or .pt2)."""
    return Path(model_path).with_suffix(SUFFIXES[fmt])


def exported_from(export: Path) -> str | None:
    """The source_sha256 an export was stamped with (None if unreadable). Read without onnx:
    in the ONNX protobuf a metadata value follows its key as a 64-byte string field."""
    export = Path(export)
    if export.suffix == SUFFIXES["pt2"]:
        try:  # the zip's directory and one member, not the whole archive
            with zipfile.ZipFile(export) as archive:
                name = next(n for n in archive.namelist() if n.endswith("extra/mnistpipe.json"))
                return json.loads(archive.read(name))["source_sha256"]
        except (zipfile.BadZipFile, StopIteration, KeyError, ValueError):
            return None
    found = re.search(rb"source_sha256\x12\x40([0-9a-f]{64})", export.read_bytes())
    return found[1].decode() if found else None


def stale_exports(model_path: str | Path) -> list[Path]:
    """The exports beside a checkpoint (model.onnx, model.pt2) that came from other weights."""
    model_path = Path(model_path)
    current = hashlib.sha256(model_path.read_bytes()).hexdigest()
    candidates = (default_output(model_path, fmt) for fmt in SUFFIXES)
    return [p for p in candidates if p.is_file() and exported_from(p) != current]


def metadata(info: ModelFile, source: bytes, fmt: str) -> dict[str, str]:
    """What a consumer needs besides the weights, as strings (ONNX metadata_props are strings)."""
    spec, mean, std = info.spec, info.mean, info.std
    h, w = spec.image_shape
    return {
        "format": fmt,
        "spec": json.dumps(spec.to_dict(), sort_keys=True),
        "mean": repr(float(mean)),
        "std": repr(float(std)),
        "num_classes": str(int(spec.num_classes)),
        "image_shape": json.dumps([int(h), int(w)]),
        "input": f"{INPUT_NAME}: float32 [batch, 1, {h}, {w}], normalized",
        "output": f"{OUTPUT_NAME}: float32 [batch, {spec.num_classes}], raw logits; argmax = class",
        "preprocessing": f"{INPUT_NAME} = (pixels / 255 - {mean!r}) / {std!r}; pixels uint8 0..255, "
                         "white digit on black background (as MNIST), shape [batch, 1, H, W]",
        "source_sha256": hashlib.sha256(source).hexdigest(),
    }


def _check_inputs(spec: ModelSpec) -> torch.Tensor:
    """Seeded inputs for checking the exported model: a batch of 16, roughly normalized pixels."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, *spec.image_shape, generator=g)


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _compare(got: torch.Tensor, want: torch.Tensor, what: str) -> float:
    diff = float((got - want).abs().max())
    if not diff <= TOLERANCE:  # also catches NaN
        raise UserError(f"the exported {what} model disagrees with PyTorch (max |logit diff| "
                        f"{diff:.3g} > {TOLERANCE:g}); nothing was written. This is a bug: please "
                        f"report it with your torch/onnx versions")
    return diff


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return True


def _onnx_program(model: nn.Module, spec: ModelSpec):
    """torch.onnx's dynamo export with a dynamic batch, or a UserError naming the fix."""
    if not _torch_at_least(2, 6):
        raise UserError(f"ONNX export needs torch >= 2.6 (this is {torch.__version__}); "
                        "upgrade torch or use --format pt2")
    try:  # the exporter imports onnxscript, and to_onnx onnx: fail early with a clear message
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise UserError(f"ONNX export needs the packages onnx and onnxscript ({exc}); "
                        f"install them: {EXTRAS_HINT}") from None
    example = torch.zeros(2, 1, *spec.image_shape)  # batch 2: never specialized to a constant
    try:
        return torch.onnx.export(
            model, (example,), None, dynamo=True, opset_version=OPSET, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},))
    except (ImportError, AttributeError) as exc:
        # e.g. "No module named 'onnxscript._framework_apis.torch_2_11'": onnxscript or
        # onnx_ir older than this torch needs
        if not any(name in str(exc) for name in ("onnxscript", "onnx_ir")):
            raise
        raise UserError(f"the installed onnxscript/onnx-ir are too old for torch {torch.__version__} "
                        f"({exc}); upgrade them: pip install -U onnxscript onnx-ir") from None


def to_onnx(model: nn.Module, info: ModelFile, source: bytes) -> tuple[bytes, float | None]:
    """Serialized ONNX model (checked), and the max |logit diff| vs PyTorch if onnxruntime is here."""
    spec = info.spec
    proto = _onnx_program(model, spec).model_proto
    import onnx  # _onnx_program checked that it is installed
    proto.doc_string = (f"mnistpipe {spec.arch} digit classifier. Input '{INPUT_NAME}': "
                        f"float32 [batch, 1, H, W] = (pixels/255 - mean)/std (see metadata 'mean', "
                        f"'std'). Output '{OUTPUT_NAME}': logits [batch, num_classes].")
    del proto.metadata_props[:]
    for key, value in metadata(info, source, ONNX_FORMAT).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()

    try:
        import onnxruntime as ort
    except ImportError:
        return data, None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = _check_inputs(spec)
    diff = 0.0
    for batch in (x, x[:1]):  # the batch dimension is dynamic: try two sizes
        got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])
        diff = max(diff, _compare(got, _reference(model, batch), "ONNX"))
    return data, diff


def to_pt2(model: nn.Module, info: ModelFile, source: bytes) -> tuple[bytes, float]:
    """A torch.export archive (load with torch.export.load(path).module()), checked."""
    spec = info.spec
    example = torch.zeros(2, 1, *spec.image_shape)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={
        "mnistpipe.json": json.dumps(metadata(info, source, PT2_FORMAT), indent=2)})
    data = buffer.getvalue()

    loaded = torch.export.load(io.BytesIO(data)).module()
    x = _check_inputs(spec)
    diff = max(_compare(_reference(loaded, b), _reference(model, b), "pt2") for b in (x, x[:1]))
    return data, diff


def export_model(model_path: str | Path, fmt: str = "onnx", output: str | Path | None = None) -> ExportResult:
    """Export the checkpoint at `model_path`; the output file appears whole or not at all."""
    if fmt not in SUFFIXES:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(SUFFIXES)}")
    model_path = Path(model_path)
    output = Path(output) if output is not None else default_output(model_path, fmt)
    model, info = load_model(model_path)  # UserError if missing or not a mnistpipe model
    if output.resolve() == model_path.resolve():
        raise UserError(f"{output}: that is the checkpoint being exported; choose another --output")
    _check_writable_place(output, fmt)  # before the slow part
    source = model_path.read_bytes()
    data, diff = (to_onnx if fmt == "onnx" else to_pt2)(model, info, source)
    try:
        with atomic_path(output) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise UserError(f"{output}: cannot write the exported model there "
                        f"({exc.strerror or exc}{where}); choose a writable --output") from None
    return ExportResult(output, fmt, len(data), diff)


def _check_writable_place(output: Path, fmt: str) -> None:
    """Clear errors for the usual mistakes; anything else surfaces when writing."""
    if output.is_dir():
        raise UserError(f"{output} is a directory; give a file name, e.g. --output "
                        f"{output / ('model' + SUFFIXES[fmt])}")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{output}: cannot write there, {parent} is a file, not a directory")
            break
