"""An output directory: shards, the manifest, a lock, crash recovery and compaction.

Layout::

    OUT/shards/shard-RRRRR-NNNNN.tar   WebDataset shards (R: run id, N: sequence)
    OUT/manifest.sqlite                the manifest (one row per input key)
    OUT/manifest.jsonl                 an export of it, rewritten atomically after each run
    OUT/index.json                     shard list and counts, rewritten atomically
    OUT/.datapipe.lock                 held by the run writing here
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datapipe.errors import StoreBusyError, StoreError
from datapipe.keys import item_key_of
from datapipe.store.files import atomic_open, atomic_write, remove_temporaries
from datapipe.store.manifest import ItemRow, Manifest
from datapipe.store.shards import ShardWriter, rewrite_shard

logger = logging.getLogger(__name__)

MANIFEST = "manifest.sqlite"
SHARD_DIR = "shards"
#: records the light pass of a run keeps for its main pass (removed when the run ends)
STASH_DIR = ".stash"
LOCK = ".datapipe.lock"


class OutputStore:
    """Owns one output directory for the length of a run (a context manager)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.shard_dir = self.root / SHARD_DIR
        self._lock_fh: Any = None
        self.manifest: Manifest | None = None

    # -- open / close ---------------------------------------------------------------------
    def open(self) -> OutputStore:
        try:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create output directory {self.root}: {exc.strerror}"
            ) from None
        if not os.access(self.root, os.W_OK) or not os.access(self.shard_dir, os.W_OK):
            raise StoreError(f"output directory {self.root} is not writable")
        self._lock()
        self.manifest = Manifest(self.root / MANIFEST)
        self.recover()
        return self

    def close(self) -> None:
        if self.manifest is not None:
            self.manifest.close()
            self.manifest = None
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> OutputStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self) -> None:
        path = self.root / LOCK
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreBusyError(
                    f"another datapipe run (pid {holder}) is writing to {self.root}; "
                    "wait for it to finish or choose another --out"
                ) from None
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    # -- recovery -------------------------------------------------------------------------
    def stash_dir(self) -> Path:
        """Where records computed before a barrier wait for the main pass (one run only); an
        absolute path, as workers of another working directory (Dask) read it too."""
        path = (self.root / STASH_DIR).resolve()
        path.mkdir(exist_ok=True)
        return path

    def clear_stash(self) -> None:
        shutil.rmtree(self.root / STASH_DIR, ignore_errors=True)

    def recover(self) -> dict[str, int]:
        """Undo what a killed run left half done: temporary files, uncommitted shards and the
        records it kept for its main pass."""
        self.clear_stash()
        m = self._m
        temps = remove_temporaries(self.shard_dir) + remove_temporaries(self.root)
        known = set(m.shards())
        orphans = [p for p in self.shard_dir.glob("*.tar") if p.name not in known]
        for p in orphans:
            p.unlink()
        missing = [name for name in known if not (self.shard_dir / name).exists()]
        if missing:  # a shard deleted by hand: its keys must be produced again
            with m.transaction():
                for name in missing:
                    m.db.execute("DELETE FROM items WHERE shard=?", (name,))
                    m.db.execute("DELETE FROM shards WHERE name=?", (name,))
        if temps or orphans or missing:
            logger.info(
                "recovered %s: removed %d temporary files, %d uncommitted shards, "
                "forgot %d missing shards",
                self.root,
                len(temps),
                len(orphans),
                len(missing),
            )
        return {"temporaries": len(temps), "orphans": len(orphans), "missing": len(missing)}

    @property
    def _m(self) -> Manifest:
        if self.manifest is None:
            raise StoreError("the output store is not open")
        return self.manifest

    # -- writing --------------------------------------------------------------------------
    def shard_writer(
        self, run_id: int, seq: int, max_samples: int, max_bytes: int, prefix: str = "shard"
    ) -> ShardWriter:
        name = f"{prefix}-{run_id:05d}-{seq:05d}.tar"
        return ShardWriter(self.shard_dir, name, max_samples, max_bytes)

    def commit_shard(self, writer: ShardWriter, rows: Iterable[ItemRow], run_id: int) -> None:
        """Rename the shard into place, then record it and its rows in one transaction."""
        info = writer.close()
        rows = list(rows)
        for r in rows:
            r.shard = info.name
        self._m.commit(rows, (info.name, run_id, info.n_samples, info.n_bytes))

    def commit_rows(self, rows: Iterable[ItemRow]) -> None:
        """Rows with no samples in a shard (errors, filtered)."""
        self._m.commit(rows)

    def compact(self) -> int:
        """Rewrite shards that still hold superseded samples; delete emptied ones."""
        m = self._m
        rewritten = 0
        for name, (n_samples, _) in m.shards().items():
            live = m.live_samples(name)
            if live == n_samples:
                continue
            path = self.shard_dir / name
            if live == 0:
                path.unlink(missing_ok=True)
                m.update_shard(name, 0, 0)
            else:
                keys = m.keys_in_shard(name)
                info = rewrite_shard(path, lambda k, keys=keys: item_key_of(k) in keys)
                m.update_shard(name, info.n_samples, info.n_bytes)
            rewritten += 1
        return rewritten

    def forget(self, keys: Iterable[str]) -> None:
        """Drop inputs that no longer exist (their samples go at the next compaction)."""
        self._m.delete(keys)

    # -- exports --------------------------------------------------------------------------
    def write_exports(
        self,
        run_summary: dict[str, Any],
        rows_changed: bool = True,
        fields: list[dict[str, str]] | None = None,
    ) -> None:
        """Rewrite ``index.json``, and ``manifest.jsonl`` when rows changed (or it is missing).
        ``fields``: the specs of the fields samples carry (name, dtype, shape pattern), for
        readers that batch them (variable shapes get a mask)."""
        m = self._m
        export = self.root / "manifest.jsonl"
        if rows_changed or not export.exists():
            with atomic_open(export) as fh:
                for line in m.export_jsonl():
                    fh.write(line.encode() + b"\n")
        shards = m.shards()
        index = {
            "shards": [f"{SHARD_DIR}/{name}" for name in shards],
            "n_samples": sum(n for n, _ in shards.values()),
            "counts": m.counts(),
            "last_run": run_summary,
        }
        if fields is not None:
            index["fields"] = fields
        atomic_write(self.root / "index.json", json.dumps(index, indent=2, sort_keys=True))

    def shard_paths(self) -> list[Path]:
        return [self.shard_dir / name for name in self._m.shards()]


def open_manifest_readonly(root: str | Path) -> Manifest:
    """Open an output's manifest for reading (``datapipe manifest``), without the lock."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise StoreError(f"{root} holds no datapipe manifest ({MANIFEST} not found)")
    return Manifest(path)
