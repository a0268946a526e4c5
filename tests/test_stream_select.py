"""StreamDataset.select: an active subset read exactly once per epoch, over real DataLoader
workers (persistent and not) and simulated ranks; changed between epochs; bad keys refused."""

from __future__ import annotations

import copy
import pickle
from collections import Counter
from pathlib import Path

import pytest
from test_stream import COUNTER, KEYS, _corrupt, _keys, _loader, _run

from datapipe.stream import from_shards
from datapipe.stream.split import epoch_order

SUBSET = [*KEYS[1::2], KEYS[4]]  # 7 of 12


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(COUNTER, tmp_path_factory.mktemp("counter") / "out")


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_selected_units_exactly_once_per_epoch(out: Path, workers: int, world: int) -> None:
    for epoch in (0, 3):
        seen: list[str] = []
        for rank in range(world):
            ds = from_shards(out, seed=5, rank=rank, world_size=world, even="none")
            assert ds.select(SUBSET) == len(SUBSET)
            ds.set_epoch(epoch)
            keys = _keys(ds, workers)
            assert len(keys) == len(ds)
            seen += keys
        assert Counter(seen) == Counter(SUBSET)


def test_order_is_a_seeded_permutation_of_the_subset(out: Path) -> None:
    ds = from_shards(out, seed=9)
    ds.select(reversed(SUBSET))  # the order given does not matter
    ds.set_epoch(2)
    active = sorted(SUBSET)  # units ascend like the keys
    expected = [active[i] for i in epoch_order(len(active), 9, 2)]
    assert _keys(ds, batch_size=None) == expected
    assert ds.selected == active


def test_selection_changes_between_epochs_in_persistent_workers(out: Path) -> None:
    ds = from_shards(out, seed=1)
    loader = _loader(ds, 2, batch_size=None, persistent_workers=True)
    subsets = [SUBSET, KEYS[:3], None, KEYS[5:6]]
    for epoch, subset in enumerate(subsets):
        ds.select(subset)
        ds.set_epoch(epoch)
        got = [s["key"] for s in loader]
        assert Counter(got) == Counter(subset if subset is not None else KEYS)
        assert len(ds) == len(got)


def test_bad_selections_are_refused(out: Path) -> None:
    ds = from_shards(out)
    with pytest.raises(ValueError, match=r"does not hold.*nope"):
        ds.select([KEYS[0], "nope"])
    with pytest.raises(ValueError, match="empty selection"):
        ds.select([])
    assert ds.selected is None and len(ds) == len(KEYS)  # a refused selection changes nothing


def test_copies_keep_the_selection(out: Path) -> None:
    ds = from_shards(out)
    ds.select(SUBSET)
    for other in (copy.deepcopy(ds), pickle.loads(pickle.dumps(ds))):
        assert other.selected == sorted(SUBSET)
        other.select(None)  # a copy shares nothing with the original
    assert ds.selected == sorted(SUBSET)


def test_a_bad_selected_unit_is_replaced_by_a_selected_one(tmp_path: Path) -> None:
    out = _run(COUNTER, tmp_path / "out")
    _corrupt(out, KEYS[5], "square")
    ds = from_shards(out, seed=2)
    ds.select(SUBSET)
    keys = _keys(ds)
    assert len(keys) == len(SUBSET) and KEYS[5] not in keys
    assert set(keys) == set(SUBSET) - {KEYS[5]}
    assert [k for k, _ in ds.skipped] == [KEYS[5]]
