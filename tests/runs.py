"""Helpers for tests that watch a run from outside its process."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def ok_rows(db: Path) -> int:
    """Committed ok rows of a manifest another process may be writing (0 if not there yet)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM items WHERE status='ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0
