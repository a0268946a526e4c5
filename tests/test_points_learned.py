"""The learned (S-NET) sampler: matching, loss, and Fit -> Map through the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from datapipe import registry
from datapipe.errors import ConfigError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context, Params, Record, Source
from datapipe.stages.points.snet import match_to_input, simplification_loss
from datapipe.store import iter_samples


def test_match_to_input_nearest_and_distinct() -> None:
    cloud = np.array([[0, 0, 0], [1, 0, 0], [5, 0, 0], [9, 0, 0]], np.float32)
    gen = np.array([[0.9, 0, 0], [1.1, 0, 0], [8, 0, 0]], np.float32)
    # both first points want index 1 (a tie at 0.1): the first generated point gets it, the
    # second falls back to its next nearest, index 0 (1.1 away, against 3.9 for index 2)
    assert match_to_input(gen, cloud).tolist() == [1, 0, 3]


def test_simplification_loss_is_zero_on_the_cloud_itself() -> None:
    cloud = torch.rand(2, 20, 3)
    assert simplification_loss(cloud, cloud).item() == pytest.approx(0.0, abs=1e-6)
    assert simplification_loss(cloud[:, :5] + 0.5, cloud).item() > 0.1


class ShapeParams(Params):
    per_class: int = 6
    classes: list[str] = ["sphere", "cube"]


def shape(label: str, seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3))
    if label == "sphere":
        p /= np.linalg.norm(p, axis=1, keepdims=True)
    else:  # cube surface: push one coordinate to +-1
        p = rng.uniform(-1, 1, (n, 3))
        axis = rng.integers(0, 3, n)
        p[np.arange(n), axis] = np.sign(p[np.arange(n), axis])
    return (p * rng.uniform(0.5, 2) + rng.normal(0, 0.01, (n, 3))).astype(np.float32)


class Shapes(Source):
    name = "test.shapes"
    description = "Labelled synthetic clouds."
    Params = ShapeParams
    PRODUCES = (Field("points", "float32", "N 3"), Field("label", "str", ""))

    def list_items(self, ctx: Context) -> Iterator[Record]:
        for c, label in enumerate(self.params.classes):
            for i in range(self.params.per_class):
                yield {"key": f"{label}_{i}", "points": shape(label, 100 * c + i), "label": label}


@pytest.fixture
def shapes_stage() -> Iterator[None]:
    registry.register(Shapes)
    yield
    registry.unregister(Shapes.name)


def _pipeline(fit_params: dict, classes: list[str] | None = None) -> Pipeline:
    src = {"stage": "test.shapes", "params": {"classes": classes} if classes else {}}
    return Pipeline.from_dict(
        {
            "seed": 1,
            "nodes": {
                "src": src,
                "sampler": {"stage": "points.learned_fit", "inputs": "src", "params": fit_params},
                "pick": {"stage": "points.learned", "inputs": "sampler"},
            },
        }
    )


def test_fit_then_map_gives_distinct_subsets_and_reloads(
    shapes_stage: None, tmp_path: Path
) -> None:
    saved = tmp_path / "snet.pt"
    run_local(
        _pipeline({"m": 16, "epochs": 3, "n_points": 128, "save": str(saved)}), tmp_path / "a"
    )
    a = {s["key"]: s for s in iter_samples(sorted((tmp_path / "a" / "shards").glob("*")))}
    assert len(a) == 12
    for key, s in a.items():
        label, i = key.rsplit("_", 1)
        src = shape(label, 100 * ["sphere", "cube"].index(label) + int(i))
        idx = s["point_idx"]
        assert idx.shape == (16,) and len(set(idx.tolist())) == 16
        np.testing.assert_array_equal(s["points"], src[idx])
    # the saved weights load safely (weights_only) and pick the same points
    run_local(_pipeline({"m": 16, "weights": str(saved)}), tmp_path / "b")
    b = {s["key"]: s for s in iter_samples(sorted((tmp_path / "b" / "shards").glob("*")))}
    for key in a:
        np.testing.assert_array_equal(a[key]["point_idx"], b[key]["point_idx"])


def test_single_class_cannot_train(shapes_stage: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs at least 2 clouds of 2 classes"):
        run_local(_pipeline({"m": 8, "epochs": 1}, classes=["sphere"]), tmp_path / "out")


def test_a_weights_file_that_does_not_fit_is_a_clear_config_error(
    shapes_stage: None, tmp_path: Path
) -> None:
    from datapipe.stages.points.snet import SNet

    state = {"m": torch.tensor(16), **SNet(16).state_dict()}
    torch.save(state, tmp_path / "m16.pt")
    with pytest.raises(ConfigError, match=r"a sampler for m=16 points, but the node's m is 32"):
        run_local(_pipeline({"m": 32, "weights": str(tmp_path / "m16.pt")}), tmp_path / "a")
    bad = dict(state)
    name = next(k for k, v in bad.items() if k != "m" and v.dim() == 2)
    bad[name] = torch.zeros(bad[name].shape[0] + 1, bad[name].shape[1])  # another layer size
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"its weights do not fit an S-NET of m=16"):
        run_local(_pipeline({"m": 16, "weights": str(tmp_path / "bad.pt")}), tmp_path / "b")
    (tmp_path / "text.pt").write_text("not a sampler\n")
    with pytest.raises(ConfigError, match=r"cannot load it as a saved sampler"):
        run_local(_pipeline({"m": 16, "weights": str(tmp_path / "text.pt")}), tmp_path / "c")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"not a sampler saved by points.learned_fit"):
        run_local(_pipeline({"m": 16, "weights": str(tmp_path / "other.pt")}), tmp_path / "d")
