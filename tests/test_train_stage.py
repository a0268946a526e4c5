"""``train.image`` at the end of a real run: it trains on the committed samples, writes its
folder, is reused when nothing it depends on changed, and retrains (without decoding an input
again) when only its params did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from datapipe.demo.training_data import make_image_dataset
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.models import build_model
from datapipe.schemas import load_schema
from runs import cli

CLASSES = 4


def _pipeline(root: Path, **train: Any) -> Pipeline:
    params = {"epochs": 4, "width": 8, "batch_size": 16, "lr": 0.05, **train}
    return Pipeline.from_dict(
        {
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
                "resize": {"stage": "image.resize", "inputs": "photos", "params": {"size": 24}},
                "classifier": {"stage": "train.image", "inputs": "resize", "params": params},
            }
        }
    )


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
