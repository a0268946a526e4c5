"""Re-selection during training (datapipe.train.reselect): the scores against their
formulas and autograd, the class quotas by hand, the policy's draws, fit on a real stream
(each epoch exactly its subset, logged, resumed bit for bit), and bad settings and scores."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_train import CLASSES, FIELDS, Killed, model, same_weights, tiny_out  # noqa: F401
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from datapipe import ops
from datapipe.stream import from_shards
from datapipe.train import TrainConfig, fit, key_labels, split_by_key
from datapipe.train.reselect import (
    ReselectConfig,
    Reselection,
    class_quotas,
    gradient_embeddings,
    greedy_kcenter,
    sample_scores,
)

CONFIG = TrainConfig(epochs=4, batch_size=16, lr=0.05, threads=2, seed=0)


# -- the pieces against independent oracles ---------------------------------------------------
def test_class_quotas_by_hand() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    # 5 of 10: shares 3, 1.5, 0.5 -> floors 3, 1, 1 (at least one) = 5
    assert class_quotas(labels, 5) == {0: 3, 1: 1, 2: 1}
    # 7 of 10: shares 4.2, 2.1, 0.7 -> 4, 2, 1 = 7
    assert class_quotas(labels, 7) == {0: 4, 1: 2, 2: 1}
    assert class_quotas(labels, 10) == {0: 6, 1: 3, 2: 1}
    with pytest.raises(ValueError, match="drop a whole class"):
        class_quotas(labels, 2)
    # 4 of 100, one class of 97: the floors (3, 1, 1, 1) overshoot; the big class gives back
    skewed = np.array([0] * 97 + [1, 2, 3])
    assert class_quotas(skewed, 4) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert class_quotas(skewed, 10) == {0: 7, 1: 1, 2: 1, 3: 1}


def test_scores_match_their_formulas() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 3.0]])
    labels = torch.tensor([0, 1, 0])
    p = np.exp([[2, 0], [0, 0], [-1, 3]]) / np.exp([[2, 0], [0, 0], [-1, 3]]).sum(1, keepdims=True)
    loss = -np.log(p[[0, 1, 2], [0, 1, 0]])
    np.testing.assert_allclose(sample_scores(logits, labels, "loss"), loss, rtol=1e-12)
    onehot = np.eye(2)[[0, 1, 0]]
    el2n = np.sqrt(((p - onehot) ** 2).sum(1))
    np.testing.assert_allclose(sample_scores(logits, labels, "el2n"), el2n, rtol=1e-12)
    assert np.isnan(sample_scores(torch.tensor([[np.nan, 0.0]]), torch.tensor([0]), "el2n"))[0]


def test_gradient_embedding_is_the_last_layer_gradient() -> None:
    torch.manual_seed(0)
    head = nn.Linear(5, 3, bias=False).double()
    feats, labels = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    logits = head(feats)
    emb = gradient_embeddings(logits.detach(), labels, feats)
    for i in range(4):  # autograd: d CE(sample i) / d W, flattened (C, D)
        head.zero_grad()
        nn.functional.cross_entropy(head(feats[i : i + 1]), labels[i : i + 1]).backward()
        np.testing.assert_allclose(emb[i], head.weight.grad.flatten().numpy(), rtol=1e-10)


def test_greedy_kcenter_matches_the_ops_kernel() -> None:
    x = np.array([[0.0, 0], [1, 0], [10, 0], [10, 1], [5, 5]])
    assert greedy_kcenter(x, 3, 0).tolist() == [0, 3, 4]  # by hand: 10.05, then 6.40
    rng = np.random.default_rng(1)
    y = rng.normal(size=(60, 4))
    ours = greedy_kcenter(y, 12, 7)
    theirs = ops.select_kcenter(y, 12, start=7).indices
    assert ours.tolist() == theirs.tolist()
    y[[3, 9]] = np.nan  # rows that are not finite are never picked
    assert not {3, 9} & set(greedy_kcenter(y, 20, 3).tolist())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fraction": 0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"every": 0}, "every"),
        ({"score": "gradnorm"}, "score"),
        ({"probe": 0}, "probe"),
    ],
)
def test_bad_settings_are_refused(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReselectConfig(**kw)


# -- the policy on a scripted model -----------------------------------------------------------
class Samples(IterableDataset):
    """An in-memory stream with ``select``: sample i has feature ``[i]`` and its class."""

    def __init__(self, labels: list[int]) -> None:
        super().__init__()
        self.all = [{"key": f"k{i:03d}", "x": float(i), "y": c} for i, c in enumerate(labels)]
        self.active = self.all

    def select(self, keys: list[str]) -> None:
        wanted = set(keys)
        self.active = [s for s in self.all if s["key"] in wanted]

    def __iter__(self):
        return iter(self.active)


class Scripted(nn.Module):
    """Logits that make the samples of ``hard`` wrong (high loss), NaN for ``nan``."""

    def __init__(self, hard: set[int], nan: set[int] = frozenset()) -> None:
        super().__init__()
        self.hard, self.nan = hard, nan
        self.head = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0].long().tolist()
        self.head(x)  # the last linear layer sees the features
        out = torch.tensor([[-4.0, 4.0] if i in self.hard else [4.0, -4.0] for i in idx])
        out[[j for j, i in enumerate(idx) if i in self.nan]] = float("nan")
        return out


def prepare(batch: list[dict[str, Any]]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    return (torch.tensor([[s["x"]] for s in batch]),), torch.tensor([0 for _ in batch])


def policy(score: str, n: int = 40, **kw: Any) -> tuple[Reselection, Samples]:
    labels = [i % 2 for i in range(n)]
    data = Samples(labels)
    config = ReselectConfig(every=2, fraction=0.25, score=score, **kw)
    keys = [s["key"] for s in data.all]
    return Reselection(config, keys, labels, data, seed=3), data


def test_random_first_then_hard_samples_are_drawn_more_often() -> None:
    sel, _ = policy("loss")
    hard = set(range(0, 40, 4)) | set(range(1, 40, 4))  # 10 of each class (label 0 from prep)
    net = Scripted(hard)
    first = sel.begin_epoch(0, net, prepare)
    assert sel.begin_epoch(1, net, prepare) == first  # not due: the initial random subset
    counts: Counter = Counter()
    for epoch in range(2, 42, 2):
        keys = sel.begin_epoch(epoch, net, prepare)
        assert len(keys) == sel.budget == 10
        assert Counter(int(k[1:]) % 2 for k in keys) == {0: 5, 1: 5}  # the class quotas
        counts.update(int(k[1:]) in hard for k in keys)
    assert counts[True] > 0.9 * sum(counts.values())  # hard: ~e^8 times the weight
    assert [(e["epoch"], e["rescored"]) for e in sel.log[:3]] == [(0, 0), (1, 0), (2, 1)]


def test_the_same_seed_chooses_the_same_subsets() -> None:
    logs = []
    for _ in range(2):
        sel, _ = policy("el2n")
        net = Scripted({1, 2, 3, 5, 8, 13, 21, 34})
        logs.append([sel.begin_epoch(e, net, prepare) for e in range(6)])
    assert logs[0] == logs[1]


def test_nonfinite_scores_count_as_the_hardest_and_are_logged() -> None:
    sel, _ = policy("loss")
    nan, hard = {0, 2, 4, 6, 8}, {10}  # class 0: five NaN, one hard (loss ~8), the rest easy
    keys = sel.begin_epoch(2, Scripted(hard, nan), prepare)
    assert len(keys) == 10 and sel.log[-1]["nonfinite"] == 5
    high = {f"k{i:03d}" for i in nan | hard}  # NaN weighs as much as the hard one
    assert len(high & set(keys)) == 5 and sel.quotas[0] == 5


def test_forgetting_counts_right_then_wrong() -> None:
    sel, _ = policy("forgetting")
    sel.begin_epoch(2, Scripted(set()), prepare)  # all right
    sel.begin_epoch(4, Scripted({7}), prepare)  # 7 forgotten
    assert sel.forgets.tolist() == [1 if i == 7 else 0 for i in range(40)]
    never = policy("forgetting")[0]
    never.begin_epoch(2, Scripted({5}), prepare)  # never learned: the most forgotten
    assert never.scores[5] > never.scores[[i for i in range(40) if i != 5]].max()


def test_grad_kcenter_and_the_probe() -> None:
    sel, data = policy("grad_kcenter", probe=12)
    keys = sel.begin_epoch(2, Scripted({3, 4}), prepare)
    assert len(keys) == 10 and Counter(int(k[1:]) % 2 for k in keys) == {0: 5, 1: 5}
    assert len(data.active) == 12  # only the probe was read to score


def test_a_model_without_a_linear_head_is_refused_for_grad_kcenter() -> None:
    class NoHead(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), 2)

    sel, _ = policy("grad_kcenter")
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        sel.begin_epoch(2, NoHead(), prepare)


# -- fit on a real stream ---------------------------------------------------------------------
def streams(out: Path, score: str = "el2n") -> tuple[Any, Any, Reselection]:
    labels = key_labels(from_shards(out, shuffle=False, fields=["label_id"]))
    val_keys = split_by_key(labels, labels.values(), 0.25, seed=0)
    train_labels = {k: v for k, v in labels.items() if k not in val_keys}
    train = from_shards(out, seed=0, fields=FIELDS)
    train.select(train_labels)
    val = from_shards(out, shuffle=False, fields=FIELDS)
    val.select(val_keys)
    score_data = from_shards(out, shuffle=False, fields=FIELDS)
    keys = sorted(train_labels)
    config = ReselectConfig(every=2, fraction=0.5, score=score)
    sel = Reselection(config, keys, [train_labels[k] for k in keys], score_data, seed=0)
    loaders = (
        DataLoader(train, batch_size=16, collate_fn=train.collate),
        DataLoader(val, batch_size=32, collate_fn=val.collate),
    )
    return *loaders, sel


class Recorder:
    """Wraps a loader: the keys of every batch, per epoch (set by fit through set_epoch)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.dataset, self.seen = loader, loader.dataset, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.seen.append([])
        for batch in self.loader:
            self.seen[-1] += batch["key"]
            yield batch


@pytest.fixture(scope="module")
def reselected(tiny_out: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    train, val, sel = streams(tiny_out)
    rec = Recorder(train)
    net = model()
    ckpt = tmp_path_factory.mktemp("ckpt")
    result = fit(net, rec, val, CONFIG, checkpoint_dir=ckpt, reselect=sel)
    return {"net": net, "result": result, "sel": sel, "seen": rec.seen, "ckpt": ckpt,
            "stream": rec.dataset, "train_keys": sel.keys}  # fmt: skip


def test_each_epoch_trains_on_exactly_its_logged_subset(reselected: dict[str, Any]) -> None:
    sel, result = reselected["sel"], reselected["result"]
    train_epochs = reselected["seen"][1:]  # the first pass is fit's normalisation statistics
    assert [e["epoch"] for e in sel.log] == list(range(CONFIG.epochs))
    for entry, seen, record in zip(sel.log, train_epochs, result.history, strict=True):
        assert Counter(seen) == Counter(entry["keys"])  # each once, nothing else
        assert record["samples"] == record["active_samples"] == sel.budget == 36
    assert [r["rescored"] for r in result.history] == [False, False, True, False]
    assert sel.log[2]["keys"] != sel.log[1]["keys"]
    assert result.final["val_samples"] == 24
    # fit gives the stream back as it found it: every training key selected
    assert reselected["stream"].selected == reselected["train_keys"]


def test_resumed_reselection_chooses_the_same_subsets(
    reselected: dict[str, Any],
    tiny_out: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    def kill_after_two(record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            raise Killed

    train, val, sel = streams(tiny_out)
    with pytest.raises(Killed):
        fit(model(), train, val, CONFIG, checkpoint_dir=tmp_path, log=kill_after_two, reselect=sel)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert len(saved["reselect"]["log"]) == 2
    train, val, sel = streams(tiny_out)  # a new process builds everything anew
    resumed = model(seed=9)
    fit(resumed, train, val, CONFIG, checkpoint_dir=tmp_path, reselect=sel)
    assert same_weights(resumed, reselected["net"])
    assert [e["keys"] for e in sel.log] == [e["keys"] for e in reselected["sel"].log]


def test_a_stream_without_select_is_refused(tiny_out: Path) -> None:  # noqa: F811
    _train, val, sel = streams(tiny_out)
    plain = DataLoader(list(range(4)), batch_size=2)
    with pytest.raises(TypeError, match="select"):
        fit(model(), plain, val, CONFIG, reselect=sel)
