"""`mnistpipe export`: ONNX and torch.export (.pt2) files that compute what PyTorch computes.

Hermetic: tiny randomly initialized (seeded) MLP and CNN checkpoints, synthetic digits.
The ONNX tests skip cleanly without onnxruntime (pip install 'mnistpipe[export]').
The real-data test (-m mnist) needs MNISTPIPE_MIRROR (a directory) and a trained model
(MNISTPIPE_MODEL, default models/model.pt).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistpipe import export
from mnistpipe.checkpoint import load_model, save_model
from mnistpipe.cli import main
from mnistpipe.data.idx import load_images, load_labels
from mnistpipe.data.prepared import normalize
from mnistpipe.models import ModelSpec, build_model

from conftest import REPO, synthetic_digits

MEAN, STD = 0.1307, 0.3081
SPECS = {
    "mlp": {"arch": "mlp", "hidden": [16], "image_shape": [28, 28], "num_classes": 10},
    "cnn": {"arch": "cnn", "channels": [8, 16], "fc": 32, "dropout": 0.25,
            "image_shape": [28, 28], "num_classes": 10},
}
TOL = 1e-4


def make_checkpoint(path: Path, arch: str, seed: int = 0) -> Path:
    """A randomly initialized (seeded) model saved as a mnistpipe checkpoint. BatchNorm gets
    non-trivial statistics, so folding it into the convolutions is really tested."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(ModelSpec.from_dict(SPECS[arch]))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
    save_model(path, model, ModelSpec.from_dict(SPECS[arch]), MEAN, STD)
    return path


def run_cli(*args: str) -> int:
    return main(["export", *map(str, args)])


def expect_exit_2(capsys, *args) -> str:
    with pytest.raises(SystemExit) as info:
        run_cli(*args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def synthetic_inputs(n: int, seed: int = 3) -> torch.Tensor:
    images, _ = synthetic_digits(n, seed=seed)
    return normalize(torch.from_numpy(images), MEAN, STD)


def torch_logits(model_path: Path, x: torch.Tensor) -> np.ndarray:
    model, _ = load_model(model_path)
    with torch.inference_mode():
        return model(x).numpy()


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", params=sorted(SPECS))
def exported(request, ort, tmp_path_factory) -> tuple[str, Path, Path]:
    """(arch, checkpoint, ONNX file written by `mnistpipe export --model ckpt`), once per module."""
    arch = request.param
    ckpt = make_checkpoint(tmp_path_factory.mktemp(arch) / "model.pt", arch)
    assert run_cli("--model", ckpt) == 0
    return arch, ckpt, ckpt.with_suffix(".onnx")  # the default output: beside the checkpoint


def session(ort, path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_matches_pytorch(exported, ort):
    _, ckpt, onnx_path = exported
    x = synthetic_inputs(200)
    want = torch_logits(ckpt, x)
    sess = session(ort, onnx_path)
    got = sess.run(["logits"], {"images": x.numpy()})[0]
    assert got.shape == (200, 10) and got.dtype == np.float32
    assert np.abs(got - want).max() <= TOL
    assert (got.argmax(1) == want.argmax(1)).all()
    # dynamic batch: one image at a time gives the same answers
    for i in (0, 17, 199):
        one = sess.run(["logits"], {"images": x[i:i + 1].numpy()})[0]
        assert one.shape == (1, 10)
        assert np.abs(one - want[i:i + 1]).max() <= TOL


def test_onnx_file_is_valid_and_self_describing(exported, ort):
    import onnx

    arch, ckpt, onnx_path = exported
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert inp.name == "images" and dims(inp) == ["batch", 1, 28, 28]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.name == "logits" and dims(out) == ["batch", 10]
    assert {op.domain: op.version for op in proto.opset_import}[""] == export.OPSET
    assert "(pixels/255 - mean)/std" in proto.doc_string

    meta = session(ort, onnx_path).get_modelmeta().custom_metadata_map
    assert meta == {p.key: p.value for p in proto.metadata_props}
    assert meta["format"] == export.ONNX_FORMAT
    assert float(meta["mean"]) == MEAN and float(meta["std"]) == STD
    assert int(meta["num_classes"]) == 10 and json.loads(meta["image_shape"]) == [28, 28]
    assert json.loads(meta["spec"]) == SPECS[arch]
    assert "/ 255" in meta["preprocessing"]
    assert meta["source_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_onnx_export_reports_its_check(ort, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pt", "mlp", seed=5)
    out = tmp_path / "deep" / "new" / "dir" / "digits.onnx"  # missing folders are made
    assert run_cli("--model", ckpt, "--format", "onnx", "--output", out) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max |logit diff|" in printed
    assert out.is_file() and not list(out.parent.glob(".*.tmp"))


def test_pt2_matches_pytorch(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", "cnn", seed=1)
    assert run_cli("--model", ckpt, "--format", "pt2") == 0
    out = tmp_path / "model.pt2"
    extra = {"mnistpipe.json": ""}
    program = torch.export.load(out, extra_files=extra)
    meta = json.loads(extra["mnistpipe.json"])
    assert meta["format"] == export.PT2_FORMAT and json.loads(meta["spec"]) == SPECS["cnn"]
    assert float(meta["mean"]) == MEAN and float(meta["std"]) == STD
    x = synthetic_inputs(200)
    want = torch_logits(ckpt, x)
    module = program.module()
    with torch.inference_mode():
        for batch in (slice(0, 200), slice(5, 6)):
            got = module(x[batch]).numpy()
            assert np.abs(got - want[batch]).max() <= TOL
            assert (got.argmax(1) == want[batch].argmax(1)).all()


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_export_goes_stale_when_the_model_is_retrained(fmt, ort, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp", seed=1)
    assert run_cli("--model", ckpt, "--format", fmt) == 0
    assert export.stale_exports(ckpt) == []
    make_checkpoint(ckpt, "mlp", seed=2)  # retrained: other weights under the same name
    assert export.stale_exports(ckpt) == [tmp_path / f"model.{fmt}"]
    capsys.readouterr()
    assert main(["info", "--model", str(ckpt)]) == 0
    assert f"warning: {tmp_path / f'model.{fmt}'} was exported from other weights" in capsys.readouterr().err


def test_missing_model_exits_2(tmp_path, capsys):
    err = expect_exit_2(capsys, "--model", tmp_path / "nope.pt")
    assert "nope.pt" in err and "not found" in err
    assert not (tmp_path / "nope.onnx").exists()


def test_not_a_model_exits_2(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    assert "model.pt" in expect_exit_2(capsys, "--model", bad)


def test_output_under_a_file_is_a_clear_error(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp")
    (tmp_path / "afile").write_text("x")
    err = expect_exit_2(capsys, "--model", ckpt, "--output", tmp_path / "afile" / "m.onnx")
    assert "afile is a file, not a directory" in err


def test_output_that_is_a_directory_is_a_clear_error(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp")
    (tmp_path / "out").mkdir()
    err = expect_exit_2(capsys, "--model", ckpt, "--format", "pt2", "--output", tmp_path / "out")
    assert "is a directory" in err and "model.pt2" in err


def test_refuses_to_overwrite_the_checkpoint(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp")
    before = ckpt.read_bytes()
    assert "the checkpoint being exported" in expect_exit_2(capsys, "--model", ckpt, "--output", ckpt)
    assert ckpt.read_bytes() == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory_is_a_clear_error(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = expect_exit_2(capsys, "--model", ckpt, "--format", "pt2", "--output", locked / "m.pt2")
    finally:
        locked.chmod(0o700)
    assert "cannot write" in err and "choose a writable --output" in err


def test_unwritable_output_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """As root nothing is read-only, so the refusal is simulated where the file is created."""
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp")

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(Path(path).parent))

    monkeypatch.setattr(export, "atomic_path", refuse)
    err = expect_exit_2(capsys, "--model", ckpt, "--format", "pt2", "--output", tmp_path / "x.pt2")
    assert "cannot write" in err and "Permission denied" in err and "Traceback" not in err


def test_failed_write_leaves_no_half_file(tmp_path, capsys, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp")
    out = tmp_path / "model.pt2"
    out.write_bytes(b"previous export")

    def half_then_full(self, data):  # the disk fills up half way through
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    err = expect_exit_2(capsys, "--model", ckpt, "--format", "pt2")
    monkeypatch.undo()
    assert "No space left on device" in err
    assert out.read_bytes() == b"previous export"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt2"]  # no temporaries


def test_disagreeing_export_is_refused(ort, tmp_path, capsys, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp")
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # nothing can pass
    err = expect_exit_2(capsys, "--model", ckpt)
    assert "disagrees with PyTorch" in err and "nothing was written" in err
    assert not (tmp_path / "model.onnx").exists()


def test_missing_onnx_packages_name_the_fix(tmp_path, capsys, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "model.pt", "mlp")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    err = expect_exit_2(capsys, "--model", ckpt)
    assert "onnxscript" in err and "mnistpipe[export]" in err
    assert not (tmp_path / "model.onnx").exists()


def test_unknown_format_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("--format", "tflite")
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.mnist
def test_real_model_on_the_mnist_test_set(ort, tmp_path, capsys):
    """All 10,000 test images through PyTorch and ONNX Runtime: same logits, same answers."""
    mirror = os.environ.get("MNISTPIPE_MIRROR", "")
    if not mirror or not Path(mirror).is_dir():
        pytest.skip("MNISTPIPE_MIRROR is not set to a directory holding the MNIST files")
    images_gz = Path(mirror) / "t10k-images-idx3-ubyte.gz"
    labels_gz = Path(mirror) / "t10k-labels-idx1-ubyte.gz"
    if not (images_gz.exists() and labels_gz.exists()):
        pytest.skip(f"{mirror} lacks the MNIST test files")
    source = Path(os.environ.get("MNISTPIPE_MODEL", REPO / "models" / "model.pt"))
    try:
        data = source.read_bytes()  # one read: a retrain replacing it cannot mix two models
    except FileNotFoundError:
        pytest.skip(f"no trained model at {source} (run `dvc repro train`, or set MNISTPIPE_MODEL)")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(data)

    assert run_cli("--model", ckpt, "--output", tmp_path / "model.onnx") == 0
    model, info = load_model(ckpt)
    images = torch.from_numpy(load_images(images_gz).copy())
    labels = load_labels(labels_gz, info.spec.num_classes)
    assert len(images) == 10_000
    x = normalize(images, info.mean, info.std)
    sess = session(ort, tmp_path / "model.onnx")
    want, got = [], []
    with torch.inference_mode():
        for chunk in torch.split(x, 1000):
            want.append(model(chunk).numpy())
            got.append(sess.run(["logits"], {"images": chunk.numpy()})[0])
    want, got = np.concatenate(want), np.concatenate(got)
    diff = float(np.abs(got - want).max())
    accuracy = float((got.argmax(1) == labels).mean())
    with capsys.disabled():
        print(f"\n{source}: ONNX vs PyTorch on 10,000 MNIST test images: max |logit diff| "
              f"{diff:.3g}, predictions identical: {bool((got.argmax(1) == want.argmax(1)).all())}, "
              f"ONNX accuracy {accuracy:.4f}")
    assert diff <= TOL
    assert (got.argmax(1) == want.argmax(1)).all()
