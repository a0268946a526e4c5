"""Records computed on the way to a Select/Fit barrier, kept on disk for the main pass.

A barrier needs the light view of every item before it can decide, so the stages before it
run in a first pass; the main pass then carries the kept items on. Without a stash it would
run those stages again: every kept input decoded twice on a first run. The light pass writes
what it computed for an item (node -> its samples) to ``DIR/<hash of key>.stash``, in the
worker protocol's data-only framing (:mod:`datapipe.engine.wire`: JSON header plus raw array
buffers, never a pickle); the main pass starts from it. A stash that is missing, unreadable
or malformed is ignored: the stages simply run again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from datapipe.engine.framing import WireError, decode_value, encode_value
from datapipe.stage import Record

logger = logging.getLogger(__name__)

Values = dict[str, list[tuple[str, Record]]]


def stash_path(directory: str | os.PathLike[str], key: str) -> str:
    """Where the stash of ``key`` lives (a hashed name: keys may hold '/')."""
    digest = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    return os.path.join(directory, f"{digest}.stash")


def save(path: str, values: Values) -> None:
    """Write ``values`` (node -> [(sub-key, record)]) atomically; a value the framing cannot
    carry (an object array) means no stash, not an error: the main pass recomputes."""
    try:
        data = encode_value(
            {node: [[sub, rec] for sub, rec in recs] for node, recs in values.items()}
        )
    except WireError as exc:
        logger.debug("not stashing %s: %s", path, exc)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def load(path: str) -> Values | None:
    """The values stashed at ``path``, or None when there are none (or they are malformed)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    try:
        raw: Any = decode_value(data)
    except WireError as exc:
        logger.warning("ignoring the malformed stash %s: %s", path, exc)
        return None
    if not isinstance(raw, dict):
        return None
    values: Values = {}
    for node, recs in raw.items():
        if not (isinstance(node, str) and isinstance(recs, list)):
            return None
        pairs = []
        for pair in recs:
            if not (isinstance(pair, list) and len(pair) == 2):
                return None
            sub, rec = pair
            if not (isinstance(sub, str) and isinstance(rec, dict)):
                return None
            pairs.append((sub, rec))
        values[node] = pairs
    return values
