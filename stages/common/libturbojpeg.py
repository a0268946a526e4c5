"""ctypes binding to the system libturbojpeg (TurboJPEG API 2.x): quantized DCT coefficients
straight from the entropy decoder, with no inverse DCT and no colour conversion; and pixels at
a reduced DCT scale (:func:`decompress`), with libjpeg's warnings.

Route: ``tjTransform`` with no transform and ``TJXOPT_NOOUTPUT`` runs libjpeg's
``jpeg_read_coefficients`` into whole-image coefficient arrays and hands each block row to a
custom filter callback, which copies it into a numpy array. The callback is the C function of
the optional extension ``_jpeg_filter`` when it was built at install time, else a ctypes
Python callback (same result, about a microsecond more per block row). Either way only the
shared library is needed at run time (Debian/Ubuntu package ``libturbojpeg0``). The C filter
can also write a :class:`Layout` (:func:`read_layouts`): ``jpeg.dct``'s output arrays, filled
from the rows as they come.

Safety: TurboJPEG installs its own libjpeg error manager (setjmp/longjmp), so a corrupt file
makes ``tjTransform`` return -1 with a message; it never reaches libjpeg's default
``error_exit``, which would call ``exit()``. Warnings (corrupt entropy data, a premature end)
leave the data decoded as far as possible and are reported as such, or stop the decode when
``strict`` is set (``TJFLAG_STOPONWARNING``). ``TJFLAG_LIMITSCANS`` refuses progressive files
with more than 500 scans (the CPU-exhaustion pattern of libjpeg-turbo's LJT-01-003 report).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

TJXOPT_NOOUTPUT = 16
TJXOPT_COPYNONE = 64
TJFLAG_STOPONWARNING = 8192
TJFLAG_LIMITSCANS = 32768
TJERR_WARNING = 0
TJPF_RGB = 0
TJPF_GRAY = 6
#: the beginnings of libjpeg's warnings (JWRN_* in jerror.h). A fatal error after a warning
#: still reads as TJERR_WARNING in tjGetErrorCode, but its message is the fatal one
WARNING_TEXTS = (
    "Corrupt JPEG data",
    "Premature end of JPEG file",
    "Inconsistent progression sequence",
    "Invalid SOS parameters for sequential JPEG",
    "Warning: unknown JFIF revision",
    "Unknown Adobe color transform",
    "Application transferred too many scanlines",
)
_NAMES = ("libturbojpeg.so.0", "libturbojpeg.so", "libturbojpeg.0.dylib", "turbojpeg")


class TurboJPEGUnavailable(RuntimeError):
    """The shared library libturbojpeg could not be loaded."""


class TurboJPEGError(Exception):
    """``tjTransform`` failed; ``warning`` tells a stop on a warning from a fatal error."""

    def __init__(self, message: str, warning: bool) -> None:
        super().__init__(message)
        self.message = message
        self.warning = warning


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


_FILTER = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,  # short *coeffs: one block row of one component
    _Region,  # arrayRegion: x, y (pixels) of that row in the component plane; w, h
    _Region,  # planeRegion
    ctypes.c_int,  # componentIndex
    ctypes.c_int,  # transformIndex
    ctypes.c_void_p,  # tjtransform *
)


#: the int64 fields of a target (dp_target in _jpeg_filter.c), in order
_TARGET_INTS = (
    *("address", "row_bytes", "rows", "copied", "mode", "out_rows", "out_cols"),
    *("ry", "rx", "stride", "n", "zero_blocks"),
)
_ADDRESS, _ROWS, _COPIED, _ZERO_BLOCKS = (
    _TARGET_INTS.index(k) for k in ("address", "rows", "copied", "zero_blocks")
)


class _Transform(ctypes.Structure):
    _fields_ = [
        ("r", _Region),
        ("op", ctypes.c_int),
        ("options", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("customFilter", ctypes.c_void_p),
    ]


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def load_library() -> ctypes.CDLL:
    """Load libturbojpeg once; raise :class:`TurboJPEGUnavailable` with a fix when missing."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        found = ctypes.util.find_library("turbojpeg")
        for name in (*_NAMES, *([found] if found else [])):
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise TurboJPEGUnavailable(
                "libturbojpeg not found: install it (Debian/Ubuntu: apt-get install "
                "libturbojpeg0; scripts/setup.sh does this)"
            )
        lib.tjInitTransform.restype = ctypes.c_void_p
        lib.tjInitTransform.argtypes = []
        lib.tjDestroy.argtypes = [ctypes.c_void_p]
        lib.tjTransform.restype = ctypes.c_int
        lib.tjTransform.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_ulong),
            ctypes.POINTER(_Transform),
            ctypes.c_int,
        ]
        lib.tjInitDecompress.restype = ctypes.c_void_p
        lib.tjInitDecompress.argtypes = []
        lib.tjDecompress2.restype = ctypes.c_int
        lib.tjDecompress2.argtypes = [
            ctypes.c_void_p,  # handle
            ctypes.c_char_p,  # jpegBuf
            ctypes.c_ulong,  # jpegSize
            ctypes.c_void_p,  # dstBuf
            ctypes.c_int,  # width: the largest scaled width wanted
            ctypes.c_int,  # pitch
            ctypes.c_int,  # height
            ctypes.c_int,  # pixelFormat
            ctypes.c_int,  # flags
        ]
        lib.tjGetErrorStr2.restype = ctypes.c_char_p
        lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
        lib.tjGetErrorCode.restype = ctypes.c_int
        lib.tjGetErrorCode.argtypes = [ctypes.c_void_p]
        _lib = lib
        return lib


class _Target(ctypes.Structure):
    """Where one component's rows go and in what layout (mirrors ``dp_target`` in
    ``_jpeg_filter.c``; modes 1 and 2 only there)."""

    _fields_ = [
        *((name, ctypes.c_int64) for name in _TARGET_INTS),
        ("src", ctypes.c_int32 * 64),
        ("dst", ctypes.c_int32 * 64),
        ("mul", ctypes.c_float * 64),
    ]


class _Targets(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int64), ("t", _Target * 4)]


def _native_filter() -> int | None:
    """Address of the C filter, or None when the extension was not built (or mismatches)."""
    try:
        from datapipe.stages.common import _jpeg_filter
    except ImportError:
        return None
    if _jpeg_filter.TARGETS_SIZE != ctypes.sizeof(_Targets):
        return None
    return int(_jpeg_filter.COPY_ROWS)


#: the C filter's address; None means the Python callback is used
NATIVE_FILTER: int | None = _native_filter()


class Layout(NamedTuple):
    """What the C filter writes for one component instead of its raw blocks (see
    :func:`layout`): an array of ``shape`` and ``dtype``, zeroed first when ``zeros``."""

    shape: tuple[int, ...]
    dtype: type
    zeros: bool
    target: bytes  # the filled-in _Target, but for its address


def layout(
    grid: tuple[int, int],
    out_grid: tuple[int, int],
    ratio: tuple[int, int],
    src: np.ndarray,
    dst: np.ndarray,
    block: tuple[int, ...],
    mul: np.ndarray | None,
) -> Layout:
    """A component of block ``grid`` written as an ``(*out_grid, *block)`` array: coefficient
    ``src[j]`` (natural order) of each block goes to flat position ``dst[j]`` of its output
    block, as int16, or as float32 times ``mul[j]``; each block fills ``ratio`` (rows, cols)
    output blocks, cut at the edge of ``out_grid``. Unnamed positions are 0."""
    (rows, cols), (ry, rx), stride = grid, ratio, int(np.prod(block))
    n = len(src)
    if not (1 <= stride <= 64 and n == len(dst) <= stride and ry >= 1 and rx >= 1):
        raise ValueError(f"bad layout: {n} of {stride} coefficients, ratio {ratio}")
    if not ((0 <= src) & (src < 64)).all() or not ((0 <= dst) & (dst < stride)).all():
        raise ValueError("layout indices outside a block")
    if rows * ry < out_grid[0] or cols * rx < out_grid[1]:
        raise ValueError(f"grid {grid} x {ratio} does not cover {out_grid}")
    t = _Target(0, cols * 128, rows, 0, 1 if mul is None else 2, *out_grid, ry, rx, stride, n)
    t.src[:n], t.dst[:n] = src.tolist(), dst.tolist()
    if mul is not None:
        t.mul[:n] = np.asarray(mul, np.float32).tolist()
    covered = n == stride and len(set(dst.tolist())) == n
    dtype = np.int16 if mul is None else np.float32
    return Layout((*out_grid, *block), dtype, not covered, bytes(t))


def _row_copier(table: _Targets) -> _FILTER:
    """The Python filter callback: the raw copy (mode 0) of ``copy_rows`` in ``_jpeg_filter.c``."""
    memmove = ctypes.memmove
    targets = table.t

    def copy_row(coeffs: int, region: _Region, plane: _Region, ci: int, ti: int, t: int) -> int:
        # libjpeg calls this for every block row, including the padding rows it keeps to
        # round a component up to its sampling factor; those are not copied.
        try:
            if not 0 <= ci < table.n:
                return -1
            g = targets[ci]
            row_bytes, rows = g.row_bytes, g.rows
            # the header parser and libjpeg must agree on the plane, or the copy would overrun
            if g.mode != 0 or region.w * 16 != row_bytes or plane.h != rows * 8 or region.y < 0:
                return -1
            row = region.y >> 3
            if row < rows:
                memmove(g.address + row * row_bytes, coeffs, row_bytes)
                g.copied += 1
            return 0
        except Exception:  # never let an exception cross the C frames
            return -1

    return _FILTER(copy_row)


@functools.lru_cache(maxsize=256)
def _raw_target(rows: int, cols: int) -> bytes:
    return bytes(_Target(0, cols * 128, rows))


class _Reader:
    """One TurboJPEG handle and its filter; used by one thread at a time."""

    def __init__(self, native_filter: int | None) -> None:
        self.lib = load_library()
        self.handle = self.lib.tjInitTransform()
        if not self.handle:
            raise TurboJPEGError("tjInitTransform failed", warning=False)
        self.table = _Targets()
        self.transform = _Transform()
        self.transform.options = TJXOPT_NOOUTPUT | TJXOPT_COPYNONE
        self.transform.data = ctypes.addressof(self.table)
        if native_filter is not None:
            self.callback = None
            self.transform.customFilter = native_filter
        else:
            self.callback = _row_copier(self.table)
            self.transform.customFilter = ctypes.cast(self.callback, ctypes.c_void_p).value
        self.dst = ctypes.c_void_p()
        self.dst_size = ctypes.c_ulong()
        self.refs = (ctypes.byref(self.dst), ctypes.byref(self.dst_size))
        self.transform_ref = ctypes.byref(self.transform)
        # where each target starts, and a view of its int64 fields
        self.slots = [ctypes.addressof(t) for t in self.table.t]
        self.ints = [(ctypes.c_int64 * len(_TARGET_INTS)).from_address(a) for a in self.slots]

    def read(
        self,
        data: bytes,
        targets: Sequence[tuple[np.ndarray, bytes]],
        strict: bool,
    ) -> tuple[list[int], str | None]:
        """Decode ``data`` into each (array, target image); returns the all-zero blocks seen
        per component (modes 1 and 2) and the first warning."""
        if not 1 <= len(targets) <= 4:
            raise TurboJPEGError(f"{len(targets)} components", warning=False)
        memmove = ctypes.memmove
        for slot, ints, (array, image) in zip(self.slots, self.ints, targets, strict=False):
            memmove(slot, image, len(image))
            ints[_ADDRESS] = _address(array)
        self.table.n = len(targets)
        flags = TJFLAG_LIMITSCANS | (TJFLAG_STOPONWARNING if strict else 0)
        try:
            status = self.lib.tjTransform(
                self.handle, data, len(data), 1, *self.refs, self.transform_ref, flags
            )
        finally:
            self.table.n = 0
        message = None
        if status != 0:
            text = self.lib.tjGetErrorStr2(self.handle) or b"unknown error"
            message = text.decode("utf-8", "replace").strip()
            warning = self.lib.tjGetErrorCode(self.handle) == TJERR_WARNING
            if strict or not warning:
                raise TurboJPEGError(message, warning)
        counts = [self.ints[ci] for ci in range(len(targets))]
        if any(ints[_COPIED] != ints[_ROWS] for ints in counts):
            # a fatal error after a warning still reads as a warning in tjGetErrorCode
            raise TurboJPEGError(message or "libjpeg did not deliver every block row", False)
        return [ints[_ZERO_BLOCKS] for ints in counts], message

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.lib.tjDestroy(self.handle)
            self.handle = None


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


_local = threading.local()


def read_coefficients(
    data: bytes,
    grids: Sequence[tuple[int, int]],
    *,
    strict: bool = False,
    native: bool | None = None,
) -> tuple[list[np.ndarray], str | None]:
    """Quantized coefficients of each component of the JPEG in ``data``.

    ``grids`` gives each component's (block rows, block cols) as parsed from the frame
    header. Returns int16 arrays (rows, cols, 8, 8) in natural order, and the first libjpeg
    warning (None for a clean decode). Raises :class:`TurboJPEGError` for a fatal error, or
    for any warning when ``strict``. ``native`` picks the C filter (default: when built) or
    the Python callback (False).
    """
    arrays = [np.empty((rows, cols, 8, 8), np.int16) for rows, cols in grids]
    targets = [(a, _raw_target(*grid)) for a, grid in zip(arrays, grids, strict=True)]
    _, warning = _reader(NATIVE_FILTER is not None if native is None else native).read(
        data, targets, strict
    )
    return arrays, warning


def read_layouts(
    data: bytes, layouts: Sequence[Layout], *, strict: bool = False
) -> tuple[list[np.ndarray], list[int], str | None]:
    """Like :func:`read_coefficients`, but each component comes out as its :class:`Layout`
    says, in one pass, with the count of its all-zero blocks. Needs the C filter
    (``NATIVE_FILTER`` set)."""
    if NATIVE_FILTER is None:
        raise TurboJPEGError("the C row filter (_jpeg_filter) is not built", warning=False)
    arrays = [(np.zeros if t.zeros else np.empty)(t.shape, t.dtype) for t in layouts]
    targets = [(a, t.target) for a, t in zip(arrays, layouts, strict=True)]
    zeros, warning = _reader(True).read(data, targets, strict)
    return arrays, zeros, warning


def _reader(native: bool) -> _Reader:
    """This thread's reader with the C filter (``native``, when built) or the Python one."""
    key = NATIVE_FILTER if native else None
    readers = _local.__dict__.setdefault("readers", {})
    reader = readers.get(key)
    if reader is None:
        reader = readers[key] = _Reader(key)
    return reader


def is_warning(message: str) -> bool:
    """Whether ``message`` is one of libjpeg's warnings (the data was decoded around it)."""
    return message.startswith(WARNING_TEXTS)


class _Decompressor:
    """One TurboJPEG decompression handle; used by one thread at a time."""

    def __init__(self) -> None:
        self.lib = load_library()
        self.handle = self.lib.tjInitDecompress()
        if not self.handle:
            raise TurboJPEGError("tjInitDecompress failed", warning=False)

    def decode(
        self, data: bytes, width: int, height: int, scale: int, gray: bool, strict: bool
    ) -> tuple[np.ndarray, str | None]:
        w, h = -(-width // scale), -(-height // scale)
        channels = 1 if gray else 3
        # tjDecompress2 takes the largest scale whose image fits w x h, and never writes
        # past h rows of the pitch given, whatever the file says (zeros: no stale memory
        # shows should libjpeg's image come out smaller)
        out = np.zeros((h, w, channels), np.uint8)
        flags = TJFLAG_LIMITSCANS | (TJFLAG_STOPONWARNING if strict else 0)
        status = self.lib.tjDecompress2(
            self.handle,
            data,
            len(data),
            _address(out),
            w,
            w * channels,
            h,
            TJPF_GRAY if gray else TJPF_RGB,
            flags,
        )
        if status == 0:
            return out, None
        text = self.lib.tjGetErrorStr2(self.handle) or b"unknown error"
        message = text.decode("utf-8", "replace").strip()
        warning = self.lib.tjGetErrorCode(self.handle) == TJERR_WARNING and is_warning(message)
        if strict or not warning:
            raise TurboJPEGError(message, warning)
        return out, message

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.lib.tjDestroy(self.handle)
            self.handle = None


def decompress(
    data: bytes, width: int, height: int, scale: int, *, gray: bool = False, strict: bool = False
) -> tuple[np.ndarray, str | None]:
    """Decode the JPEG in ``data`` (``width`` x ``height``) at 1/``scale`` (1, 2, 4 or 8):
    uint8 (ceil(height / scale), ceil(width / scale), 3) RGB, or 1 channel with ``gray``.

    The same pixels as libjpeg's own decode at that scale (Pillow's ``draft``): the accurate
    integer IDCT, scaled, and fancy upsampling. Returns the first libjpeg warning too (corrupt
    data, decoded around; None when clean). Raises :class:`TurboJPEGError` for a fatal error,
    or for any warning when ``strict`` (the decode stops there).

    ``width`` and ``height`` must be those of the frame header: tjDecompress2 picks the largest
    of its scales k/8 whose image fits the output, and that is 1/``scale`` when a side is 8
    pixels or more (each larger k/8 adds at least a pixel); below, ask for ``scale`` 1.
    """
    if scale not in (1, 2, 4, 8) or (scale > 1 and max(width, height) < 8):
        raise ValueError(f"scale 1/{scale} of a {width}x{height} image")
    decoder = _local.__dict__.get("decompressor")
    if decoder is None:
        decoder = _local.decompressor = _Decompressor()
    return decoder.decode(data, width, height, scale, gray, strict)
