"""Every registered stage on real inputs: declared fields, determinism, pickling, bad input.

Each stage is built from its ``EXAMPLE_PARAMS`` (adjusted by :data:`stage_inputs.CASES`) and
run on real sample files made on the fly (JPEG photos, H.264 clips, PLY clouds), with the
fields it consumes made by the real upstream stages. Bad inputs (corrupt, empty, wrong type,
NaN, missing or mistyped fields) go through the engine's :class:`ProcessPool`, so a native
crash or a hang shows up as such instead of taking the test run down.
"""

from __future__ import annotations

import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import stage_inputs
from stage_inputs import CASES, SampleData, build, light_view, run_steps

from datapipe.engine.pool import ProcessPool
from datapipe.engine.runner import ItemResult, ItemTask
from datapipe.errors import ERROR_CLASSES, ConfigError
from datapipe.stage import Record, Selection, Stage, StageKind
from datapipe.store.codec import decode_value, encode_sample, split_member

NAMES = sorted(CASES)
#: error classes that mean the engine had to step in: not an error the stage reported
ENGINE_CLASSES = {"crash", "timeout", "oom"}
#: fields a Source yields besides its declared ones (``Source``'s docstring: the ``key``)
SOURCE_EXTRAS = {"key"}


# -- running a stage -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(sample_data: SampleData) -> dict[str, Any]:
    return stage_inputs.fit_states(sample_data, tuple(stage_inputs.FITS))


@pytest.fixture(scope="module")
def inputs(sample_data: SampleData) -> dict[str, list[Record]]:
    """The input records of every stage, made by its real upstream stages (shared chains
    computed once)."""
    memo: dict[tuple[Any, ...], list[Record]] = {}
    out = {}
    for name, case in CASES.items():
        tag = (case.modality, repr(case.upstream), case.labels)
        if tag not in memo:
            memo[tag] = run_steps(sample_data, case, {})
        out[name] = memo[tag]
    return out


def make(name: str) -> Stage:
    return build(name, CASES[name].params)


def states(name: str, fitted: dict[str, Any]) -> dict[str, Any]:
    """The Fit states a stage's case says it reads (only those: the others must not need any)."""
    return {node: fitted[node] for node in CASES[name].fitted}


def run(stage: Stage, records: list[Record], data: SampleData, fitted: dict[str, Any]) -> Any:
    """What the stage gives on ``records``: per record (Map), the Selection, the state, or the
    listed records (Source)."""
    ctx = data.context(seed=3)
    ctx.fitted = states(stage.name, fitted)
    if stage.kind is StageKind.MAP:
        return [stage.process(dict(r), ctx) for r in records]  # type: ignore[attr-defined]
    if stage.kind is StageKind.SOURCE:
        return list(stage.list_items(ctx))  # type: ignore[attr-defined]
    keys, view = light_view(stage, records)
    if stage.kind is StageKind.SELECT:
        return stage.select(keys, view, ctx)  # type: ignore[attr-defined]
    if stage.kind is StageKind.FIT:
        return stage.fit(keys, view, ctx)  # type: ignore[attr-defined]
    if stage.kind is StageKind.SINK:
        return consume_committed(stage, records, ctx)
    pytest.fail(f"no conformance check for {stage.kind.value} stages: add one")


def consume_committed(stage: Stage, records: list[Record], ctx: Any) -> Any:
    """What a Sink returns for ``records`` committed as the driver commits them (one shard
    in a fresh output), with the context the driver gives it."""
    import tempfile
    from pathlib import Path

    from datapipe.store import OutputStore, iter_samples
    from datapipe.store.manifest import ItemRow

    with tempfile.TemporaryDirectory() as tmp, OutputStore(Path(tmp) / "out") as store:
        writer = store.shard_writer(1, 1, 10_000, 2**30)
        rows = []
        for rec in records:
            writer.add(encode_sample(rec["key"], rec, exclude=("path", "mtime_ns")))
            rows.append(
                ItemRow(rec["key"], "ok", fingerprint="f", n_samples=1, label=str(rec.get("label")))
            )
        store.commit_shard(writer, rows, 1)
        ctx.out_dir = store.root / type(stage).folder / "n"
        ctx.out_dir.mkdir(parents=True)
        ctx.run_dir, ctx.shards = store.root, store.shard_paths()
        ctx.samples_digest = store._m.samples_digest()
        return stage.consume(iter_samples(ctx.shards), ctx)  # type: ignore[attr-defined]


def parts(output: Record | list[Record]) -> list[Record]:
    """A Map's samples: one dict, or the list an expanding stage returns."""
    return output if isinstance(output, list) else [output]


def same(a: Any, b: Any, where: str = "") -> None:
    """Equal values; arrays byte-equal with the same dtype and shape."""
    if isinstance(a, Selection):
        assert isinstance(b, Selection), where
        same((a.keep, a.scores, a.reasons), (b.keep, b.scores, b.reasons), where)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{where}: {type(b).__name__}, not an array"
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


# -- the registry is covered ---------------------------------------------------------------------
def test_every_registered_stage_has_a_sample_input() -> None:
    registered = set(stage_inputs.stages_under_test())
    missing = sorted(registered - set(CASES))
    assert not missing, f"add these stages to stage_inputs.CASES: {missing}"
    stale = sorted(set(CASES) - registered)
    assert not stale, f"stage_inputs.CASES names stages that are not registered: {stale}"


def test_test_stages_are_the_only_ones_left_out() -> None:
    import fault_stages

    left_out = set(stage_inputs.registry.all_stages()) - set(stage_inputs.stages_under_test())
    assert {cls.name for cls in fault_stages.ALL} <= left_out
    assert all(name.startswith("test.") for name in left_out), left_out


# -- (a) declared fields -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_produces_exactly_the_declared_fields(
    name: str, sample_data: SampleData, inputs: dict[str, list[Record]], fitted: dict[str, Any]
) -> None:
    stage = make(name)
    declared = {f.name: f for f in stage.produces()}
    out = run(stage, inputs[name], sample_data, fitted)
    if stage.kind in (StageKind.MAP, StageKind.SOURCE):
        samples = [p for o in out for p in parts(o)] if stage.kind is StageKind.MAP else out
        assert samples, f"{name} gave no samples"
        allowed = SOURCE_EXTRAS if stage.kind is StageKind.SOURCE else set()
        for sample in samples:
            assert isinstance(sample, dict), type(sample)
            missing = sorted(declared.keys() - sample.keys())
            extra = sorted(sample.keys() - declared.keys() - allowed)
            assert not missing, f"{name} does not produce declared fields {missing}"
            assert not extra, f"{name} produces undeclared fields {extra}"
            for fname, spec in declared.items():
                value = sample[fname]
                assert spec.check_value(value) is None, spec.check_value(value)
                if isinstance(value, np.ndarray) and "*" not in spec.dims:
                    assert value.ndim == len(spec.dims), (fname, value.shape, spec.shape)
    elif stage.kind is StageKind.SELECT:
        assert not declared, f"{name}: a Select stage adds no fields"
        keys = {r["key"] for r in inputs[name]}
        assert isinstance(out, Selection) and out.keep and out.keep <= keys
        assert set(out.scores) <= keys and set(out.reasons) <= keys - out.keep
        assert keys - out.keep <= set(out.reasons), f"{name}: a removed key has no reason"
    else:
        assert isinstance(out, dict) and out, f"{name} fitted no state"


# -- (b) determinism, (c) pickling and storing -----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_picklable_and_storable(
    name: str, sample_data: SampleData, inputs: dict[str, list[Record]], fitted: dict[str, Any]
) -> None:
    stage = make(name)
    clone = pickle.loads(pickle.dumps(stage))
    assert clone == stage and clone.token() == stage.token()
    first = run(stage, inputs[name], sample_data, fitted)
    second = run(clone, inputs[name], sample_data, fitted)  # the unpickled stage, a fresh run
    same(first, second, name)
    same(pickle.loads(pickle.dumps(first)), first, f"{name} (pickled output)")
    if stage.kind is not StageKind.MAP:
        return
    for record, out in zip(inputs[name], first, strict=True):
        for part in parts(out):
            members = encode_sample(record["key"], part)
            back = {split_member(n)[1]: decode_value(split_member(n)[2], d) for n, d in members}
            assert back.keys() == part.keys()
            for fname, value in part.items():
                if isinstance(value, np.ndarray):
                    same(back[fname], value, f"{name}.{fname} (stored)")
                else:
                    assert back[fname] == json.loads(json.dumps(value)), fname


# -- (d) bad input -------------------------------------------------------------------------------
MAPS = [n for n in NAMES if make(n).kind is StageKind.MAP]


def run_bad_inputs(name: str, data: SampleData, good: Record, fitted: dict[str, Any]) -> Any:
    """The bad variants of ``good`` through the engine, in a child process: ``{what: result}``."""
    stage = make(name)
    pipeline = stage_inputs.bad_input_pipeline(stage, data.root)
    variants = dict(stage_inputs.bad_variants(stage, CASES[name], data, good))
    keys = {f"item{i:03d}": what for i, what in enumerate(variants)}
    tasks = [ItemTask(key, "src", variants[what]) for key, what in keys.items()]
    fitted = states(name, fitted)
    with ProcessPool(pipeline, workers=1, timeout_s=60, memory_mb=3072, fitted=fitted) as pool:
        return {keys[res.key]: res for res in pool.imap_unordered(tasks)}


@pytest.fixture(scope="module")
def bad_results(
    sample_data: SampleData, inputs: dict[str, list[Record]], fitted: dict[str, Any]
) -> dict[str, dict[str, ItemResult]]:
    """Every bad variant of every Map stage's input; two stages at a time."""
    with ThreadPoolExecutor(2) as threads:
        futures = {
            n: threads.submit(run_bad_inputs, n, sample_data, inputs[n][0], fitted) for n in MAPS
        }
        return {n: f.result() for n, f in futures.items()}


@pytest.mark.parametrize("name", MAPS)
def test_bad_input_gives_an_error_row(
    name: str, bad_results: dict[str, dict[str, ItemResult]]
) -> None:
    results = bad_results[name]
    consumed = [f.name for f in make(name).consumes()]
    assert {f"missing {f}" for f in consumed} <= results.keys()
    problems = []
    for what, res in sorted(results.items()):
        tolerated = what in CASES[name].tolerated and res.status == "ok" and res.notes
        if tolerated:  # read what was left, and said so in a *_damage field
            continue
        if res.status != "error":
            problems.append(f"{what}: {res.status} ({res.message})")
        elif res.error_class in ENGINE_CLASSES or res.error_class not in ERROR_CLASSES:
            problems.append(f"{what}: {res.error_class} ({res.message})")
        elif not (res.message or "").strip():
            problems.append(f"{what}: error row without a message")
        elif what.startswith("missing ") and what.split()[1] not in res.message:
            problems.append(f"{what}: the message does not name the field: {res.message!r}")
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def test_files_with_a_missing_root_is_a_config_error(sample_data: SampleData) -> None:
    stage = build("files", {"root": str(sample_data.root / "no such dir")})
    for call in (stage.preflight, lambda ctx: list(stage.list_items(ctx))):  # type: ignore[attr-defined]
        with pytest.raises(ConfigError, match="is not a directory"):
            call(sample_data.context())
