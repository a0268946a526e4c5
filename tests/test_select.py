"""Dataset subsampling: k-center, SemDeDup-style dedup, proxy uncertainty, stratified budgets,
the pixel/torch embeddings, and the stages through the engine."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_image_tree
from PIL import Image

from datapipe import registry
from datapipe.errors import ItemError, ParamError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context, Map, Record
from datapipe.stages.io.image_resize import decode_resize
from datapipe.stages.subset import dedup as dedup_module
from datapipe.stages.subset.budget import BudgetError, resolve_budget
from datapipe.stages.subset.dedup import Dedup, semdedup
from datapipe.stages.subset.embed import PixelEmbed, TorchEmbed, pool_pixels
from datapipe.stages.subset.kcenter import KCenter, _greedy, kcenter_cover, kcenter_greedy
from datapipe.stages.subset.stratified import Stratified, stratified_subset, stratum_budgets
from datapipe.stages.subset.uncertainty import Uncertainty, proxy_uncertainty, uncertainty_of
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest

OURS = [Stratified, KCenter, Dedup, Uncertainty, PixelEmbed, TorchEmbed]


class NanEmbed(Map):
    """A 2-D embedding from the counter's index; NaN for item_003 (a broken producer)."""

    name = "test.nan_embed"
    description = "Index embedding with one NaN row."
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (Field("embedding", "float32", "2"),)

    def process(self, record: Record, ctx: Context) -> Record:
        i = record["index"]
        v = np.array([i, (i * 7) % 5], np.float32)
        if i == 3:
            v[1] = np.nan
        return {"embedding": v}


class TinyNet:
    """Stand-in for an nn.Module factory named as 'test_select:TinyNet.build'."""

    @staticmethod
    def build() -> Any:
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 4)
        )


@pytest.fixture(autouse=True, scope="module")
def _registered():
    for cls in [*OURS, NanEmbed]:
        registry.register(cls)
    yield
    for cls in [*OURS, NanEmbed]:
        registry.unregister(cls.name)


def ctx(tmp_path: Path | None = None, seed: int = 0) -> Context:
    return Context(base_dir=tmp_path or Path.cwd(), seed=seed, node="sel")


def oracle_kcenter(x: np.ndarray, k: int, first: int) -> tuple[list[int], float]:
    """Brute force in float64: every step recomputes every point's distance to every centre."""
    x = x.astype(np.float64)
    chosen = [first]
    for _ in range(k - 1):
        d = np.sqrt(((x[:, None, :] - x[None, chosen, :]) ** 2).sum(-1)).min(axis=1)
        chosen.append(int(np.argmax(d)))
    d = np.sqrt(((x[:, None, :] - x[None, chosen, :]) ** 2).sum(-1)).min(axis=1)
    return chosen, float(d.max())


# -- k-center --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_kcenter_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(20, 80)), int(rng.integers(2, 9))
    x = (rng.normal(size=(n, d)) * 3 + 10).astype(np.float32)
    k = int(rng.integers(2, n // 2))
    idx, radius = kcenter_greedy(x, k, seed=seed)
    assert idx.dtype == np.int64 and len(set(idx.tolist())) == k
    assert idx[0] == np.random.default_rng(seed).integers(n)  # the seed draws the first
    want, want_radius = oracle_kcenter(x, k, int(idx[0]))
    assert idx.tolist() == want
    assert radius == pytest.approx(want_radius, rel=1e-6)


def test_kcenter_start_fraction_and_detail() -> None:
    x = np.array([[0.0, 0], [1, 0.5], [10, 0], [10, 1], [5, 5], [0, 9]])
    idx, _ = kcenter_greedy(x, 0.5, start=2)
    assert idx.tolist() == [2, 5, 0]  # round(0.5 * 6) = 3, from the requested start
    res = kcenter_cover(x, 3, start=2)
    assert res.pick_distance.tolist() == pytest.approx([np.hypot(10, 9), np.hypot(10, 9), 9.0])
    assert res.distance[1] == pytest.approx(np.hypot(1, 0.5)) and res.nearest[1] == 2
    assert res.radius == pytest.approx(max(res.distance))


def test_kcenter_pruned_path_picks_the_dense_set() -> None:
    rng = np.random.default_rng(5)
    means = rng.normal(size=(12, 16)) * 8
    x = (means[rng.integers(12, size=3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    x -= x.mean(axis=0)
    pruned, dense = _greedy(x, 400, 0, True), _greedy(x, 400, 0, False)
    assert set(pruned[0].tolist()) == set(dense[0].tolist())
    np.testing.assert_allclose(np.sort(pruned[2]), np.sort(dense[2]), rtol=1e-3, atol=1e-3)


def test_kcenter_with_fewer_distinct_points_than_k() -> None:
    x = np.repeat(np.eye(3), 4, axis=0)  # 3 distinct points, 12 rows
    idx, radius = kcenter_greedy(x, 5, start=0)
    assert len(set(idx.tolist())) == 5 and radius == 0.0
    assert {tuple(x[i]) for i in idx[:3]} == {tuple(r) for r in np.eye(3)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "budget of 0"),
        ({"count": 11}, "above the 10 available"),
        ({"fraction": 0.01}, "rounds to 0"),
        ({"fraction": 1.5}, "in (0, 1]"),
    ],
)
def test_bad_budgets_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BudgetError, match=message.replace("(", r"\(").replace("]", r"\]")):
        resolve_budget(10, **kwargs)


def test_select_random_refuses_an_empty_budget() -> None:
    from datapipe.stages.subset.random_subset import RandomSubset

    for params in ({"count": 0}, {"fraction": 0.0}, {"count": 2, "fraction": 0.5}):
        with pytest.raises(ParamError):
            RandomSubset(**params)
    assert RandomSubset(count=1).params.count == 1
    from datapipe.stages.subset.random_subset import random_subset

    keys = [f"k{i}" for i in range(10)]
    for kw in ({"count": 0}, {"count": -1}, {"count": True}, {"fraction": 0.01}, {"fraction": 0}):
        with pytest.raises(ValueError):
            random_subset(keys, **kw)
    assert len(random_subset(keys, count=99)[0]) == 10  # more than there is: keep everything
    with pytest.raises(ParamError, match=r"nodes\.sel\.params\.fraction: .*rounds to 0"):
        RandomSubset(fraction=0.01).select(keys, {}, Context(node="sel"))


def test_budget_resolution_and_kcenter_budget_errors() -> None:
    assert resolve_budget(10, fraction=0.25) == 2  # round(2.5) -> 2, as select.random
    assert resolve_budget(10, fraction=1.0) == 10 and resolve_budget(10, count=10) == 10
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="budget of 0"):
        kcenter_greedy(x, 0)
    with pytest.raises(ValueError, match="above the 4 available"):
        kcenter_greedy(x, 5)
    with pytest.raises(ValueError, match=r"int \(count\) or a float"):
        kcenter_greedy(x, True)


def test_nonfinite_embeddings_are_named() -> None:
    x = np.ones((6, 3))
    x[4, 1] = np.nan
    x[5, 0] = np.inf
    for call in (
        lambda: kcenter_greedy(x, 2),
        lambda: semdedup(x),
        lambda: proxy_uncertainty(x, ["a", "b"] * 3),
    ):
        with pytest.raises(ValueError, match=r"NaN or inf in 2 rows \(4, 5\)"):
            call()


def test_stage_budget_errors_name_the_param() -> None:
    with pytest.raises(ParamError, match="count"):
        KCenter(count=0)
    with pytest.raises(ParamError, match="exactly one of 'fraction' or 'count'"):
        KCenter(fraction=0.5, count=3)
    keys = [f"k{i}" for i in range(5)]
    view = {"embedding": [[float(i), 0.0] for i in range(5)]}
    with pytest.raises(ParamError) as info:
        KCenter(count=6).select(keys, view, ctx())
    assert "nodes.sel.params.count: select.kcenter: a budget of 6 samples is above the 5" in str(
        info.value
    )


def test_kcenter_stage_leaves_out_nan_keys_and_keeps_the_rest() -> None:
    keys = [f"k{i}" for i in range(6)]
    emb = [[0.0, 0], [1, 0], [10, 0], [float("nan"), 1], [5, 5], [0, 9]]
    sel = KCenter(count=3).select(keys, {"embedding": emb}, ctx())
    assert len(sel.keep) == 3 and "k3" not in sel.keep
    assert sel.reasons["k3"].startswith("nonfinite:") and "NaN/inf" in sel.reasons["k3"]
    finite = [k for k in keys if k != "k3"]
    x = np.array([emb[keys.index(k)] for k in finite])
    idx, radius = kcenter_greedy(x, 3, seed=0)
    assert sel.keep == {finite[i] for i in idx}
    removed = set(finite) - sel.keep
    for k in removed:
        assert "covered by" in sel.reasons[k] and f"covering radius {radius:.4g}" in sel.reasons[k]
        assert sel.scores[k] <= radius + 1e-9


# -- stratified ------------------------------------------------------------------------------
def test_largest_remainder_by_hand() -> None:
    # quotas 4.5, 3.6, 1.8, 0.1 -> floors 4, 3, 1, 0 (8); the 2 seats left go to the largest
    # remainders .8 (c) and .6 (b): 4, 4, 2, 0. d has a sample and the budget allows one: the
    # donor is the class most above quota, b (4 - 3.6 = .4; c: .2; a: -.5) -> 4, 3, 2, 1
    got = stratum_budgets({"a": 45, "b": 36, "c": 18, "d": 1}, 10)
    assert got == {"a": 4, "b": 3, "c": 2, "d": 1}
    assert stratum_budgets({"x": 7, "y": 3}, 5) == {"x": 4, "y": 1}  # 3.5/1.5: tie -> larger
    # 2 seats for 3 classes: quotas 1.27, .55, .18 -> 1, 0, 0; the seat left goes to y (.55)
    assert stratum_budgets({"x": 7, "y": 3, "z": 1}, 2) == {"x": 1, "y": 1, "z": 0}
    assert stratum_budgets({"x": 1, "y": 1}, 2) == {"x": 1, "y": 1}


def test_stratified_subset_proportions_and_single_class_error(tmp_path: Path) -> None:
    keys = [f"s{i:03d}" for i in range(100)]
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 9 + ["d"]
    kept, draws = stratified_subset(keys, labels, 0.2, seed=3)
    counts = Counter(labels[keys.index(k)] for k in kept)
    assert dict(counts) == stratum_budgets(Counter(labels), 20) == {"a": 12, "b": 6, "c": 1, "d": 1}
    # within a class: the smallest draws, as select.random ranks them
    a_keys = sorted(keys[:60], key=lambda k: draws[k])[:12]
    assert {k for k in kept if k in keys[:60]} == set(a_keys)
    with pytest.raises(ValueError, match="at least 2 classes"):
        stratified_subset(keys, ["a"] * 100, 10)
    stage = Stratified(count=5)
    with pytest.raises(ParamError, match="needs at least 2 classes; every sample has label 'a'"):
        stage.select(keys, {"label": ["a"] * 100}, ctx())
    # quotas 3, 1.5, .45, .05 -> 3, 1, 0, 0 + b (.5) -> 3, 2, 0, 0; c takes b's 2nd seat
    # (b is .5 above quota), then d takes one of a's (a is 0 above, the only class left >= 2)
    sel = stage.select(keys, {"label": labels}, ctx(seed=3))
    assert Counter(labels[keys.index(k)] for k in sel.keep) == Counter(a=2, b=1, c=1, d=1)
    assert (
        "outside the 2 kept of 60 in class 'a'" in sel.reasons[sorted(set(keys[:60]) - sel.keep)[0]]
    )


def test_kcenter_and_uncertainty_stratify_keep_class_shares() -> None:
    rng = np.random.default_rng(0)
    labels = ["a"] * 50 + ["b"] * 20 + ["c"] * 10
    x = rng.normal(size=(80, 4)) + np.repeat(np.eye(4)[:3] * 3, [50, 20, 10], axis=0)
    keys = [f"k{i:02d}" for i in range(80)]
    view = {"embedding": x.tolist(), "label": labels}
    want = stratum_budgets(Counter(labels), 16)
    # uncertainty is stratified by default (unstratified it starves classes: see its docs)
    for stage in (KCenter(count=16, stratify=True), Uncertainty(count=16)):
        sel = stage.select(keys, view, ctx())
        assert Counter(labels[keys.index(k)] for k in sel.keep) == Counter(want)
    with pytest.raises(ParamError, match="needs at least 2 classes"):
        KCenter(count=3, stratify=True).select(keys, {**view, "label": ["a"] * 80}, ctx())


# -- dedup -----------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [512, 7])  # 7: clusters span several row blocks
def test_dedup_removes_the_planted_near_duplicates(block: int, monkeypatch) -> None:
    monkeypatch.setattr(dedup_module, "_BLOCK", block)
    rng = np.random.default_rng(1)
    base = rng.normal(size=(60, 32))
    twins = rng.choice(60, size=15, replace=False)
    copies = base[twins] + rng.normal(size=(15, 32)) * 0.01  # cosine > 0.999
    x = np.concatenate([base, copies])
    pair_of = {int(t): 60 + i for i, t in enumerate(twins)} | {
        60 + i: int(t) for i, t in enumerate(twins)
    }
    for order in ("hard", "easy", "random"):
        res = semdedup(x, threshold=0.98, clusters=3, keep=order, seed=0)
        pairs = res.pairs()
        assert len(pairs) == 15
        for removed, kept, sim in pairs:
            assert pair_of[removed] == kept and sim > 0.98 and res.kept[kept]
        untouched = set(range(60)) - set(twins.tolist())
        assert all(res.kept[i] for i in untouched)
    exact = semdedup(x, threshold=0.98, clusters=3, budget=50)
    assert exact.kept.sum() == 50 and exact.threshold < 0.98


def test_dedup_compares_with_kept_samples_only() -> None:
    # a-b and b-c are above the threshold, a-c is not. Visiting a, b, c: b goes (copy of a),
    # and c stays: the paper's rule; comparing with every earlier sample would drop c too
    deg = np.radians([0.0, 10.0, 20.0])
    u = np.column_stack([np.cos(deg), np.sin(deg)]).astype(np.float32)
    dup = np.full(3, -1, np.int64)
    sim = np.full(3, -1.0, np.float32)
    dedup_module._greedy_cluster(u, np.arange(3), float(np.cos(np.radians(15))), dup, sim)
    assert dup.tolist() == [-1, 0, -1]
    assert sim[2] == pytest.approx(np.cos(np.radians(20)), rel=1e-5)  # to a, the kept one


def test_dedup_stage_reports_pairs_in_reasons() -> None:
    keys = ["a", "b", "c", "d"]
    emb = [[1.0, 0], [0.999, 0.01], [0, 1], [-1, 0.02]]
    sel = Dedup(threshold=0.99).select(keys, {"embedding": emb}, ctx())
    assert len(sel.keep) == 3 and len(sel.reasons) == 1
    ((removed, reason),) = sel.reasons.items()
    other = ({"a", "b"} - {removed}).pop()
    assert reason.startswith(f"near-duplicate of {other}: cosine 0.99") and "> 0.9900" in reason
    assert sel.scores[removed] > 0.99


# -- uncertainty -----------------------------------------------------------------------------
def test_uncertainty_keeps_the_points_nearest_the_boundary() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(600, 3))
    w, b = np.array([1.0, -2.0, 0.5]), 0.2
    margin = np.abs(x @ w - b) / np.linalg.norm(w)
    labels = np.where(x @ w > b, "pos", "neg").tolist()
    oracle = set(np.argsort(margin)[:60].tolist())
    for metric in ("entropy", "margin", "least_confidence"):
        res = proxy_uncertainty(x, labels, metric=metric, C=10.0, max_iter=200)
        top = set(np.argsort(-res.scores)[:60].tolist())
        assert len(top & oracle) >= 45, metric  # random would share ~6
        assert margin[list(top)].max() < 3 * margin[list(oracle)].max()
    ens = proxy_uncertainty(x, labels, ensemble=3, C=10.0, max_iter=200)
    assert len(set(np.argsort(-ens.scores)[:60].tolist()) & oracle) >= 45


def test_uncertainty_scores_unlabelled_rows_and_needs_two_classes() -> None:
    x = np.linspace(-1, 1, 41)[:, None]
    labels = ["neg"] * 20 + [""] + ["pos"] * 20
    res = proxy_uncertainty(x, labels)
    assert int(np.argmax(res.scores)) == 20  # the unlabelled point on the boundary
    assert uncertainty_of(np.array([[0.5, 0.5, 0.0]]), metric="margin")[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        proxy_uncertainty(x, ["a"] * 41)
    keys = [f"u{i:02d}" for i in range(41)]
    with pytest.raises(ParamError, match="needs at least 2 classes"):
        Uncertainty(count=3).select(keys, {"embedding": x.tolist(), "label": ["a"] * 41}, ctx())
    view = {"embedding": x.tolist(), "label": labels}
    sel = Uncertainty(count=5, stratify=False).select(keys, view, ctx())
    assert "u20" in sel.keep and "outside the 5 most uncertain of 41" in sel.reasons["u00"]


# -- embeddings ------------------------------------------------------------------------------
def test_pool_pixels_is_an_area_mean() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    want = img.reshape(4, 4, 4, 3, 3).mean(axis=(1, 3)).reshape(-1) / 255  # 4x4 blocks of 4x3
    np.testing.assert_allclose(pool_pixels(img, grid=4, normalize=False), want, rtol=1e-5)
    odd = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    assert pool_pixels(odd, grid=3, normalize=False).mean() == pytest.approx(
        odd.mean() / 255, rel=1e-5
    )
    v = pool_pixels(img, grid=4, dim=8, seed=1)
    assert v.shape == (8,) and np.linalg.norm(v) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(v, pool_pixels(img, grid=4, dim=8, seed=1))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_embed_stages_process_and_reject_bad_pixels(tmp_path: Path) -> None:
    import torch

    img = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    out = PixelEmbed(grid=2).process({"image": img}, ctx())["embedding"]
    assert out.dtype == np.float32 and out.shape == (12,)
    bad = np.full((8, 8, 3), np.nan, np.float32)
    with pytest.raises(ItemError) as info:
        PixelEmbed().process({"image": bad}, ctx())
    assert info.value.error_class == "nonfinite"
    # a user function, a TorchScript file, an nn.Module factory with weights_only state_dict
    flat = TorchEmbed(function="numpy:ravel", dim=192).process({"image": img}, ctx())
    np.testing.assert_array_equal(flat["embedding"], img.ravel().astype(np.float32))
    net = TinyNet.build()
    torch.jit.save(torch.jit.script(net), tmp_path / "net.pt")
    torch.save(net.state_dict(), tmp_path / "net.sd")
    scripted = TorchEmbed(script="net.pt", dim=4).process({"image": img}, ctx(tmp_path))
    loaded = TorchEmbed(module="test_select:TinyNet.build", weights="net.sd").process(
        {"image": img}, ctx(tmp_path)
    )
    with torch.inference_mode():
        want = net(torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None])
    np.testing.assert_allclose(scripted["embedding"], want.numpy().ravel(), rtol=1e-5)
    np.testing.assert_allclose(loaded["embedding"], want.numpy().ravel(), rtol=1e-5)
    with pytest.raises(ItemError, match="returned 4 values; 'dim' says 5"):
        TorchEmbed(script="net.pt", dim=5).process({"image": img}, ctx(tmp_path))
    with pytest.raises(ParamError, match="exactly one of 'script', 'module' or 'function'"):
        TorchEmbed(script="net.pt", function="numpy:ravel")
    with pytest.raises(ParamError, match="'weights' needs 'module'"):
        TorchEmbed(function="numpy:ravel", weights="net.sd")


@pytest.mark.parametrize("cls", OURS, ids=lambda c: c.name)
def test_stage_contract(cls: type) -> None:
    stage = cls(**cls.EXAMPLE_PARAMS)
    again = cls(**stage.get_params())
    assert again == stage and again.token() == stage.token()
    clone = pickle.loads(pickle.dumps(stage))
    assert clone == stage and vars(clone).keys() == {"params"}
    with pytest.raises(ParamError, match=f"params.not_a_param: unknown parameter of {cls.name}"):
        cls(**stage.get_params(), not_a_param=1)


def test_plot_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keys = [f"p{i:02d}" for i in range(30)]
    view = {"embedding": rng.normal(size=(30, 5)).tolist(), "label": ["a", "b", "c"] * 10}
    KCenter(count=6, plot="figs/kc.png").select(keys, view, ctx(tmp_path))
    Stratified(count=6, embedding="embedding", plot="st.png").select(keys, view, ctx(tmp_path))
    for name in ("figs/kc.png", "st.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] == 640
    with pytest.raises(ParamError, match="'plot' needs 'embedding'"):
        Stratified(count=6, plot="x.png")


# -- through the engine ----------------------------------------------------------------------
def _rows(out: Path) -> dict[str, Any]:
    return {r.key: r for r in Manifest(out / "manifest.sqlite").iter_rows()}


def test_kcenter_through_the_engine(tmp_path: Path) -> None:
    root = tmp_path / "images"
    make_image_tree(root, per_class=5)
    p = Pipeline.from_dict(
        {
            "name": "sel",
            "seed": 4,
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
                "resize": {"stage": "image.resize", "inputs": "photos", "params": {"size": 16}},
                "emb": {"stage": "embed.pixels", "inputs": "resize", "params": {"grid": 4}},
                "core": {"stage": "select.kcenter", "inputs": "emb", "params": {"count": 4}},
            },
            "output": {"shard_size": 3},
        }
    )
    report = run_local(p, tmp_path / "out")
    core = report.selections["core"]
    assert (core["seen"], core["kept"]) == (10, 4)
    assert core["light_s"] > 0 and core["select_s"] > 0  # the light pass decoded 10 photos
    again = run_local(p, tmp_path / "out").selections["core"]
    assert (again["seen"], again["kept"], again["light_s"]) == (10, 4, 0.0)  # views cached
    # the oracle: the same embedding computed here, the same k-center run
    keys = sorted(f"{c}/{c}_{i:03d}" for c in ("cat", "dog") for i in range(5))
    x = np.stack([pool_pixels(decode_resize(str(root / f"{k}.jpg"), 16), grid=4) for k in keys])
    idx, radius = kcenter_greedy(x, 4, seed=4)
    kept = {keys[i] for i in idx}
    rows = _rows(tmp_path / "out")
    assert {k for k, r in rows.items() if r.status == "ok"} == kept
    for k in set(keys) - kept:
        r = rows[k]
        assert r.status == "filtered" and r.stage == "core"
        assert r.message.startswith("covered by ") and f"covering radius {radius:.4g}" in r.message
        assert 0 < r.score <= radius + 1e-6
    assert all(rows[k].score > 0 for k in kept)
    samples = list(iter_samples(sorted((tmp_path / "out" / "shards").glob("*.tar"))))
    assert sorted(s["key"] for s in samples) == sorted(kept)
    assert all(s["embedding"].shape == (48,) for s in samples)


def test_nan_embedding_through_the_engine_loses_nothing_else(tmp_path: Path) -> None:
    p = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "test.counter", "params": {"n": 9}},
                "emb": {"stage": "test.nan_embed", "inputs": "src"},
                "core": {"stage": "select.kcenter", "inputs": "emb", "params": {"count": 4}},
            }
        }
    )
    report = run_local(p, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert (report.selections["core"]["seen"], report.selections["core"]["kept"]) == (9, 4)
    assert rows["item_003"].status == "filtered" and rows["item_003"].message.startswith(
        "nonfinite"
    )
    assert sum(r.status == "ok" for r in rows.values()) == 4
    assert all(r.status in ("ok", "filtered") for r in rows.values()) and len(rows) == 9
