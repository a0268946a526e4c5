"""Knowledge distillation: the loss against Hinton's formula, the student's batches aligned
with the teacher's logits, and ``compress.distill`` in a real run where a pixel model
teaches a DCT student (the teacher trains first, whatever the order of the nodes)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

import datapipe
from datapipe.demo.training_data import make_image_dataset
from datapipe.errors import ConfigError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.schemas import load_schema
from datapipe.stages.train.distill import Teacher, check_classes
from datapipe.train.distill import DistillInputs, distillation_loss
from datapipe.train.inputs import PixelInputs


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_loss_is_hintons_formula():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)) * 3
    y = np.array([0, 1, 2, 3, 0])
    alpha, temp = 0.7, 3.0
    p, q = _softmax(t / temp), _softmax(s / temp)
    kl = float((p * (np.log(p) - np.log(q))).sum(1).mean())
    ce = float(-np.log(_softmax(s)[np.arange(5), y]).mean())
    expected = (1 - alpha) * ce + alpha * temp**2 * kl
    got = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, temp)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # a student that already matches the teacher pays only the hard term
    same = distillation_loss(torch.tensor(t), torch.tensor(t), torch.tensor(y), alpha, temp)
    ce_t = float(-np.log(_softmax(t)[np.arange(5), y]).mean())
    assert float(same) == pytest.approx((1 - alpha) * ce_t, rel=1e-9)


def test_teacher_rows_follow_the_samples_the_student_keeps():
    image = np.zeros((8, 8, 3), np.uint8)
    targets = {k: torch.full((3,), float(i)) for i, k in enumerate("abcd")}
    inputs = DistillInputs(PixelInputs("image", "label_id"), targets)
    batch = [
        {"key": "a", "image": image, "label_id": 0},
        {"key": "x", "image": image, "label_id": 1},  # the teacher could not read it
        {"key": "b", "image": np.zeros((8, 8), np.uint8), "label_id": 1},  # wrong shape
        {"key": "c", "image": image + 1, "label_id": 2},
        {"key": "d", "image": image, "label_id": -1},  # unlabelled
    ]
    skipped: Counter = Counter()
    (x,), y = inputs(batch, train=True, skipped=skipped)
    assert y.tolist() == [0, 2] and x.shape[0] == 2 and float(x[1].max()) == pytest.approx(1 / 255)
    assert inputs.teacher_logits[:, 0].tolist() == [0.0, 2.0]  # a's and c's rows
    assert skipped["no_teacher"] == 1 and sum(skipped.values()) == 3
    # evaluation goes straight through (the teacher has no logits for validation keys)
    _, yv = inputs(batch[:1] + batch[3:4], train=False, skipped=Counter())
    assert yv.tolist() == [0, 2]
    with pytest.raises(TypeError, match="collate_fn=list"):
        inputs({"key": ["a"], "image": torch.zeros(1, 8, 8, 3)}, train=True, skipped=Counter())


def test_a_teacher_with_other_classes_is_refused(tmp_path: Path):
    teacher = Teacher("big", tmp_path, {"classes": ["cat", "dog"]}, "f", 0.9, tmp_path)
    check_classes(teacher, ["cat", "dog"])
    with pytest.raises(datapipe.errors.SinkError, match="'big' has classes"):
        check_classes(teacher, ["dog", "cat"])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distill_images")
    make_image_dataset(root, classes=3, per_class=16, size=(48, 48), seed=0)
    return root


def _pipeline(root: Path, distill: dict[str, Any], teacher: dict[str, Any] | None = None,
              **block: Any) -> Pipeline:  # fmt: skip
    """files -> {image.resize -> train.image ``teacher``, jpeg.dct -> train.dct ``student``
    (``compress: {distill, **block}``)}; the student is listed first."""
    common = {"width": 8, "batch_size": 16, "lr": 0.05, "epochs": 2}
    return Pipeline.from_dict(
        {
            "nodes": {
                "student": {
                    "stage": "train.dct",
                    "inputs": "dct",
                    "params": {**common, "depth": 10, "compress": {"distill": distill, **block}},
                },
                "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
                "dct": {"stage": "jpeg.dct", "inputs": "photos",
                        "params": {"layout": "channels", "keep": 8, "dequantize": True}},
                "resize": {"stage": "image.resize", "inputs": "photos", "params": {"size": 32}},
                "teacher": {"stage": "train.image", "inputs": "resize",
                            "params": {**common, **(teacher or {})}},
            }
        }
    )  # fmt: skip


def test_a_pixel_model_teaches_a_dct_student(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    distill = {"teacher": "teacher", "alpha": 0.5, "temperature": 4.0, "finetune_epochs": 1}
    run = run_local(_pipeline(images, distill), out, workers=0)
    assert list(run.sinks) == ["teacher", "student"]  # the teacher trained first
    summary = run.sinks["student"]["compressed"]
    assert summary["variant"] == "distill teacher" and summary["reused"] is False
    folder = out / "train" / "student" / "compressed"
    report = json.loads((folder / "report.json").read_text())
    teacher_report = json.loads((out / "train" / "teacher" / "report.json").read_text())
    assert report["teacher"] == {"node": "teacher", "val_accuracy": teacher_report["val_accuracy"]}
    assert report["epochs_run"] == 1 and report["skipped"] == {}
    jsonschema.validate(report, load_schema("train_report"))
    spec = json.loads((folder / "model.json").read_text())
    assert spec["trainer"] == "train.dct" and (folder / "model.pt").is_file()
    again = run_local(_pipeline(images, distill), out, workers=0)
    assert again.sinks["student"]["compressed"]["reused"] is True
    # a teacher trained anew (another seed) redoes the student's variant, not its fp32 model
    third = run_local(_pipeline(images, distill, {"seed": 1}), out, workers=0).sinks["student"]
    assert third["reused"] is True and third["compressed"]["reused"] is False


def test_bad_teachers_are_named(images: Path, tmp_path: Path):
    for distill, words in (
        ({"teacher": "photos"}, "'photos' is a files node"),
        ({"teacher": "teachr"}, "did you mean 'teacher'"),
        ({"teacher": "student"}, "'student' names itself"),
        ({"teacher": "teacher", "alpha": 1.5}, "less than or equal to 1"),
    ):
        with pytest.raises(ConfigError, match=words):
            datapipe.validate(_pipeline(images, distill))
    with pytest.raises(ConfigError, match="distill needs a fine-tuning to teach in"):
        datapipe.validate(_pipeline(images, {"teacher": "teacher"}, prune={"finetune_epochs": 0}))
    # two trainers teaching each other: no order can train both first
    loop = {"compress": {"distill": {"teacher": "student"}}}
    with pytest.raises(ConfigError, match="cycle"):
        datapipe.validate(_pipeline(images, {"teacher": "teacher"}, loop))
    with pytest.raises(ConfigError, match="share one fine-tuning; give its epochs and lr once"):
        twice = {"teacher": "teacher", "finetune_epochs": 2}
        datapipe.validate(_pipeline(images, twice, prune={"amount": 0.5, "lr": 0.01}))
    # a teacher whose run failed teaches nothing: the student says which and why
    broken = {"compress": {"prune": {"amount": 0.9}}}
    run = run_local(_pipeline(images, {"teacher": "teacher"}, broken), tmp_path, workers=0)
    assert run.sinks["teacher"]["error"] == "compress_failed"
    failed = run.sinks["student"]
    assert failed["error"] == "compress_failed"
    assert failed["message"].startswith("compress.distill.teacher 'teacher' has no trained model")
    assert "pruning 90%" in failed["message"]
