"""Shard headers are built by hand for speed; tarfile is the oracle for every byte."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from datapipe.store.tarformat import TarStream, ustar_header

segment = st.text(alphabet="abcXYZ019_-@.", min_size=1, max_size=70)
names = st.lists(segment, min_size=1, max_size=6).map("/".join)


def _reference(name: str, size: int) -> bytes | None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    try:
        return info.tobuf(tarfile.USTAR_FORMAT)
    except ValueError:
        return None


@settings(max_examples=300, deadline=None)
@given(names, st.integers(min_value=0, max_value=8**11 - 1))
def test_header_is_byte_identical_to_tarfile(name: str, size: int) -> None:
    expected = _reference(name, size)
    try:
        got = ustar_header(name, size)
    except ValueError:
        got = None
    assert got == expected


def test_stream_reads_back_with_tarfile() -> None:
    members = [("k/a.x.npy", b"\x93NUMPY" + bytes(700)), ("k/a.y.json", b"[1]"), ("e.z.bin", b"")]
    members.append(("k/a.w.bin", bytes(512)))  # a whole block: no padding
    one_by_one, at_once = io.BytesIO(), io.BytesIO()
    for name, data in members:
        TarStream(one_by_one).add(name, data)
    TarStream(at_once).add_many(members)
    TarStream(at_once).finish()
    assert at_once.getvalue()[: len(one_by_one.getvalue())] == one_by_one.getvalue()
    at_once.seek(0)
    with tarfile.open(fileobj=at_once, mode="r|") as tar:
        got = [(m.name, tar.extractfile(m).read()) for m in tar]
    assert got == members
