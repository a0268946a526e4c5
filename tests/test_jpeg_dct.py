"""``jpeg.dct`` and ``ops.read_jpeg_dct``: bit-exact with libjpeg (jpeglib as the oracle), the
layouts the stage offers, and bad input as clear errors or counted damage."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import jpeglib  # the oracle: libjpeg read through another binding
import numpy as np
import pytest
from PIL import Image

from datapipe import registry
from datapipe.errors import ItemError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stage import Context
from datapipe.stages.common import libturbojpeg
from datapipe.stages.common.jpeg_header import parse_header
from datapipe.stages.compressed.jpeg_dct import (
    JpegDCTStage,
    align_chroma,
    dequantize,
    read_jpeg_dct,
    zigzag_channels,
)
from datapipe.stages.io.files import Files
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest

# Until pyproject.toml lists the entry point "jpeg.dct", register the stage here so that the
# conformance suite (tests/test_conformance.py, collected after this module) checks it too.
if "jpeg.dct" not in registry.all_stages():
    registry.register(JpegDCTStage)


@pytest.fixture(params=["C", "python"])
def row_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the C row filter (the _jpeg_filter extension) and the ctypes fallback."""
    if request.param == "C" and libturbojpeg.NATIVE_FILTER is None:
        pytest.skip("the C filter is not built (pip install -e . builds _jpeg_filter)")
    if request.param == "python":
        monkeypatch.setattr(libturbojpeg, "NATIVE_FILTER", None)
    return request.param


def photo(width: int, height: int, seed: int = 0, gray: bool = False) -> Image.Image:
    """A photo-like test image: smooth colour fields, sharp-edged shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC))
    img = img.astype(np.int16)
    yy, xx = np.mgrid[:height, :width]
    img[(xx - width / 3) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 4) ** 2] = 240
    img += rng.normal(0, 4, img.shape).astype(np.int16)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return pil.convert("L") if gray else pil


def encode(img: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **options)
    return buf.getvalue()


# name -> (size, gray, Pillow save options); subsampling: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
CASES = {
    "baseline-420-odd": ((227, 173), False, {"subsampling": 2}),
    "progressive-420-odd": ((227, 173), False, {"subsampling": 2, "progressive": True}),
    "baseline-422-odd": ((227, 173), False, {"subsampling": 1}),
    "progressive-422": ((96, 64), False, {"subsampling": 1, "progressive": True}),
    "baseline-444": ((64, 48), False, {"subsampling": 0}),
    "progressive-444-odd": ((227, 173), False, {"subsampling": 0, "progressive": True}),
    "gray-baseline-odd": ((227, 173), True, {}),
    "gray-progressive": ((64, 48), True, {"progressive": True}),
    "restart-blocks-420": ((227, 173), False, {"subsampling": 2, "restart_marker_blocks": 1}),
    "restart-rows-422": ((227, 173), False, {"subsampling": 1, "restart_marker_rows": 1}),
    "restart-progressive": (
        (227, 173),
        False,
        {"subsampling": 2, "progressive": True, "restart_marker_blocks": 3},
    ),
    "one-block": ((1, 1), False, {"subsampling": 2}),
}


def write_case(tmp_path: Path, name: str) -> Path:
    (w, h), gray, options = CASES[name]
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(encode(photo(w, h, seed=len(name), gray=gray), **options))
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_bit_exact_with_libjpeg(tmp_path: Path, name: str, row_filter: str) -> None:
    path = write_case(tmp_path, name)
    data = path.read_bytes()
    if "restart" in name:  # the file really has a restart interval and RSTn markers
        assert b"\xff\xdd" in data and b"\xff\xd0" in data
    ours = read_jpeg_dct(path)
    oracle = jpeglib.read_dct(str(path))
    assert (ours.width, ours.height) == (oracle.width, oracle.height)
    assert ours.progressive == ("progressive" in name) == bool(oracle.progressive_mode)
    expected = [oracle.Y] if oracle.Cb is None else [oracle.Y, oracle.Cb, oracle.Cr]
    assert len(ours.components) == len(expected)
    for ci, (got, want) in enumerate(zip(ours.components, expected, strict=True)):
        assert got.dtype == np.int16 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(ours.qt[ci], oracle.get_component_qt(ci))
    assert ours.qt.dtype == np.uint16
    if oracle.Cb is not None:
        np.testing.assert_array_equal(ours.sampling, oracle.samp_factor[:, ::-1])
    assert ours.warnings == () and ours.damaged_blocks == 0
    again = read_jpeg_dct(data)  # bytes give the same result as the path
    for got, want in zip(again.components, ours.components, strict=True):
        np.testing.assert_array_equal(got, want)


def test_subsampling_names_and_grids(tmp_path: Path) -> None:
    found = {n: read_jpeg_dct(write_case(tmp_path, n)) for n in CASES}
    assert found["baseline-420-odd"].subsampling == "4:2:0"
    assert found["baseline-422-odd"].subsampling == "4:2:2"
    assert found["baseline-444"].subsampling == "4:4:4"
    assert found["gray-baseline-odd"].subsampling == "gray"
    assert found["gray-baseline-odd"].cb is None and found["gray-baseline-odd"].cr is None
    # 227x173: luma ceil(173/8) x ceil(227/8); 4:2:0 chroma ceil(87/8) x ceil(114/8)
    assert found["baseline-420-odd"].y.shape == (22, 29, 8, 8)
    assert found["baseline-420-odd"].cb.shape == (11, 15, 8, 8)
    assert found["baseline-422-odd"].cb.shape == (22, 15, 8, 8)
    assert found["one-block"].y.shape == (1, 1, 8, 8)


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def test_each_component_keeps_the_table_in_force_at_its_first_scan() -> None:
    # libjpeg latches a component's quantization table at the first scan that holds it: a
    # sequential file whose scans come one component at a time, with table 0 redefined between
    # the scans, gives Y the first table and Cb/Cr the second (parser only, no decoding)
    first, second = bytes(range(1, 65)), bytes(range(101, 165))
    sof = bytes([8, 0, 16, 0, 16, 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
    entropy = b"\x12\xff\x00\x34\xff\xd0\x56"  # a stuffed 0xFF and a restart marker
    data = b"".join(
        [
            b"\xff\xd8",
            _segment(0xDB, b"\x00" + first),
            _segment(0xC0, sof),
            _segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0])) + entropy,
            _segment(0xDB, b"\x00" + second),
            _segment(0xDA, bytes([2, 2, 0x00, 3, 0x00, 0, 63, 0])) + entropy,
            b"\xff\xd9",
        ]
    )
    header = parse_header(data, max_pixels=10**6)
    zigzag = zigzag_channels(np.arange(64).reshape(8, 8), k=64)
    natural = np.empty(64, np.uint16)
    natural[zigzag] = np.frombuffer(first, np.uint8)  # DQT lists the table in zigzag order
    np.testing.assert_array_equal(header.qt[0], natural.reshape(8, 8))
    natural[zigzag] = np.frombuffer(second, np.uint8)
    np.testing.assert_array_equal(header.qt[1], natural.reshape(8, 8))
    np.testing.assert_array_equal(header.qt[2], header.qt[1])
    assert header.grids == ((2, 2), (2, 2), (2, 2)) and header.has_eoi


def test_zigzag_order_against_the_standard_table() -> None:
    # JPEG zigzag order (ITU T.81 figure 5) as natural row-major indices, first 10 entries
    first_ten = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24]
    natural = np.arange(64, dtype=np.int16).reshape(8, 8)
    order = zigzag_channels(natural, k=64)
    assert order[:10].tolist() == first_ten
    assert sorted(order.tolist()) == list(range(64))
    assert order[-1] == 63 and order[-2] == 62 and order[-3] == 55
    blocks = np.broadcast_to(natural, (3, 5, 8, 8))
    out = zigzag_channels(blocks, k=10)
    assert out.shape == (3, 5, 10) and out.dtype == np.int16
    assert (out == np.array(first_ten)).all()
    with pytest.raises(ValueError):
        zigzag_channels(blocks, k=0)


def test_dequantize_is_blocks_times_table(tmp_path: Path) -> None:
    dct = read_jpeg_dct(write_case(tmp_path, "baseline-420-odd"))
    for ci, blocks in enumerate(dct.components):
        deq = dequantize(blocks, dct.qt[ci])
        assert deq.dtype == np.float32
        np.testing.assert_array_equal(deq, blocks.astype(np.int64) * dct.qt[ci].astype(np.int64))
        chans = dequantize(zigzag_channels(blocks, k=6), zigzag_channels(dct.qt[ci], k=6))
        np.testing.assert_array_equal(chans, zigzag_channels(deq, k=6))
    assert not np.array_equal(dct.qt[0], dct.qt[1])  # luma and chroma tables differ


@pytest.mark.parametrize(
    ("subsampling", "ratio", "chroma_grid"),
    [(2, (2, 2), (11, 15)), (1, (1, 2), (22, 15)), (0, (1, 1), (22, 29))],
    ids=["420", "422", "444"],
)
def test_chroma_on_the_luma_grid(
    subsampling: int, ratio: tuple[int, int], chroma_grid: tuple[int, int]
) -> None:
    dct = read_jpeg_dct(encode(photo(227, 173, seed=3), subsampling=subsampling))
    assert dct.chroma_ratio == ratio and dct.cb.shape[:2] == chroma_grid
    aligned = align_chroma(dct.cb, dct.y.shape[:2], dct.chroma_ratio)
    assert aligned.shape == dct.y.shape == (22, 29, 8, 8)
    ry, rx = ratio
    for i, j in [(0, 0), (21, 28), (13, 7)]:  # each luma block holds the chroma block above it
        np.testing.assert_array_equal(aligned[i, j], dct.cb[i // ry, j // rx])
    chans = align_chroma(zigzag_channels(dct.cr, k=5), dct.y.shape[:2], ratio)
    assert chans.shape == (22, 29, 5)


PARAMS = [
    {},
    {"dequantize": True},
    {"layout": "channels", "keep": 10, "keep_chroma": 3},
    {"layout": "channels", "keep": 64, "dequantize": True, "chroma": "luma_grid"},
    {"chroma": "luma_grid", "keep": 6},
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
@pytest.mark.parametrize("name", ["baseline-420-odd", "gray-baseline-odd", "baseline-422-odd"])
def test_stage_output_matches_its_declared_fields(
    tmp_path: Path, params: dict[str, object], name: str
) -> None:
    path = write_case(tmp_path, name)
    stage = JpegDCTStage(**params)
    out = stage.process({"path": str(path)}, Context())
    declared = {f.name: f for f in stage.produces()}
    assert set(out) == set(declared)
    for field_name, spec in declared.items():
        assert spec.check_value(out[field_name]) is None, spec.check_value(out[field_name])
    dct = read_jpeg_dct(path)
    p = stage.params
    assert out["jpeg_size"].tolist() == [173, 227] and out["jpeg_damage"] == 0
    np.testing.assert_array_equal(out["dct_qt"], dct.qt)
    assert out["dct_y"].shape[:2] == (22, 29)
    if dct.grayscale:
        assert out["dct_cb"].size == 0 and out["dct_qt"].shape == (1, 8, 8)
    elif p.chroma == "luma_grid":
        assert out["dct_cr"].shape[:2] == (22, 29)
    else:
        assert out["dct_cr"].shape[:2] == dct.cr.shape[:2]
    want_y = dct.y.astype(np.float32) * dct.qt[0] if p.dequantize else dct.y
    if p.layout == "channels":
        np.testing.assert_array_equal(out["dct_y"], zigzag_channels(want_y, k=p.keep))
    else:
        kept = np.zeros(64, bool)
        kept[zigzag_channels(np.arange(64).reshape(8, 8), k=p.keep)] = True
        kept = kept.reshape(8, 8)
        np.testing.assert_array_equal(out["dct_y"][..., kept], want_y[..., kept])
        assert not out["dct_y"][..., ~kept].any()


# -- bad input -------------------------------------------------------------------------------
def _good() -> bytes:
    return encode(photo(96, 64, seed=7), subsampling=2)


def _patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def _sof(data: bytes) -> int:
    return data.index(b"\xff\xc0")


def _scan(data: bytes) -> int:
    """Offset of the first scan's entropy-coded data."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _corrupt_entropy(data: bytes) -> bytes:
    start = _scan(data) + 40
    noise = bytes((b ^ 0x5A) or 1 for b in data[start : start + 24])
    return _patched(data, start, noise.replace(b"\xff", b"\x7f"))


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()


def _cmyk() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (32, 32), (10, 20, 30, 40)).save(buf, "JPEG")
    return buf.getvalue()


def _arithmetic(tmp_path: Path) -> bytes:
    with jpeglib.version("turbo210"):  # libjpeg-turbo built with arithmetic coding
        jpeg = jpeglib.from_spatial(np.asarray(photo(32, 32)))
        jpeg.write_spatial(str(tmp_path / "arith.jpg"), flags=["+ARITH_CODE"])
    data = (tmp_path / "arith.jpg").read_bytes()
    assert b"\xff\xc9" in data  # SOF9: sequential, arithmetic-coded
    return data


BAD = {
    "empty": (lambda t: b"", "empty"),
    "garbage": (lambda t: np.random.default_rng(1).bytes(3000), "corrupt"),
    "png-named-jpg": (lambda t: _png(), "unsupported"),
    "cmyk": (lambda t: _cmyk(), "unsupported"),
    "arithmetic": (_arithmetic, "unsupported"),
    # SOF3 in place of SOF0: a lossless frame header (libjpeg-turbo 2.1 cannot write one)
    "lossless-sof3": (lambda t: _patched(_good(), _sof(_good()) + 1, b"\xc3"), "unsupported"),
    "twelve-bit": (lambda t: _patched(_good(), _sof(_good()) + 4, b"\x0c"), "unsupported"),
    "truncated-half": (lambda t: _good()[: len(_good()) // 2], "truncated"),
    "truncated-header": (lambda t: _good()[:120], "truncated"),
    "truncated-progressive": (
        lambda t: encode(photo(96, 64), progressive=True)[:-300],
        "truncated",
    ),
    "absurd-sof": (
        lambda t: _patched(_good(), _sof(_good()) + 5, (65500).to_bytes(2, "big") * 2),
        "decode_bomb",
    ),
    "sof-larger-than-data": (
        lambda t: _patched(_good(), _sof(_good()) + 5, (6000).to_bytes(2, "big") * 2),
        "decode_bomb",
    ),
    "zero-width": (lambda t: _patched(_good(), _sof(_good()) + 7, b"\x00\x00"), "corrupt"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_a_clear_item_error(tmp_path: Path, name: str) -> None:
    make, error_class = BAD[name]
    data = make(tmp_path)
    with pytest.raises(ItemError) as info:
        read_jpeg_dct(data)
    assert info.value.error_class == error_class, info.value
    assert info.value.message
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    with pytest.raises(ItemError) as again:
        read_jpeg_dct(path, strict=True)
    assert again.value.error_class == error_class


def test_max_pixels_is_checked_from_the_header() -> None:
    data = _good()
    assert read_jpeg_dct(data, max_pixels=96 * 64).y.shape == (8, 12, 8, 8)
    with pytest.raises(ItemError, match="96x64 exceeds 6143 pixels") as info:
        read_jpeg_dct(data, max_pixels=96 * 64 - 1)
    assert info.value.error_class == "decode_bomb"


def test_too_many_progressive_scans_are_refused() -> None:
    # a progressive file whose last scan repeats 600 times (the CPU-exhaustion pattern of
    # libjpeg-turbo's LJT-01-003 report): refused after 500 scans
    data = encode(photo(32, 32), progressive=True)
    scan = data[data.rindex(b"\xff\xda") : -2]
    with pytest.raises(ItemError, match="more than 500 scans") as info:
        read_jpeg_dct(data[:-2] + scan * 600 + b"\xff\xd9")
    assert info.value.error_class == "decode_bomb"


def test_corrupt_entropy_is_counted_or_refused_in_strict_mode(row_filter: str) -> None:
    clean, bad = _good(), _corrupt_entropy(_good())
    dct = read_jpeg_dct(bad)
    assert dct.warnings and "Corrupt JPEG data" in dct.warnings[0]
    assert dct.damaged_blocks > 0
    assert dct.y.shape == read_jpeg_dct(clean).y.shape
    with pytest.raises(ItemError, match="Corrupt JPEG data") as info:
        read_jpeg_dct(bad, strict=True)
    assert info.value.error_class == "corrupt"
    assert read_jpeg_dct(clean, strict=True).damaged_blocks == 0


def test_damage_after_a_restart_marker_is_contained(row_filter: str) -> None:
    # 96x64 4:2:0 with a restart marker after every MCU (16x16 pixels, 6 MCUs a row): drop the
    # data of MCU 4, between RST3 and RST4
    data = encode(photo(96, 64, seed=2), subsampling=2, restart_marker_blocks=1)
    start, end = data.index(b"\xff\xd3") + 2, data.index(b"\xff\xd4")
    clean, dct = read_jpeg_dct(data), read_jpeg_dct(data[:start] + data[end:])
    assert dct.warnings and dct.damaged_blocks >= 1
    assert not np.array_equal(dct.y[0:2, 8:10], clean.y[0:2, 8:10])
    # every other MCU decodes exactly as in the clean file: libjpeg resyncs at RST4
    np.testing.assert_array_equal(dct.y[0:2, :8], clean.y[0:2, :8])
    np.testing.assert_array_equal(dct.y[0:2, 10:], clean.y[0:2, 10:])
    np.testing.assert_array_equal(dct.y[2:], clean.y[2:])
    np.testing.assert_array_equal(np.delete(dct.cb[0], 4, axis=0), np.delete(clean.cb[0], 4, 0))


def test_fuzzed_files_only_ever_raise_item_errors(row_filter: str) -> None:
    # in a child process, so that a crash in the native decoder fails this test, not the run
    code = """
import io, json, sys
import numpy as np
from PIL import Image
from datapipe.errors import ItemError
from datapipe.stages.common import libturbojpeg
from datapipe.stages.common.jpeg_header import parse_header
from datapipe.stages.compressed.jpeg_dct import read_jpeg_dct
if sys.argv[1] == "python":
    libturbojpeg.NATIVE_FILTER = None
rng = np.random.default_rng(0)
img = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
seeds = []
for options in ({}, {"progressive": True}, {"restart_marker_blocks": 2}):
    buf = io.BytesIO(); img.save(buf, "JPEG", **options); seeds.append(buf.getvalue())
seeds.append(seeds[0][:2] + seeds[1][2:300] + seeds[0][300:])
outcomes = set()
for i in range(1200):
    data = bytearray(seeds[i % len(seeds)])
    for _ in range(int(rng.integers(1, 6))):
        data[int(rng.integers(2, len(data)))] = int(rng.integers(0, 256))
    if i % 5 == 0:
        cut = int(rng.integers(2, len(data))); data = data[:cut] + data[cut + 40:]
    try:
        outcomes.add("damaged" if read_jpeg_dct(bytes(data)).damaged_blocks else "ok")
    except ItemError as exc:
        outcomes.add(exc.error_class)
print(json.dumps(sorted(outcomes)))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, row_filter], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert {"corrupt", "damaged"} <= outcomes
    assert outcomes <= {"ok", "damaged", "corrupt", "truncated", "unsupported", "decode_bomb"}


def test_threads_read_independently(tmp_path: Path) -> None:
    paths = [write_case(tmp_path, n) for n in ("baseline-420-odd", "progressive-444-odd")]
    want = [read_jpeg_dct(p).y for p in paths]
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(20):
            if not np.array_equal(read_jpeg_dct(paths[k % 2]).y, want[k % 2]):
                errors.append(f"thread {k}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_missing_library_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(libturbojpeg, "_lib", None)
    monkeypatch.setattr(libturbojpeg.ctypes, "CDLL", no_library)
    monkeypatch.setattr(libturbojpeg.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(libturbojpeg.TurboJPEGUnavailable, match="apt-get install libturbojpeg0"):
        libturbojpeg.load_library()


# -- through the engine ----------------------------------------------------------------------
def _rows(out: Path) -> dict[str, object]:
    return {r.key: r for r in Manifest(out / "manifest.sqlite").iter_rows()}


def test_stage_in_a_pipeline_gives_error_rows_and_counts_damage(tmp_path: Path) -> None:
    root = tmp_path / "in" / "x"
    root.mkdir(parents=True)
    (root / "good.jpg").write_bytes(_good())
    (root / "gray.jpg").write_bytes(encode(photo(40, 24, gray=True)))
    (root / "damaged.jpg").write_bytes(_corrupt_entropy(_good()))
    for name, (make, _) in BAD.items():
        (root / f"{name}.jpg").write_bytes(make(tmp_path))

    def run(out: str, **params: object) -> dict[str, object]:
        stage = JpegDCTStage(layout="channels", keep=8, **params)
        pipeline = Pipeline.chain(Files(root=str(tmp_path / "in"), kinds=["image"]), stage)
        run_local(pipeline, tmp_path / out, timeout_s=60, memory_mb=2048)
        return _rows(tmp_path / out)

    rows = run("lenient")
    for name, (_, error_class) in BAD.items():
        row = rows[f"x/{name}"]
        assert (row.status, row.error_class) == ("error", error_class), (name, row)
        assert row.stage and row.message
    assert {rows[f"x/{n}"].status for n in ("good", "gray", "damaged")} == {"ok"}
    samples = {
        s["key"]: s for s in iter_samples(sorted((tmp_path / "lenient" / "shards").glob("*.tar")))
    }
    assert samples["x/good"]["jpeg_damage"] == 0
    assert samples["x/damaged"]["jpeg_damage"] > 0
    # the tolerated damage also lands in the manifest (the notes of *_damage fields)
    notes = json.loads(rows["x/damaged"].notes)
    assert notes == {"jpeg_damage": samples["x/damaged"]["jpeg_damage"]}
    assert rows["x/good"].notes is None
    assert samples["x/good"]["dct_y"].shape == (8, 12, 8)
    assert samples["x/good"]["dct_cb"].shape == (4, 6, 8)
    assert samples["x/gray"]["dct_cb"].shape == (0, 0, 8)
    assert samples["x/gray"]["dct_qt"].shape == (1, 8, 8)

    strict = run("strict", strict=True)
    assert (strict["x/damaged"].status, strict["x/damaged"].error_class) == ("error", "corrupt")
    assert strict["x/good"].status == "ok"


def test_pipeline_file_validates_with_the_stage(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    p = Pipeline.from_dict(
        {
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(tmp_path / "images")}},
                "dct": {
                    "stage": "jpeg.dct",
                    "inputs": "photos",
                    "params": {"layout": "channels", "keep": 24, "chroma": "luma_grid"},
                },
            }
        }
    )
    fields = {f.name: f for f in p.nodes[-1].stage.produces()}
    assert fields["dct_y"].shape == "Hb Wb 24" and fields["dct_cb"].shape == "Hb Wb 24"
    assert fields["dct_y"].dtype == "int16"
