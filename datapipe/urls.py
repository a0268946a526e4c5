"""Paths written as URLs: ``file://`` names a local path; the other fsspec schemes (``s3://``,
``gs://``, ``memory://``, ``http://``...) are refused where the pipeline is validated, so a
run never starts on an input or output it cannot reach.

datapipe reads inputs and writes shards, manifests and models through the local file system
(``os.scandir``, SQLite, atomic renames); object storage is reached through a mount (s3fs,
gcsfuse, a network file system).
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def local_path(value: str) -> str:
    """``value`` as a local path: ``file:///data/x`` -> ``/data/x``, a plain path unchanged;
    :class:`ValueError` for any other URL scheme.

    >>> local_path("file:///data/photos"), local_path("data/photos")
    ('/data/photos', 'data/photos')
    >>> local_path("s3://bucket/photos")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: 's3://bucket/photos': s3:// URLs are not read or written directly; mount ...
    """
    found = _SCHEME.match(value)
    if found is None:
        return value
    scheme = found.group(1)
    if scheme.lower() == "file":
        return value[len(found.group(0)) :]
    raise ValueError(
        f"{value!r}: {scheme}:// URLs are not read or written directly; mount the storage "
        "(s3fs, gcsfuse, a network file system) and give the mounted path"
    )
