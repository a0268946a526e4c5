"""Every executor gives the same samples, byte for byte.

One set of small pipelines over real files (JPEG photos, H.264 clips, PLY clouds) runs
through ``run_local`` inline (``workers=0``; isolated stages still use child processes),
``run_local`` with a pool of 2 workers, ``run_dask`` on the session's LocalCluster, and the
streaming loaders: ``from_pipeline`` over the same pipeline and ``from_shards`` over each run's
output. Runs must write the same tar members with the same bytes; the loaders must yield the
same fields, dtypes, shapes and bytes as the inline run's shards decode to.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stage_inputs import CloudFiles, SampleData, build

from datapipe.engine.pool import InlinePool, PoolSettings, make_pool
from datapipe.engine.report import RunReport
from datapipe.executors.dask_executor import run_dask
from datapipe.executors.local import run_local
from datapipe.graph import Node, Pipeline
from datapipe.store import iter_samples
from datapipe.stream import from_pipeline, from_shards

pytestmark = pytest.mark.slow

Nodes = dict[str, dict[str, Any]]


def _files(data: SampleData, modality: str) -> dict[str, Any]:
    return {"stage": "files", "params": {"root": str(data.dir(modality))}}


def _chain(*steps: tuple[str, str, dict[str, Any]]) -> Nodes:
    """Nodes ``(id, stage, params)`` each fed by the one before (the first one by ``src``)."""
    nodes: Nodes = {}
    prev = "src"
    for nid, stage, params in steps:
        nodes[nid] = {"stage": stage, "inputs": prev, "params": params}
        prev = nid
    return nodes


#: pipeline name -> (modality of its files, its nodes after the source, ok items expected)
PIPELINES: dict[str, tuple[str, Nodes, int]] = {
    "images": ("images", _chain(("resize", "image.resize", {"size": 32})), 6),
    "dct": ("images", _chain(("dct", "jpeg.dct", {"keep": 16, "layout": "channels"})), 6),
    "video_mv": ("videos", _chain(("mv", "video.motion_vectors", {"block": 16})), 3),
    "points": (
        "pointclouds",
        _chain(("read", "points.read", {}), ("fps", "points.fps", {"m": 16})),
        4,
    ),
    "select": (
        "images",
        _chain(
            ("resize", "image.resize", {"size": 32}),
            ("embed", "embed.pixels", {}),
            ("kcenter", "select.kcenter", {"fraction": 0.5}),
        ),
        3,
    ),
    "fit_points": (
        "pointclouds",
        _chain(
            ("read", "points.read", {}),
            ("sampler", "points.learned_fit", {"m": 16, "epochs": 1, "n_points": 64}),
            ("pick", "points.learned", {}),
        ),
        4,
    ),
}
RUNS: dict[str, Callable[[Pipeline, Path, str], RunReport]] = {
    "local_inline": lambda p, out, _: run_local(p, out, workers=0),
    "local_pool": lambda p, out, _: run_local(p, out, workers=2),
    "dask": lambda p, out, scheduler: run_dask(p, out, scheduler=scheduler),
}
REFERENCE = "local_inline"
#: a pipeline with no isolated stage, so ``workers=0`` really runs it in this process
INLINE = "points_inline"
EXPECTED = {**{n: v[2] for n, v in PIPELINES.items()}, INLINE: 4}


def pipeline(name: str, data: SampleData) -> Pipeline:
    if name == INLINE:
        nodes = [
            Node("src", CloudFiles(root=str(data.dir("pointclouds")))),
            Node("random", build("points.random", {"m": 64}), ("src",)),
            Node("voxelize", build("points.voxelize", {"voxel_size": 0.2}), ("random",)),
        ]
        return Pipeline(nodes, name=name)
    modality, nodes_, _ = PIPELINES[name]
    return Pipeline.from_dict({"name": name, "nodes": {"src": _files(data, modality), **nodes_}})


class Outputs:
    """Runs each (pipeline, executor) once, on first use, into its own directory."""

    def __init__(self, data: SampleData, root: Path, scheduler: str) -> None:
        self.data, self.root, self.scheduler = data, root, scheduler
        self.reports: dict[tuple[str, str], RunReport] = {}

    def run(self, name: str, executor: str) -> Path:
        out = self.root / name / executor
        if (name, executor) not in self.reports:
            p = pipeline(name, self.data)
            self.reports[name, executor] = RUNS[executor](p, out, self.scheduler)
        return out


@pytest.fixture(scope="module")
def outputs(
    sample_data: SampleData, tmp_path_factory: pytest.TempPathFactory, dask_scheduler: str
) -> Outputs:
    return Outputs(sample_data, tmp_path_factory.mktemp("equivalence"), dask_scheduler)


# -- reading what came out -----------------------------------------------------------------------
def members(out: Path) -> dict[str, bytes]:
    """Every tar member of a run's shards, name -> bytes."""
    found: dict[str, bytes] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                fh = tar.extractfile(info)
                assert fh is not None and info.name not in found, info.name
                found[info.name] = fh.read()
    return found


def decoded(out: Path) -> dict[str, dict[str, Any]]:
    """A run's samples, decoded by datapipe's own reader, by key."""
    samples = {s["key"]: s for s in iter_samples(sorted((out / "shards").glob("*.tar")))}
    assert samples, f"no samples in {out}"
    return samples


def streamed(dataset: Any) -> dict[str, dict[str, Any]]:
    """A streaming dataset's samples by key, tensors back to numpy arrays."""
    samples: dict[str, dict[str, Any]] = {}
    for sample in dataset:
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in sample.items()}
        assert arrays["key"] not in samples, f"{arrays['key']} streamed twice"
        samples[arrays["key"]] = arrays
    return samples


def differences(ref: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> list[str]:
    """What differs, per sample key and field: presence, type, dtype, shape, bytes."""
    out = [f"{k}: missing" for k in sorted(ref.keys() - got.keys())]
    out += [f"{k}: unexpected sample" for k in sorted(got.keys() - ref.keys())]
    for key in sorted(ref.keys() & got.keys()):
        a, b = ref[key], got[key]
        out += [f"{key}.{f}: missing" for f in sorted(a.keys() - b.keys())]
        out += [f"{key}.{f}: unexpected field" for f in sorted(b.keys() - a.keys())]
        for f in sorted(a.keys() & b.keys()):
            x, y = a[f], b[f]
            if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
                if (x.dtype, x.shape) != (y.dtype, y.shape):
                    out.append(f"{key}.{f}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
                elif np.ascontiguousarray(x).tobytes() != np.ascontiguousarray(y).tobytes():
                    n = int((x != y).sum()) if x.dtype.kind != "V" else -1
                    out.append(f"{key}.{f}: {n} of {x.size} values differ")
            elif type(x) is not type(y) or x != y:
                out.append(f"{key}.{f}: {x!r:.60} ({type(x).__name__}) vs {y!r:.60}")
    return out


def check_same(ref: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> None:
    diff = differences(ref, got)
    assert not diff, f"{len(diff)} differences:\n  " + "\n  ".join(diff[:25])


# -- the tests -----------------------------------------------------------------------------------
NAMES = sorted(EXPECTED)


@pytest.mark.parametrize("name", NAMES)
def test_reference_run_is_complete(name: str, outputs: Outputs) -> None:
    out = outputs.run(name, REFERENCE)
    report = outputs.reports[name, REFERENCE]
    assert report.failed == [], report.failed
    assert report.counts["ok"] == EXPECTED[name], report.counts
    assert len(decoded(out)) == EXPECTED[name]
    pool = make_pool(PoolSettings(workers=0), pipeline(name, outputs.data), {})
    assert isinstance(pool, InlinePool) == (name == INLINE)  # isolated stages: child processes


@pytest.mark.parametrize("executor", sorted(set(RUNS) - {REFERENCE}))
@pytest.mark.parametrize("name", NAMES)
def test_runs_write_the_same_bytes(name: str, executor: str, outputs: Outputs) -> None:
    ref = outputs.run(name, REFERENCE)
    out = outputs.run(name, executor)
    assert outputs.reports[name, executor].counts == outputs.reports[name, REFERENCE].counts
    check_same(decoded(ref), decoded(out))
    a, b = members(ref), members(out)
    assert a.keys() == b.keys()
    assert [n for n in sorted(a) if a[n] != b[n]] == []


@pytest.mark.parametrize("name", NAMES)
def test_from_pipeline_streams_the_same_samples(
    name: str, outputs: Outputs, sample_data: SampleData
) -> None:
    ref = decoded(outputs.run(name, REFERENCE))
    check_same(ref, streamed(from_pipeline(pipeline(name, sample_data), shuffle=False)))


@pytest.mark.parametrize("executor", sorted(RUNS))
@pytest.mark.parametrize("name", NAMES)
def test_from_shards_streams_the_same_samples(name: str, executor: str, outputs: Outputs) -> None:
    ref = decoded(outputs.run(name, REFERENCE))
    check_same(ref, streamed(from_shards(outputs.run(name, executor), shuffle=False)))
