"""Reduced decoding from DCT coefficients (``represent.resize`` with ``input: dct``).

Oracles: scipy's orthonormal inverse DCT on hand-made blocks (full scale, and the truncated
low-frequency square at reduced scales), libjpeg's own decode through Pillow (full scale and
the 1/8 block means), and Pillow decode-then-resize on photos (PSNR). Then every layout of
``jpeg.dct`` decodes to the same pixels, the frequencies past the target scale are never read,
bad records are clear errors, and the stage runs after ``jpeg.dct`` in a pipeline.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.fft
from PIL import Image

from datapipe.errors import ConfigError, ItemError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stage import Context
from datapipe.stages.compressed.jpeg_dct import JpegDCTStage, read_jpeg_dct
from datapipe.stages.represent.dct_decode import decode_dct_reduced, decode_dct_scaled
from datapipe.stages.represent.resize import ProgressiveResize, decode_jpeg_reduced
from datapipe.store.manifest import Manifest
from datapipe.stream import from_shards
from photos import CASES, PHOTOS, encode, full_then_resize, psnr


# -- hand-made blocks against scipy's inverse DCT --------------------------------------------------
def gray_record(coefs: np.ndarray, qt: np.ndarray) -> dict[str, Any]:
    """jpeg.dct's fields for a grayscale image of exactly the block grid of ``coefs``."""
    rows, cols = coefs.shape[:2]
    return {
        "dct_y": coefs.astype(np.int16),
        "dct_cb": np.zeros((0, 0, 8, 8), np.int16),
        "dct_cr": np.zeros((0, 0, 8, 8), np.int16),
        "dct_qt": qt.astype(np.uint16)[None],
        "jpeg_size": np.array([rows * 8, cols * 8], np.int32),
        "jpeg_sampling": np.array([[1, 1]], np.uint8),
    }


def reference_pixels(coefs: np.ndarray, qt: np.ndarray, k: int) -> np.ndarray:
    """Each block's low k x k dequantized coefficients through scipy's k-point orthonormal
    inverse DCT, rescaled by k/8 (8-point to k-point normalisation), plus the level shift."""
    rows, cols = coefs.shape[:2]
    out = np.empty((rows * k, cols * k))
    for r in range(rows):
        for c in range(cols):
            block = (coefs[r, c] * qt)[:k, :k].astype(np.float64)
            out[r * k : (r + 1) * k, c * k : (c + 1) * k] = (
                scipy.fft.idctn(block, norm="ortho") * k / 8 + 128
            )
    return out


@pytest.fixture(scope="module")
def blocks() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    coefs = rng.integers(-6, 7, size=(3, 4, 8, 8))
    coefs[..., 0, 0] = rng.integers(-40, 41, size=(3, 4))
    qt = rng.integers(1, 5, size=(8, 8))
    return coefs, qt


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_each_scale_is_the_truncated_inverse_dct(blocks: Any, scale: int) -> None:
    coefs, qt = blocks
    k = 8 // scale
    want = reference_pixels(coefs, qt, k)
    assert 0 < want.min() and want.max() < 255  # no clipping in the oracle
    got = decode_dct_scaled(gray_record(coefs, qt), scale=scale)
    assert got.shape == (3 * k, 4 * k, 3) and got.dtype == np.uint8
    assert np.all(got == got[..., :1])  # gray
    assert np.abs(got[..., 0] - want).max() <= 0.5 + 1e-3  # rounding only


def test_one_eighth_is_the_block_mean_of_the_full_decode(blocks: Any) -> None:
    coefs, qt = blocks
    full = reference_pixels(coefs, qt, 8)
    means = full.reshape(3, 8, 4, 8).mean(axis=(1, 3))
    got = decode_dct_scaled(gray_record(coefs, qt), scale=8)[..., 0]
    assert np.abs(got - means).max() <= 0.5 + 1e-3


def test_frequencies_past_the_scale_are_never_read(blocks: Any) -> None:
    coefs, qt = blocks
    noisy = coefs.copy()
    noisy[:, :, 2:, :] = 3000  # garbage past the 2 x 2 square of 1/4 scale
    noisy[:, :, :, 2:] = -3000
    clean = decode_dct_scaled(gray_record(coefs, qt), scale=4)
    assert np.array_equal(decode_dct_scaled(gray_record(noisy, qt), scale=4), clean)
    assert not np.array_equal(
        decode_dct_scaled(gray_record(noisy, qt), scale=2), clean.repeat(2, 0)
    )


# -- real JPEGs against libjpeg and against decode-then-resize ------------------------------------
def libjpeg_scaled(data: bytes, scale: int) -> np.ndarray:
    """libjpeg's own decode at 1/scale (Pillow's draft)."""
    with Image.open(io.BytesIO(data)) as img:
        W, H = img.size
        img.draft(img.mode, (W // scale, H // scale))
        assert img.size == (-(-W // scale), -(-H // scale))
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_full_scale_and_block_means_agree_with_libjpeg(case: str) -> None:
    data = CASES[case]()
    dct = read_jpeg_dct(data)
    full = decode_dct_scaled(dct, scale=1)
    # integer IDCT and libjpeg's chroma upsampling against our float IDCT: a few levels
    assert psnr(full, libjpeg_scaled(data, 1)) >= 48
    means = decode_dct_scaled(dct, scale=8)
    if case.startswith("flower gray"):  # libjpeg's 1x1 IDCT is the DC term as well
        assert np.abs(means.astype(int) - libjpeg_scaled(data, 8)).max() <= 1
    assert psnr(means, libjpeg_scaled(data, 8)) >= 44


@pytest.mark.parametrize("case", sorted(CASES))
def test_quality_against_decode_then_resize(case: str) -> None:
    data = CASES[case]()
    dct = read_jpeg_dct(data)
    for size in (56, 112, 224):
        got = decode_dct_reduced(dct, size)
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        want = full_then_resize(data, size, size, Image.Resampling.BICUBIC)
        assert psnr(got, want) >= 30.0, (case, size)


@pytest.mark.parametrize(("size", "k"), [(160, 2), (224, 3), (300, 4), (427, 5), (500, 6)])
def test_any_k_of_8_scale_with_a_margin(monkeypatch: pytest.MonkeyPatch, size: int, k: int):
    """The scale is the smallest k/8 whose image covers the crop 1.25 times over (854 pixels
    high: 224 needs 280, so 3/8 = 321); chroma past 8 points (k > 4, 4:2:0) is upsampled."""
    from datapipe.stages.represent import dct_decode

    data = CASES["mosaic 1280x854 q90"]()
    used: list[int] = []
    scaled = dct_decode._scaled
    monkeypatch.setattr(dct_decode, "_scaled", lambda *a: used.append(a[-1]) or scaled(*a))
    got = decode_dct_reduced(read_jpeg_dct(data), size)
    assert used == [k]
    assert psnr(got, full_then_resize(data, size, size, Image.Resampling.BICUBIC)) >= 40


def test_stretch_and_rectangular_targets() -> None:
    data = CASES["china crop 620x420"]()
    dct = read_jpeg_dct(data)
    for size in ((40, 90), (90, 40), (300, 100)):
        got = decode_dct_reduced(dct, size, mode="stretch", resample="bilinear")
        want = full_then_resize(data, *size, Image.Resampling.BILINEAR, mode="stretch")
        assert got.shape == (*size, 3) and psnr(got, want) >= 30.0


# -- every layout of jpeg.dct ---------------------------------------------------------------------
LAYOUTS = [
    {},
    {"dequantize": True},
    {"layout": "channels"},
    {"layout": "channels", "dequantize": True, "chroma": "luma_grid"},
    {"chroma": "luma_grid"},
]


def stage_fields(path: Path, **params: Any) -> dict[str, Any]:
    return JpegDCTStage(**params).process({"path": str(path)}, Context())


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_every_layout_gives_the_same_pixels(tmp_path: Path, subsampling: int) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(PHOTOS[0][:421, :597], quality=90, subsampling=subsampling))
    want = decode_dct_reduced(read_jpeg_dct(path), (72, 100))
    for params in LAYOUTS:
        got = decode_dct_reduced(stage_fields(path, **params), (72, 100))
        assert np.abs(got.astype(int) - want).max() <= 1, params


def test_keep_only_needs_the_low_square_of_the_scale(tmp_path: Path) -> None:
    path = tmp_path / "mosaic.jpg"
    path.write_bytes(CASES["mosaic 1280x854 q90"]())
    # 56 and 112 from 1280 x 854 decode at 1/8 and 1/4: 1 and 2 x 2 coefficients per luma block,
    # 2 x 2 per 4:2:0 chroma block at 1/8 and 4 x 4 (zigzag 0..24) at 1/4
    full = stage_fields(path)
    cut = stage_fields(path, layout="channels", keep=5, keep_chroma=25)
    for size in (56, 112):
        assert np.array_equal(decode_dct_reduced(cut, size), decode_dct_reduced(full, size))
    assert not np.array_equal(decode_dct_reduced(cut, 224), decode_dct_reduced(full, 224))


# -- bad input ------------------------------------------------------------------------------------
def _good() -> dict[str, Any]:
    dct = read_jpeg_dct(CASES["china crop 620x420"]())
    return {
        "dct_y": dct.y,
        "dct_cb": dct.cb,
        "dct_cr": dct.cr,
        "dct_qt": dct.qt,
        "jpeg_size": np.array([dct.height, dct.width], np.int32),
        "jpeg_sampling": np.array(dct.sampling, np.uint8),
    }


def _nan(r: dict[str, Any]) -> None:
    r["dct_y"] = r["dct_y"].astype(np.float32)
    r["dct_y"][3, 4, 0, 0] = np.nan


def _huge(r: dict[str, Any]) -> None:
    r["dct_y"] = r["dct_y"].astype(np.float32)
    r["dct_y"][0, 0, 0, 0] = 3e38


BAD_RECORDS = {
    "missing field": (lambda r: r.pop("jpeg_sampling"), "invalid", "lacks the DCT fields"),
    "NaN coefficient": (_nan, "nonfinite", "NaN or infinite"),
    "size past the grid": (
        lambda r: r.update(jpeg_size=np.array([900, 620], np.int32)),
        "invalid",
        "block grid",
    ),
    "zero size": (lambda r: r.update(jpeg_size=np.array([0, 620], np.int32)), "invalid", "2 pos"),
    "absurd size": (
        lambda r: r.update(jpeg_size=np.array([10**6, 10**6], np.int32)),
        "decode_bomb",
        "exceeds",
    ),
    "text coefficients": (
        lambda r: r.update(dct_y=np.full((53, 78, 8, 8), "x")),
        "invalid",
        "must be numeric",
    ),
    "bad tail": (lambda r: r.update(dct_y=r["dct_y"][..., :4]), "invalid", "rows, cols, 8, 8"),
    "qt for gray": (lambda r: r.update(dct_qt=r["dct_qt"][:1]), "invalid", "3 components"),
    "chroma ratio 3": (
        lambda r: r.update(jpeg_sampling=np.array([[3, 1], [1, 1], [1, 1]], np.uint8)),
        "unsupported",
        "chroma ratio",
    ),
    "ragged size": (lambda r: r.update(jpeg_size=[420, [620]]), "invalid", "not an array"),
    "text sampling": (
        lambda r: r.update(jpeg_sampling=np.array([["2", "2"]] * 3)),
        "invalid",
        "integers",
    ),
    "fractional sampling": (
        lambda r: r.update(jpeg_sampling=np.full((3, 2), 1.5)),
        "invalid",
        "integers",
    ),
    "huge coefficient": (_huge, "invalid", "beyond"),
    "subsampled luma": (
        lambda r: r.update(jpeg_sampling=np.array([[1, 1], [2, 2], [2, 2]], np.uint8)),
        "unsupported",
        "luma is subsampled",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_bad_records_are_clear_errors(name: str) -> None:
    record = _good()
    change, error_class, match = BAD_RECORDS[name]
    change(record)
    with pytest.raises(ItemError, match=match) as info:
        decode_dct_reduced(record, 56)
    assert info.value.error_class == error_class


def test_bad_arguments() -> None:
    record = _good()
    with pytest.raises(ItemError, match="expected a JpegDCT or a record"):
        decode_dct_reduced([1, 2, 3], 56)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'size' parameter"):
        decode_dct_reduced(record, 0)
    with pytest.raises(ValueError, match="'scale' parameter"):
        decode_dct_scaled(record, scale=3)
    with pytest.raises(ItemError, match="upscaled") as info:
        decode_dct_reduced(record, 1000)
    assert info.value.error_class == "unsupported"
    assert decode_dct_reduced(record, 1000, allow_upscale=True).shape == (1000, 1000, 3)


# -- the stage after jpeg.dct ---------------------------------------------------------------------
def test_stage_after_jpeg_dct(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i, photo in enumerate(PHOTOS):
        (root / f"p{i}.jpg").write_bytes(encode(photo[:400, :600], quality=92))
    (root / "cut.jpg").write_bytes(encode(PHOTOS[0])[:3000])
    nodes = {
        "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
        "dct": {"stage": "jpeg.dct", "inputs": "photos", "params": {"layout": "channels"}},
        "resize": {"stage": "represent.resize", "inputs": "dct",
                   "params": {"size": [48, 64], "input": "dct"}},
    }  # fmt: skip
    report = run_local(Pipeline.from_dict({"nodes": nodes}), tmp_path / "out", workers=0)
    assert (report.counts["ok"], report.counts["error"]) == (2, 1)
    rows = {r.key: r for r in Manifest(tmp_path / "out" / "manifest.sqlite").iter_rows()}
    assert (rows["cut"].stage, rows["cut"].error_class) == ("dct", "truncated")
    for sample in from_shards(tmp_path / "out", shuffle=False):
        image = sample["image"].numpy()
        path = root / f"{sample['key']}.jpg"
        assert np.array_equal(image, decode_dct_reduced(read_jpeg_dct(path), (48, 64)))
        assert psnr(image, decode_jpeg_reduced(path, (48, 64))) >= 30


def test_dct_input_needs_the_dct_fields(tmp_path: Path) -> None:
    nodes = {
        "photos": {"stage": "files", "params": {"root": str(tmp_path), "kinds": ["image"]}},
        "resize": {"stage": "represent.resize", "inputs": "photos",
                   "params": {"size": 32, "input": "dct"}},
    }  # fmt: skip
    with pytest.raises(ConfigError, match="consumes field 'dct_y'"):
        Pipeline.from_dict({"nodes": nodes})
    assert [f.name for f in ProgressiveResize(size=8).consumes()] == ["path"]


def test_streaming_resizes_stored_coefficients_by_epoch(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i, photo in enumerate(PHOTOS):
        (root / f"p{i}.jpg").write_bytes(encode(photo[:300, :420], quality=90))
    nodes = {
        "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
        "dct": {"stage": "jpeg.dct", "inputs": "photos",
                "params": {"layout": "channels", "keep": 16, "dequantize": True}},
    }  # fmt: skip
    run_local(Pipeline.from_dict({"nodes": nodes}), tmp_path / "out", workers=0)
    schedule = {"start_size": 32, "end_size": 64, "start_epoch": 0, "end_epoch": 2, "multiple": 16}
    resize = ProgressiveResize(input="dct", schedule=schedule)
    ds = from_shards(tmp_path / "out", stages=[resize], shuffle=False)
    for epoch, side in ((0, 32), (1, 48), (2, 64)):
        ds.set_epoch(epoch)
        samples = list(ds)
        assert [s["key"] for s in samples] == ["p0", "p1"]
        for s in samples:
            assert tuple(s["image"].shape) == (side, side, 3)
            stored = {f: s[f].numpy() for f in ("dct_y", "dct_cb", "dct_cr", "dct_qt",
                                                 "jpeg_size", "jpeg_sampling")}  # fmt: skip
            assert np.array_equal(s["image"].numpy(), decode_dct_reduced(stored, side))
            from_file = decode_jpeg_reduced(root / f"{s['key']}.jpg", side)
            assert psnr(s["image"].numpy(), from_file) >= 30
