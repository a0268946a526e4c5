"""Sample members are built by hand for speed; ``np.save`` and ``json.dumps`` are the oracles
for every byte."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datapipe.store.codec import encode_value, npy_bytes

ARRAYS = [
    np.zeros((64, 64, 3), np.uint8),
    np.arange(6, dtype=">i4").reshape(2, 3),
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    np.array(7.5),
    np.zeros((0, 5), bool),
    np.array(["ab", "c"]),
    # same itemsize, different fields: the cached header must tell them apart
    np.zeros(3, dtype=[("a", "<f4"), ("b", "u1")]),
    np.zeros(3, dtype=[("x", "u1"), ("y", "<f4")]),
]


def _saved(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array(array, order="C"), allow_pickle=False)  # members are C order
    return buf.getvalue()


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}-{a.shape}")
def test_npy_bytes_are_what_np_save_writes_first_time_and_cached(array: np.ndarray) -> None:
    assert npy_bytes(array) == _saved(array)
    assert npy_bytes(array) == _saved(array)  # the header now comes from the cache
    assert np.array_equal(np.load(io.BytesIO(npy_bytes(array))), array)


def test_npy_cache_keys_on_dtype_and_shape() -> None:
    for array in ARRAYS:
        npy_bytes(array)
    for array in reversed(ARRAYS):
        assert encode_value("f", array) == ("npy", _saved(array))


scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(scalars)
def test_json_members_are_what_json_dumps_writes(value: object) -> None:
    assert encode_value("f", value) == ("json", json.dumps(value, allow_nan=False).encode())
