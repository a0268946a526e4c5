"""The ``compress:`` block of a trainer in a real run: a pruned model beside the fp32 one,
its report measured against it, reused on its own, used by ``datapipe predict``."""

from __future__ import annotations

import json
import warnings
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
from datapipe.models import count_macs, count_params
from datapipe.predict import PredictError, load_trained, predict
from datapipe.schemas import load_schema
from datapipe.train.saved import load_model
from runs import image_trainer

warnings.filterwarnings("ignore", module="torch_pruning")

PRUNE = {"prune": {"amount": 0.5, "finetune_epochs": 1}}


def _pipeline(root: Path, **train: Any) -> Pipeline:
    return image_trainer(root, **{"epochs": 2, "compress": PRUNE, **train})


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compress_images")
    make_image_dataset(root, classes=3, per_class=16, size=(40, 48), seed=0)
    return root


def _load(folder: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    spec = json.loads((folder / "model.json").read_text())
    return spec, load_model(folder, spec)


def test_a_pruned_model_is_written_measured_and_predicts(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    run = run_local(_pipeline(images, export=["onnx"]), out, workers=0)
    compressed = run.sinks["classifier"]["compressed"]
    assert compressed["variant"] == "prune 50% l1" and compressed["reused"] is False
    folder = out / "train" / "classifier"
    small = folder / "compressed"
    for name in ("model.pt", "model.json", "report.json", "curves.png", "confusion.png"):
        assert (small / name).is_file(), name
    assert (folder / "pareto.png").stat().st_size > 0
    report = json.loads((small / "report.json").read_text())
    jsonschema.validate(report, load_schema("train_report"))  # the fp32 report's keys
    fp32_spec, fp32 = _load(folder)
    spec, model = _load(small)
    shape = spec["inputs"]["shapes"][0]
    # the figures are the rebuilt models' own, counted here independently
    assert report["params"] == count_params(model) < 0.3 * count_params(fp32)
    assert report["macs"] == count_macs(model, shape)
    assert report["baseline"]["macs"] == count_macs(fp32, shape)
    assert report["ratios"]["macs"] == round(report["macs"] / report["baseline"]["macs"], 4)
    assert report["model_bytes"] == (small / "model.pt").stat().st_size
    assert report["baseline"]["model_bytes"] == (folder / "model.pt").stat().st_size
    assert set(report["cpu_latency_ms"]) == set(report["baseline"]["cpu_latency_ms"])
    assert spec["compress"]["prune"]["amount"] == 0.5 and spec["classes"] == fp32_spec["classes"]
    # the compressed ONNX file computes what the pruned torch model does
    import onnxruntime

    x = torch.randn(3, *shape)
    session = onnxruntime.InferenceSession(str(small / "model.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)
    # predict takes the compressed model when asked
    files = sorted(images.glob("*/*.jpg"))[:4]
    assert load_trained(folder, compressed=True).spec["resized"] == spec["resized"]
    results = list(predict(folder, files, compressed=True, workers=1))
    assert [r["path"] for r in results] == [str(f) for f in files]
    assert all(r["class"] in spec["classes"] for r in results)


def test_only_the_block_changed_reuses_the_fp32_model(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    run_local(_pipeline(images), out, workers=0)
    again = run_local(_pipeline(images), out, workers=0).sinks["classifier"]
    assert again["reused"] is True and again["compressed"]["reused"] is True
    quarter = {"prune": {"amount": 0.25, "finetune_epochs": 1}}
    other = run_local(_pipeline(images, compress=quarter), out, workers=0).sinks["classifier"]
    assert other["reused"] is True  # the fp32 model stands
    assert other["compressed"]["reused"] is False and other["compressed"]["macs_ratio"] > 0.4
    # the Pareto record keeps every variant of this fp32 model, each measured beside it
    pareto = json.loads((out / "train" / "classifier" / "pareto.json").read_text())
    assert set(pareto["variants"]) == {"fp32", "prune 50% l1", "prune 25% l1"}
    report = json.loads((out / "train" / "classifier" / "compressed" / "report.json").read_text())
    assert pareto["variants"]["prune 25% l1"] == [
        report["cpu_latency_ms"]["batch_64"],
        report["val_accuracy"],
    ]
    plain = run_local(_pipeline(images, compress=None), out, workers=0).sinks["classifier"]
    assert plain["reused"] is True and "compressed" not in plain
    folder = out / "train" / "classifier"
    assert not (folder / "compressed").exists()
    with pytest.raises(PredictError, match="has no compressed model"):
        load_trained(folder, compressed=True)


def test_bad_compress_blocks_are_refused(images: Path, tmp_path: Path):
    for block, words in (
        ({"prune": {"amount": 1.0}}, "less than 1"),
        ({"prune": {"amount": 0.5, "method": "random"}}, "'l1', 'l2' or 'group_norm'"),
        ({"quantise": {"mode": "ptq"}}, "quantise"),
        ({}, "an empty compress block"),
        ({"quantize": {"finetune_epochs": 2}}, "only mode qat fine-tunes"),
    ):
        with pytest.raises(ConfigError, match=words):
            datapipe.validate(_pipeline(images, compress=block))
    # a layer of 8 channels keeps int(8 * 0.1) = 0 of them: a run error naming the layer,
    # never a silently unpruned model
    run = run_local(_pipeline(images, compress={"prune": {"amount": 0.9}}), tmp_path, workers=0)
    failed = run.sinks["classifier"]
    assert failed["error"] == "compress_failed"
    assert "compress.prune: pruning 90% of layer 'stem.0' (8 output channels)" in failed["message"]
    assert not (tmp_path / "train" / "classifier" / "compressed").exists()


def _val_accuracy(out: Path, folder: Path) -> float:
    """The validation accuracy of the model in ``folder``, recomputed here: the trainer's
    split (key hash), the model's own input preparation and normalisation, its runtime."""
    from datapipe.stream import from_shards
    from datapipe.train import key_labels, split_by_key
    from datapipe.train.data import normalize
    from datapipe.train.inputs import inputs_from_spec

    spec = json.loads((folder / "model.json").read_text())
    labels = key_labels(from_shards(out, shuffle=False, fields=["label_id"]))
    val = split_by_key(labels, labels.values(), spec["params"]["val_fraction"], 0)
    samples = [s for s in from_shards(out, shuffle=False, fields=["image", "label_id"])
               if s["key"] in val]  # fmt: skip
    (x,), y = inputs_from_spec(spec["inputs"])(samples, train=False, skipped=Counter())
    x = normalize(x, spec["normalize"]["mean"], spec["normalize"]["std"])
    with torch.no_grad():
        predicted = load_model(folder, spec)(x).argmax(1)
    return float((predicted == y).float().mean())


def test_int8_alone_and_after_pruning(images: Path, tmp_path: Path):
    from datapipe.train.int8 import unquantized_layers

    out = tmp_path / "out"
    int8 = {"quantize": {"calibration_batches": 2}}
    run = run_local(_pipeline(images, compress=int8), out, workers=0)
    assert run.sinks["classifier"]["compressed"]["variant"] == "int8 ptq"
    again = run_local(_pipeline(images, compress=int8), out, workers=0).sinks["classifier"]
    assert again["compressed"]["reused"] is True  # the int8 model is kept, not redone
    folder = out / "train" / "classifier"
    small = folder / "compressed"
    assert (small / "model.onnx").is_file() and not (small / "model.pt").exists()
    assert unquantized_layers(small / "model.onnx") == []  # every conv and linear in int8
    report = json.loads((small / "report.json").read_text())
    jsonschema.validate(report, load_schema("train_report"))
    assert report["model_bytes"] == (small / "model.onnx").stat().st_size
    assert report["macs"] == report["baseline"]["macs"]  # the same network, in 8 bits
    assert report["val_accuracy"] == pytest.approx(_val_accuracy(out, small), abs=1e-6)
    assert report["baseline"]["val_accuracy"] == pytest.approx(_val_accuracy(out, folder))
    files = sorted(images.glob("*/*.jpg"))[:3]
    assert len(list(predict(folder, files, compressed=True, workers=1))) == 3
    # the survey's order: prune, fine-tune, then quantization-aware fine-tuning and int8;
    # smaller than either alone
    qat = {"quantize": {"mode": "qat", "calibration_batches": 2, "finetune_epochs": 1}}
    run = run_local(_pipeline(images, compress={**PRUNE, **qat}), out, workers=0)
    summary = run.sinks["classifier"]
    assert summary["reused"] is True  # the fp32 model stands
    assert summary["compressed"]["variant"] == "prune 50% l1 + int8 qat"
    smaller = json.loads((small / "report.json").read_text())
    assert [r.get("qat", False) for r in smaller["history"]] == [False, True]
    assert unquantized_layers(small / "model.onnx") == []
    assert smaller["model_bytes"] < report["model_bytes"]
    assert smaller["macs"] < 0.3 * smaller["baseline"]["macs"]
    assert smaller["val_accuracy"] == pytest.approx(_val_accuracy(out, small), abs=1e-6)


def test_low_rank_then_pruned_models_load_and_measure(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    tucker = {"decompose": {"method": "tucker", "rank": 0.5, "finetune_epochs": 1}}
    run = run_local(_pipeline(images, compress=tucker), out, workers=0)
    assert run.sinks["classifier"]["compressed"]["variant"] == "tucker rank 0.5"
    folder = out / "train" / "classifier"
    small = folder / "compressed"
    spec, model = _load(small)
    assert spec["decomposed"] and all(d["method"] == "tucker" for d in spec["decomposed"].values())
    for name in spec["decomposed"]:  # each factorised conv is three convolutions now
        assert len(model.get_submodule(name)) == 3
    report = json.loads((small / "report.json").read_text())
    shape = spec["inputs"]["shapes"][0]
    assert report["macs"] == count_macs(model, shape) < report["baseline"]["macs"]
    assert report["val_accuracy"] == pytest.approx(_val_accuracy(out, small), abs=1e-6)
    # factorised, then pruned: the saved model rebuilds from both records
    both = {"decompose": {"method": "cp", "rank": 0.5}, **PRUNE}
    run = run_local(_pipeline(images, compress=both), out, workers=0)
    assert run.sinks["classifier"]["compressed"]["variant"] == "cp rank 0.5 + prune 50% l1"
    spec, model = _load(small)
    assert spec["decomposed"] and spec["resized"]
    report = json.loads((small / "report.json").read_text())
    assert report["params"] == count_params(model)
    assert report["val_accuracy"] == pytest.approx(_val_accuracy(out, small), abs=1e-6)
    # a rank that leaves a layer nothing is an error naming the layer
    tiny = {"decompose": {"rank": 0.01}}
    failed = run_local(_pipeline(images, compress=tiny), out, workers=0).sinks["classifier"]
    assert failed["error"] == "compress_failed" and "compress.decompose:" in failed["message"]
