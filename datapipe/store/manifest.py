"""The manifest: an embedded SQLite database with one row per input key.

Lookups and updates are indexed (O(1) per item); rows are committed in transactions right
after the shard holding their samples has been renamed into place, so the manifest only ever
names complete shards.
"""

from __future__ import annotations

import hashlib
import json
import operator
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY, source TEXT, path TEXT, size INTEGER, mtime_ns INTEGER,
    hash TEXT, fingerprint TEXT, status TEXT NOT NULL, stage TEXT, error_class TEXT,
    error_type TEXT, message TEXT, signal TEXT, shard TEXT, n_samples INTEGER,
    label TEXT, run_id INTEGER, elapsed_s REAL, score REAL, notes TEXT
);
CREATE INDEX IF NOT EXISTS items_shard ON items(shard);
CREATE INDEX IF NOT EXISTS items_status ON items(status);
CREATE TABLE IF NOT EXISTS shards (
    name TEXT PRIMARY KEY, run_id INTEGER, n_samples INTEGER, n_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT, fingerprint TEXT, started REAL,
    finished REAL, status TEXT, counts TEXT, versions TEXT
);
CREATE TABLE IF NOT EXISTS light (
    key TEXT, node TEXT, fingerprint TEXT, value TEXT, PRIMARY KEY (key, node)
);
"""

STATUSES = ("ok", "error", "filtered")


@dataclass
class ItemRow:
    """One input key's outcome."""

    key: str
    status: str
    source: str = ""
    path: str = ""
    size: int | None = None
    mtime_ns: int | None = None
    hash: str | None = None
    fingerprint: str = ""
    stage: str | None = None
    error_class: str | None = None
    error_type: str | None = None
    message: str | None = None
    signal: str | None = None
    shard: str | None = None
    n_samples: int = 0
    label: str | None = None
    run_id: int | None = None
    elapsed_s: float | None = None
    score: float | None = None
    #: JSON object of damage a stage tolerated, e.g. {"video_damage": 3}
    notes: str | None = None


_COLUMNS = [f.name for f in fields(ItemRow)]
#: a row's values in column order, in one call
_values = operator.attrgetter(*_COLUMNS)


class Manifest:
    """Indexed per-key bookkeeping of an output directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- runs -----------------------------------------------------------------------------
    def begin_run(self, pipeline: str, fingerprint: str, versions: dict[str, str]) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (pipeline, fingerprint, started, status, versions)"
            " VALUES (?,?,?,?,?)",
            (pipeline, fingerprint, time.time(), "running", json.dumps(versions)),
        )
        return int(cur.lastrowid or 0)

    def set_run_fingerprint(self, run_id: int, fingerprint: str) -> None:
        """The run's fingerprint once its Fit nodes have learned their states."""
        self.db.execute("UPDATE runs SET fingerprint=? WHERE id=?", (fingerprint, run_id))

    def finish_run(self, run_id: int, status: str, counts: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE runs SET finished=?, status=?, counts=? WHERE id=?",
            (time.time(), status, json.dumps(counts), run_id),
        )

    def runs(self) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT id, pipeline, fingerprint, started, finished, status, counts,"
            " versions FROM runs ORDER BY id"
        )
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur:
            r = dict(zip(cols, row, strict=True))
            r["counts"] = json.loads(r["counts"]) if r["counts"] else {}
            r["versions"] = json.loads(r["versions"]) if r["versions"] else {}
            out.append(r)
        return out

    # -- items ----------------------------------------------------------------------------
    def all_items(self) -> dict[str, ItemRow]:
        """Every row, keyed; one query (used once per run for change detection)."""
        cur = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM items")
        return {row[0]: ItemRow(*row) for row in cur}

    def get(self, key: str) -> ItemRow | None:
        row = self.db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM items WHERE key=?", (key,)
        ).fetchone()
        return ItemRow(*row) if row else None

    def commit(
        self, rows: Iterable[ItemRow], shard: tuple[str, int, int, int] | None = None
    ) -> None:
        """Upsert rows (and the shard that holds their samples) in one transaction."""
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self.transaction():
            if shard is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO shards (name, run_id, n_samples, n_bytes)"
                    " VALUES (?,?,?,?)",
                    shard,
                )
            self.db.executemany(
                f"INSERT OR REPLACE INTO items ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
                [_values(r) for r in rows],
            )

    def touch(self, updates: Iterable[tuple[int, int, str]]) -> None:
        """Record a new (size, mtime) for inputs whose content hash did not change."""
        with self.transaction():
            self.db.executemany("UPDATE items SET size=?, mtime_ns=? WHERE key=?", updates)

    def delete(self, keys: Iterable[str]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM items WHERE key=?", [(k,) for k in keys])
            self.db.executemany("DELETE FROM light WHERE key=?", [(k,) for k in keys])

    def iter_rows(self, status: str | None = None) -> Iterator[ItemRow]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM items"
        args: tuple[Any, ...] = ()
        if status:
            sql, args = sql + " WHERE status=?", (status,)
        for row in self.db.execute(sql + " ORDER BY key", args):
            yield ItemRow(*row)

    def samples_digest(self) -> str:
        """A digest of what the committed samples hold: per ok key its pipeline fingerprint,
        input hash, label and sample count (not the shard names, which compaction changes)."""
        h = hashlib.sha256()
        cur = self.db.execute(
            "SELECT key, fingerprint, hash, label, n_samples FROM items WHERE status='ok'"
            " ORDER BY key"
        )
        for row in cur:
            h.update(json.dumps(row).encode())
            h.update(b"\n")
        return h.hexdigest()[:20]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM items GROUP BY status"):
            out[status] = n
        return out

    def damaged(self) -> list[ItemRow]:
        """Rows written despite damage a stage tolerated (non-strict decoders)."""
        cur = self.db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM items WHERE notes IS NOT NULL ORDER BY key"
        )
        return [ItemRow(*row) for row in cur]

    def error_classes(self) -> dict[str, int]:
        cur = self.db.execute(
            "SELECT error_class, COUNT(*) FROM items WHERE status='error'"
            " GROUP BY error_class ORDER BY 2 DESC"
        )
        return dict(cur.fetchall())

    # -- shards ---------------------------------------------------------------------------
    def shards(self) -> dict[str, tuple[int, int]]:
        cur = self.db.execute("SELECT name, n_samples, n_bytes FROM shards ORDER BY name")
        return {name: (n, b) for name, n, b in cur}

    def live_samples(self, shard: str) -> int:
        row = self.db.execute(
            "SELECT COALESCE(SUM(n_samples), 0) FROM items WHERE shard=?", (shard,)
        ).fetchone()
        return int(row[0])

    def keys_in_shard(self, shard: str) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM items WHERE shard=?", (shard,))}

    def update_shard(self, name: str, n_samples: int, n_bytes: int) -> None:
        with self.transaction():
            if n_samples == 0:
                self.db.execute("DELETE FROM shards WHERE name=?", (name,))
            else:
                self.db.execute(
                    "UPDATE shards SET n_samples=?, n_bytes=? WHERE name=?",
                    (n_samples, n_bytes, name),
                )

    # -- light views cached for Select / Fit barriers ---------------------------------------
    def light_values(self, node: str, fingerprint: str) -> dict[str, Any]:
        cur = self.db.execute(
            "SELECT key, value FROM light WHERE node=? AND fingerprint=?", (node, fingerprint)
        )
        return {k: json.loads(v) for k, v in cur}

    def put_light(self, node: str, fingerprint: str, values: dict[str, Any]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO light (key, node, fingerprint, value) VALUES (?,?,?,?)",
                [(k, node, fingerprint, json.dumps(v)) for k, v in values.items()],
            )

    # -- helpers --------------------------------------------------------------------------
    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def export_jsonl(self) -> Iterator[str]:
        """Every row as one JSON line (columns that are NULL left out), ordered by key."""
        cur = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM items ORDER BY key")
        for row in cur:
            yield json.dumps(
                {k: v for k, v in zip(_COLUMNS, row, strict=True) if v is not None},
                sort_keys=True,
            )


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
