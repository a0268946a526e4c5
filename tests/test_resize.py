"""Progressive resizing: the schedule (hand-computed and against ffcv-imagenet's formula),
reduced JPEG decoding (exact sizes, PSNR against decode-then-resize on photos, the DCT scale
actually used), bad input through the stage, and the epoch reaching the stage through
``datapipe run`` and the streaming loader's ``set_epoch``."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from torch.utils.data import DataLoader

from datapipe import registry
from datapipe.errors import ItemError, ParamError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context
from datapipe.stages.common import images
from datapipe.stages.common.libturbojpeg import TurboJPEGUnavailable
from datapipe.stages.io.image_resize import ImageResize, decode_resize
from datapipe.stages.represent.resize import ProgressiveResize, decode_jpeg_reduced
from datapipe.stages.represent.schedule import ResizeSchedule
from datapipe.store.manifest import Manifest
from datapipe.stream import from_pipeline
from photos import (
    BAD,
    CASES,
    DAMAGED,
    PHOTOS,
    damaged,
    draft_reduced,
    draft_resize,
    encode,
    full_then_resize,
    psnr,
)

registry.register(ProgressiveResize)


# -- the schedule --------------------------------------------------------------------------------
def ffcv_get_resolution(epoch: int, min_res: int, max_res: int, end_ramp: int, start_ramp: int):
    """ffcv-imagenet train_imagenet.py ``get_resolution``, as published."""
    assert min_res <= max_res
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


@pytest.mark.parametrize(("lo", "hi", "start", "end"), [(160, 192, 65, 76), (128, 256, 3, 20)])
def test_schedule_equals_ffcv_imagenet(lo: int, hi: int, start: int, end: int) -> None:
    schedule = ResizeSchedule(lo, hi, start, end)
    want = [ffcv_get_resolution(e, lo, hi, end, start) for e in range(end + 10)]
    assert schedule.sizes(end + 10) == want


def test_schedule_by_hand() -> None:
    # ramp 96 -> 224 over epochs 1..5: 96 + 32 (e - 1), then 224, then 256 from epoch 7
    s = ResizeSchedule(96, 224, 1, 5, final_size=256, final_epoch=7)
    assert s.sizes(9) == [96, 96, 128, 160, 192, 224, 224, 256, 256]
    # rounding to the nearest multiple (110 and 120 -> 128; 160 / 64 = 2.5 -> 2, ties to
    # even as numpy.round), kept inside the two sizes (85 -> 64 -> 70)
    assert ResizeSchedule(100, 130, 0, 3, multiple=64).sizes(4) == [100, 128, 128, 130]
    assert ResizeSchedule(100, 190, 0, 3, multiple=64).sizes(4) == [100, 128, 128, 190]
    assert ResizeSchedule(70, 100, 0, 2, multiple=64).sizes(3) == [70, 70, 100]
    assert ResizeSchedule(10, 40, 0, 3, multiple=1).sizes(5) == [10, 20, 30, 40, 40]
    # shrinking schedules work too; a ramp of zero epochs is a step
    assert ResizeSchedule(224, 128, 0, 3).sizes(4) == [224, 192, 160, 128]
    assert ResizeSchedule(64, 128, 2, 2).sizes(4) == [64, 64, 128, 128]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"start_size": 0}, "greater than or equal to 1"),
        ({"start_epoch": 5, "end_epoch": 4}, "end_epoch .4. must not be before start_epoch"),
        ({"final_size": 256}, "give both final_size and final_epoch"),
        ({"final_size": 256, "final_epoch": 3}, "final_epoch .3. must not be before end_epoch"),
        ({"multiple": 0}, "greater than or equal to 1"),
    ],
)
def test_schedule_rejects_bad_values(kw: dict[str, Any], match: str) -> None:
    args = {"start_size": 128, "end_size": 224, "start_epoch": 0, "end_epoch": 4, **kw}
    with pytest.raises(ValueError, match=match):
        ResizeSchedule(**args)


def test_batch_size_keeps_the_pixels_per_batch() -> None:
    s = ResizeSchedule(128, 224, 0, 10)
    # by hand: 256 x 224^2 / 128^2 = 784; epoch 5 is 192 px: 256 x 50176 / 36864 = 348.4 -> 344
    assert [s.batch_size(e, 256) for e in (0, 5, 10)] == [784, 344, 256]
    assert s.batch_size(0, 256, base_size=128) == 256 and s.batch_size(0, 100, multiple=1) == 306
    assert s.batch_size(10, 4) == 4 and s.batch_size(10, 1) == 1  # below one multiple
    assert s.batch_size(0, 2) == 6  # 2 x 3.06 = 6.1: below one multiple, whole images
    final = ResizeSchedule(32, 64, 0, 4, final_size=96, final_epoch=6)  # base: the largest, 96
    assert [final.batch_size(e, 8) for e in (0, 4, 6)] == [72, 16, 8]
    for e in range(12):
        side, b = s.size(e), s.batch_size(e, 96)
        assert b % 8 == 0 and b * side**2 <= 96 * 224**2 < (b + 8) * side**2
        assert s.batch_size(e, 3) * side**2 <= 3 * 224**2  # never more pixels than the base
    for kw in ({"base_batch": 0}, {"base_batch": 64, "multiple": 0},
               {"base_batch": 64, "base_size": 0}):  # fmt: skip
        with pytest.raises(ValueError, match=r"ResizeSchedule\.batch_size"):
            s.batch_size(0, **kw)


def test_schedule_rejects_negative_epochs() -> None:
    with pytest.raises(ValueError, match="'epoch' parameter"):
        ResizeSchedule(64, 128, 0, 4).size(-1)


# -- test images ----------------------------------------------------------------------------------
@pytest.fixture
def dct_scales(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The DCT scale denominators libjpeg is asked for (1 = full decode), through
    libturbojpeg or Pillow's draft."""
    scales: list[int] = []
    draft = JpegImagePlugin.JpegImageFile.draft
    decompress = getattr(images, "decompress", None)

    def spy_draft(self: Any, mode: Any, size: Any) -> Any:
        out = draft(self, mode, size)
        scales.append(self.decoderconfig[0] if out else 1)
        return out

    def spy_decompress(data: bytes, width: int, height: int, scale: int, **kw: Any) -> Any:
        scales.append(scale)
        assert decompress is not None
        return decompress(data, width, height, scale, **kw)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)
    monkeypatch.setattr(images, "decompress", spy_decompress, raising=False)
    return scales


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("resample", ["bicubic", "bilinear"])
def test_quality_against_decode_then_resize(case: str, resample: str, dct_scales: list[int]):
    data = CASES[case]()
    filt = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[resample]
    for size in (56, 112, 224):
        got = decode_jpeg_reduced(data, size, resample=resample)
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        want = full_then_resize(data, size, size, filt)
        assert psnr(got, want) >= 30.0, (case, size)
    if case.startswith(("mosaic", "china 2x")):  # every size took a reduced DCT scale
        assert dct_scales == [8, 4, 2]
    else:
        assert dct_scales[:2] == [4, 2]


def test_stretch_and_rectangular_targets() -> None:
    data = CASES["mosaic 1280x854 q90"]()
    for h, w, mode in ((60, 200, "crop"), (200, 60, "crop"), (100, 100, "stretch")):
        got = decode_jpeg_reduced(data, (h, w), mode=mode)
        assert got.shape == (h, w, 3)
        want = full_then_resize(data, h, w, Image.Resampling.BICUBIC, mode)
        assert psnr(got, want) >= 30.0


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_other_formats_decode_in_full(fmt: str, dct_scales: list[int]) -> None:
    pixels = PHOTOS[1][:300, :400]
    data = encode(pixels, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    got = decode_jpeg_reduced(data, (75, 100), mode="stretch")
    want = np.asarray(Image.fromarray(pixels).resize((100, 75), Image.Resampling.BICUBIC))
    assert np.array_equal(got, want) and dct_scales == []


def test_palette_alpha_and_cmyk_images_become_rgb() -> None:
    rgba = np.dstack([PHOTOS[0][:120, :160], np.full((120, 160), 200, np.uint8)])
    palette = Image.fromarray(PHOTOS[0][:120, :160]).convert("P")
    buf = io.BytesIO()
    palette.save(buf, "PNG")
    cmyk = io.BytesIO()
    Image.fromarray(PHOTOS[0][:240, :320]).convert("CMYK").save(cmyk, "JPEG")
    for data in (encode(rgba, "PNG"), buf.getvalue(), cmyk.getvalue()):
        assert decode_jpeg_reduced(data, 32).shape == (32, 32, 3)


@pytest.mark.parametrize(("width", "height"), [(95, 95), (95, 97), (97, 95), (300, 300)])
def test_crop_box_rounding_stays_inside_the_image(width: int, height: int) -> None:
    # 56 / (56 / 95) is 95 + 7e-15: an unclamped box would make Pillow refuse the resize
    data = encode(PHOTOS[0][:height, :width], "PNG")
    for size in (56, (56, 30), (30, 56), min(width, height)):
        got = decode_jpeg_reduced(data, size)
        assert got.shape[:2] == ((size, size) if isinstance(size, int) else size)


def test_paths_and_bytes_agree(tmp_path: Path) -> None:
    data = CASES["china crop 620x420"]()
    path = tmp_path / "china.jpg"
    path.write_bytes(data)
    for src in (path, str(path)):
        assert np.array_equal(decode_jpeg_reduced(src, 80), decode_jpeg_reduced(data, 80))


def test_upscaling_is_refused_unless_allowed() -> None:
    data = encode(PHOTOS[0][:100, :150])
    with pytest.raises(ItemError, match="allow_upscale=True") as info:
        decode_jpeg_reduced(data, 128)
    assert info.value.error_class == "unsupported"
    with pytest.raises(ItemError, match="allow_upscale"):
        decode_jpeg_reduced(data, (90, 160), mode="stretch")
    assert decode_jpeg_reduced(data, 128, allow_upscale=True).shape == (128, 128, 3)
    assert decode_jpeg_reduced(data, 100).shape == (100, 100, 3)  # the short side: no upscale


@pytest.mark.parametrize("size", [0, -3, (0, 10), (10, 0), (1, 2, 3), 2.5, True, "64", 20000])
def test_bad_sizes_are_clear_errors(size: Any) -> None:
    with pytest.raises(ValueError, match="The 'size' parameter of decode_jpeg_reduced"):
        decode_jpeg_reduced(encode(PHOTOS[0][:64, :64]), size)


def test_bad_options() -> None:
    data = encode(PHOTOS[0][:64, :64])
    with pytest.raises(ValueError, match="'mode' parameter"):
        decode_jpeg_reduced(data, 32, mode="fit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'resample' parameter"):
        decode_jpeg_reduced(data, 32, resample="nearest")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_gives_item_errors(name: str) -> None:
    make, error_class = BAD[name]
    with pytest.raises(ItemError) as info:
        strict = {"strict": True} if "strict" in name else {}
        decode_jpeg_reduced(make(encode(PHOTOS[0][:200, :300])), 64, **strict)
    assert info.value.error_class == error_class


def test_missing_file_is_an_io_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_jpeg_reduced(tmp_path / "nope.jpg", 32)


# -- libjpeg's warnings: damage kept and counted, or refused --------------------------------------
BICUBIC = Image.Resampling.BICUBIC


@pytest.mark.parametrize("case", sorted(CASES))
def test_clean_jpegs_decode_to_the_pixels_of_pillow_draft(case: str) -> None:
    data = CASES[case]()
    for size in (56, 112, 224):
        for mode in ("crop", "stretch"):  # image.resize: bit-identical to Pillow's draft
            assert np.array_equal(
                decode_resize(data, size, mode=mode), draft_resize(data, size, mode)
            )
        got = decode_jpeg_reduced(data, size)
        assert np.array_equal(got, draft_reduced(data, size, size, BICUBIC))
        # represent.resize used to resize in YCbCr, then convert: rounding and clipping apart
        assert psnr(got, draft_reduced(data, size, size, BICUBIC, ycc=True)) >= 47


def _process(stage: Any, data: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    return stage.process({"path": str(path), "size": len(data)}, Context())


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_scans_are_decoded_around_and_reported(name: str, tmp_path: Path) -> None:
    good = CASES["mosaic 1280x854 q90"]()
    data = DAMAGED[name](good)
    for stage in (ImageResize(size=64), ProgressiveResize(size=64)):
        clean = _process(stage, good, tmp_path)
        out = _process(stage, data, tmp_path)
        assert (clean["image_damage"], out["image_damage"]) == (0, 1)
        assert psnr(out["image"], clean["image"]) < 30  # the damage is real
        with pytest.raises(ItemError, match=r"refused \(strict\): Corrupt JPEG data") as info:
            _process(type(stage)(size=64, strict=True), data, tmp_path)
        assert info.value.error_class == "corrupt"
        assert _process(type(stage)(size=64, strict=True), good, tmp_path)["image_damage"] == 0
    # what libjpeg decodes around the damage: the pixels Pillow gave, without a word
    assert np.array_equal(decode_resize(data, 64), draft_resize(data, 64))
    assert np.array_equal(decode_jpeg_reduced(data, 64), draft_reduced(data, 64, 64, BICUBIC))


def test_a_fatal_error_after_a_warning_is_an_error(tmp_path: Path) -> None:
    # 0xFF bytes make a bogus marker after corrupt data: libturbojpeg's error code still
    # says "warning" (tjGetErrorCode), but libjpeg gave up ("Unsupported marker type")
    data = damaged(CASES["mosaic 1280x854 q90"](), 0xFF, 32)
    for stage in (ImageResize(size=64), ProgressiveResize(size=64)):
        with pytest.raises(ItemError, match="cannot decode the JPEG: Unsupported marker") as info:
            _process(stage, data, tmp_path)
        assert info.value.error_class == "corrupt"


def test_without_libturbojpeg_jpegs_decode_with_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: Any, **kw: Any) -> Any:
        raise TurboJPEGUnavailable("libturbojpeg not found")

    monkeypatch.setattr(images, "decompress", missing)
    data = CASES["china crop 620x420"]()
    assert np.array_equal(decode_resize(data, 56), draft_resize(data, 56))
    assert np.array_equal(decode_jpeg_reduced(data, 56), draft_reduced(data, 56, 56, BICUBIC))
    with pytest.raises(TurboJPEGUnavailable):
        decode_jpeg_reduced(data, 56, strict=True)


@pytest.mark.parametrize(("width", "height"), [(5, 3), (7, 7), (8, 8), (9, 30), (16, 9)])
def test_tiny_jpegs(width: int, height: int, dct_scales: list[int]) -> None:
    data = encode(PHOTOS[0][100 : 100 + height, 100 : 100 + width])
    got = decode_jpeg_reduced(data, 1), decode_resize(data, 1)
    if max(width, height) < 8:  # libturbojpeg's scales are ambiguous there: a full decode
        assert dct_scales == [1, 1] and [a.shape for a in got] == [(1, 1, 3)] * 2
    else:  # the DCT scale of Pillow's draft
        assert np.array_equal(got[0], draft_reduced(data, 1, 1, BICUBIC))
        assert np.array_equal(got[1], draft_resize(data, 1))


# -- the stage -------------------------------------------------------------------------------------
SCHEDULE = {"start_size": 32, "end_size": 64, "start_epoch": 1, "end_epoch": 3,
            "final_size": 96, "final_epoch": 5, "multiple": 16}  # fmt: skip
SIZES = [32, 32, 48, 64, 64, 96, 96]  # epochs 0..6


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for label, photo in zip(("china", "flower"), PHOTOS, strict=True):
        (root / label).mkdir()
        for i in range(3):
            y, x = int(rng.integers(0, 100)), int(rng.integers(0, 200))
            (root / label / f"{label}_{i}.jpg").write_bytes(encode(photo[y : y + 300, x : x + 420]))
    return root


@pytest.fixture(scope="module")
def bad_photos(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    good = (photos / "china" / "china_0.jpg").read_bytes()
    (root / "ok").mkdir()
    (root / "ok" / "good.jpg").write_bytes(good)
    (root / "bad").mkdir()
    for name, (make, _) in BAD.items():
        (root / "bad" / f"{name.replace(' ', '_').replace(',', '')}.jpg").write_bytes(make(good))
    return root


def _nodes(root: Path, params: dict[str, Any], stage: str = "represent.resize") -> dict[str, Any]:
    return {
        "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
        "resize": {"stage": stage, "inputs": "photos", "params": params},
    }


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("stage", ["represent.resize", "image.resize"])
def test_bad_files_become_error_rows_through_the_stage(
    stage: str, strict: bool, bad_photos: Path, tmp_path: Path
) -> None:
    size = [40, 56] if stage == "represent.resize" else 40
    p = Pipeline.from_dict({"nodes": _nodes(bad_photos, {"size": size, "strict": strict}, stage)})
    report = run_local(p, tmp_path / "out", workers=1)
    rows = {r.key: r for r in Manifest(tmp_path / "out" / "manifest.sqlite").iter_rows()}
    for name, (_, error_class) in BAD.items():
        row = rows[f"bad/{name.replace(' ', '_').replace(',', '')}"]
        if strict or "strict" not in name:
            assert (row.status, row.stage, row.error_class) == ("error", "resize", error_class)
    damaged, good = rows["bad/damaged_strict"], rows["ok/good"]
    assert not good.notes
    counts = report.counts["ok"], report.counts["error"], report.counts["damaged"]
    if strict:
        assert counts == (1, len(BAD), 0)
        assert "damaged JPEG refused (strict): Corrupt JPEG data" in damaged.message
    else:  # kept, and counted as damaged in the report and the manifest
        assert counts == (2, len(BAD) - 1, 1)
        assert damaged.status == "ok" and json.loads(damaged.notes) == {"image_damage": 1}


def test_run_uses_the_epoch_of_the_run(photos: Path, tmp_path: Path) -> None:
    p = Pipeline.from_dict({"nodes": _nodes(photos, {"schedule": SCHEDULE})})
    for epoch in (0, 4):
        run_local(p, tmp_path / f"out{epoch}", epoch=epoch)
        samples = list(from_shards_images(tmp_path / f"out{epoch}"))
        assert len(samples) == 6 and {s.shape for s in samples} == {(SIZES[epoch],) * 2 + (3,)}


def from_shards_images(out: Path) -> list[np.ndarray]:
    from datapipe.stream import from_shards

    return [s["image"].numpy() for s in from_shards(out, shuffle=False)]


def test_streaming_set_epoch_applies_the_schedule(photos: Path, tmp_path: Path) -> None:
    spec = {"name": "progressive", "vars": {"data": str(photos)}, "nodes": _nodes(photos, {})}
    spec["nodes"]["photos"]["params"]["root"] = "${data}"
    spec["nodes"]["resize"]["params"] = {"schedule": SCHEDULE}
    path = tmp_path / "progressive.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    ds = from_pipeline(path, seed=0)
    stage = ds.pipeline.nodes_by_id["resize"].stage
    assert stage.params.schedule == ResizeSchedule(**SCHEDULE)
    for epoch in (0, 2, 3, 6):
        ds.set_epoch(epoch)
        shapes = {tuple(s["image"].shape) for s in ds}
        assert shapes == {(SIZES[epoch], SIZES[epoch], 3)}
    # through DataLoader workers that outlive set_epoch
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, timeout=60)
    for epoch in (1, 5):
        ds.set_epoch(epoch)
        assert {tuple(s["image"].shape) for s in loader} == {(SIZES[epoch], SIZES[epoch], 3)}
    # the pixels are those of the function at that size
    ds.set_epoch(2)
    sample = next(iter(ds))
    want = decode_jpeg_reduced(photos / f"{sample['key']}.jpg", 48)
    assert np.array_equal(sample["image"].numpy(), want)


def test_stage_declares_fields_and_params() -> None:
    scheduled = ProgressiveResize(**ProgressiveResize.EXAMPLE_PARAMS)
    assert scheduled.produces()[0].shape == "H W 3"
    assert ProgressiveResize(size=56).produces()[0].shape == "56 56 3"
    damage = Field("image_damage", "int", "", "1 when libjpeg met corrupt data (0 when clean)")
    assert ProgressiveResize(size=[48, 64]).produces() == (
        Field("image", "uint8", "48 64 3", "RGB pixels"),
        damage,
    )
    assert ImageResize(size=8).produces()[1] == damage
    assert ProgressiveResize(size=8, input="dct").produces()[1:] == ()  # jpeg.dct reports it
    assert [scheduled.size_at(e)[0] for e in range(8)] == [64, 80, 96, 112, 128, 128, 160, 160]
    again = ProgressiveResize(**scheduled.get_params())
    assert again == scheduled and again.token() == scheduled.token()
    clone = pickle.loads(pickle.dumps(scheduled))
    assert clone == scheduled and vars(clone).keys() == {"params"}
    with pytest.raises(ParamError, match=r"params\.not_a_param: unknown parameter of"):
        ProgressiveResize(size=32, not_a_param=1)
    for bad in ({}, {"size": 32, "schedule": SCHEDULE}, {"size": 0}, {"size": [32, 0]},
                {"schedule": {**SCHEDULE, "end_epoch": 0}}):  # fmt: skip
        with pytest.raises(ParamError):
            ProgressiveResize(**bad)
    with pytest.raises(ItemError, match="zero-byte"):
        ProgressiveResize(size=8).process({"path": "x.jpg", "size": 0}, Context())
