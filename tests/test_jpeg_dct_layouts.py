"""``jpeg.dct``'s outputs for every combination of its layout params, against a recomputation
from ``jpeglib.read_dct`` (the oracle), with the C row filter (which writes the layout in one
pass) and with the numpy path the ctypes fallback takes."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import jpeglib
import numpy as np
import pytest
from PIL import Image

from datapipe.errors import ItemError
from datapipe.stage import Context
from datapipe.stages.common import libturbojpeg
from datapipe.stages.common.jpeg_header import parse_header
from datapipe.stages.compressed.jpeg_dct import JpegDCTStage, read_jpeg_dct


@pytest.fixture(params=["C", "python"])
def row_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "C" and libturbojpeg.NATIVE_FILTER is None:
        pytest.skip("the C filter is not built (pip install -e . builds _jpeg_filter)")
    if request.param == "python":
        monkeypatch.setattr(libturbojpeg, "NATIVE_FILTER", None)
    return request.param


def _zigzag() -> list[int]:
    """Natural index of each zigzag position, walking the anti-diagonals (T.81 figure 5)."""
    order: list[int] = []
    for s in range(15):
        rows = range(max(0, s - 7), min(s, 7) + 1)
        order += [i * 8 + s - i for i in (rows if s % 2 else reversed(rows))]
    return order


def _pixels(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC))
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


# name -> (width, height, Pillow options, or jpeglib (v, h) sampling factors)
FILES = {
    "420-odd": (61, 37, {"subsampling": 2}),
    "422-progressive": (45, 30, {"subsampling": 1, "progressive": True}),
    "444-odd": (23, 41, {"subsampling": 0}),
    "gray-odd": (29, 19, {"gray": True}),
    "420-restarts-progressive": (
        50,
        50,
        {"subsampling": 2, "progressive": True, "restart_marker_blocks": 2},
    ),
    "440": (37, 53, {"samp_factor": [[2, 1], [1, 1], [1, 1]]}),
    "411": (71, 21, {"samp_factor": [[1, 4], [1, 1], [1, 1]]}),
    "one-pixel": (1, 1, {"subsampling": 2}),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for seed, (name, (w, h, options)) in enumerate(FILES.items()):
        path = root / f"{name}.jpg"
        pixels, opts = _pixels(w, h, seed), dict(options)
        if "samp_factor" in opts:
            jpeg = jpeglib.from_spatial(pixels)
            jpeg.samp_factor = np.array(opts["samp_factor"])
            jpeg.write_spatial(str(path), qt=85)
        else:
            buf = io.BytesIO()
            img = Image.fromarray(pixels)
            (img.convert("L") if opts.pop("gray", False) else img).save(buf, "JPEG", **opts)
            path.write_bytes(buf.getvalue())
        out[name] = path
    return out


def _expected(path: Path, params: dict[str, object]) -> dict[str, np.ndarray]:
    """The stage's dct_y, dct_cb, dct_cr recomputed from jpeglib's coefficients."""
    oracle = jpeglib.read_dct(str(path))
    comps = [oracle.Y] if oracle.Cb is None else [oracle.Y, oracle.Cb, oracle.Cr]
    zigzag, deq = _zigzag(), params["dequantize"]
    (yv, yh), luma = oracle.samp_factor[0], comps[0].shape[:2]
    out = []
    for ci, blocks in enumerate(comps):
        k = params["keep"] if ci == 0 else params["keep_chroma"] or params["keep"]
        values = blocks.astype(np.float64) * oracle.get_component_qt(ci) if deq else blocks
        flat = values.reshape(*blocks.shape[:2], 64)
        if params["layout"] == "channels":
            got = flat[..., zigzag[:k]]
        else:
            kept = np.zeros(64, bool)
            kept[zigzag[:k]] = True
            got = np.where(kept, flat, 0).reshape(blocks.shape)
        if ci and params["chroma"] == "luma_grid":
            cv, ch = oracle.samp_factor[ci]
            got = got.repeat(yv // cv, axis=0).repeat(yh // ch, axis=1)[: luma[0], : luma[1]]
        out.append(got.astype(np.float32 if deq else np.int16))
    if len(out) == 1:
        tail = (
            (8, 8) if params["layout"] == "blocks" else (params["keep_chroma"] or params["keep"],)
        )
        out += [np.zeros((0, 0, *tail), out[0].dtype)] * 2
    return dict(zip(("dct_y", "dct_cb", "dct_cr"), out, strict=True))


COMBOS = [
    dict(zip(("layout", "chroma", "dequantize", "keep", "keep_chroma"), values, strict=True))
    for values in itertools.product(
        ["blocks", "channels"], ["own_grid", "luma_grid"], [False, True], [1, 5, 64], [None, 3]
    )
]


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_layout_matches_the_oracle(files: dict[str, Path], name: str, row_filter: str):
    path = files[name]
    for params in COMBOS:
        out = JpegDCTStage(**params).process({"path": str(path)}, Context())
        for field, want in _expected(path, params).items():
            got = out[field]
            assert got.dtype == want.dtype and got.flags.c_contiguous, (params, field)
            assert got.shape == want.shape, (params, field, got.shape, want.shape)
            assert got.tobytes() == want.tobytes(), (params, field)  # bit for bit, -0.0 too
        assert out["jpeg_damage"] == 0


def test_damage_and_errors_are_the_same_through_either_filter(files: dict[str, Path]) -> None:
    data = files["420-odd"].read_bytes()
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big") + 30
    damaged = (
        data[:start]
        + bytes((b ^ 0x5A) or 1 for b in data[start : start + 12]).replace(b"\xff", b"\x7f")
        + data[start + 12 :]
    )
    found = {}
    for native in (libturbojpeg.NATIVE_FILTER, None):
        saved, libturbojpeg.NATIVE_FILTER = libturbojpeg.NATIVE_FILTER, native
        try:
            stage = JpegDCTStage(layout="channels", keep=6, chroma="luma_grid", dequantize=True)
            path = files["420-odd"].with_name("damaged.jpg")
            path.write_bytes(damaged)
            out = stage.process({"path": str(path)}, Context())
            with pytest.raises(ItemError) as info:
                JpegDCTStage(strict=True).process({"path": str(path)}, Context())
            path.write_bytes(data[: len(data) // 2])
            with pytest.raises(ItemError) as cut:
                stage.process({"path": str(path)}, Context())
        finally:
            libturbojpeg.NATIVE_FILTER = saved
        found[native] = (
            out["jpeg_damage"],
            out["dct_y"].tobytes(),
            info.value.error_class,
            cut.value.error_class,
        )
    assert len(set(found.values())) == 1
    damage, _, strict_class, cut_class = found[None]
    assert damage == read_jpeg_dct(damaged).damaged_blocks > 0
    assert (strict_class, cut_class) == ("corrupt", "truncated")


def test_layout_refuses_indices_outside_a_block() -> None:
    src, dst = np.array([0, 64]), np.array([0, 1])
    with pytest.raises(ValueError, match="outside a block"):
        libturbojpeg.layout((2, 2), (2, 2), (1, 1), src, dst, (2,), None)
    with pytest.raises(ValueError, match="does not cover"):
        libturbojpeg.layout((2, 2), (5, 2), (2, 1), src[:1], dst[:1], (1,), None)


def test_a_header_parsed_before_is_reused_but_not_shared(files: dict[str, Path]) -> None:
    data = files["444-odd"].read_bytes()
    first = parse_header(data, max_pixels=10**6)
    again = parse_header(data[:-2], max_pixels=10**6)  # the same markers, no EOI
    assert first.has_eoi and not again.has_eoi
    assert (again.width, again.height, again.grids) == (first.width, first.height, first.grids)
    np.testing.assert_array_equal(again.qt, first.qt)
    again.qt[:] = 0  # each caller gets its own tables
    assert parse_header(data, max_pixels=10**6).qt.any()
    with pytest.raises(ItemError) as info:
        parse_header(data, max_pixels=100)  # the pixel budget is part of the key
    assert info.value.error_class == "decode_bomb"
