"""The run driver: list inputs, decide what is new, evaluate barriers, commit results.

Executors differ only in how they turn :class:`ItemTask` s into :class:`ItemResult` s (a
``pool`` with ``imap_unordered``); everything that touches the manifest happens here, in one
process, so bookkeeping stays consistent whichever executor ran the work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from datapipe.digest import state_digest
from datapipe.engine.barriers import BarrierOutcome, evaluate_barriers
from datapipe.engine.planning import Plan, plan_run
from datapipe.engine.report import RunReport, package_versions
from datapipe.engine.runner import Answered, ItemResult, ItemTask, WrittenShard, file_hash
from datapipe.engine.sources import list_sources
from datapipe.engine.stash import stash_path
from datapipe.errors import SinkError
from datapipe.graph import Pipeline
from datapipe.hooks import RunHooks
from datapipe.stage import Record, StageKind
from datapipe.store.files import atomic_write, remove_temporaries
from datapipe.store.manifest import ItemRow
from datapipe.store.output import OutputStore
from datapipe.store.shards import ShardWriter, iter_samples

logger = logging.getLogger(__name__)

_ROW_BATCH = 512


#: what a pool yields: a result, a shard a worker wrote, or progress on a worker's open shard
Outcome = ItemResult | WrittenShard | Answered


class Pool(Protocol):
    def imap_unordered(self, tasks: Iterable[ItemTask]) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


#: (pipeline, fitted state, run id) -> a pool
PoolFactory = Callable[[Pipeline, dict[str, Any], int], Pool]


@dataclass
class RunOptions:
    retry_errors: bool = False
    epoch: int = 0


class RunDriver:
    """One run of a pipeline into an output store."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: OutputStore,
        pool_factory: PoolFactory,
        hooks: RunHooks | None = None,
        options: RunOptions | None = None,
    ) -> None:
        self.p = pipeline
        self.store = store
        self.m = store._m
        self.pool_factory = pool_factory
        self.hooks = hooks or RunHooks()
        self.opts = options or RunOptions()

    # -- entry point ----------------------------------------------------------------------
    def run(self) -> RunReport:
        p = self.p
        found = list_sources(p)
        listing, signatures, skipped = found.records, found.signatures, found.skipped
        fp = p.fingerprint(signatures, epoch=self.opts.epoch)
        run_id = self.m.begin_run(p.name, fp, package_versions())
        self.report = RunReport(
            p.name, fp, str(self.store.root), run_id, versions=package_versions(), skipped=skipped
        )
        self.run_id, self.fp, self.signatures = run_id, fp, signatures
        self._pools = _SharedPool(lambda fitted: self.pool_factory(self.p, fitted, run_id))
        self._scores: dict[str, float] = {}
        self._hashes: dict[str, str] = {}  # content hashes read while planning
        try:
            rows = self.m.all_items()
            barriers = self._barriers(listing, rows)
            if barriers.digests:  # what the Fit nodes learned decides every output after them
                self.fp = fp = p.fingerprint(
                    signatures, epoch=self.opts.epoch, fitted=barriers.digests
                )
                self.report.fingerprint = fp
                self.m.set_run_fingerprint(run_id, fp)
            plan = plan_run(
                listing,
                rows,
                fp,
                retry_errors=self.opts.retry_errors,
                run_id=run_id,
                hashes=self._hashes,
            )
            self._apply_plan_bookkeeping(plan)
            todo, refiltered, stopped = self._final_tasks(plan, barriers)
            counts = self._process(todo, stopped, barriers.fitted)
            self.store.commit_rows(refiltered)
            self.store.forget(plan.vanished)
            self.store.compact()
            # a worker killed mid-write (Dask) leaves a temporary shard; every task is done now
            remove_temporaries(self.store.shard_dir)
            self.store.clear_stash()
            self._sinks()
            counts.update(
                listed=plan.listed,
                touched=len(plan.touched),
                unchanged=len(plan.unchanged) - len(refiltered),
                rejected=len(plan.rejected),
                vanished=len(plan.vanished),
                newly_filtered=len(refiltered),
            )
            counts["error"] += len(plan.rejected)
            self._finish(counts, "failed_items" if counts["error"] else "ok")
        except BaseException:
            self.report.finished = time.time()
            self.m.finish_run(run_id, "aborted", self.report.counts)
            raise
        finally:
            self._pools.close()
        return self.report

    def _apply_plan_bookkeeping(self, plan: Plan) -> None:
        self.store.commit_rows(plan.rejected)
        for row in plan.rejected:
            self.report.failed.append(
                {
                    "key": row.key,
                    "error_class": row.error_class,
                    "stage": row.stage,
                    "message": row.message,
                }
            )
        if plan.touched:
            self.m.touch(plan.touched)

    # -- barriers (Select / Fit) ------------------------------------------------------------
    def _barriers(self, listing: list[tuple[str, Record]], rows: dict[str, Any]) -> BarrierOutcome:
        """Evaluate every Select/Fit node over the light view of all live keys; light values
        are recomputed for inputs that changed on disk (or were relabelled) only."""
        if not self.p.of_kind(StageKind.SELECT, StageKind.FIT):
            return BarrierOutcome()
        changed = plan_run(
            listing, rows, None, retry_errors=self.opts.retry_errors, hashes=self._hashes
        )
        outcome = evaluate_barriers(
            self.p,
            changed.records,
            self._pools.get,
            epoch=self.opts.epoch,
            recompute={rec["key"] for _, rec in changed.todo},
            cache=self.m,
            signatures=tuple(self.signatures),
            hooks=self.hooks,
            retry_stopped=self.opts.retry_errors,
            stash_dir=str(self.store.stash_dir()),
        )
        self.report.selections.update(outcome.selections)
        self._scores.update(outcome.scores)
        return outcome

    def _final_tasks(
        self, plan: Plan, barriers: BarrierOutcome
    ) -> tuple[list[ItemTask], list[ItemRow], list[ItemResult]]:
        """Tasks to run now, rows of unchanged keys a barrier newly removed, and the results
        of keys to redo that are decided already: failed on their way to a barrier, or removed
        by one (neither is decoded again)."""
        filtered_by = barriers.filtered_by
        self._listed = plan.records
        todo_keys = {rec["key"] for _, rec in plan.todo}
        rows = plan.rows
        refiltered = []
        for key in plan.unchanged:
            row = rows.get(key)
            decision = filtered_by.get(key)
            if row is None:
                continue
            if decision and row.status != "filtered":
                node, reason = next(iter(decision.items()))
                refiltered.append(self._filtered_row(key, plan.records[key], node, reason))
            elif not decision and row.status == "filtered" and row.stage in self._barrier_ids():
                todo_keys.add(key)  # a barrier now keeps it: produce it
        # decided already: failed on the way to a barrier, or dropped by one (no task needed)
        stopped = [barriers.stopped[k] for k in sorted(todo_keys) if k in barriers.stopped]
        dropped = sorted(k for k in todo_keys - barriers.stopped.keys() if k in filtered_by)
        for key in dropped:
            node, reason = next(iter(filtered_by[key].items()))
            digest = self._content_hash(plan.records[key][1])
            stopped.append(ItemResult(key, "filtered", stage=node, message=reason, hash=digest))
        stash_dir = str(self.store.stash_dir()) if self._barrier_ids() else None
        tasks = []
        for key in sorted(todo_keys - barriers.stopped.keys() - set(dropped)):
            source, rec = plan.records[key]
            tasks.append(
                ItemTask(
                    key,
                    source,
                    rec,
                    need_hash=True,
                    stash=stash_path(stash_dir, key) if stash_dir else None,
                )
            )
        return tasks, refiltered, stopped

    def _content_hash(self, rec: Record) -> str | None:
        """The input's content hash, as a task would record it (so a re-run that finds the
        file touched but unchanged keeps its row); None when it cannot be read."""
        path = rec.get("path")
        if not path:
            return None
        if path not in self._hashes:
            try:
                self._hashes[path] = file_hash(path)
            except OSError:
                return None
        return self._hashes[path]

    def _barrier_ids(self) -> set[str]:
        return {n.id for n in self.p.of_kind(StageKind.SELECT, StageKind.FIT)}

    def _filtered_row(self, key: str, entry: tuple[str, Record], node: str, reason: str) -> ItemRow:
        source, rec = entry
        return self._row(ItemResult(key, "filtered", stage=node, message=reason), source, rec)

    # -- the main pass ----------------------------------------------------------------------
    def _process(
        self, tasks: list[ItemTask], stopped: list[ItemResult], fitted: dict[str, Any]
    ) -> dict[str, int]:
        counts = {"processed": 0, "ok": 0, "error": 0, "filtered": 0, "samples": 0, "damaged": 0}
        self._counts = counts
        self._records = {t.key: (t.source, t.record) for t in tasks}
        if stopped:  # decided on the way to a barrier: recorded, not decoded again
            rows = []
            for res in stopped:
                self._records[res.key] = self._listed[res.key]
                rows.append(self._account(res))
            self.store.commit_rows(rows)
        if not tasks:
            logger.info("nothing to do: every input is unchanged")
            return counts
        out = self.p.output
        seq = 0
        writer: ShardWriter | None = None
        in_shard: list[ItemRow] = []
        loose: list[ItemRow] = []
        announced: set[str] = set()  # items the hooks heard of before their shard came
        pool = self._pools.get(fitted)
        self.hooks.on_phase("process", len(tasks))
        try:
            for res in pool.imap_unordered(tasks):
                if isinstance(res, Answered):  # its shard is still open: progress only
                    if res.key not in announced:
                        announced.add(res.key)
                        self.hooks.on_item(res.key, res.status)
                    continue
                if isinstance(res, WrittenShard):  # a worker wrote and renamed it already
                    rows = [self._account(r, notify=r.key not in announced) for r in res.results]
                    for row in rows:
                        row.shard = res.name
                    self.m.commit(rows, (res.name, self.run_id, res.n_samples, res.n_bytes))
                    continue
                row = self._account(res, notify=res.key not in announced)
                if res.status != "ok":
                    loose.append(row)
                    if len(loose) >= _ROW_BATCH:
                        self.store.commit_rows(loose)
                        loose = []
                    continue
                if writer is None:
                    seq += 1
                    writer = self.store.shard_writer(
                        self.run_id, seq, out.shard_size, out.shard_bytes
                    )
                for _, members in res.samples:
                    writer.add(members)
                in_shard.append(row)
                if writer.full:
                    self.store.commit_shard(writer, in_shard, self.run_id)
                    writer, in_shard = None, []
            if writer is not None:
                self.store.commit_shard(writer, in_shard, self.run_id)
                writer = None
            self.store.commit_rows(loose)
        finally:
            if writer is not None:
                writer.abort()
            pool.close()
            self.hooks.on_phase_end("process")
        return counts

    def _account(self, res: ItemResult, notify: bool = True) -> ItemRow:
        """Count one result, tell the hooks (unless they heard of it already), and make its
        manifest row."""
        counts = self._counts
        counts["processed"] += 1
        counts[res.status] += 1
        counts["samples"] += res.n_samples
        counts["damaged"] += bool(res.notes)
        for node, seconds in res.stage_s.items():
            spent = self.report.stages.setdefault(node, {"items": 0, "seconds": 0.0})
            spent["items"] += 1
            spent["seconds"] += seconds
        if notify:
            self.hooks.on_item(res.key, res.status)
        if res.status == "error":
            self.report.failed.append(
                {
                    "key": res.key,
                    "error_class": res.error_class,
                    "stage": res.stage,
                    "message": res.message,
                }
            )
        source, rec = self._records[res.key]
        return self._row(res, source, rec)

    def _row(self, res: ItemResult, source: str, rec: Record) -> ItemRow:
        label = rec.get("label")
        return ItemRow(
            key=res.key,
            status=res.status,
            source=source,
            path=str(rec.get("path", "")),
            size=rec.get("size"),
            mtime_ns=rec.get("mtime_ns"),
            hash=res.hash,
            fingerprint=self.fp,
            stage=res.stage,
            error_class=res.error_class,
            error_type=res.error_type,
            message=res.message,
            signal=res.signal,
            n_samples=res.n_samples,
            label=None if label is None else str(label),
            run_id=self.run_id,
            elapsed_s=round(res.elapsed_s, 6),
            score=self._scores.get(res.key),
            notes=json.dumps(res.notes, sort_keys=True) if res.notes else None,
        )

    # -- sinks and the end ------------------------------------------------------------------
    def _sinks(self) -> None:
        sinks = self.p.of_kind(StageKind.SINK)
        if not sinks:
            return
        shards = self.store.shard_paths()
        digest = self.m.samples_digest()
        done: dict[str, Path] = {}  # the folders of the sinks that finished, for later ones
        for node in sinks:
            ctx = self.p.context(node.id, self.opts.epoch)
            ctx.out_dir = self.store.root / type(node.stage).folder / node.id
            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            ctx.shards, ctx.samples_digest = list(shards), digest
            ctx.run_dir = self.store.root
            ctx.pipeline = self.p
            ctx.epoch_dependent = any(
                self.p.nodes_by_id[n].stage.epoch_dependent for n in self.p.upstream(node.id)
            )
            ctx.sink_results, ctx.sink_dirs = dict(self.report.sinks), dict(done)
            try:
                self.report.sinks[node.id] = node.stage.consume(iter_samples(shards), ctx)
                done[node.id] = ctx.out_dir
            except SinkError as exc:  # the items stay committed; the run reports it
                logger.error("sink %s: %s", node.id, exc)
                self.report.sinks[node.id] = {"error": exc.error_class, "message": exc.message}

    def _finish(self, counts: dict[str, int], status: str) -> None:
        r = self.report
        r.counts = counts
        r.status = status
        r.finished = time.time()
        r.errors_by_class = {}
        for f in r.failed:
            r.errors_by_class[f["error_class"]] = r.errors_by_class.get(f["error_class"], 0) + 1
        shards = self.m.shards()
        r.shards, r.samples = len(shards), sum(n for n, _ in shards.values())
        self.m.finish_run(self.run_id, status, {**counts, "skipped": r.skipped, "sinks": r.sinks})
        changed = any(
            counts.get(k)
            for k in ("processed", "vanished", "newly_filtered", "rejected", "touched")
        )
        stored = self.p.stored()
        if stored is not None:  # what `datapipe predict` runs new files through
            atomic_write(self.store.root / "pipeline.json", json.dumps(stored, indent=1))
        self.store.write_exports(
            {"run_id": self.run_id, "status": status, "counts": counts, "sinks": r.sinks},
            rows_changed=changed,
            fields=[f.to_dict() for f in self.p.written_fields().values()],
        )
        self.hooks.on_run_end(r.to_dict())


class _SharedPool:
    """One pool for every phase of a run (each barrier's light pass, the main pass) while the
    Fit states it was built with stay the same: workers start once, not once per phase.
    Phases close what they borrow; the pool really closes at the end of the run."""

    def __init__(self, factory: Callable[[dict[str, Any]], Pool]) -> None:
        self.factory = factory
        self.pool: Pool | None = None
        self.state = ""

    def get(self, fitted: dict[str, Any]) -> Pool:
        state = state_digest(fitted)
        if self.pool is None or state != self.state:
            self.close()
            self.pool, self.state = self.factory(fitted), state
        return _Borrowed(self.pool)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class _Borrowed:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def imap_unordered(self, tasks: Iterable[ItemTask]) -> Iterator[Outcome]:
        return self.pool.imap_unordered(tasks)

    def close(self) -> None:
        """The run closes the shared pool."""
