"""The learned samplers (S-NET, SampleNet): matching with FPS fill, soft projection, losses,
training, and Fit -> Map through the engine with its bad inputs and weights files."""

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
from datapipe.stages.points.sampling import farthest_point_sample
from datapipe.stages.points.snet import (
    INITIAL_TEMPERATURE,
    SNet,
    fps_fill,
    match_to_input,
    simplification_loss,
    soft_project,
)
from datapipe.stages.points.snet_train import TrainConfig, sampler_loss, train_sampler
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest


def test_match_to_input_keeps_nearest_then_fills_by_fps() -> None:
    cloud = np.array([[0, 0, 0], [1, 0, 0], [5, 0, 0], [9, 0, 0]], np.float32)
    gen = np.array([[0.9, 0, 0], [1.1, 0, 0], [8, 0, 0]], np.float32)
    # nearest input points: 1, 1, 3; the duplicate's place goes to the point farthest from
    # {1, 3}: index 2 (4 away from both) beats index 0 (1 away from index 1)
    assert match_to_input(gen, cloud).tolist() == [1, 3, 2]


def test_fps_fill_from_one_point_is_exact_fps() -> None:
    cloud = np.random.default_rng(3).normal(size=(500, 3))
    for start in (0, 17, 499):
        got = fps_fill(cloud, np.array([start]), 40)
        np.testing.assert_array_equal(got, farthest_point_sample(cloud, 40, start=start))
    assert fps_fill(cloud, np.array([5, 9, 2]), 2).tolist() == [5, 9]


def test_soft_projection_moves_from_the_mean_of_neighbours_to_the_nearest_point() -> None:
    cloud = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [10, 0, 0]]])
    gen = torch.tensor([[[0.4, 0, 0]]])
    # squared distances 0.16, 0.36, 6.76, 92.16: the 3 nearest are points 0, 1, 2
    cold = soft_project(gen, cloud, torch.tensor(1e-4), k=3)
    torch.testing.assert_close(cold, torch.tensor([[[0.0, 0, 0]]]))
    hot = soft_project(gen, cloud, torch.tensor(1e6), k=3)
    torch.testing.assert_close(hot, torch.tensor([[[4 / 3, 0, 0]]]), atol=1e-4, rtol=0)
    w = torch.softmax(-torch.tensor([0.16, 0.36, 6.76]), 0)  # t^2 = 1
    mid = soft_project(gen, cloud, torch.tensor(1.0), k=3)
    torch.testing.assert_close(mid[0, 0, 0], (w * torch.tensor([0.0, 1, 3])).sum())


def _toy(n: int = 12, points: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(points, 3)).astype(np.float32) * (1 + i % 2) for i in range(n)]
    return clouds, np.arange(n) % 2


class _Frozen(torch.nn.Module):
    """A fixed 'task network': class 1 for wide clouds (the max |x| over points)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.abs().amax(dim=(1, 2))
        return torch.stack([-s, s - 2.5], 1)


def test_training_a_sampler_pulls_its_points_onto_the_clouds() -> None:
    clouds, labels = _toy()
    cfg = TrainConfig(n_points=64, sampler_steps=100, batch=6, sampler_width=16, lr=3e-3)
    x = torch.from_numpy(np.stack(clouds))
    y = torch.as_tensor(labels)

    def gap(net: SNet) -> float:
        with torch.no_grad():
            return simplification_loss(net.eval()(x), x).item()

    torch.manual_seed(cfg.seed + 1)
    untrained = gap(SNet(8, 16))  # train_sampler starts from this same initialisation
    trained = train_sampler(clouds, labels, _Frozen(), 8, cfg)
    assert gap(trained) < 0.6 * untrained
    # S-NET does not train SampleNet's temperature
    assert trained.temperature.item() == pytest.approx(INITIAL_TEMPERATURE)
    cfg.method = "samplenet"
    soft = train_sampler(clouds, labels, _Frozen(), 8, cfg)
    assert soft.temperature.item() < INITIAL_TEMPERATURE  # the projection loss drives t down
    with torch.no_grad():
        soft.train()
        assert torch.isfinite(sampler_loss(soft, _Frozen(), x[:4], y[:4], cfg))


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


def _pipeline(
    fit_params: dict, classes: list[str] | None = None, source: str = "test.shapes"
) -> Pipeline:
    src = {"stage": source, "params": {"classes": classes} if classes else {}}
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
    run_local(_pipeline({"m": 16, "n_points": 128, "weights": str(saved)}), tmp_path / "b")
    b = {s["key"]: s for s in iter_samples(sorted((tmp_path / "b" / "shards").glob("*")))}
    for key in a:
        np.testing.assert_array_equal(a[key]["point_idx"], b[key]["point_idx"])


def test_single_class_cannot_train(shapes_stage: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs at least 2 usable clouds"):
        run_local(_pipeline({"m": 8, "epochs": 1}, classes=["sphere"]), tmp_path / "out")


def test_a_weights_file_that_does_not_fit_is_a_clear_config_error(
    shapes_stage: None, tmp_path: Path
) -> None:
    state = {"m": torch.tensor(16), "n_points": torch.tensor(128), "width": torch.tensor(32)}
    state.update(SNet(16, 32).state_dict())
    torch.save(state, tmp_path / "m16.pt")
    with pytest.raises(ConfigError, match=r"a sampler for m=16, but the node's m is 32"):
        run_local(_pipeline({"m": 32, "weights": str(tmp_path / "m16.pt")}), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"for n_points=128, but the node's n_points is 1024"):
        run_local(_pipeline({"m": 16, "weights": str(tmp_path / "m16.pt")}), tmp_path / "e")
    bad = dict(state)
    name = next(k for k, v in bad.items() if v.dim() == 2)
    bad[name] = torch.zeros(bad[name].shape[0] + 1, bad[name].shape[1])  # another layer size
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"its weights do not fit an S-NET of m=16, width=32"):
        params = {"m": 16, "n_points": 128, "weights": str(tmp_path / "bad.pt")}
        run_local(_pipeline(params), tmp_path / "b")
    (tmp_path / "text.pt").write_text("not a sampler\n")
    with pytest.raises(ConfigError, match=r"cannot load it as a saved sampler"):
        run_local(_pipeline({"m": 16, "weights": str(tmp_path / "text.pt")}), tmp_path / "c")
    torch.save({"m": torch.tensor(16), "weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"not a sampler saved by points.learned_fit"):
        run_local(_pipeline({"m": 16, "weights": str(tmp_path / "other.pt")}), tmp_path / "d")


def _saved(path: Path, seed: int, m: int = 8, n_points: int = 128) -> Path:
    torch.manual_seed(seed)
    net = SNet(m, 32)
    with torch.no_grad():  # move the batch-norm statistics off their defaults
        net.train()(torch.randn(4, 50, 3))
    state = {"m": torch.tensor(m), "n_points": torch.tensor(n_points), "width": torch.tensor(32)}
    torch.save({**state, **net.state_dict()}, path)
    return path


def test_a_new_sampler_redoes_the_samples_after_it(shapes_stage: None, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for seed in (1, 2):
        weights = _saved(tmp_path / f"w{seed}.pt", seed)
        report = run_local(_pipeline({"m": 8, "n_points": 128, "weights": str(weights)}), out)
        assert report.counts["processed"] == 12  # all of them, the second time too
        net = SNet(8, 32)
        state = torch.load(weights, weights_only=True)
        net.load_state_dict({k: v for k, v in state.items() if k not in ("m", "n_points", "width")})
        for key, sample in _samples(out).items():
            label, i = key.rsplit("_", 1)
            src = shape(label, 100 * ["sphere", "cube"].index(label) + int(i))
            expected = match_to_input(_generated(net, src), _normalized(src))
            np.testing.assert_array_equal(sample["point_idx"], expected)


def _normalized(points: np.ndarray) -> np.ndarray:
    p = points.astype(np.float64) - points.astype(np.float64).mean(0)
    return (p / np.sqrt((p**2).sum(1)).max()).astype(np.float32)


def _generated(net: SNet, points: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(_normalized(points))[None])[0].numpy()


def _samples(out: Path) -> dict[str, dict]:
    return {s["key"]: s for s in iter_samples(sorted((out / "shards").glob("*.tar")))}


class BadShapes(Shapes):
    name = "test.bad_shapes"
    description = "Labelled clouds, some too small, one NaN, one empty."

    def list_items(self, ctx: Context) -> Iterator[Record]:
        yield from super().list_items(ctx)
        nan = shape("cube", 7)
        nan[3, 1] = np.nan
        yield {"key": "nan", "points": nan, "label": "cube"}
        yield {"key": "small", "points": shape("sphere", 8, n=5), "label": "sphere"}
        yield {"key": "empty", "points": np.zeros((0, 3), np.float32), "label": "sphere"}


def test_bad_clouds_are_error_rows_and_the_rest_are_sampled(tmp_path: Path) -> None:
    registry.register(BadShapes)
    try:
        params = {"m": 8, "epochs": 2, "n_points": 64, "method": "samplenet"}
        params["plot"] = str(tmp_path / "sampler.png")
        report = run_local(_pipeline(params, source="test.bad_shapes"), tmp_path / "out")
    finally:
        registry.unregister(BadShapes.name)
    rows = {r.key: r for r in Manifest(tmp_path / "out" / "manifest.sqlite").iter_rows()}
    assert {k: rows[k].error_class for k in ("nan", "small", "empty")} == {
        "nan": "nonfinite",
        "small": "invalid",
        "empty": "empty",
    }
    assert "cannot sample 8 of 5 points" in (rows["small"].message or "")
    assert (report.counts["ok"], report.counts["error"]) == (12, 3)
    good = _samples(tmp_path / "out")
    assert sorted(good) == sorted(k for k in rows if k not in ("nan", "small", "empty"))
    assert all(len(set(s["point_idx"].tolist())) == 8 for s in good.values())
    from PIL import Image

    with Image.open(tmp_path / "sampler.png") as png:
        rgb = np.asarray(png.convert("RGB")).astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 120) & (rgb[..., 2] < 100)  # the kept points
    assert red.sum() > 50
