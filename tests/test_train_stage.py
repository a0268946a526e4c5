"""``train.image`` at the end of a real run: it trains on the committed samples, writes its
folder, is reused when nothing it depends on changed, and retrains (without decoding an input
again) when only its params did."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

from datapipe.demo.training_data import make_image_dataset
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.models import build_model
from datapipe.schemas import load_schema
from datapipe.stream import from_shards
from runs import cli, datapipe_cmd, image_trainer, scheduled_trainer

CLASSES = 4


def _pipeline(root: Path, **train: Any) -> Pipeline:
    return image_trainer(root, **train)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_images")
    make_image_dataset(root, classes=CLASSES, per_class=20, size=(48, 64), seed=0)
    return root


def test_train_image_writes_its_folder_and_reuses_it(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_local(_pipeline(images), out, workers=0)
    summary = first.sinks["classifier"]
    assert summary["reused"] is False and summary["epochs_run"] == 4
    folder = out / "train" / "classifier"
    for name in ("model.pt", "model.json", "report.json", "curves.png", "confusion.png"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    assert report["val_accuracy"] == summary["val_accuracy"]
    assert report["model_bytes"] == (folder / "model.pt").stat().st_size
    assert report["train_samples"] + report["val_samples"] == CLASSES * 20
    # the model rebuilds from model.json alone and gives the accuracy the report says
    spec = json.loads((folder / "model.json").read_text())
    model = build_model(spec["model"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    # class names by index: the labels' folders, in the sorted order label_id numbers them
    assert spec["classes"] == sorted(d.name for d in images.iterdir() if d.is_dir())
    again = run_local(_pipeline(images), out, workers=0)
    assert again.counts["processed"] == 0 and again.sinks["classifier"]["reused"] is True
    assert json.loads((folder / "report.json").read_text())["reused"] is True


def test_the_report_follows_its_schema_and_the_manifest_carries_the_summary(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_local(_pipeline(images, epochs=2), out, workers=0)
    report = json.loads((out / "train" / "classifier" / "report.json").read_text())
    jsonschema.validate(report, load_schema("train_report"))
    assert report["steps"] == sum(r["steps"] for r in report["history"])
    n = report["val_samples"]
    assert sum(map(sum, report["confusion"])) == n and len(report["confusion"]) == CLASSES
    hits = sum(report["confusion"][i][i] for i in range(CLASSES))
    assert report["val_accuracy"] == pytest.approx(hits / n)
    # the manifest keeps the last run's sink summaries; `datapipe manifest` prints them
    proc = cli("manifest", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    acc = report["val_accuracy"]
    assert f"classifier: val_accuracy {acc:.3f}, trained, 2 epochs" in proc.stdout
    index = json.loads((out / "index.json").read_text())
    assert index["last_run"]["sinks"]["classifier"]["val_accuracy"] == acc


def test_new_trainer_params_retrain_without_decoding(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_local(_pipeline(images, epochs=2), out, workers=0)
    longer = run_local(_pipeline(images, epochs=3), out, workers=0)
    assert longer.counts["processed"] == 0  # no input decoded again
    assert longer.sinks["classifier"]["reused"] is False
    assert longer.sinks["classifier"]["epochs_run"] == 3


def test_the_trainer_learns_above_chance(images: Path, tmp_path: Path) -> None:
    report = run_local(_pipeline(images, epochs=8, width=16), tmp_path / "out", workers=0)
    assert report.sinks["classifier"]["val_accuracy"] > 1.5 / CLASSES


def test_a_resize_schedule_is_honoured_epoch_by_epoch(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_local(scheduled_trainer(images, 32), out, workers=0)
    assert report.sinks["classifier"]["epochs_run"] == 3
    folder = out / "train" / "classifier"
    full = json.loads((folder / "report.json").read_text())
    # the schedule's ramp: 16 at epoch 0, 32 from epoch 2 on, 24 between (multiples of 8)
    assert [r["input_shapes"] for r in full["history"]] == [
        [[3, 16, 16]],
        [[3, 24, 24]],
        [[3, 32, 32]],
    ]
    assert full["skipped"] == {}
    # the committed samples are epoch 0's; the model takes the last epoch's size
    spec = json.loads((folder / "model.json").read_text())
    assert spec["input_epoch"] == 2 and spec["inputs"]["shapes"] == [[3, 32, 32]]
    sample = next(iter(from_shards(out, shuffle=False, fields=["image"])))
    assert tuple(sample["image"].shape) == (16, 16, 3)
    # a later size of the schedule is not in the committed (epoch 0) samples, yet it changes
    # the model: a new end size trains anew
    again = run_local(scheduled_trainer(images, 40), out, workers=0)
    assert again.sinks["classifier"]["reused"] is False
    history = json.loads((folder / "report.json").read_text())["history"]
    assert [r["input_shapes"][0][1] for r in history] == [16, 32, 40]


def test_a_trainer_that_cannot_train_says_why_and_the_run_exits_3(tmp_path: Path) -> None:
    one = tmp_path / "one_class"
    make_image_dataset(one, classes=1, per_class=6, size=(32, 40), seed=0)
    spec = _pipeline(one, epochs=1).stored()
    assert spec is not None
    (tmp_path / "p.json").write_text(json.dumps(spec["pipeline"]))
    proc = cli("run", tmp_path / "p.json", "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "classifier: failed (too_few_classes): training needs 2 classes" in proc.stdout
    assert "processed 6 of 6" in proc.stdout  # the items are committed all the same
    assert not (tmp_path / "out" / "train" / "classifier" / "model.pt").exists()
    # a label field the pipeline does not produce is caught before anything runs
    spec["pipeline"]["nodes"]["classifier"]["params"]["label"] = "species"
    (tmp_path / "q.json").write_text(json.dumps(spec["pipeline"]))
    proc = cli("validate", tmp_path / "q.json", cwd=tmp_path)
    assert proc.returncode == 2 and "consumes field 'species'" in proc.stderr


def test_sigkill_during_training_then_the_same_command_resumes_bit_for_bit(
    images: Path, tmp_path: Path
) -> None:
    spec = _pipeline(images, epochs=8, width=8).stored()
    assert spec is not None
    pipeline = tmp_path / "p.json"
    pipeline.write_text(json.dumps(spec["pipeline"]))
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    cmd = [*datapipe_cmd(), "run", str(pipeline), "-q", "--out"]
    proc = subprocess.Popen(
        [*cmd, str(killed)], start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    checkpoints = killed / "train" / "classifier" / "checkpoints"
    while not list(checkpoints.glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-training: after the first epoch's checkpoint
    proc.wait()
    assert not (killed / "train" / "classifier" / "report.json").exists()
    again = subprocess.run([*cmd, str(killed)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    report = json.loads((killed / "train" / "classifier" / "report.json").read_text())
    assert 1 <= report["resumed_from_epoch"] < 8 and report["epochs_run"] == 8
    subprocess.run([*cmd, str(whole)], check=True, timeout=300)
    a = torch.load(killed / "train/classifier/model.pt", weights_only=True)
    b = torch.load(whole / "train/classifier/model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_writes_onnx_and_pt2_that_match_the_model(images: Path, tmp_path: Path) -> None:
    import onnxruntime

    out = tmp_path / "out"
    run_local(_pipeline(images, epochs=1, export=["onnx", "pt2"]), out, workers=0)
    folder = out / "train" / "classifier"
    spec = json.loads((folder / "model.json").read_text())
    model = build_model(spec["model"]).eval()
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    x = torch.randn(5, *spec["inputs"]["shapes"][0])  # another batch size than the export's
    with torch.no_grad():
        want = model(x).numpy()
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    program = torch.export.load(folder / "model.pt2")
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(x).numpy(), want, atol=1e-5)
