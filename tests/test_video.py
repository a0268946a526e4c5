"""Video readers: motion vectors, frame types, I-frames, packets, and bad input (CoViAR:
test_video_coviar.py).

Every clip is generated here with PyAV: a textured square moving by a known (dx, dy) per frame
over a static textured background, or a whole picture panning at a known speed
(``datapipe.stages.common.video_synth``).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from datapipe import registry
from datapipe.errors import ItemError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stage import Context
from datapipe.stages.common.motion_vectors import GrowingArray, motion_vectors, rasterize
from datapipe.stages.common.video_synth import (
    Square,
    moving_square_clip,
    panning_clip,
    render,
    write_clip,
)
from datapipe.stages.compressed.video_coviar import CoviarStage, coviar
from datapipe.stages.compressed.video_frames import (
    FrameTypesStage,
    IFramesStage,
    frame_types,
    iframes,
    read_iframes,
)
from datapipe.stages.compressed.video_mv import MotionVectorsStage, decode_mv, encode_mv
from datapipe.stages.compressed.video_packets import PacketsStage, read_video_packets
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest

STAGES = (MotionVectorsStage, FrameTypesStage, IFramesStage, PacketsStage, CoviarStage)
for _cls in STAGES:
    registry.register(_cls)

MOTION = (2, 1)
VFR_PTS = [0, 1, 2, 4, 5, 7, 8, 9, 12, 13, 14, 15, 17, 18, 19, 20, 22, 23, 24, 25, 26, 28, 29, 30]
#: name -> (file name, moving_square_clip keyword arguments)
CLIPS: dict[str, tuple[str, dict[str, Any]]] = {
    "h264": ("h264.mp4", {"codec": "libx264"}),
    "h264_b1": ("h264_b1.mp4", {"codec": "libx264", "bframes": 1}),
    "h264_b2": ("h264_b2.mp4", {"codec": "libx264", "bframes": 2}),
    "mpeg4": ("mpeg4.mp4", {"codec": "mpeg4"}),
    "mpeg2": ("mpeg2.mp4", {"codec": "mpeg2video"}),
    "odd": ("odd.mp4", {"codec": "libx264", "size": (100, 60), "side": 36, "frames": 16}),
    "audio": ("audio.mp4", {"codec": "libx264", "audio": True}),
    "vfr": ("vfr.mp4", {"codec": "libx264", "pts": VFR_PTS}),
    "mkv": ("mpeg4.mkv", {"codec": "mpeg4", "container": "matroska"}),
    "hevc": ("hevc.mp4", {"codec": "libx265", "bframes": 2}),
    "vp9": ("vp9.webm", {"codec": "libvpx-vp9"}),
}
MV_CLIPS = ["h264", "h264_b1", "mpeg4", "mpeg2", "odd", "audio", "vfr", "mkv"]


def _need_encoder(codec: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Square]]:
    """Build clips on first use, once per module."""
    root = tmp_path_factory.mktemp("clips")
    made: dict[str, tuple[Path, Square]] = {}

    def get(name: str) -> tuple[Path, Square]:
        if name not in made:
            filename, kwargs = CLIPS[name]
            _need_encoder(kwargs["codec"])
            path = root / filename
            kwargs = {"side": 48, **kwargs}
            made[name] = (path, moving_square_clip(path, motion=MOTION, **kwargs))
        return made[name]

    return get


def _pyav_decode(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def _letters(frames: list[av.VideoFrame]) -> str:
    names = {1: "I", 2: "P", 3: "B"}
    return "".join(names[int(f.pict_type)] for f in frames)


def _raw_decode(path: Path) -> tuple[list[np.ndarray | None], str, list[np.ndarray]]:
    vectors, rgb = [], []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_type = "NONE"
        s.codec_context.options = {"flags2": "+export_mvs"}
        frames = list(c.decode(s))
    for f in frames:
        sd = f.side_data.get("MOTION_VECTORS")
        vectors.append(None if sd is None else sd.to_ndarray())
        rgb.append(f.to_ndarray(format="rgb24"))
    return vectors, _letters(frames), rgb


# -- motion vectors -------------------------------------------------------------------------------
def _interior_cells(square: Square, t: int, block: int, margin: int = 0) -> tuple[slice, slice]:
    x, y, x1, y1 = square.box(t)
    cx0, cy0 = -(-(x + margin) // block), -(-(y + margin) // block)
    return slice(cy0, (y1 - margin) // block), slice(cx0, (x1 - margin) // block)


def _background(shape: tuple[int, int], square: Square, t: int, block: int) -> np.ndarray:
    """Cells far from the square in frames t-2..t+2."""
    mask = np.ones(shape, bool)
    for s in range(t - 2, t + 3):
        x, y, x1, y1 = square.box(s)
        mask[max(0, y // block - 1) : y1 // block + 2, max(0, x // block - 1) : x1 // block + 2] = 0
    return mask


@pytest.mark.parametrize("name", MV_CLIPS)
def test_motion_vectors_recover_known_motion(name: str, clip: Any) -> None:
    path, square = clip(name)
    field = motion_vectors(path)
    frames = _pyav_decode(path)
    types = "".join(field.frame_types)
    assert len(field.mv) == len(frames) == len(types) == len(field.pts)
    assert types == _letters(frames)
    assert field.mv.dtype == np.float32 and field.damaged == 0
    assert field.mv.shape[1:] == (math.ceil(_size(path)[1] / 16), math.ceil(_size(path)[0] / 16), 2)
    assert np.array_equal(field.is_iframe, np.array([c == "I" for c in types]))
    assert not field.mv[field.is_iframe].any()
    # FFmpeg's MPEG-2 decoder drops the vectors of the frame it outputs at the sequence end
    missing = [t for t in range(len(types)) if not field.has_vectors[t] and types[t] != "I"]
    assert missing == ([len(types) - 1] if name == "mpeg2" else [])
    truth = np.array(MOTION, np.float32)
    anchor = 0
    for t, kind in enumerate(types):
        if kind == "I":
            anchor = t
            continue
        if not field.has_vectors[t]:
            continue
        # P: motion over the distance to the previous anchor; B (one B between anchors):
        # one frame in either direction, signed forward
        expected = truth * (t - anchor if kind == "P" else 1)
        if kind == "P":
            anchor = t
        rows, cols = _interior_cells(square, t, 16)
        inside = field.mv[t, rows, cols].reshape(-1, 2)
        assert len(inside) >= 1
        assert np.all(np.abs(np.median(inside, axis=0) - expected) <= 1.0), (t, kind, inside)
        outside = field.mv[t][_background(field.mv.shape[1:3], square, t, 16)]
        assert np.all(np.abs(np.median(outside, axis=0)) <= 0.25), (t, kind)


def _size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return cc.width, cc.height


@pytest.mark.parametrize("name", ["h264_b2", "mpeg4", "mpeg2"])
def test_motion_vectors_are_deterministic_and_independent_of_pixel_skipping(
    name: str, clip: Any
) -> None:
    path, _ = clip(name)
    a, b = motion_vectors(path, block=8), motion_vectors(path, block=8)
    full = motion_vectors(path, block=8, reconstruct=True)
    for other in (b, full):
        assert np.array_equal(a.mv, other.mv)
        assert np.array_equal(a.pts, other.pts) and a.frame_types == other.frame_types


PYRAMID = {"x264-params": "bframes=3:b-adapt=0:b-pyramid=normal:ref=1:scenecut=0:keyint=12"}
#: name -> (file name, panning_clip keyword arguments)
PANS: dict[str, tuple[str, dict[str, Any]]] = {
    "h264_b2": ("pan_b2.mp4", {"bframes": 2}),
    "h264_pyramid": ("pan_pyramid.mp4", {"options": PYRAMID}),
    "h264_pyramid_ts": ("pan_pyramid.ts", {"options": PYRAMID, "container": "mpegts"}),
    "mpeg2_b2": ("pan_mpeg2.mp4", {"codec": "mpeg2video", "bframes": 2}),
}


def _anchor_distances(types: str) -> list[tuple[int, int]]:
    """(past, future) distance of each frame to the I/P-frames around it (no B-pyramid)."""
    anchors = [t for t, k in enumerate(types) if k != "B"]
    out = []
    for t in range(len(types)):
        before = [a for a in anchors if a < t]
        after = [a for a in anchors if a > t]
        out.append((t - before[-1] if before else 1, after[0] - t if after else 1))
    return out


@pytest.mark.parametrize("name", list(PANS))
def test_per_frame_normalisation_gives_the_known_speed(name: str, tmp_path: Path) -> None:
    filename, kwargs = PANS[name]
    _need_encoder(kwargs.get("codec", "libx264"))
    path = tmp_path / filename
    panning_clip(path, motion=MOTION, **kwargs)
    truth = np.array(MOTION, np.float32)
    per_frame = motion_vectors(path, normalize="per_frame")
    coded = motion_vectors(path)
    types = "".join(per_frame.frame_types)
    assert types == "".join(coded.frame_types) and "B" in types
    assert per_frame.normalize == "per_frame" and coded.normalize == "reference"
    assert np.array_equal(per_frame.has_vectors, coded.has_vectors)
    assert not per_frame.mv[~per_frame.has_vectors].any()
    vectors, _, _ = _raw_decode(path)
    distance = _anchor_distances(types)
    for t, kind in enumerate(types):
        if not per_frame.has_vectors[t]:
            continue
        # the whole picture moves by the known speed: px/frame in every frame (new content
        # enters along the top and left edges)
        cells = per_frame.mv[t, 1:, 1:].reshape(-1, 2)
        assert np.all(np.abs(np.median(cells, axis=0) - truth) <= 0.25), (t, kind)
        assert np.mean(np.all(np.abs(cells - truth) <= 0.5, axis=1)) >= 0.8, (t, kind)
        if kind == "P":  # as coded: the motion over the distance to the previous anchor
            expected = truth * distance[t][0]
            assert np.all(np.abs(np.median(coded.mv[t].reshape(-1, 2), axis=0) - expected) <= 0.25)
        elif "pyramid" not in name:  # the coded B vectors span the distance to each anchor
            for source, sign, d in ((-1, -1, distance[t][0]), (1, 1, distance[t][1])):
                v = vectors[t][vectors[t]["source"] == source]
                offset = np.stack([v["motion_x"], v["motion_y"]], 1) / v["motion_scale"][:, None]
                assert np.all(np.abs(np.median(sign * offset, axis=0) - truth * d) <= 0.25)
    spans = [t for t, k in enumerate(types) if k == "B" and max(distance[t]) > 1]
    assert any(np.abs(coded.mv[t] - per_frame.mv[t]).max() >= 1 for t in spans)


def test_per_frame_normalisation_reads_past_max_frames_for_the_next_reference(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pan.mp4"
    panning_clip(path, motion=MOTION, options=PYRAMID)
    full = motion_vectors(path, normalize="per_frame")
    assert "".join(full.frame_types).startswith("IBBBP")
    for k in (2, 3, 4, 6):  # stop on a B-frame whose next reference is not yet read
        part = motion_vectors(path, normalize="per_frame", max_frames=k)
        assert len(part.mv) == k and np.array_equal(part.mv, full.mv[:k])
        assert part.frame_types == full.frame_types[:k] and part.damaged == 0
    with pytest.raises(ValueError, match="normalize"):
        motion_vectors(path, normalize="per_second")  # type: ignore[arg-type]


def test_max_frames_and_unknown_frame_count(clip: Any) -> None:
    path, _ = clip("mkv")  # Matroska declares no frame count: the buffer grows in chunks
    assert motion_vectors(path).mv.shape[0] == 24
    assert motion_vectors(path, max_frames=5).mv.shape[0] == 5


def _vectors(rows: list[tuple[int, int, int, int, int, int, int, int]], dtype: np.dtype):
    """(source, w, h, dst_x, dst_y, motion_x, motion_y, motion_scale) -> AVMotionVector array."""
    out = np.zeros(len(rows), dtype=dtype)
    for i, (src, w, h, dx, dy, mx, my, scale) in enumerate(rows):
        out[i]["source"], out[i]["w"], out[i]["h"] = src, w, h
        out[i]["dst_x"], out[i]["dst_y"] = dx, dy
        out[i]["motion_x"], out[i]["motion_y"], out[i]["motion_scale"] = mx, my, scale
    return out


def test_rasterize_weights_blocks_by_area_and_signs_future_references(clip: Any) -> None:
    path, _ = clip("h264")
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs"}
        dtype = next(
            f.side_data.get("MOTION_VECTORS").to_ndarray().dtype
            for f in c.decode(s)
            if f.side_data.get("MOTION_VECTORS") is not None
        )
    vecs = _vectors(
        [
            (-1, 16, 16, 8, 8, -8, 4, 4),  # cell (0,0): past, offset (-2, 1) -> forward (2, -1)
            (-1, 8, 8, 20, 4, -4, 0, 2),  # cell (0,1): three 8x8 blocks, one left intra
            (-1, 8, 8, 28, 4, 0, 0, 2),
            (-1, 8, 8, 20, 12, -4, -4, 2),
            (-1, 16, 16, 8, 24, 6, 2, 2),  # cell (1,0): bi-predicted, past (-3,-1) ...
            (1, 16, 16, 8, 24, 2, 2, 2),  # ... future (+1, +1): mean (-1, 0)
            (1, 16, 16, 40, 40, 4, 4, 4),  # outside a 2x2 grid: dropped
        ],
        dtype,
    )
    field = rasterize(vecs, 2, 2, 16)
    np.testing.assert_allclose(field[0, 0], [2, -1])
    np.testing.assert_allclose(field[0, 1], [(2 + 0 + 2) / 3, (0 + 0 + 2) / 3], rtol=1e-6)
    np.testing.assert_allclose(field[1, 0], [-1, 0])
    np.testing.assert_allclose(field[1, 1], [0, 0])
    fine = rasterize(vecs, 4, 4, 8)  # a 16x16 block fills four 8x8 cells
    np.testing.assert_allclose(fine[0:2, 0:2].reshape(-1, 2), [[2, -1]] * 4)
    np.testing.assert_allclose(fine[0, 2:4], [[2, 0], [0, 0]])
    np.testing.assert_allclose(fine[1, 2:4], [[2, 2], [0, 0]])


def test_growing_array_grows_in_chunks_and_keeps_the_data() -> None:
    buf = GrowingArray((3,), np.int16, capacity=1000, first_bytes=12)  # 2 slots at first
    assert len(buf.buf) == 2
    for i in range(11):
        buf.slot()[:] = i
    buf.at(14)[:] = 14  # out of order, as CoViAR's B-frames arrive
    out = buf.array()
    assert out.shape == (15, 3) and out[:11, 0].tolist() == list(range(11)) and out[14, 0] == 14


def test_quarter_pixel_storage_round_trips() -> None:
    mv = np.array([[0.25, -1.75], [100.5, -0.0], [1e6, -1e6]], np.float32)
    q = encode_mv(mv)
    assert q.dtype == np.int16
    np.testing.assert_array_equal(decode_mv(q)[:2], mv[:2])
    assert decode_mv(q)[2].tolist() == [32767 / 4, -32768 / 4]


# -- frame types, I-frames, packets ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["h264", "h264_b2", "mpeg4", "mpeg2", "hevc", "vp9", "vfr"])
def test_frame_types_match_pyav(name: str, clip: Any) -> None:
    path, _ = clip(name)
    frames = _pyav_decode(path)
    ft = frame_types(path)
    assert ft.types == _letters(frames) and ft.damaged == 0
    assert ft.pts.tolist() == [f.pts for f in frames]
    assert ft.key.tolist() == [bool(f.key_frame) for f in frames]


@pytest.mark.parametrize("name", ["h264_b2", "mpeg4", "mpeg2", "hevc", "odd"])
def test_iframes_are_the_key_frames_of_a_full_decode(name: str, clip: Any) -> None:
    path, _ = clip(name)
    frames = _pyav_decode(path)
    keys = [i for i, f in enumerate(frames) if f.key_frame]
    idx, rgb = iframes(path)
    assert idx.tolist() == keys and len(keys) >= 2
    assert rgb.dtype == np.uint8 and rgb.shape == (len(keys), frames[0].height, frames[0].width, 3)
    for k, i in enumerate(keys):
        assert np.array_equal(rgb[k], frames[i].to_ndarray(format="rgb24"))
    first = read_iframes(path, max_iframes=1)
    assert first.indices.tolist() == keys[:1] and np.array_equal(first.frames[0], rgb[0])


@pytest.mark.parametrize("name", ["h264", "h264_b2", "hevc", "vfr", "audio"])
def test_packets_match_the_demuxer(name: str, clip: Any) -> None:
    path, _ = clip(name)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        demuxed = [(p.size, p.is_keyframe, p.pts) for p in c.demux(s) if p.size]
    table = read_video_packets(path)
    assert table.size.dtype == np.int32 and table.key.dtype == bool
    assert int(table.size.sum()) == sum(d[0] for d in demuxed)
    assert table.size.tolist() == [d[0] for d in demuxed]
    assert table.key.tolist() == [d[1] for d in demuxed]
    assert table.pts.tolist() == [d[2] for d in demuxed]
    gop = table.gop
    frames = _pyav_decode(path)
    assert gop["frames"] == len(frames)
    assert gop["key_frames"] == [i for i, f in enumerate(frames) if f.key_frame]
    assert sum(gop["gop_lengths"]) == len(frames) and gop["gop_lengths"][0] == 12
    assert gop["has_b_frames"] == ("B" in _letters(frames))
    assert gop["variable_frame_rate"] == (name == "vfr")


@pytest.mark.parametrize("name", ["hevc", "vp9"])
def test_codecs_without_vectors_fail_clearly_but_other_readers_work(name: str, clip: Any) -> None:
    path, _ = clip(name)
    codec = {"hevc": "hevc", "vp9": "vp9"}[name]
    with pytest.raises(ItemError) as info:
        motion_vectors(path)
    assert info.value.error_class == "unsupported" and codec in info.value.message
    with pytest.raises(ItemError, match=codec):
        coviar(path)
    assert len(frame_types(path).types) == 24
    assert iframes(path)[0].tolist() == [0, 12]
    assert read_video_packets(path).gop["frames"] == 24


# -- bad input ------------------------------------------------------------------------------------
def _boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    out, pos = {}, 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out[kind] = (pos, size)
        pos += size
    return out


def _conceal(src: Path, dst: Path, n_bytes: int = 200, seed: int = 1) -> None:
    """Overwrite bytes inside the media data after the first key frame."""
    data = bytearray(src.read_bytes())
    start, size = _boxes(bytes(data))[b"mdat"]
    rng = np.random.default_rng(seed)
    for p in rng.integers(start + size // 3, start + size, n_bytes):
        data[p] = int(rng.integers(0, 256))
    dst.write_bytes(bytes(data))


def _mpeg2_bomb(dst: Path, side: int = 12000) -> None:
    """An MPEG-2 elementary stream whose sequence header declares side x side pixels."""
    es = dst.with_suffix(".m2v")
    write_clip(es, render(64, 48, 3, Square(8, 8, 16, 1, 1)), codec="mpeg2video")
    data = bytearray(es.read_bytes())

    def put(bit: int, nbits: int, value: int) -> None:
        for k in range(nbits):
            byte, shift = divmod(bit + k, 8)
            data[byte] = (data[byte] & ~(0x80 >> shift)) | (
                ((value >> (nbits - 1 - k)) & 1) << (7 - shift)
            )

    for code, fix in (
        (
            b"\x00\x00\x01\xb3",
            lambda i: (put(i * 8, 12, side & 0xFFF), put(i * 8 + 12, 12, side & 0xFFF)),
        ),
        (
            b"\x00\x00\x01\xb5",
            lambda i: (
                data[i] >> 4 == 1
                and (put(i * 8 + 15, 2, side >> 12), put(i * 8 + 17, 2, side >> 12))
            ),
        ),
    ):
        i = data.find(code)
        while i >= 0:
            fix(i + 4)
            i = data.find(code, i + 4)
    dst.write_bytes(bytes(data))
    es.unlink()


def _audio_only(dst: Path) -> None:
    with av.open(str(dst), "w", format="mp4") as out:
        s = out.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(s.encode(frame))
        out.mux(s.encode(None))


def _bad_files(root: Path, good: Path) -> dict[str, str]:
    """Write the bad inputs; returns file stem -> expected error class ('' for ok)."""
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index at the end: gone
    (root / "zero.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(3).bytes(4000))
    (root / "playlist.mp4").write_text("#EXTM3U\n#EXTINF:10,\nhttp://169.254.169.254/a.ts\n")
    _audio_only(root / "audio_only.mp4")
    _mpeg2_bomb(root / "bomb.mp4")
    _conceal(good, root / "concealed.mp4")
    return {
        "truncated": "truncated",
        "zero": "empty",
        "garbage": "corrupt",
        "playlist": "corrupt",
        "audio_only": "unsupported",
        "bomb": "decode_bomb",
        "concealed": "",
    }


def test_bad_inputs_raise_clear_item_errors(clip: Any, tmp_path: Path) -> None:
    good, _ = clip("h264")
    expected = _bad_files(tmp_path, good)
    for stem, error_class in expected.items():
        path = tmp_path / f"{stem}.mp4"
        for reader in (motion_vectors, frame_types, iframes, read_video_packets):
            if not error_class:
                reader(path)
                continue
            with pytest.raises(ItemError) as info:
                reader(path)
            assert info.value.error_class == error_class, (stem, reader.__name__, info.value)
    with pytest.raises(ItemError, match="12000x12000"):
        motion_vectors(tmp_path / "bomb.mp4")
    with pytest.raises(ItemError) as info:
        motion_vectors(tmp_path)
    assert info.value.error_class == "io"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.mp4")
        with pytest.raises(ItemError) as info:
            motion_vectors(tmp_path / "fifo.mp4")
        assert info.value.error_class == "security"


def test_concealed_damage_is_counted_or_strict(clip: Any, tmp_path: Path) -> None:
    good, _ = clip("h264")
    for codec_clip in ("h264", "mpeg4"):
        src, _ = clip(codec_clip)
        bad = tmp_path / f"{codec_clip}_concealed.mp4"
        _conceal(src, bad)
        field = motion_vectors(bad)
        assert field.damaged > 0 and len(field.mv) > 0
        assert field.damage.corrupt_frames + field.damage.lost_frames > 0
        assert frame_types(bad).damaged > 0
        with pytest.raises(ItemError) as info:
            motion_vectors(bad, strict=True)
        assert info.value.error_class == "corrupt" and "strict" in info.value.message
    assert motion_vectors(good, strict=True).damaged == 0


def test_truncated_faststart_keeps_the_decoded_frames(tmp_path: Path) -> None:
    path = tmp_path / "faststart.mp4"
    moving_square_clip(path, frames=24, faststart=True)
    data = path.read_bytes()
    assert _boxes(data)[b"moov"][0] < _boxes(data)[b"mdat"][0]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    field = motion_vectors(cut)
    assert 0 < len(field.mv) < 24 and field.damaged >= 24 - len(field.mv)
    assert field.damage.truncated
    with pytest.raises(ItemError) as info:
        motion_vectors(cut, strict=True)
    assert info.value.error_class == "truncated"
    assert read_video_packets(cut).damaged > 0


def test_engine_turns_bad_videos_into_error_rows(clip: Any, tmp_path: Path) -> None:
    root = tmp_path / "videos"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    for name in ("h264", "mpeg4"):
        src, _ = clip(name)
        (root / "good" / f"{name}.mp4").write_bytes(src.read_bytes())
    good, _ = clip("h264")
    expected = {f"bad/{k}": v for k, v in _bad_files(root / "bad", good).items()}
    expected.update({"good/h264": "", "good/mpeg4": ""})
    pipeline = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "files", "params": {"root": str(root), "kinds": ["video"]}},
                "mv": {"stage": "video.motion_vectors", "inputs": "src"},
            }
        }
    )
    out = tmp_path / "out"
    report = run_local(pipeline, out, workers=1, timeout_s=60)
    rows = {r.key: r for r in Manifest(out / "manifest.sqlite").iter_rows()}
    assert set(rows) == set(expected)
    for key, error_class in expected.items():
        row = rows[key]
        if error_class:
            assert (row.status, row.error_class) == ("error", error_class), (key, row.message)
            assert row.message
        else:
            assert row.status == "ok", (key, row.message)
    assert report.counts["ok"] == 3
    samples = {s["key"]: s for s in iter_samples(sorted((out / "shards").glob("*.tar")))}
    assert (
        samples["good/h264"]["video_damage"] == 0 and samples["bad/concealed"]["video_damage"] > 0
    )
    # the tolerated damage also lands in the manifest, where `datapipe manifest` lists it
    assert json.loads(rows["bad/concealed"].notes) == {
        "video_damage": samples["bad/concealed"]["video_damage"]
    }
    assert rows["good/h264"].notes is None
    assert report.counts["damaged"] == 1
    mv = samples["good/h264"]["mv"]
    assert mv.dtype == np.int16 and mv.shape == (24, 8, 10, 2)
    assert samples["good/h264"]["frame_types"] == "IPPPPPPPPPPPIPPPPPPPPPPP"


# -- stages ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.name)
def test_stage_output_matches_its_declared_fields(cls: type, clip: Any) -> None:
    from test_conformance import test_stage_contract

    test_stage_contract(cls.name)
    path, _ = clip("h264_b2")
    stage = cls(**cls.EXAMPLE_PARAMS)
    out = stage.process({"path": str(path)}, Context())
    assert set(out) == {f.name for f in stage.produces()}
    for f in stage.produces():
        assert f.check_value(out[f.name]) is None, f.check_value(out[f.name])
    assert out["video_damage"] == 0


def test_motion_vectors_stage_stores_quarter_pixels(clip: Any) -> None:
    path, _ = clip("h264")
    stored = MotionVectorsStage().process({"path": str(path)}, Context())["mv"]
    exact = MotionVectorsStage(dtype="float32", block=8).process({"path": str(path)}, Context())
    assert stored.dtype == np.int16 and exact["mv"].dtype == np.float32
    np.testing.assert_array_equal(decode_mv(stored), encode_mv(motion_vectors(path).mv) / 4)
    assert exact["mv"].shape[1:] == (15, 20, 2)
    with pytest.raises(ItemError) as info:
        MotionVectorsStage(strict=True, max_pixels=100).process({"path": str(path)}, Context())
    assert info.value.error_class == "decode_bomb"
