"""Select and Fit barriers: gather the light view of every key that reaches them, then decide.

Shared by the run driver (every executor) and the streaming loader. Light values can be
cached per (node, fingerprint of what feeds it, Fit states included), so unchanged keys are
not recomputed; an item that failed or was filtered on its way to a barrier is cached as
such too, so a known-bad file is decoded once, not on every run (``retry_stopped`` redoes
those).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from datapipe.digest import state_digest
from datapipe.engine.runner import ItemResult, ItemTask
from datapipe.engine.stash import stash_path
from datapipe.graph import Pipeline
from datapipe.hooks import RunHooks
from datapipe.stage import Record, StageKind


class LightPool(Protocol):
    def imap_unordered(self, tasks: Iterable[ItemTask]) -> Iterator[Any]: ...

    def close(self) -> None: ...


class LightCache(Protocol):
    def light_values(self, node: str, fingerprint: str) -> dict[str, Any]: ...

    def put_light(self, node: str, fingerprint: str, values: dict[str, Any]) -> None: ...


@dataclass
class BarrierOutcome:
    #: key -> {select node: reason} for keys a Select removed
    filtered_by: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Fit node -> the state it learned
    fitted: dict[str, Any] = field(default_factory=dict)
    #: key -> score given by a Select
    scores: dict[str, float] = field(default_factory=dict)
    #: Select node -> {"seen": n, "kept": k}
    #: per Select node: keys seen and kept, the seconds of its light pass (0 when cached)
    #: and of its select call
    selections: dict[str, dict[str, float]] = field(default_factory=dict)
    #: key -> the error or filter result that stopped it before a barrier
    stopped: dict[str, ItemResult] = field(default_factory=dict)
    #: Fit node -> digest of the state it learned (part of the fingerprint downstream)
    digests: dict[str, str] = field(default_factory=dict)


#: the light-cache entry of an item stopped on its way to a barrier (field names are
#: lower-case identifiers, so this key cannot clash with a light field)
STOPPED = "_stopped"
_STOPPED_FIELDS = ("status", "stage", "error_class", "error_type", "message", "signal", "hash")


def _stopped_entry(res: ItemResult) -> dict[str, Any]:
    return {STOPPED: {k: getattr(res, k) for k in _STOPPED_FIELDS}}


def _stopped_result(key: str, entry: dict[str, Any]) -> ItemResult:
    return ItemResult(key, **{k: entry[STOPPED].get(k) for k in _STOPPED_FIELDS})


def evaluate_barriers(
    p: Pipeline,
    records: dict[str, tuple[str, Record]],
    make_pool: Callable[[dict[str, Any]], LightPool],
    *,
    epoch: int = 0,
    recompute: set[str] | None = None,
    cache: LightCache | None = None,
    signatures: tuple[str, ...] = (),
    hooks: RunHooks | None = None,
    retry_stopped: bool = False,
    stash_dir: str | None = None,
) -> BarrierOutcome:
    """Evaluate every Select/Fit node of ``p`` in order over ``records`` (key -> (source,
    record)). ``recompute`` forces fresh light values for those keys even when cached;
    ``retry_stopped`` does so for keys cached as failed or filtered. With ``stash_dir``, what
    the light pass computes for a key is kept there for the main pass."""
    hooks = hooks or RunHooks()
    out = BarrierOutcome()
    reach = {s.id: p.downstream(s.id) for s in p.of_kind(StageKind.SOURCE)}  # once, not per key
    for node in p.of_kind(StageKind.SELECT, StageKind.FIT):
        sub_fp = p.fingerprint(
            signatures, only=p.upstream(node.id), epoch=epoch, fitted=out.digests
        )
        cached = cache.light_values(node.id, sub_fp) if cache else {}
        if retry_stopped:
            cached = {k: v for k, v in cached.items() if STOPPED not in v}
        keys = [
            k
            for k, (src, _) in records.items()
            if node.id in reach[src] and k not in out.filtered_by and k not in out.stopped
        ]
        need = [k for k in keys if k not in cached or (recompute is not None and k in recompute)]
        fresh: dict[str, Any] = {}
        t0 = time.perf_counter()
        if need:
            tasks = (
                ItemTask(
                    k,
                    records[k][0],
                    records[k][1],
                    light_for=node.id,
                    stash=stash_path(stash_dir, k) if stash_dir else None,
                )
                for k in need
            )
            pool = make_pool(out.fitted)
            hooks.on_phase(f"{node.id} (light view)", len(need))
            try:
                for res in pool.imap_unordered(tasks):
                    hooks.on_item(res.key, res.status)
                    if res.status == "ok" and res.light is not None:
                        fresh[res.key] = res.light
                    else:
                        fresh[res.key] = _stopped_entry(res)
            finally:
                pool.close()
                hooks.on_phase_end(node.id)
            if cache:
                cache.put_light(node.id, sub_fp, fresh)
        light_s = time.perf_counter() - t0 if need else 0.0
        light = {**cached, **fresh}
        for k in keys:
            if k in light and STOPPED in light[k]:
                out.stopped[k] = _stopped_result(k, light[k])
        view_keys = sorted(k for k in keys if k in light and k not in out.stopped)
        view = {f.name: [light[k].get(f.name) for k in view_keys] for f in node.stage.consumes()}
        ctx = p.context(node.id, epoch)
        ctx.fitted = out.fitted
        if node.kind is StageKind.FIT:
            out.fitted[node.id] = node.stage.fit(view_keys, view, ctx)
            out.digests[node.id] = state_digest(out.fitted[node.id])
            continue
        t0 = time.perf_counter()
        sel = node.stage.select(view_keys, view, ctx)
        select_s = time.perf_counter() - t0
        for k in view_keys:
            if k not in sel.keep:
                out.filtered_by.setdefault(k, {})[node.id] = sel.reasons.get(k, "not selected")
        out.selections[node.id] = {
            "seen": len(view_keys),
            "kept": len(sel.keep & set(view_keys)),
            "light_s": round(light_s, 6),
            "select_s": round(select_s, 6),
        }
        out.scores.update(sel.scores)
    return out
