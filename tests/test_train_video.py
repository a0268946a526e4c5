"""``train.video`` and its inputs: TSN segment indices and the CoViAR stream selection checked
against hand-picked frames, int8 residual scaling, skip counting, the fused model's formula,
and real runs (files -> video.coviar / keyframes.uniform -> train.video) that learn and write
a model that rebuilds from model.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datapipe.demo.training_data import make_video_dataset
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.models import CoviarNet, build_model, coviar_net
from datapipe.schemas import load_schema
from datapipe.stream import collate, from_shards
from datapipe.train import KeyFilter, TrainConfig, evaluate, split_by_key
from datapipe.train.inputs import inputs_from_spec
from datapipe.train.video_inputs import SegmentInputs, segment_bounds, segment_indices

CLASSES = 3


# -- segments ------------------------------------------------------------------------------------
def test_segment_indices_by_hand() -> None:
    # T = 10, S = 3: chunks [0, 3), [3, 6), [6, 10)
    assert segment_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert segment_indices(10, 3) == [1, 4, 7]  # middles: lo + (len - 1) // 2
    assert segment_indices(10, 3, torch.tensor([0.0, 0.5, 0.99])) == [0, 4, 9]
    assert segment_indices(12, 4) == [1, 4, 7, 10]
    # fewer frames than segments: chunks share frames (replacement)
    assert segment_bounds(2, 3) == [(0, 1), (0, 1), (1, 2)]
    assert segment_indices(2, 3) == [0, 0, 1]
    assert segment_indices(1, 4, torch.rand(4)) == [0, 0, 0, 0]


def test_training_draws_cover_each_chunk_and_only_it() -> None:
    torch.manual_seed(0)
    seen: list[set[int]] = [set(), set(), set()]
    for _ in range(200):
        for k, t in enumerate(segment_indices(10, 3, torch.rand(3))):
            seen[k].add(t)
    assert seen == [{0, 1, 2}, {3, 4, 5}, {6, 7, 8, 9}]


# -- streams -------------------------------------------------------------------------------------
def _clip(residual_dtype: str = "int8") -> dict[str, Any]:
    """6 kept frames in 3 GOPs (gop 0 0 1 1 1 2), 4 x 4 pixels; every value tells its frame."""
    t = np.arange(6)
    iframes = np.stack([np.full((4, 4, 3), 10 + 100 * g, np.uint8) for g in range(3)])
    iframes[1, 0, 0] = (1, 2, 3)  # a pixel that shows the channel order
    mv = np.zeros((6, 4, 4, 2), np.int16)
    mv[..., 0] = (16 * t)[:, None, None]  # x: 16 px per frame
    mv[..., 1] = (-8 * t)[:, None, None]  # y
    residual = np.zeros((6, 4, 4, 3), residual_dtype)
    residual[..., 0] = (t - 3)[:, None, None]
    residual[2, 0, 0] = (-128, 127, 0) if residual_dtype == "int8" else (-300, 300, 0)
    return {
        "coviar_iframes": iframes,
        "coviar_gop": np.array([0, 0, 1, 1, 1, 2], np.int64),
        "coviar_mv": mv,
        "coviar_residual": residual,
        "label_id": 2,
    }


def test_streams_pick_the_frames_by_hand() -> None:
    inputs = SegmentInputs(segments=3)
    (iframe, mv, residual), y = inputs([_clip()], train=False, skipped=Counter())
    # T = 6, S = 3: chunks [0,2) [2,4) [4,6), middles 0, 2, 4; their GOPs 0, 1, 1
    assert y.tolist() == [2]
    assert iframe.shape == (1, 3, 3, 4, 4) and mv.shape == (1, 3, 2, 4, 4)
    assert residual.shape == (1, 3, 3, 4, 4) and iframe.dtype == torch.float32
    assert iframe[0, :, 0, 1, 1].tolist() == pytest.approx([10 / 255, 110 / 255, 110 / 255])
    assert iframe[0, 1, :, 0, 0].tolist() == pytest.approx([1 / 255, 2 / 255, 3 / 255])
    # motion / 16: x = 16 t -> t, y = -8 t -> -t / 2
    assert mv[0, :, 0, 3, 3].tolist() == [0.0, 2.0, 4.0]
    assert mv[0, :, 1, 3, 3].tolist() == [0.0, -1.0, -2.0]
    # int8 residuals hold half the levels: x 2, then / 255
    assert residual[0, :, 0, 1, 1].tolist() == pytest.approx([-6 / 255, -2 / 255, 2 / 255])
    assert residual[0, 1, :, 0, 0].tolist() == pytest.approx([-256 / 255, 254 / 255, 0.0])


def test_int16_residuals_are_levels() -> None:
    inputs = SegmentInputs(["residual"], segments=3)
    (residual,), _ = inputs([_clip("int16")], train=False, skipped=Counter())
    assert residual[0, 1, :, 0, 0].tolist() == pytest.approx([-300 / 255, 300 / 255, 0.0])
    assert residual[0, :, 0, 1, 1].tolist() == pytest.approx([-3 / 255, -1 / 255, 1 / 255])


def test_rgb_frames_are_sampled_on_their_own_count_and_resized() -> None:
    frames = np.zeros((9, 4, 4, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(9)[:, None, None] * 10
    frames[:, :2, :2, 1] = 40  # the top-left 2 x 2 block: its area mean is 40, others' 0
    inputs = SegmentInputs(["rgb"], segments=3, size=2)
    (rgb,), _ = inputs([{"keyframes": frames, "label_id": 0}], train=False, skipped=Counter())
    # T = 9, S = 3: chunks [0,3) [3,6) [6,9), middles 1, 4, 7
    assert rgb.shape == (1, 3, 3, 2, 2)
    assert rgb[0, :, 0, 0, 0].tolist() == pytest.approx([10 / 255, 40 / 255, 70 / 255])
    assert rgb[0, 0, 1].flatten().tolist() == pytest.approx([40 / 255, 0.0, 0.0, 0.0])


def test_a_padded_collated_batch_gives_each_clip_its_own_frames() -> None:
    short = {**_clip(), "label_id": 1}
    short.update({k: short[k][:3] for k in ("coviar_gop", "coviar_mv", "coviar_residual")})
    specs = {"coviar_iframes": "G H W 3", "coviar_gop": "T", "coviar_mv": "T H W 2",
             "coviar_residual": "T H W 3"}  # fmt: skip
    batch = collate([_clip(), short], fields=specs)
    (_, mv, _), y = SegmentInputs(segments=3)(batch, train=False, skipped=Counter())
    assert y.tolist() == [2, 1]
    # the short clip has T = 3 (not the padded 6): chunks [0,1) [1,2) [2,3), frames 0, 1, 2
    assert mv[1, :, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert mv[0, :, 0, 0, 0].tolist() == [0.0, 2.0, 4.0]


def test_bad_clips_are_skipped_and_counted() -> None:
    good = _clip()
    nan = {**good, "coviar_residual": np.full((6, 4, 4, 3), np.nan, np.float32)}
    no_frame = {k: good[k][:0] for k in ("coviar_gop", "coviar_mv", "coviar_residual")}
    batch = [
        good,
        {k: v for k, v in good.items() if k != "coviar_mv"},  # missing_field
        {**good, "coviar_mv": good["coviar_mv"][0]},  # wrong_shape: 3 dims
        {**good, "coviar_mv": good["coviar_mv"][..., :1]},  # wrong_shape: 1 channel
        {**good, "coviar_gop": np.array([0, 0, 1, 1, 1, 3])},  # wrong_shape: no GOP 3
        {**good, "coviar_gop": good["coviar_gop"][:5]},  # wrong_shape: 5 GOPs, 6 frames
        {**good, **no_frame},  # wrong_shape: no frame
        {**good, "coviar_iframes": np.zeros((3, 8, 4, 3), np.uint8)},  # wrong_shape: not 4x4
        nan,  # not_finite
        {**good, "label_id": -1},  # missing_label
        {**good, "label_id": 0},
    ]
    skipped: Counter = Counter()
    xs, y = SegmentInputs(segments=3)(batch, train=True, skipped=skipped)
    assert y.tolist() == [2, 0] and all(x.shape[0] == 2 for x in xs)
    assert skipped == Counter(missing_field=1, wrong_shape=6, not_finite=1, missing_label=1)
    empty, none = SegmentInputs()([batch[1]], train=False, skipped=Counter())
    assert len(none) == 0 and len(empty) == 3


def test_inputs_rebuild_from_their_description() -> None:
    trained = SegmentInputs(["mv", "iframe"], segments=2, size=2)
    trained([_clip()], train=True, skipped=Counter())
    spec = json.loads(json.dumps(trained.describe()))
    assert spec["shapes"] == [[2, 2, 2, 2], [2, 3, 2, 2]]
    assert spec["fields"] == ["coviar_mv", "coviar_iframes", "coviar_gop"]
    rebuilt = inputs_from_spec(spec)
    assert isinstance(rebuilt, SegmentInputs) and rebuilt.shapes == trained.shapes
    assert rebuilt.streams == ["mv", "iframe"] and rebuilt.size == 2


# -- the model -----------------------------------------------------------------------------------
def test_fused_logits_are_the_weighted_sum_of_segment_means() -> None:
    torch.manual_seed(0)
    net = coviar_net(["iframe", "mv", "residual"], num_classes=4, width=4, weights=[1, 2, 0.5])
    net.eval()
    xs = (torch.randn(2, 3, 3, 8, 8), torch.randn(2, 3, 2, 8, 8), torch.randn(2, 3, 3, 8, 8))
    with torch.no_grad():
        fused = net(*xs)
        expected = torch.zeros(2, 4)
        for w, name, x in zip((1, 2, 0.5), ("iframe", "mv", "residual"), xs, strict=True):
            per_frame = torch.stack([net.backbones[name](x[:, s]) for s in range(3)], 1)
            expected += w * per_frame.mean(1)
    assert torch.allclose(fused, expected, atol=1e-5)
    one = build_model({"arch": "coviar", "streams": ["iframe"], "num_classes": 4, "width": 4})
    assert isinstance(one, CoviarNet) and list(one.backbones) == ["iframe"]
    assert one.spec["weights"] == [1.0]
    with pytest.raises(ValueError, match="streams"):
        coviar_net(["iframe", "flow"])


# -- real runs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_videos")
    make_video_dataset(root, classes=CLASSES, per_class=8, size=(32, 32), frames=12, workers=1)
    return root


def _pipeline(root: Path, upstream: dict[str, Any], **train: Any) -> Pipeline:
    params = {"epochs": 5, "batch_size": 8, "lr": 0.05, "width": 8, "size": 16, **train}
    return Pipeline.from_dict(
        {
            "nodes": {
                "clips": {"stage": "files", "params": {"root": str(root), "kinds": ["video"]}},
                "rep": {**upstream, "inputs": "clips"},
                "net": {"stage": "train.video", "inputs": "rep", "params": params},
            }
        }
    )


COVIAR = {"stage": "video.coviar"}


def _rebuilt(folder: Path) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    spec = json.loads((folder / "model.json").read_text())
    model = build_model(spec["model"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return spec, model, json.loads((folder / "report.json").read_text())


def test_coviar_learns_and_writes_a_rebuildable_model(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_local(_pipeline(clips, COVIAR), out, workers=0).sinks["net"]
    assert summary["reused"] is False and summary["epochs_run"] == 5
    folder = out / "train" / "net"
    spec, model, report = _rebuilt(folder)
    assert spec["model"]["arch"] == "coviar"
    assert list(model.backbones) == ["iframe", "mv", "residual"]  # type: ignore[arg-type]
    assert spec["model"]["weights"] == [1.0, 1.0, 0.5]
    assert spec["inputs"]["shapes"] == [[3, 3, 16, 16], [3, 2, 16, 16], [3, 3, 16, 16]]
    assert len(spec["normalize"]["mean"]) == 3 + 2 + 3  # per channel, streams in order
    history = report["history"]
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"]
    assert report["skipped"] == {} and report["trainer"] == "train.video"
    jsonschema.validate(report, load_schema("train_report"))
    # the rebuilt model and inputs give the validation accuracy the report says
    fields = [*spec["inputs"]["fields"], "label_id"]
    labels = {s["key"]: int(s["label_id"]) for s in from_shards(out, shuffle=False, fields=fields)}
    val = KeyFilter(
        from_shards(out, shuffle=False, fields=fields),
        split_by_key(labels, labels.values(), 0.2, seed=0),
    )
    config = TrainConfig(mean=spec["normalize"]["mean"], std=spec["normalize"]["std"])
    result = evaluate(
        model,
        DataLoader(val, batch_size=64, collate_fn=val.collate),
        config,
        inputs=inputs_from_spec(spec["inputs"]),
    )
    assert result["val_accuracy"] == report["val_accuracy"]
    assert result["val_samples"] == report["val_samples"] > 0
    # I-frames only is one param apart: it retrains without decoding a clip again
    again = run_local(_pipeline(clips, COVIAR, streams=["iframe"]), out, workers=0)
    assert again.counts["processed"] == 0 and again.sinks["net"]["reused"] is False
    spec, model, report = _rebuilt(folder)
    assert list(model.backbones) == ["iframe"]  # type: ignore[arg-type]
    assert spec["inputs"]["fields"] == ["coviar_iframes", "coviar_gop"]
    assert report["params"] * 3 < summary["params"] * 1.1


def test_the_rgb_baseline_trains_on_decoded_keyframes(clips: Path, tmp_path: Path) -> None:
    frames = {"stage": "keyframes.uniform", "params": {"every": 1, "decode": True}}
    out = tmp_path / "out"
    run_local(_pipeline(clips, frames, streams=["rgb"]), out, workers=0)
    spec, model, report = _rebuilt(out / "train" / "net")
    assert list(model.backbones) == ["rgb"]  # type: ignore[arg-type]
    assert spec["inputs"]["fields"] == ["keyframes"]
    assert spec["inputs"]["shapes"] == [[3, 3, 16, 16]]
    history = report["history"]
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"]
