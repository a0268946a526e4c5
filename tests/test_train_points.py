"""``train.points`` and its inputs: rotation about z, the subset/eval cut, bad clouds skipped
and counted, and a real files -> points.read -> points.fps -> train.points run that learns
and writes a model that rebuilds from its spec."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stage_inputs import write_ply

from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.models import build_model, model_spec, pointnet
from datapipe.train.inputs import inputs_from_spec
from datapipe.train.point_inputs import PointInputs, rotate_z


def test_rotation_about_z_keeps_z_and_the_xy_norms() -> None:
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(50, 3, generator=gen)
    for angle in (0.3, 1.0, math.pi, 5.5):
        out = rotate_z(pts, angle)
        assert torch.equal(out[:, 2], pts[:, 2])
        assert torch.allclose(out[:, :2].norm(dim=1), pts[:, :2].norm(dim=1), atol=1e-6)
        # the formula: x' = x cos a - y sin a, y' = x sin a + y cos a
        c, s = math.cos(angle), math.sin(angle)
        assert torch.allclose(out[:, 0], pts[:, 0] * c - pts[:, 1] * s, atol=1e-6)
        assert torch.allclose(out[:, 1], pts[:, 0] * s + pts[:, 1] * c, atol=1e-6)
    # a quarter turn takes (1, 0, z) to (0, 1, z)
    q = rotate_z(torch.tensor([[1.0, 0.0, 2.0]]), math.pi / 2)
    assert torch.allclose(q, torch.tensor([[0.0, 1.0, 2.0]]), atol=1e-6)


def test_augmented_clouds_keep_z_and_xy_norms_when_only_rotated() -> None:
    pts = torch.randn(40, 3)
    torch.manual_seed(1)
    (x,), _ = PointInputs(rotate=True)([{"points": pts, "label_id": 0}], train=True,
                                       skipped=Counter())  # fmt: skip
    out = x[0, :, :, 0].T
    assert not torch.allclose(out, pts)
    assert torch.equal(out[:, 2], pts[:, 2])
    assert torch.allclose(out[:, :2].norm(dim=1), pts[:, :2].norm(dim=1), atol=1e-5)


def test_subset_in_training_and_first_points_in_eval() -> None:
    cloud = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    inputs = PointInputs(points=2)
    (x,), y = inputs([{"points": cloud.numpy(), "label_id": 3}], train=False, skipped=Counter())
    # (B, 3, N, 1): channel c of point j is cloud[j, c]
    assert x.shape == (1, 3, 2, 1) and y.tolist() == [3]
    assert x[0, :, :, 0].tolist() == [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]
    torch.manual_seed(7)
    (xt,), _ = inputs([{"points": cloud, "label_id": 3}], train=True, skipped=Counter())
    torch.manual_seed(7)
    rows = torch.randperm(4)[:2]
    assert torch.equal(xt[0, :, :, 0].T, cloud[rows])
    # without points every cloud must have the first one's N
    same = PointInputs()
    skipped: Counter = Counter()
    (x2,), y2 = same(
        [{"points": cloud, "label_id": 0}, {"points": cloud[:3], "label_id": 1}],
        train=False,
        skipped=skipped,
    )
    assert x2.shape == (1, 3, 4, 1) and y2.tolist() == [0]
    assert skipped == Counter(wrong_shape=1)
    assert same.describe()["shapes"] == [[3, 4, 1]]
    rebuilt = inputs_from_spec(same.describe())
    assert isinstance(rebuilt, PointInputs) and rebuilt.n == 4


def test_bad_clouds_are_skipped_and_counted() -> None:
    good = torch.zeros(8, 3)
    nan = good.clone()
    nan[2, 1] = float("nan")
    batch = [
        {"points": good, "label_id": 1},
        {"points": nan, "label_id": 1},  # not_finite
        {"points": torch.zeros(5, 3), "label_id": 0},  # too few: wrong_shape
        {"points": torch.zeros(8, 2), "label_id": 0},  # wrong_shape
        {"points": torch.zeros(8, 3, 1), "label_id": 0},  # wrong_shape
        {"label_id": 0},  # missing_field
        {"points": good},  # missing_label
        {"points": good, "label_id": -1},  # missing_label
        {"points": torch.ones(9, 3), "label_id": 0},
    ]
    skipped: Counter = Counter()
    (x,), y = PointInputs(points=8)(batch, train=False, skipped=skipped)
    assert y.tolist() == [1, 0] and x.shape == (2, 3, 8, 1)
    assert skipped == Counter(not_finite=1, wrong_shape=3, missing_field=1, missing_label=2)


def test_pointnet_takes_both_layouts_and_its_tnet_starts_at_the_identity() -> None:
    net = pointnet(num_classes=3, width=8, tnet=True).eval()
    x = torch.randn(2, 3, 16)
    assert torch.allclose(net(x), net(x[..., None]))
    assert net.tnet is not None
    eye = torch.eye(3).expand(2, 3, 3)
    assert torch.allclose(net.tnet(x), eye)
    assert build_model(model_spec(net)).spec == net.spec
    # invariant to the order of the points (max pool)
    assert torch.allclose(net(x), net(x[:, :, torch.randperm(16)]), atol=1e-5)


def _cloud(label: str, rng: np.random.Generator, n: int = 256) -> np.ndarray:
    u = rng.normal(size=(n, 3))
    if label == "sphere":
        pts = u / np.linalg.norm(u, axis=1, keepdims=True)
    elif label == "disc":  # flat in z
        r = np.sqrt(rng.uniform(0, 1, n))
        t = rng.uniform(0, 2 * np.pi, n)
        pts = np.stack([r * np.cos(t), r * np.sin(t), 0.05 * rng.normal(size=n)], 1)
    else:  # "rod": long in z
        t = rng.uniform(0, 2 * np.pi, n)
        pts = np.stack([0.15 * np.cos(t), 0.15 * np.sin(t), rng.uniform(-1.5, 1.5, n)], 1)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return (pts @ rot.T) * rng.uniform(0.8, 1.2) + rng.normal(0, 0.01, size=(n, 3))


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clouds")
    rng = np.random.default_rng(0)
    for label in ("sphere", "disc", "rod"):
        for i in range(12):
            write_ply(root / label / f"{label}_{i:03d}.ply", _cloud(label, rng))
    return root


def _pipeline(root: Path, **train: Any) -> Pipeline:
    params = {
        **{"epochs": 6, "width": 8, "batch_size": 12, "lr": 0.01, "optimizer": "adamw"},
        **{"rotate": True, "jitter": 0.01, "scale": [0.9, 1.1], "tnet": True, **train},
    }
    return Pipeline.from_dict(
        {
            "nodes": {
                "clouds": {
                    "stage": "files",
                    "params": {"root": str(root), "kinds": ["pointcloud"]},
                },
                "read": {"stage": "points.read", "inputs": "clouds"},
                "fps": {"stage": "points.fps", "inputs": "read", "params": {"m": 64}},
                "classifier": {"stage": "train.points", "inputs": "fps", "params": params},
            }
        }
    )


def test_train_points_learns_and_writes_a_rebuildable_model(clouds: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_local(_pipeline(clouds), out, workers=0)
    summary = report.sinks["classifier"]
    assert summary["reused"] is False and summary["epochs_run"] == 6
    folder = out / "train" / "classifier"
    for name in ("model.pt", "model.json", "report.json", "curves.png", "confusion.png"):
        assert (folder / name).stat().st_size > 0, name
    spec = json.loads((folder / "model.json").read_text())
    assert spec["model"]["arch"] == "pointnet" and spec["model"]["tnet"] is True
    assert spec["inputs"]["kind"] == "points" and spec["inputs"]["shapes"] == [[3, 64, 1]]
    assert len(spec["normalize"]["mean"]) == 3
    model = build_model(spec["model"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    full = json.loads((folder / "report.json").read_text())
    history = full["history"]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert full["trainer"] == "train.points" and full["skipped"] == {}
    # the same again is reused
    again = run_local(_pipeline(clouds), out, workers=0)
    assert again.sinks["classifier"]["reused"] is True
