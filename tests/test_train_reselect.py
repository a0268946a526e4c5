"""``reselect:`` on a ``train.*`` stage in a real run: each epoch trains on the logged subset
of the training split (never a validation key), the report says so and follows its schema,
the settings are part of what the model depends on, and bad settings are refused at
validation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from datapipe.demo.training_data import make_image_dataset
from datapipe.errors import ConfigError
from datapipe.executors.local import run_local
from datapipe.schemas import load_schema
from datapipe.stream import from_shards
from datapipe.summary import summary_text
from datapipe.train import split_by_key
from runs import image_trainer, scheduled_trainer

RESELECT = {"every": 1, "fraction": 0.5, "score": "loss"}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reselect_images")
    make_image_dataset(root, classes=3, per_class=16, size=(32, 32), seed=1)
    return root


@pytest.fixture(scope="module")
def trained(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reselect") / "out"
    report = run_local(image_trainer(images, epochs=3, reselect=RESELECT), out, workers=0)
    assert report.sinks["classifier"]["epochs_run"] == 3
    return out


def test_each_epoch_trains_on_its_logged_half_of_the_training_split(trained: Path) -> None:
    folder = trained / "train" / "classifier"
    report = json.loads((folder / "report.json").read_text())
    jsonschema.validate(report, load_schema("train_report"))
    lines = [json.loads(x) for x in (folder / "selection.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2]
    assert [x["rescored"] for x in lines] == [False, True, True]
    n_train, n_val = report["train_samples"], report["val_samples"]
    assert n_train + n_val == 48
    budget = report["reselect"]["budget"]
    assert budget == round(0.5 * n_train) and report["reselect"]["rescorings"] == 2
    labels = {s["key"]: int(s["label_id"]) for s in from_shards(trained, shuffle=False)}
    val_keys = split_by_key(labels, labels.values(), 0.2, seed=0)  # the trainer's split
    assert len(val_keys) == n_val
    for line, record in zip(lines, report["history"], strict=True):
        assert len(line["keys"]) == len(set(line["keys"])) == budget
        assert record["samples"] == record["active_samples"] == budget
        assert set(Counter(labels[k] for k in line["keys"])) == {0, 1, 2}  # every class
        assert not val_keys & set(line["keys"])  # drawn from the training split alone
    assert report["reselect"]["score"] == "loss" and report["reselect"]["nonfinite_scores"] == 0


def test_reselect_settings_are_part_of_the_model_and_rerun_reuses(
    images: Path, trained: Path
) -> None:
    again = run_local(image_trainer(images, epochs=3, reselect=RESELECT), trained, workers=0)
    assert again.sinks["classifier"]["reused"] is True
    subset = "50% re-selected by loss every 1 epochs"
    assert again.sinks["classifier"]["subset"] == subset
    assert f"3 epochs, on {subset}" in summary_text(again)
    other = {**RESELECT, "score": "el2n"}
    changed = run_local(image_trainer(images, epochs=3, reselect=other), trained, workers=0)
    assert changed.sinks["classifier"]["reused"] is False
    report = json.loads((trained / "train" / "classifier" / "report.json").read_text())
    assert report["reselect"]["score"] == "el2n"


@pytest.mark.parametrize(
    "bad",
    [{"fraction": 0}, {"fraction": 1.5}, {"every": 0}, {"score": "gradnorm"}, {"probe": 0}],
)
def test_bad_reselect_settings_are_refused_before_running(
    images: Path, tmp_path: Path, bad: dict
) -> None:
    with pytest.raises(ConfigError, match="reselect"):
        run_local(image_trainer(images, reselect={**RESELECT, **bad}), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.sqlite").exists()


def test_a_budget_that_drops_a_class_is_a_clear_error_row(images: Path, tmp_path: Path) -> None:
    report = run_local(
        image_trainer(images, epochs=1, reselect={"fraction": 0.05}), tmp_path / "out", workers=0
    )
    failed = report.sinks["classifier"]
    assert failed["error"] == "reselect_budget" and "drop a whole class" in failed["message"]
    assert report.counts["ok"] == 48  # the items are committed all the same


def test_reselect_under_a_resize_schedule_scores_at_each_epochs_size(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pipeline = scheduled_trainer(images, 24, end_epoch=1, epochs=2, reselect=RESELECT)
    run_local(pipeline, out, workers=0)
    report = json.loads((out / "train" / "classifier" / "report.json").read_text())
    assert [r["input_shapes"][0][1] for r in report["history"]] == [16, 24]
    budget = report["reselect"]["budget"]
    assert [r["samples"] for r in report["history"]] == [budget] * 2
    assert report["reselect"]["rescorings"] == 1 and report["skipped"] == {}


def test_compression_fine_tunes_on_every_training_sample(images: Path, tmp_path: Path) -> None:
    prune = {"prune": {"amount": 0.5, "finetune_epochs": 1}}
    pipeline = image_trainer(images, epochs=2, reselect=RESELECT, compress=prune)
    run_local(pipeline, tmp_path / "out", workers=0)
    folder = tmp_path / "out" / "train" / "classifier"
    report = json.loads((folder / "report.json").read_text())
    budget = report["reselect"]["budget"]
    assert [r["samples"] for r in report["history"]] == [budget] * 2
    tuned = json.loads((folder / "compressed" / "report.json").read_text())
    assert [r["samples"] for r in tuned["history"]] == [report["train_samples"]]
    assert budget < report["train_samples"]
