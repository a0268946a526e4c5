"""Field specs: the name, dtype and shape pattern a stage consumes or produces.

A shape pattern is a space-separated list of dimensions: a positive integer is fixed, a name
(``H``, ``W``, ``N``) is any size, ``*`` stands for any number of dimensions. The empty pattern
is a scalar. Dtypes are numpy names, or ``str``, ``int``, ``float``, ``json`` (any
JSON-serialisable value) and ``any``; ``|`` joins alternatives (``uint8|float32``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PY_DTYPES = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,)}


@dataclass(frozen=True)
class Field:
    """One named value of a record.

    Examples
    --------
    >>> Field("image", "uint8", "H W 3").accepts(Field("image", "uint8", "64 64 3"))
    True
    """

    name: str
    dtype: str = "any"
    shape: str = "*"
    doc: str = ""
    #: stored gzip'd (``.npy.gz``) unless ``output.compress`` says otherwise: for arrays that
    #: are mostly zeros or repeats, where it saves 10x or more
    compress: bool = False

    def __post_init__(self) -> None:
        if not FIELD_NAME.match(self.name):
            raise ValueError(f"field name {self.name!r} must match {FIELD_NAME.pattern}")

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(d.strip() for d in self.dtype.split("|"))

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.shape.split())

    def accepts(self, produced: Field) -> bool:
        """Whether a value declared as ``produced`` satisfies this (consumer) spec."""
        return self.dtype_mismatch(produced) is None and self.shape_mismatch(produced) is None

    def dtype_mismatch(self, produced: Field) -> str | None:
        mine, theirs = set(self.dtypes), set(produced.dtypes)
        if "any" in mine or "any" in theirs or theirs <= mine:
            return None
        if "json" in mine and theirs <= {"str", "int", "float", "bool", "json"}:
            return None
        return f"dtype {produced.dtype} where {self.dtype} is expected"

    def shape_mismatch(self, produced: Field) -> str | None:
        a, b = self.dims, produced.dims
        if "*" in a or "*" in b:
            return None
        if len(a) != len(b):
            return f"shape ({produced.shape}) where ({self.shape}) is expected"
        for x, y in zip(a, b, strict=True):
            if x.isdigit() and y.isdigit() and x != y:
                return f"shape ({produced.shape}) where ({self.shape}) is expected"
        return None

    def check_value(self, value: Any) -> str | None:
        """Return why ``value`` does not match this spec, or None when it does."""
        if isinstance(value, np.ndarray):
            if "any" not in self.dtypes and str(value.dtype) not in self.dtypes:
                return f"field {self.name!r}: dtype {value.dtype}, declared {self.dtype}"
            dims = self.dims
            if "*" not in dims:
                if value.ndim != len(dims):
                    return f"field {self.name!r}: shape {value.shape}, declared ({self.shape})"
                for size, dim in zip(value.shape, dims, strict=True):
                    if dim.isdigit() and int(dim) != size:
                        return f"field {self.name!r}: shape {value.shape}, declared ({self.shape})"
            return None
        allowed = set(self.dtypes)
        if allowed & {"any", "json"}:
            return None
        for name in allowed:
            types = _PY_DTYPES.get(name)
            if types and isinstance(value, types):
                return None
        if isinstance(value, np.generic) and str(value.dtype) in allowed:
            return None
        return f"field {self.name!r}: {type(value).__name__} value, declared {self.dtype}"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}
