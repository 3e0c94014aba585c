"""The whole pipeline under DVC, in a temporary git repository, on the tiny synthetic dataset."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from mnistpipe.checkpoint import load_model
from mnistpipe.data.prepared import load_split, normalize

from conftest import declared_outputs, output_files
from dvc_helpers import commit_all, copy_repo, dvc, make_repo, ran_stages, run, set_param

pytestmark = pytest.mark.slow

STAGES = ["validate", "fetch", "prepare", "train", "evaluate", "report"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A git+DVC copy of this project on synthetic data, after one full `dvc repro`."""
    repo, env = make_repo(tmp_path_factory.mktemp("pipeline"))
    first = dvc(repo, env, "repro")
    commit_all(repo, env, "pipeline")
    return repo, env, first


def copy_of(pipeline, tmp_path: Path) -> tuple[Path, dict]:
    repo, env, _ = pipeline
    return copy_repo(repo, tmp_path / "repo"), env


def test_first_repro_runs_every_stage_and_writes_every_output(pipeline):
    repo, _, first = pipeline
    assert ran_stages(first.stdout) == STAGES
    assert "WARNING" not in first.stdout + first.stderr, "a normal run prints no warnings"
    missing = [p for p in declared_outputs() if not (repo / p).is_file() and not any((repo / p).glob("*"))]
    assert not missing, f"dvc.yaml's outputs missing or empty: {missing}"
    assert (repo / "logs/train.json").is_file() and (repo / "logs/evaluate.json").is_file()
    figures = {p.stem for p in (repo / "reports/figures").glob("*.png")}
    assert figures == {"samples", "class_counts", "curves", "confusion", "wrong", "per_class", "reliability"}
    assert not (repo / "models/resume.pt").exists(), "a finished run leaves no resume checkpoint"
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    detail = json.loads((repo / "metrics/eval_detail.json").read_text())
    assert list(metrics) == ["accuracy", "macro_f1", "ece"]  # the headline; the rest is detail
    assert list(detail) == ["accuracy_ci95_low", "accuracy_ci95_high", "loss", "errors", "ece_raw"]
    assert metrics["accuracy"] > 0.5  # the synthetic classes are easy; chance is 0.1
    assert 0 <= metrics["ece"] <= 1 and 0 <= detail["ece_raw"] <= 1
    assert detail["accuracy_ci95_low"] < metrics["accuracy"] < detail["accuracy_ci95_high"]
    temperature = json.loads((repo / "metrics/train.json").read_text())["temperature"]
    model, info = load_model(repo / "models/model.pt")
    assert temperature > 0 and info.temperature == temperature
    test = load_split(repo / "data/prepared", "test")  # predictions carry calibrated probabilities
    logits = model(normalize(test.images[:5], info.mean, info.std))
    expected = (logits / temperature).softmax(1).max(1).values.tolist()
    rows = (repo / "plots/predictions.csv").read_text().splitlines()[1:6]
    assert [float(r.split(",")[3]) for r in rows] == pytest.approx(expected, abs=2e-6)
    history = (repo / "plots/train.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,train_acc,val_loss,val_acc" and len(history) == 4
    report = (repo / "reports/report.md").read_text()
    assert "figures/confusion.png" in report and "trainable parameters" in report


def test_second_repro_runs_nothing_and_status_is_clean(pipeline):
    repo, env, _ = pipeline
    again = dvc(repo, env, "repro")
    assert ran_stages(again.stdout) == []
    status = dvc(repo, env, "status")
    assert "up to date" in status.stdout
    assert run(["git", "status", "--porcelain"], repo, env).stdout == ""


def test_changing_lr_reruns_train_evaluate_report_only(pipeline, tmp_path):
    repo, env = copy_of(pipeline, tmp_path)
    set_param(repo, "train", "lr", 0.003)
    assert ran_stages(dvc(repo, env, "repro").stdout) == ["validate", "train", "evaluate", "report"]


def test_extra_seeds_give_mean_and_std_over_every_seed(pipeline, tmp_path):
    repo, env = copy_of(pipeline, tmp_path)
    set_param(repo, "multiseed", "seeds", [1, 2])
    dvc(repo, env, "repro")
    seeds = json.loads((repo / "metrics/seeds.json").read_text())
    main = json.loads((repo / "metrics/eval.json").read_text())["accuracy"]
    seed = str(yaml.safe_load((repo / "params.yaml").read_text())["seed"])
    assert seeds["n"] == 3 and list(seeds["test_acc"]) == [seed, "1", "2"]
    assert seeds["test_acc"][seed] == main
    assert seeds["test_acc_mean"] == pytest.approx(statistics.mean(seeds["test_acc"].values()), abs=1e-6)
    assert seeds["test_acc_std"] == pytest.approx(statistics.stdev(seeds["test_acc"].values()), abs=1e-6)
    assert "Over 3 training seeds" in (repo / "reports/report.md").read_text()


def test_changing_a_report_param_reruns_report_only(pipeline, tmp_path):
    repo, env = copy_of(pipeline, tmp_path)
    set_param(repo, "report", "dpi", 50)
    assert ran_stages(dvc(repo, env, "repro").stdout) == ["validate", "report"]


def test_changing_a_mirror_refetches_the_same_data_and_trains_nothing(pipeline, tmp_path):
    """dataset.yaml is a file dep: any edit reruns the stages that read it, whose outputs are
    then the same, so DVC goes no further."""
    repo, env = copy_of(pipeline, tmp_path)
    dataset = yaml.safe_load((repo / "dataset.yaml").read_text())
    dataset["mirrors"] = ["https://example.invalid/mnist/"]
    (repo / "dataset.yaml").write_text(yaml.safe_dump(dataset, sort_keys=False))
    assert ran_stages(dvc(repo, env, "repro").stdout) == ["validate", "fetch", "prepare"]
    # Only the edit and the hashes DVC records for it: no metric, plot or model moved.
    assert run(["git", "status", "--porcelain"], repo, env).stdout == " M dataset.yaml\n M dvc.lock\n"


def snapshot(repo: Path) -> dict[str, bytes]:
    """Every output but validate's own marker, which DVC deletes as validate runs."""
    return {p: (repo / p).read_bytes() for p in output_files(repo) if p != "logs/params_valid.txt"}


@pytest.mark.parametrize("section, key, value, rename, message", [
    ("train", "lr", -1, None, "train.lr"),
    ("train", "batch_size", 0, None, "train.batch_size"),
    ("train", "epochs", None, "epocs", "did you mean 'epochs'"),
    ("data", "num_classes", 1, None, "data.num_classes"),
])
def test_bad_param_stops_before_dvc_deletes_anything(pipeline, tmp_path, section, key, value, rename, message):
    repo, env = copy_of(pipeline, tmp_path)
    before = snapshot(repo)
    set_param(repo, section, key, value, rename)
    result = dvc(repo, env, "repro", check=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert ran_stages(result.stdout) == ["validate"]
    assert snapshot(repo) == before, "every output, model and metrics included, is untouched"


RESTORE = "git restore params.yaml dvc.lock metrics plots && dvc checkout --force"  # as in docs/reproducibility.md


def test_failed_stage_keeps_small_outputs_and_one_command_restores_the_rest(pipeline, tmp_path):
    """A failure inside a stage (here: CUDA asked for on a CPU-only machine) happens after
    DVC deleted that stage's cached outputs; the small uncached ones survive (persist)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA to make train fail")
    repo, env = copy_of(pipeline, tmp_path)
    before = snapshot(repo)
    set_param(repo, "train", "device", "cuda")
    result = dvc(repo, env, "repro", check=False)
    assert result.returncode != 0 and "train.device" in result.stderr
    for path in ("metrics/train.json", "plots/train.csv", "metrics/eval.json", "plots/predictions.csv"):
        assert (repo / path).read_bytes() == before[path], f"{path} lost"
    run(["bash", "-c", RESTORE], repo, env)
    assert snapshot(repo) == before
    assert run(["git", "status", "--porcelain"], repo, env).stdout == ""
    assert "up to date" in dvc(repo, env, "status").stdout


def test_retrain_command_reruns_only_train_evaluate_report_offline(pipeline, tmp_path):
    """docs/reproducibility.md's retrain-on-another-device command must not refetch (or wipe) the data."""
    repo, env = copy_of(pipeline, tmp_path)
    offline = {**env, "MNISTPIPE_MIRROR": str(tmp_path / "no-such-mirror")}
    raw = (repo / "data/raw/train-images-idx3-ubyte.gz").read_bytes()
    result = dvc(repo, offline, "repro", "--force", "--single-item", "train", "evaluate", "report")
    assert ran_stages(result.stdout) == ["train", "evaluate", "report"]
    assert (repo / "data/raw/train-images-idx3-ubyte.gz").read_bytes() == raw


def test_metrics_diff_between_branches(pipeline, tmp_path):
    repo, env = copy_of(pipeline, tmp_path)
    run(["git", "checkout", "-q", "-b", "faster-lr"], repo, env)
    set_param(repo, "train", "lr", 0.01)
    dvc(repo, env, "repro")
    run(["git", "commit", "-qam", "lr 0.01"], repo, env)
    diff = dvc(repo, env, "metrics", "diff", "main", "--json")
    changes = json.loads(diff.stdout)
    assert set(changes) <= {"metrics/eval.json", "metrics/seeds.json"}  # the DVC metrics: the headline
    ece = changes["metrics/eval.json"]["ece"]
    assert ece["old"] != ece["new"] and ece["diff"] == pytest.approx(ece["new"] - ece["old"])
    params = json.loads(dvc(repo, env, "params", "diff", "main", "--json").stdout)
    lr = params["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.001, 0.01)


def test_forced_rerun_records_identical_hashes(pipeline, tmp_path):
    """Same inputs, same bytes: dvc.lock (md5 of every output, .pt and PNG included) is unchanged."""
    repo, env = copy_of(pipeline, tmp_path)
    before = (repo / "dvc.lock").read_text()
    dvc(repo, env, "repro", "-f")
    assert (repo / "dvc.lock").read_text() == before
    assert run(["git", "status", "--porcelain"], repo, env).stdout == ""


def changed_stages(repo: Path, env: dict) -> set[str]:
    return set(json.loads(dvc(repo, env, "status", "--json").stdout))


def test_editing_an_imported_module_marks_exactly_its_importers_changed(pipeline, tmp_path):
    repo, env = copy_of(pipeline, tmp_path)
    with open(repo / "src/mnistpipe/evaluate.py", "a") as f:
        f.write("\n# edited\n")
    assert changed_stages(repo, env) == {"train", "evaluate", "report"}  # train validates with it
    run(["git", "checkout", "-q", "--", "."], repo, env)
    with open(repo / "src/mnistpipe/predict.py", "a") as f:  # no stage imports predict
        f.write("\n# edited\n")
    assert changed_stages(repo, env) == set()
