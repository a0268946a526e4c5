"""Sharded output: WebDataset tar shards plus an indexed SQLite manifest."""

from datapipe.store.codec import check_key, decode_value, encode_sample, sanitize_key
from datapipe.store.manifest import ItemRow, Manifest
from datapipe.store.output import OutputStore, open_manifest_readonly

__all__ = [
    "ItemRow",
    "Manifest",
    "OutputStore",
    "check_key",
    "decode_value",
    "encode_sample",
    "open_manifest_readonly",
    "sanitize_key",
]
