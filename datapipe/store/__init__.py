"""Sharded output: WebDataset tar shards plus an indexed SQLite manifest."""

from datapipe.keys import check_key, sanitize_key
from datapipe.store.codec import decode_value, encode_sample
from datapipe.store.manifest import ItemRow, Manifest
from datapipe.store.output import OutputStore, open_manifest_readonly
from datapipe.store.shards import iter_samples

__all__ = [
    "ItemRow",
    "Manifest",
    "OutputStore",
    "check_key",
    "decode_value",
    "encode_sample",
    "iter_samples",
    "open_manifest_readonly",
    "sanitize_key",
]
