"""Change detection: which listed inputs need processing, which are unchanged, which vanished.

An input is unchanged when its manifest row has the current pipeline fingerprint, the same
label and the same (size, mtime_ns). When size or mtime moved, its content hash decides: same
hash -> unchanged (the row's size/mtime are refreshed), different -> changed. Unchanged inputs
are never re-read. The label is the item's own: relabelling one file (a labels CSV) redoes
that item alone; the class list behind ``label_id`` is in the fingerprint (source signature).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datapipe.engine.runner import file_hash
from datapipe.errors import ItemError
from datapipe.keys import check_key
from datapipe.stage import SOURCE_ERROR, Record
from datapipe.store.manifest import ItemRow


@dataclass
class Plan:
    todo: list[tuple[str, Record]] = field(default_factory=list)  # (source node, record)
    unchanged: list[str] = field(default_factory=list)
    touched: list[tuple[int, int, str]] = field(default_factory=list)
    rejected: list[ItemRow] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    listed: int = 0
    records: dict[str, tuple[str, Record]] = field(default_factory=dict)
    #: the manifest rows the plan was made from
    rows: dict[str, ItemRow] = field(default_factory=dict)


def listing_problem(rec: Record) -> ItemError | None:
    """Why a listed record cannot be processed at all (a bad key, a source's own error)."""
    try:
        check_key(rec.get("key", ""), item=True)
    except ItemError as exc:
        return exc
    if rec.get(SOURCE_ERROR):
        return ItemError("io", str(rec[SOURCE_ERROR]))
    return None


def row_label(rec: Record) -> str | None:
    """The label as the manifest stores it."""
    label = rec.get("label")
    return None if label is None else str(label)


def _reusable(row: ItemRow, rec: Record, fingerprint: str | None, retry_errors: bool) -> bool:
    if fingerprint is not None and row.fingerprint != fingerprint:
        return False
    if row.label != row_label(rec):
        return False
    # rows filtered by a Select node count as done here: the barrier decides them again
    return row.status != "error" or not retry_errors


def plan_run(
    listing: list[tuple[str, Record]],
    rows: dict[str, ItemRow],
    fingerprint: str | None,
    *,
    retry_errors: bool = False,
    run_id: int | None = None,
    hashes: dict[str, str] | None = None,
) -> Plan:
    """Split the listed inputs into work to do and work already done. ``fingerprint=None``
    compares inputs only (what changed on disk), whatever the rows' fingerprints.
    ``hashes`` (path -> content hash) is filled and reused, so planning twice in one run
    reads a moved file once."""
    hashes = {} if hashes is None else hashes
    plan = Plan(rows=rows)
    seen: set[str] = set()
    for source, rec in listing:
        plan.listed += 1
        key = rec.get("key", "")
        problem = listing_problem(rec)
        if problem is not None:
            plan.rejected.append(
                _reject(rec, source, problem.error_class, problem.message, fingerprint, run_id)
            )
            continue
        if key in seen:
            plan.rejected.append(
                _reject(
                    rec,
                    source,
                    "invalid",
                    f"duplicate key {key!r} (another input maps to the same key)",
                    fingerprint,
                    run_id,
                    dup=True,
                )
            )
            continue
        seen.add(key)
        plan.records[key] = (source, rec)
        row = rows.get(key)
        if row is None or not _reusable(row, rec, fingerprint, retry_errors):
            plan.todo.append((source, rec))
            continue
        size, mtime = rec.get("size"), rec.get("mtime_ns")
        if row.size == size and row.mtime_ns == mtime:
            plan.unchanged.append(key)
            continue
        if row.hash and rec.get("path"):
            try:
                path = rec["path"]
                if path not in hashes:
                    hashes[path] = file_hash(path)
                same = hashes[path] == row.hash
            except OSError:
                same = False
            if same:
                plan.touched.append((int(size or 0), int(mtime or 0), key))
                plan.unchanged.append(key)
                continue
        plan.todo.append((source, rec))
    seen.update(r.key for r in plan.rejected)
    plan.vanished = [k for k in rows if k not in seen]
    return plan


def _reject(
    rec: Record,
    source: str,
    error_class: str,
    message: str,
    fingerprint: str,
    run_id: int | None,
    dup: bool = False,
) -> ItemRow:
    raw = str(rec.get("key", ""))
    key = raw if not dup else f"{raw}@duplicate:{rec.get('path', '')}"
    return ItemRow(
        key=key,
        status="error",
        source=source,
        path=str(rec.get("path", "")),
        stage=source,
        error_class=error_class,
        error_type="KeyError",
        message=message,
        fingerprint=fingerprint,
        run_id=run_id,
    )
