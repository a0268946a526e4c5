"""JPEG marker parsing in Python: everything ``jpeg.dct`` must know or refuse before libjpeg
allocates a coefficient buffer (``image.resize`` and ``represent.resize`` check JPEGs with it
too, before they decode one).

The parser walks the markers up to the first scan (further only when a component first appears
in a later scan), reads the frame header (SOF), the quantization tables each component latches
at its first scan (as libjpeg does), and the JFIF / Adobe markers that decide the colour space.
It refuses, with an :class:`~datapipe.errors.ItemError`, whatever the coefficient reader does
not handle: non-JPEG input, arithmetic coding, lossless and hierarchical processes, 12-bit
samples, CMYK/YCCK and RGB-coded files, and declared sizes over the pixel budget.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from datapipe.errors import ItemError

#: natural (row-major) index of the k-th coefficient in zigzag order
ZIGZAG = np.array(
    sorted(range(64), key=lambda i: (i // 8 + i % 8, i // 8 if (i // 8 + i % 8) % 2 else i % 8)),
    dtype=np.intp,
)

_SOF_SUPPORTED = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
_SOF_REFUSED = {
    0xC3: "lossless (SOF3)",
    0xC5: "hierarchical (SOF5)",
    0xC6: "hierarchical progressive (SOF6)",
    0xC7: "hierarchical lossless (SOF7)",
    0xC9: "arithmetic-coded (SOF9)",
    0xCA: "arithmetic-coded progressive (SOF10)",
    0xCB: "arithmetic-coded lossless (SOF11)",
    0xCD: "arithmetic-coded hierarchical (SOF13)",
    0xCE: "arithmetic-coded hierarchical progressive (SOF14)",
    0xCF: "arithmetic-coded hierarchical lossless (SOF15)",
}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
#: a marker inside entropy-coded data: 0xFF not followed by a stuffed 0x00, RSTn or fill 0xFF
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
#: libjpeg's limit on either side (JPEG_MAX_DIMENSION)
MAX_DIMENSION = 65500


class Component(NamedTuple):
    ident: int
    h: int
    v: int
    tq: int


@dataclass(frozen=True)
class JpegHeader:
    """What the markers declare, checked.

    ``qt`` is (C, 8, 8) uint16 in natural order; ``grids`` the (block rows, block cols) of
    each component as libjpeg sizes them: ``ceil(ceil(height * v / v_max) / 8)``, likewise
    for columns."""

    width: int
    height: int
    process: str
    components: tuple[Component, ...]
    qt: np.ndarray
    has_eoi: bool
    grids: tuple[tuple[int, int], ...]

    @property
    def progressive(self) -> bool:
        return self.process == "progressive"

    @property
    def sampling(self) -> tuple[tuple[int, int], ...]:
        """The (h, v) sampling factors of each component."""
        return tuple((c.h, c.v) for c in self.components)


def sniff_format(data: bytes) -> str | None:
    """Name of a well-known non-JPEG format ``data`` starts with, or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        return "ISO media (HEIF/AVIF/MP4)"
    return None


def parse_header(data: bytes, max_pixels: int) -> JpegHeader:
    """Parse and check the markers of ``data``; raise ItemError for what cannot be read.

    Files from one encoder at one size share their markers up to the first scan: a parse
    that ends there depends on those bytes alone (and ``max_pixels``), so it is kept, keyed
    by them, and only ``has_eoi`` is looked up again for the next file that starts alike."""
    key = None
    sos = data.find(b"\xff\xda", 2, _CACHED_PREFIX)
    if sos > 0:
        end = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
        if end <= min(len(data), _CACHED_PREFIX):
            key = (bytes(data[:end]), max_pixels)
            known = _parsed.get(key)
            if known is not None:
                has_eoi = data.rfind(b"\xff\xd9", end) >= 0
                return JpegHeader(*known[:4], known[4].copy(), has_eoi, known[6])
    header, pos = _parse(data, max_pixels)
    if key is not None and pos == len(key[0]):
        h = header
        with _parsed_lock:
            if len(_parsed) >= _CACHED_HEADERS:
                del _parsed[next(iter(_parsed))]  # the oldest
            _parsed[key] = (h.width, h.height, h.process, h.components, h.qt.copy(), 0, h.grids)
    return header


#: headers kept (see parse_header), and the longest prefix kept
_CACHED_HEADERS, _CACHED_PREFIX = 64, 4096
_parsed: dict[tuple[bytes, int], tuple] = {}
_parsed_lock = threading.Lock()


def _parse(data: bytes, max_pixels: int) -> tuple[JpegHeader, int]:
    """The header, and where the parse stopped."""
    n = len(data)
    if n == 0:
        raise ItemError("empty", "zero-byte input")
    if not data.startswith(b"\xff\xd8"):
        fmt = sniff_format(data)
        if fmt:
            raise ItemError("unsupported", f"not a JPEG: the data is a {fmt} file")
        head = data[:2].hex(" ")
        raise ItemError("corrupt", f"not a JPEG: no SOI marker (starts with {head})")
    tables: dict[int, np.ndarray] = {}
    latched: dict[int, np.ndarray] = {}
    comps: tuple[Component, ...] = ()
    width = height = 0
    process = ""
    jfif = False
    adobe: int | None = None
    pos = 2
    in_scans = False
    while True:
        if in_scans:  # skip entropy-coded data up to the next marker
            found = _MARKER.search(data, pos)
            if found is None:
                raise ItemError("truncated", "the file ends inside scan data (no EOI marker)")
            pos = found.start()
        pos = data.find(b"\xff", pos)  # libjpeg skips stray bytes (with a warning)
        while 0 <= pos < n and data[pos] == 0xFF:
            pos += 1
        if pos < 0 or pos >= n:
            raise ItemError("truncated", "the file ends inside the JPEG header")
        marker = data[pos]
        pos += 1
        if 0xD0 <= marker <= 0xD7 or marker in (0x00, 0x01):
            continue
        if marker == 0xD9:
            if not comps:
                raise ItemError("corrupt", "JPEG has no frame header (EOI before SOF)")
            break  # a component that never appears in a scan keeps its declared table
        if marker == 0xD8:
            raise ItemError("corrupt", "invalid JPEG structure: two SOI markers")
        if pos + 2 > n:
            raise ItemError("truncated", "the file ends inside the JPEG header")
        length = int.from_bytes(data[pos : pos + 2], "big")
        end = pos + length
        if length < 2:
            raise ItemError("corrupt", f"bogus length {length} of marker 0x{marker:02X}")
        if end > n:
            raise ItemError("truncated", f"the file ends inside marker 0x{marker:02X}")
        seg = data[pos + 2 : end]
        pos = end
        if marker == 0xDB:
            _read_dqt(seg, tables)
        elif marker == 0xE0 and seg[:5] == b"JFIF\x00":
            jfif = True
        elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe = seg[11]
        elif marker == 0xCC:
            raise ItemError("unsupported", "arithmetic-coded JPEG (DAC marker) is not supported")
        elif marker in _SOF_REFUSED:
            raise ItemError("unsupported", f"{_SOF_REFUSED[marker]} JPEG is not supported")
        elif marker in _SOF_SUPPORTED:
            if comps:
                raise ItemError("corrupt", "invalid JPEG structure: two SOF markers")
            process = _SOF_SUPPORTED[marker]
            width, height, comps = _read_sof(seg, max_pixels)
        elif marker == 0xDA:
            if not comps:
                raise ItemError("corrupt", "invalid JPEG structure: SOS before SOF")
            _latch(seg, comps, tables, latched)
            if len(latched) == len(comps):
                break
            in_scans = True
    _check_colour(comps, jfif, adobe)
    qt = np.empty((len(comps), 8, 8), np.uint16)
    for ci, c in enumerate(comps):
        table = latched.get(ci, tables.get(c.tq))
        if table is None:
            raise ItemError("corrupt", f"quantization table {c.tq} was not defined")
        qt[ci] = table
    has_eoi = data.rfind(b"\xff\xd9", pos) >= 0
    hmax, vmax = max(c.h for c in comps), max(c.v for c in comps)
    grids = tuple(
        ((-(-height * c.v // vmax) + 7) // 8, (-(-width * c.h // hmax) + 7) // 8) for c in comps
    )
    return JpegHeader(width, height, process, comps, qt, has_eoi, grids), pos


def _read_dqt(seg: bytes, tables: dict[int, np.ndarray]) -> None:
    i = 0
    while i < len(seg):
        pq, tq = seg[i] >> 4, seg[i] & 15
        size = 128 if pq else 64
        body = seg[i + 1 : i + 1 + size]
        if pq > 1 or tq > 3 or len(body) < size:
            raise ItemError("corrupt", "bogus quantization table (DQT) segment")
        values = np.frombuffer(body, ">u2" if pq else np.uint8).astype(np.uint16)
        natural = np.empty(64, np.uint16)
        natural[ZIGZAG] = values  # DQT stores the table in zigzag order
        tables[tq] = natural.reshape(8, 8)
        i += 1 + size


def _read_sof(seg: bytes, max_pixels: int) -> tuple[int, int, tuple[Component, ...]]:
    if len(seg) < 6:
        raise ItemError("corrupt", "bogus frame header (SOF) segment")
    precision = seg[0]
    height = int.from_bytes(seg[1:3], "big")
    width = int.from_bytes(seg[3:5], "big")
    nf = seg[5]
    if precision != 8:
        raise ItemError("unsupported", f"{precision}-bit JPEG samples are not supported")
    if len(seg) < 6 + 3 * nf or nf == 0:
        raise ItemError("corrupt", "bogus frame header (SOF) segment")
    if nf == 4:
        raise ItemError("unsupported", "CMYK/YCCK JPEG (4 components) is not supported")
    if nf not in (1, 3):
        raise ItemError("unsupported", f"JPEG with {nf} components is not supported")
    if width == 0:
        raise ItemError("corrupt", "JPEG frame header declares width 0")
    if height == 0:
        raise ItemError("unsupported", "JPEG height defined by a DNL marker is not supported")
    if width * height > max_pixels:
        raise ItemError(
            "decode_bomb", f"declared size {width}x{height} exceeds {max_pixels} pixels"
        )
    if max(width, height) > MAX_DIMENSION:
        raise ItemError("unsupported", f"JPEG sides are limited to {MAX_DIMENSION} pixels")
    comps = []
    for k in range(nf):
        ident, hv, tq = seg[6 + 3 * k : 9 + 3 * k]
        h, v = hv >> 4, hv & 15
        if not (1 <= h <= 4 and 1 <= v <= 4) or tq > 3:
            raise ItemError("corrupt", f"bogus sampling factors or table of component {ident}")
        comps.append(Component(ident, h, v, tq))
    if nf == 1:  # libjpeg ignores a grayscale image's sampling factors
        comps[0] = Component(comps[0].ident, 1, 1, comps[0].tq)
    return width, height, tuple(comps)


def _latch(
    seg: bytes,
    comps: tuple[Component, ...],
    tables: dict[int, np.ndarray],
    latched: dict[int, np.ndarray],
) -> None:
    """Components in this scan keep the table in force now (libjpeg's latch_quant_tables)."""
    ns = seg[0] if seg else 0
    ids = {c.ident: ci for ci, c in enumerate(comps)}
    for k in range(ns):
        ci = ids.get(seg[1 + 2 * k]) if 1 + 2 * k < len(seg) else None
        if ci is None:
            raise ItemError("corrupt", "scan header (SOS) names an unknown component")
        if ci not in latched:
            table = tables.get(comps[ci].tq)
            if table is None:
                raise ItemError("corrupt", f"quantization table {comps[ci].tq} was not defined")
            latched[ci] = table


def _check_colour(comps: tuple[Component, ...], jfif: bool, adobe: int | None) -> None:
    """Refuse 3-component files that libjpeg would read as RGB rather than YCbCr."""
    if len(comps) != 3 or jfif:
        return
    ids = tuple(c.ident for c in comps)
    if adobe == 0 or (adobe is None and ids == (82, 71, 66)):
        raise ItemError("unsupported", "RGB-coded JPEG (no YCbCr) is not supported")
