"""datapipe.models and datapipe.train on a tiny generated image set streamed from shards.

The set: 4 classes (horizontal, vertical, diagonal stripes, rings) x 24 JPEGs of 16x16,
run through ``files -> image.resize`` into shards and read back with ``from_shards``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import datapipe
from datapipe.models import build_model, count_macs, count_params, model_spec, resnet
from datapipe.stream import from_shards
from datapipe.train import (
    KeyFilter,
    ResumeMismatch,
    TrainConfig,
    evaluate,
    fit,
    key_labels,
    plot_confusion,
    plot_curves,
    prepare_batch,
    split_by_key,
)

CLASSES = ("horizontal", "vertical", "diagonal", "ring")
FIELDS = ["image", "label_id"]
CONFIG = TrainConfig(epochs=6, batch_size=16, lr=0.05, threads=2, seed=0)


def draw(cls: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    period = int(rng.integers(4, 7))
    phase = int(rng.integers(0, period))
    if cls == "horizontal":
        on = (yy + phase) % period < period // 2
    elif cls == "vertical":
        on = (xx + phase) % period < period // 2
    elif cls == "diagonal":
        on = (xx + yy + phase) % period < period // 2
    else:
        cy, cx = rng.uniform(5, 11, 2)
        r = np.hypot(yy - cy, xx - cx)
        on = (r > 3) & (r < 5.5)
    fg, bg = rng.integers(150, 256, 3), rng.integers(0, 100, 3)
    img = np.where(on[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / "data" / cls).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(draw(cls, rng)).save(root / "data" / cls / f"{i:02d}.jpg", quality=90)
    (root / "p.yaml").write_text(
        "name: tiny\nnodes:\n"
        "  src: {stage: files, params: {root: data}}\n"
        "  resize: {stage: image.resize, inputs: src, params: {size: 16}}\n"
        "output: {shard_size: 32}\n"
    )
    report = datapipe.run(root / "p.yaml", root / "out")
    assert report.counts["ok"] == 96
    return root / "out"


def loaders(out: Path, seed: int = 0) -> tuple[DataLoader, DataLoader, set[str]]:
    labels = key_labels(from_shards(out, shuffle=False, fields=["label_id"]))
    val = split_by_key(labels, labels.values(), 0.25, seed=seed)
    train_ds = KeyFilter(from_shards(out, seed=seed, fields=FIELDS), val, exclude=True)
    val_ds = KeyFilter(from_shards(out, shuffle=False, fields=FIELDS), val)
    return (
        DataLoader(train_ds, batch_size=16, collate_fn=train_ds.collate),
        DataLoader(val_ds, batch_size=32, collate_fn=val_ds.collate),
        val,
    )


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return resnet(depth=8, width=8, num_classes=len(CLASSES))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def trained(tiny_out: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    train, val, val_keys = loaders(tiny_out)
    net = model()
    ckpt = tmp_path_factory.mktemp("ckpt")
    result = fit(net, train, val, CONFIG, checkpoint_dir=ckpt)
    return {
        "model": net,
        "result": result,
        "ckpt": ckpt,
        "val": val,
        "train": train,
        "keys": val_keys,
    }


# -- (a) it learns ------------------------------------------------------------------------
def test_fit_learns_the_tiny_set(trained: dict[str, Any]) -> None:
    result, net = trained["result"], trained["model"]
    # chance is 0.25; this deterministic run reaches 1.0 (24 of 24) from its 4th epoch on
    assert result.final["val_accuracy"] >= 0.75
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert [r["epoch"] for r in result.history] == list(range(CONFIG.epochs))
    confusion = np.array(result.final["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == len(trained["keys"])
    assert len(result.final["per_class_accuracy"]) == 4
    assert result.steps == CONFIG.epochs * len(trained["train"])
    assert result.params == count_params(net) and result.macs == count_macs(net, (3, 16, 16))
    assert result.input_shape == [3, 16, 16] and result.skipped == {}
    assert set(result.cpu_latency_ms) == {"batch_1", "batch_64"}
    assert 0.0 <= result.data_wait_fraction <= 1.0 and result.train_samples_per_s > 0
    assert len(result.config.mean) == 3 and all(0 < s < 1 for s in result.config.std)
    json.dumps(result.to_dict())  # a JSON report
    again = evaluate(net, trained["val"], result.config)
    assert again["confusion"] == result.final["confusion"]


# -- (b) determinism ----------------------------------------------------------------------
def test_same_seed_gives_bit_identical_weights(tiny_out: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, threads=2, seed=0)
    runs = []
    for _ in range(2):
        train, val, _keys = loaders(tiny_out)
        net = model()
        fit(net, train, val, config)
        runs.append(net)
    assert same_weights(*runs)
    assert not same_weights(runs[0], model())  # it trained


# -- (c) resume ---------------------------------------------------------------------------
class Killed(Exception):
    pass


def test_resume_equals_uninterrupted_bit_for_bit(
    trained: dict[str, Any], tiny_out: Path, tmp_path: Path
) -> None:
    def kill_after_two(record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            raise Killed

    train, val, _keys = loaders(tiny_out)
    with pytest.raises(Killed):
        fit(model(), train, val, CONFIG, checkpoint_dir=tmp_path, log=kill_after_two)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2
    train, val, _keys = loaders(tiny_out)  # a new process would build new loaders
    resumed = model(seed=123)  # other initial weights: the checkpoint's must win
    result = fit(resumed, train, val, CONFIG, checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch == 2
    assert same_weights(resumed, trained["model"])
    strip = ("train_s", "data_s", "val_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in result.history] == [
        {k: v for k, v in r.items() if k not in strip} for r in trained["result"].history
    ]


def test_resume_refuses_other_settings(trained: dict[str, Any], tiny_out: Path) -> None:
    train, val, _keys = loaders(tiny_out)
    longer = TrainConfig(**{**CONFIG.to_dict(), "epochs": 8, "mean": None, "std": None})
    with pytest.raises(ResumeMismatch, match="epochs: 6 -> 8"):
        fit(model(), train, val, longer, checkpoint_dir=trained["ckpt"])


# -- (d) checkpoints and saved models load with weights_only -------------------------------
def test_checkpoint_and_state_dict_load_with_weights_only(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    ckpt = torch.load(trained["ckpt"] / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "history", "config"} <= set(ckpt)
    assert ckpt["epoch"] == CONFIG.epochs and ckpt["config"]["epochs"] == CONFIG.epochs
    assert isinstance(ckpt["rng"]["python"], list) and ckpt["rng"]["numpy"]["keys"].numel() == 624
    net = trained["model"]
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps(model_spec(net)))
    rebuilt = build_model(json.loads((tmp_path / "model.json").read_text()))
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = torch.rand(5, 3, 16, 16)
    net.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))
    rebuilt.load_state_dict(ckpt["model"])
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))


# -- (e) the split ------------------------------------------------------------------------
def _unit(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def test_split_by_key_is_deterministic_stratified_and_stable() -> None:
    keys = [f"{c}/{i:04d}" for c in "abcd" for i in range(1000)]
    labels = [k[0] for k in keys]
    val = split_by_key(keys, labels, 0.2, seed=3)
    assert val == split_by_key(list(reversed(keys)), list(reversed(labels)), 0.2, seed=3)
    assert val == {k for k in keys if _unit(3, k) < 0.2}  # the documented hash, recomputed
    for c in "abcd":
        share = sum(k[0] == c for k in val) / 1000
        assert 0.15 < share < 0.25, (c, share)
    assert split_by_key(keys, labels, 0.2, seed=4) != val
    # adding keys never moves an old key
    more = keys + [f"{c}/x{i}" for c in "abce" for i in range(300)]
    grown = split_by_key(more, [k[0] for k in more], 0.2, seed=3)
    assert grown & set(keys) == val
    # tiny classes: at least one validation key and one training key each
    small = split_by_key(["p/0", "p/1", "q/0", "q/1", "r/0"], list("ppqqr"), 0.01, seed=0)
    assert len(small & {"p/0", "p/1"}) == 1 and len(small & {"q/0", "q/1"}) == 1
    assert "r/0" not in small
    assert len(split_by_key(["p/0", "p/1"], "pp", 0.99, seed=0)) == 1


def test_split_by_key_is_the_same_in_another_process() -> None:
    keys = [f"k{i}" for i in range(200)]
    here = sorted(split_by_key(keys, [i % 3 for i in range(200)], 0.3, seed=7))
    code = (
        "import json; from datapipe.train.data import split_by_key; "
        "keys = [f'k{i}' for i in range(200)]; "
        "print(json.dumps(sorted(split_by_key(keys, [i % 3 for i in range(200)], 0.3, seed=7))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == here


def test_key_filter_keeps_the_stream_working(tiny_out: Path) -> None:
    train, val, val_keys = loaders(tiny_out)
    assert len(train.dataset) + len(val.dataset) == 96 and len(val.dataset) == len(val_keys)
    train.dataset.set_epoch(0)
    first = [k for b in train for k in b["key"]]
    train.dataset.set_epoch(1)
    second = [k for b in train for k in b["key"]]
    assert sorted(first) == sorted(second) and first != second  # reshuffled, same samples
    assert not set(first) & val_keys and {k for b in val for k in b["key"]} == val_keys


# -- (f) bad samples ----------------------------------------------------------------------
class Samples(IterableDataset):
    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)


def test_bad_samples_are_skipped_and_counted() -> None:
    rng = np.random.default_rng(0)
    good = [
        {"key": f"{c}/{i}", "image": torch.from_numpy(draw(c, rng)), "label_id": n}
        for n, c in enumerate(CLASSES)
        for i in range(4)
    ]
    nan = torch.rand(16, 16, 3)
    nan[3, 4, 1] = float("nan")
    bad = [
        {"key": "nan", "image": nan, "label_id": 0},
        {"key": "missing", "label_id": 1},
        {"key": "small", "image": torch.zeros(8, 8, 3, dtype=torch.uint8), "label_id": 2},
        {"key": "unlabelled", "image": torch.zeros(16, 16, 3, dtype=torch.uint8), "label_id": -1},
    ]
    data = Samples(good[:5] + bad + good[5:])
    loader = DataLoader(data, batch_size=8, collate_fn=list)
    config = TrainConfig(
        epochs=2, batch_size=8, lr=0.05, threads=2, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    result = fit(model(), loader, loader, config)
    once = {"not_finite": 1, "missing_field": 1, "wrong_shape": 1, "missing_label": 1}
    assert result.skipped == {k: 2 * v for k, v in once.items()}  # two epochs
    assert result.final["skipped"] == once and result.final["val_samples"] == 16
    assert result.history[0]["samples"] == 16
    # a collated batch: a padded (masked) image is the wrong shape, a NaN one is not finite
    images = torch.rand(3, 16, 16, 3)
    images[1, 0, 0, 0] = float("nan")
    mask = torch.ones(3, 16, 16, dtype=torch.bool)
    mask[2, 12:] = False
    counts: Counter = Counter()
    batch = {
        "key": ["a", "b", "c"],
        "image": images,
        "image_mask": mask,
        "label_id": torch.tensor([0, 1, 2]),
    }
    x, y, _shape = prepare_batch(batch, field="image", label="label_id", shape=None, skipped=counts)
    assert x.shape == (1, 3, 16, 16) and y.tolist() == [0]
    assert counts == {"not_finite": 1, "wrong_shape": 1}


# -- (g) models ---------------------------------------------------------------------------
def test_mac_counter_matches_the_formula() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # 8x8 -> 4x4: 4*4*4 outputs x 3*3*3
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 1, groups=2),  # 8*4*4 outputs x (4/2)*1*1
        nn.Flatten(),
        nn.Linear(128, 5),  # 5 outputs x 128
    )
    assert count_macs(net, (3, 8, 8)) == 64 * 27 + 128 * 2 + 5 * 128
    assert count_params(net) == (4 * 27 + 4) + 8 + (8 * 2 + 8) + (128 * 5 + 5)


def test_resnet_trunk_entry_and_specs() -> None:
    net = resnet(depth=14, width=8, num_classes=3).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        stage0 = net.trunk.stages[0](net.stem(x))
        assert torch.equal(net.trunk_from(1)(stage0), net(x))
    assert [len(s) for s in net.trunk.stages] == [2, 2, 2]
    headless = resnet(depth=8, width=16, num_classes=5, in_channels=64, stem="none")
    assert headless(torch.rand(2, 64, 4, 4)).shape == (2, 5)
    assert build_model(model_spec(headless)).spec == headless.spec
    with pytest.raises(ValueError, match="'depth' parameter of resnet"):
        build_model({"arch": "resnet", "depth": 9})
    with pytest.raises(ValueError, match="'arch' of a model spec"):
        build_model({"arch": "vgg"})


def test_plots_write_pngs(trained: dict[str, Any], tmp_path: Path) -> None:
    result = trained["result"]
    curves = plot_curves(result.history, tmp_path / "curves.png")
    confusion = plot_confusion(result.final["confusion"], CLASSES, tmp_path / "confusion.png")
    for path in (curves, confusion):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
