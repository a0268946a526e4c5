"""fit under ``torchrun --nproc-per-node 2`` (DistributedDataParallel, gloo, loopback) on the
stream's rank split: every training sample once per epoch across ranks, identical weights.

tests/ddp_train_script.py is README's "Training on a cluster" example plus the lines that
record what each rank read and ended with.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import CLASSES, draw

import datapipe
from datapipe.stream import from_shards

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "ddp_train_script.py"
README = HERE.parent / "README.md"
EPOCHS = 3


def write_shards(root: Path, name: str, per_class: int, rng: np.random.Generator) -> Path:
    """``per_class`` drawn 16x16 JPEGs per class run through ``files -> image.resize``."""
    for cls in CLASSES:
        (root / name / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(draw(cls, rng)).save(root / name / cls / f"{i:02d}.jpg", quality=90)
    (root / f"{name}.yaml").write_text(
        f"name: {name}\nnodes:\n"
        f"  src: {{stage: files, params: {{root: {name}}}}}\n"
        "  resize: {stage: image.resize, inputs: src, params: {size: 16}}\n"
        "output: {shard_size: 16}\n"
    )
    report = datapipe.run(root / f"{name}.yaml", root / f"{name}_out")
    assert report.counts["ok"] == per_class * len(CLASSES)
    return root / f"{name}_out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(root: Path, *extra: str) -> dict[str, Any]:
    """The script under ``torchrun`` on 2 ranks over fresh shards in ``root``; what each rank
    recorded."""
    rng = np.random.default_rng(0)
    train_out = write_shards(root, "train", 16, rng)  # 64 samples: 32 per rank, 4 batches
    val_out = write_shards(root, "val", 5, rng)  # 20 samples
    ckpt, results = root / "ckpt", root / "results"
    results.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           str(SCRIPT), str(train_out), str(val_out), str(ckpt), str(results), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {
        "train_keys": from_shards(train_out, shuffle=False, fields=["label_id"]).keys,
        "reports": [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)],
        "weights": [torch.load(results / f"rank{r}.pt", weights_only=True) for r in (0, 1)],
        "initial": [torch.load(results / f"initial{r}.pt", weights_only=True) for r in (0, 1)],
        "ckpt": ckpt,
    }


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return torchrun(tmp_path_factory.mktemp("ddp"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_training_sample_once_per_epoch_across_ranks(ddp_run: dict[str, Any]) -> None:
    train_keys = ddp_run["train_keys"]
    assert len(train_keys) == 64
    r0, r1 = ddp_run["reports"]
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    for epoch in map(str, range(EPOCHS)):
        seen0, seen1 = r0["seen"][epoch], r1["seen"][epoch]
        assert len(seen0) == len(seen1) == 32  # equal shares: the ranks step together
        assert sorted(seen0 + seen1) == sorted(train_keys)  # all of them, none twice
    assert r0["seen"]["0"] != r0["seen"]["1"]  # reshuffled every epoch
    assert r0["steps"] == EPOCHS * 4


def test_ranks_end_with_identical_weights_and_reports(ddp_run: dict[str, Any]) -> None:
    w0, w1 = ddp_run["weights"]
    assert same(w0, w1)  # parameters and BatchNorm buffers, bit for bit
    assert not same(w0, ddp_run["initial"][0])  # it trained
    r0, r1 = ddp_run["reports"]
    for key in ("history", "final", "config", "steps", "params", "macs", "skipped"):
        assert r0[key] == r1[key], key
    # the normalisation is one for all ranks; validation counts every sample once
    assert len(r0["config"]["mean"]) == 3
    assert r0["final"]["val_samples"] == 20 and np.sum(r0["final"]["confusion"]) == 20
    assert [r["samples"] for r in r0["history"]] == [64] * EPOCHS


def test_rank_0_writes_a_weights_only_checkpoint(ddp_run: dict[str, Any]) -> None:
    saved = torch.load(ddp_run["ckpt"] / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == EPOCHS and saved["steps_per_epoch"] == 4
    assert same(saved["model"], ddp_run["weights"][0])  # the module's keys: no "module."
    assert saved["spec"]["arch"] == "resnet"
    assert not list(ddp_run["ckpt"].glob(".*.tmp"))


def test_readme_example_is_what_the_test_runs() -> None:
    section = README.read_text().split("### Training on a cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    wanted = [line.strip() for line in block.splitlines() if line.strip()]
    script = iter(line.strip() for line in SCRIPT.read_text().splitlines())
    missing = [line for line in wanted if line not in script]  # in order: a subsequence
    assert not missing, f"README lines not in {SCRIPT.name} (in order): {missing}"


def test_reselection_under_ddp_splits_one_subset_across_ranks(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = torchrun(tmp_path_factory.mktemp("ddp_reselect"), "reselect")
    r0, r1 = run["reports"]
    assert r0["subsets"] == r1["subsets"]  # every rank chose the same keys
    assert len(r0["subsets"]) == EPOCHS and r0["subsets"][1] != r0["subsets"][0]
    for epoch, subset in enumerate(r0["subsets"]):
        seen0, seen1 = r0["seen"][str(epoch)], r1["seen"][str(epoch)]
        assert len(subset) == 32 and len(seen0) == len(seen1) == 16
        assert sorted(seen0 + seen1) == sorted(subset)  # the subset, each once, split
    assert same(*run["weights"]) and r0["history"] == r1["history"]
