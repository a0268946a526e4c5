"""Run one input item through every Map node its source feeds, in one go (fused).

This is the unit of work every executor schedules. It never raises for a bad item: the
outcome (ok with encoded samples, error with a class, or filtered) is a plain, picklable
:class:`ItemResult`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datapipe.engine import stash
from datapipe.engine.join import JoinError, join_branches
from datapipe.errors import Filtered, ItemError, classify_exception
from datapipe.graph import Pipeline
from datapipe.stage import Context, Map, Record, StageKind, to_jsonable
from datapipe.store.codec import encode_sample

HASH_CHUNK = 1 << 20


@dataclass
class ItemTask:
    """One input key to process."""

    key: str
    source: str
    record: Record
    #: compute only up to this barrier node and return its light fields
    light_for: str | None = None
    need_hash: bool = False
    attempt: int = 1
    #: False: return the final records as arrays (streaming) instead of encoded tar members
    encode: bool = True
    #: a file where the light pass keeps what it computed, and the main pass starts from
    #: (:mod:`datapipe.engine.stash`), so a first run decodes no input twice
    stash: str | None = None
    #: close the child's shard right after this item (a suspect after a refused shard)
    flush_after: bool = False


@dataclass
class ItemResult:
    key: str
    status: str  # ok | error | filtered
    samples: list[tuple[str, list[tuple[str, bytes]]]] = field(default_factory=list)
    #: decoded samples (sample key, fields), when the task asked for ``encode=False``
    records: list[tuple[str, Record]] = field(default_factory=list)
    light: dict[str, Any] | None = None
    stage: str | None = None
    error_class: str | None = None
    error_type: str | None = None
    message: str | None = None
    signal: str | None = None
    hash: str | None = None
    elapsed_s: float = 0.0
    attempt: int = 1
    #: samples already written to a shard by a remote worker (``samples`` then is empty)
    shard_samples: int = 0
    #: what a stage reported about damage it tolerated (fields named ``*_damage`` > 0)
    notes: dict[str, int] = field(default_factory=dict)
    #: seconds spent in each Map node on this item (where the time goes, per stage)
    stage_s: dict[str, float] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return len(self.samples) or len(self.records) or self.shard_samples

    @classmethod
    def error(
        cls,
        key: str,
        stage: str | None,
        error_class: str,
        message: str,
        error_type: str = "",
        **kw: Any,
    ) -> ItemResult:
        return cls(
            key,
            "error",
            stage=stage,
            error_class=error_class,
            message=message,
            error_type=error_type or error_class,
            **kw,
        )


@dataclass
class WrittenShard:
    """A shard a remote worker has already written and renamed into place, with the results
    of the items whose samples it holds; the driver only records it in the manifest."""

    name: str
    n_samples: int
    n_bytes: int
    results: list[ItemResult]


@dataclass(frozen=True)
class Answered:
    """An item finished whose samples wait in a worker's open shard: for progress only; the
    item counts when its :class:`WrittenShard` comes."""

    key: str
    status: str


def file_hash(path: str) -> str:
    """Content hash used for change detection when size or mtime moved."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def damage_notes(records: Iterable[Record]) -> dict[str, int]:
    """Sum of every ``*_damage`` field > 0 (stages that keep damaged data report it so)."""
    notes: dict[str, int] = {}
    for rec in records:
        for name, value in rec.items():
            if name.endswith("_damage") and isinstance(value, (int, np.integer)) and value > 0:
                notes[name] = notes.get(name, 0) + int(value)
    return notes


class MapFailure(Exception):
    """Why :func:`apply_map` stopped an item: ``status`` is ``"filtered"`` or ``"error"``."""

    def __init__(
        self, status: str, message: str, error_class: str = "", error_type: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.error_class, self.error_type = error_class, error_type


def apply_map(
    stage: Map,
    inputs: list[tuple[str, Record]],
    ctx: Context,
    rename: Mapping[str, str] | None = None,
) -> list[tuple[str, Record]]:
    """Run a Map stage over the (sub-key, record) samples of one item.

    Each output record is the input merged with what ``process`` returned (its fields named
    by ``rename`` where given); a list return expands the sample, suffixing its sub-key
    (``@0000``, then ``_0000``). Raises
    :class:`MapFailure` for a filtered item, an exception of the stage (classified), a broken
    field contract, or no samples at all. ``MemoryError`` propagates.
    """
    out: list[tuple[str, Record]] = []
    for sub, rec in inputs:
        missing = [f.name for f in stage.consumes() if f.name not in rec]
        if missing:
            raise MapFailure(
                "error",
                f"{stage.name} needs field(s) {', '.join(map(repr, missing))}, which the "
                f"record lacks (it has: {', '.join(sorted(rec)) or 'nothing'})",
                "invalid",
                "MissingField",
            )
        try:
            produced = stage.process(rec, ctx)
        except Filtered as exc:
            raise MapFailure("filtered", exc.reason) from None
        except MemoryError:
            raise
        except Exception as exc:
            msg = exc.message if isinstance(exc, ItemError) else str(exc) or repr(exc)
            raise MapFailure("error", msg, classify_exception(exc), type(exc).__name__) from None
        parts = produced if isinstance(produced, list) else [produced]
        expanded = isinstance(produced, list)
        for i, part in enumerate(parts):
            bad = _check(stage.produces(), part)
            if bad:
                raise MapFailure(
                    "error", f"{stage.name} broke its contract: {bad}", "invalid", "ContractError"
                )
            if rename:
                part = {rename.get(k, k): v for k, v in part.items()}
            new_sub = f"{sub}{'_' if sub else '@'}{i:04d}" if expanded else sub
            out.append((new_sub, {**rec, **part}))
    if not out:
        raise MapFailure("filtered", f"{stage.name} produced no samples")
    return out


def _check(declared: tuple[Any, ...], produced: Any) -> str | None:
    if not isinstance(produced, dict):
        return f"process() returned {type(produced).__name__}, expected a dict of fields"
    specs = {f.name: f for f in declared}
    for name, spec in specs.items():
        if name not in produced:
            return f"declared field {name!r} missing"
        why = spec.check_value(produced[name])
        if why:
            return why
    return None


class ItemRunner:
    """Executes tasks for one pipeline; built once per worker process."""

    def __init__(
        self, pipeline: Pipeline, fitted: Mapping[str, Any] | None = None, epoch: int = 0
    ) -> None:
        self.pipeline = pipeline
        self.fitted = dict(fitted or {})
        self.epoch = epoch
        self._reach = {s.id: pipeline.downstream(s.id) for s in pipeline.of_kind(StageKind.SOURCE)}
        self._contexts = {}
        for n in pipeline.nodes:
            ctx = pipeline.context(n.id, epoch)
            ctx.fitted = self.fitted
            self._contexts[n.id] = ctx

    def run(self, task: ItemTask) -> ItemResult:
        t0 = time.perf_counter()
        self._stage_s: dict[str, float] = {}
        try:
            result = self._run(task)
        except MemoryError:
            result = ItemResult.error(
                task.key, None, "oom", "ran out of memory (MemoryError)", "MemoryError"
            )
        result.elapsed_s = time.perf_counter() - t0
        result.attempt = task.attempt
        result.stage_s = self._stage_s
        return result

    def _run(self, task: ItemTask) -> ItemResult:
        p = self.pipeline
        digest = None
        if task.need_hash and task.record.get("path"):
            try:
                digest = file_hash(task.record["path"])
            except OSError as exc:
                return ItemResult.error(
                    task.key, task.source, "io", f"cannot read input: {exc}", type(exc).__name__
                )
        wanted = self._reach[task.source]
        if task.light_for is not None:
            wanted = wanted & p.upstream(task.light_for)
        values: dict[str, list[tuple[str, Record]]] = {task.source: [("", dict(task.record))]}
        if task.stash:
            kept = stash.load(task.stash) or {}
            values.update((n, v) for n, v in kept.items() if n in wanted and n != task.source)
        for nid in p.order:
            if nid not in wanted or nid in values:
                continue
            node = p.nodes_by_id[nid]
            if any(u not in values for u in node.inputs) or node.kind is StageKind.SINK:
                continue
            try:
                inputs = join_branches([values[u] for u in node.inputs], list(node.inputs))
            except JoinError as exc:
                return ItemResult.error(task.key, nid, "invalid", str(exc), "JoinError")
            if node.kind in (StageKind.SELECT, StageKind.FIT):
                if nid == task.light_for:
                    if task.stash:
                        stash.save(
                            task.stash, {n: v for n, v in values.items() if n != task.source}
                        )
                    return self._light(task, node.stage.consumes(), inputs, digest)
                values[nid] = inputs
                continue
            started = time.perf_counter()
            try:
                out = apply_map(node.stage, inputs, self._contexts[nid], node.renames)
            except MapFailure as f:
                self._stage_s[nid] = time.perf_counter() - started
                if f.status == "filtered":
                    return ItemResult(
                        task.key, "filtered", stage=nid, message=f.message, hash=digest
                    )
                return ItemResult.error(
                    task.key, nid, f.error_class, f.message, f.error_type, hash=digest
                )
            self._stage_s[nid] = time.perf_counter() - started
            values[nid] = out
        return self._encode(task, values, wanted, digest)

    def _light(
        self,
        task: ItemTask,
        consumes: tuple[Any, ...],
        inputs: list[tuple[str, Record]],
        digest: str | None,
    ) -> ItemResult:
        if len(inputs) != 1:
            return ItemResult.error(
                task.key,
                task.light_for,
                "unsupported",
                "a Select/Fit stage needs one sample per input key; "
                f"got {len(inputs)} after expansion",
            )
        rec = inputs[0][1]
        light = {}
        for f in consumes:
            value = rec.get(f.name)
            light[f.name] = to_jsonable(value.tolist() if hasattr(value, "tolist") else value)
        return ItemResult(task.key, "ok", light=light, hash=digest)

    def _encode(
        self,
        task: ItemTask,
        values: dict[str, list[tuple[str, Record]]],
        wanted: set[str],
        digest: str | None,
    ) -> ItemResult:
        p = self.pipeline
        leaves = [n for n in p.leaves() if n in values and n in wanted]
        try:
            records = join_branches([values[n] for n in leaves], leaves)
        except JoinError as exc:
            return ItemResult.error(task.key, None, "invalid", str(exc), "JoinError", hash=digest)
        notes = damage_notes(rec for _, rec in records)
        out = p.output
        if not task.encode:
            keep = set(out.fields) if out.fields is not None else None
            drop = set(out.exclude)
            decoded = []
            for sub, rec in records:
                fields = {
                    k: v for k, v in rec.items() if k not in drop and (keep is None or k in keep)
                }
                fields["key"] = task.key + sub
                decoded.append((task.key + sub, fields))
            return ItemResult(task.key, "ok", records=decoded, hash=digest, notes=notes)
        samples = []
        try:
            for sub, rec in records:
                key = task.key + sub
                members = encode_sample(key, rec, out.fields, out.exclude, p.compress)
                samples.append((key, members))
        except ItemError as exc:
            return ItemResult.error(
                task.key, "store", exc.error_class, exc.message, "ItemError", hash=digest
            )
        if not samples:
            return ItemResult(
                task.key,
                "filtered",
                stage=leaves[-1] if leaves else None,
                message="no samples",
                hash=digest,
            )
        return ItemResult(task.key, "ok", samples=samples, hash=digest, notes=notes)
