"""CoViAR: accumulated motion and residuals against a brute-force tracer and decoded frames,
and the compact shards the stage writes (int8 residuals)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_video import MOTION, _need_encoder, _raw_decode

from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stages.common.video_synth import moving_square_clip
from datapipe.stages.compressed.video_coviar import coviar, decode_residual
from datapipe.store import iter_samples


@pytest.fixture(scope="module")
def b2_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 frames of H.264 with two B-frames between anchors, GOP 12."""
    path = tmp_path_factory.mktemp("coviar") / "h264_b2.mp4"
    moving_square_clip(path, codec="libx264", bframes=2, motion=MOTION, side=48)
    return path


def _brute_force_positions(vectors: list[Any], types: str, height: int, width: int) -> np.ndarray:
    """Follow every pixel of every frame through its reference chain, one step at a time."""

    def offsets(t: int, direction: int) -> dict[tuple[int, int], list[tuple[float, float]]]:
        table: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for v in vectors[t] if vectors[t] is not None else ():
            if (v["source"] > 0) != (direction > 0):
                continue
            w, h = int(v["w"]), int(v["h"])
            x0, y0 = int(v["dst_x"]) - w // 2, int(v["dst_y"]) - h // 2
            scale = float(v["motion_scale"]) or 1.0
            for y in range(max(y0, 0), min(y0 + h, height)):
                for x in range(max(x0, 0), min(x0 + w, width)):
                    table.setdefault((x, y), []).append(
                        (int(v["motion_x"]) / scale, int(v["motion_y"]) / scale)
                    )
        return table

    gop_of, start = [], 0
    for t, kind in enumerate(types):
        start = t if kind == "I" or t == 0 else start
        gop_of.append(start)
    anchors = [t for t, kind in enumerate(types) if kind != "B"]
    past = [offsets(t, -1) for t in range(len(types))]
    future = [offsets(t, +1) for t in range(len(types))]

    def source(x: int, y: int, offs: list[tuple[float, float]]) -> tuple[int, int]:
        ox = sum(o[0] for o in offs) / len(offs)
        oy = sum(o[1] for o in offs) / len(offs)
        sx, sy = math.floor(x + ox + 0.5), math.floor(y + oy + 0.5)
        return min(max(sx, 0), width - 1), min(max(sy, 0), height - 1)

    memo: dict[tuple[int, int, int], tuple[int, int]] = {}

    def position(t: int, x: int, y: int) -> tuple[int, int]:
        if t == gop_of[t]:
            return x, y
        if (t, x, y) not in memo:
            prev = max(a for a in anchors if a < t)
            later = [a for a in anchors if a > t and gop_of[a] == gop_of[t]]
            if (x, y) in past[t]:
                result = position(prev, *source(x, y, past[t][x, y]))
            elif types[t] == "B" and later and (x, y) in future[t]:
                result = position(min(later), *source(x, y, future[t][x, y]))
            else:
                result = position(prev, x, y)
            memo[t, x, y] = result
        return memo[t, x, y]

    out = np.zeros((len(types), height, width, 2), np.int64)
    for t in range(len(types)):
        for y in range(height):
            for x in range(width):
                out[t, y, x] = position(t, x, y)
    return out


@pytest.mark.parametrize(
    "codec, bframes", [("libx264", 0), ("libx264", 1), ("libx264", 2), ("mpeg4", 0)]
)
def test_coviar_matches_a_brute_force_tracer(codec: str, bframes: int, tmp_path: Path) -> None:
    _need_encoder(codec)
    path = tmp_path / "small.mp4"
    square = moving_square_clip(
        path, codec=codec, size=(80, 64), frames=14, motion=MOTION, side=32, gop=7, bframes=bframes
    )
    vectors, types, rgb = _raw_decode(path)
    rep = coviar(path)
    halved = coviar(path, residual_dtype="int8")
    assert rep.residual.dtype == np.int16 and halved.residual.dtype == np.int8
    assert np.array_equal(halved.mv, rep.mv)
    halves = np.clip(np.rint(rep.residual / 2), -128, 127)  # half to even, 255 -> 127
    assert np.array_equal(halved.residual, halves)
    assert rep.frame_types == types and rep.frame_idx.tolist() == list(range(14))
    assert rep.gop_start.tolist() == [t for t, k in enumerate(types) if k == "I"] == [0, 7]
    assert np.array_equal(rep.iframes, np.stack([rgb[0], rgb[7]]))
    pos = _brute_force_positions(vectors, types, 64, 80)
    yy, xx = np.mgrid[0:64, 0:80]
    expected_mv = np.stack([xx, yy], axis=-1)[None] - pos
    assert rep.mv.dtype == np.int16 and np.array_equal(rep.mv, expected_mv)
    for t in range(14):
        g = rep.gop[t]
        warped = rep.iframes[g][pos[t, ..., 1], pos[t, ..., 0]].astype(np.int16)
        assert np.array_equal(rep.residual[t], rgb[t].astype(np.int16) - warped)
        assert np.array_equal(warped + rep.residual[t], rgb[t])
        # int8: half the residual, within one level of the decoded frame
        assert np.abs(warped + decode_residual(halved.residual[t]) - rgb[t]).max() <= 1
        # the square's centre has moved (t - I-frame) steps of the known motion (x264 codes
        # parts of it intra in some B-frames of the two-B-frame clip: zero motion there)
        if types[t] == "B" and bframes > 1:
            continue
        x, y, x1, y1 = square.box(t)
        centre = rep.mv[
            t, (y + y1) // 2 - 2 : (y + y1) // 2 + 2, (x + x1) // 2 - 2 : (x + x1) // 2 + 2
        ]
        steps = t - rep.gop_start[g]
        assert np.all(
            np.abs(np.median(centre.reshape(-1, 2), axis=0) - steps * np.array(MOTION)) <= 1
        )


def test_coviar_stride_keeps_every_kth_frame(b2_clip: Path) -> None:
    path = b2_clip
    full, every3 = coviar(path), coviar(path, stride=3)
    assert every3.frame_idx.tolist() == list(range(0, 24, 3))
    assert np.array_equal(every3.mv, full.mv[::3]) and np.array_equal(every3.gop, full.gop[::3])
    assert np.array_equal(every3.residual, full.residual[::3])


def test_without_residuals_the_motion_and_iframes_are_the_same(b2_clip: Path) -> None:
    full, lean = coviar(b2_clip, stride=2), coviar(b2_clip, stride=2, residual=False)
    assert lean.residual is None
    for name in ("iframes", "gop_start", "frame_idx", "gop", "mv"):
        assert np.array_equal(getattr(lean, name), getattr(full, name)), name
    assert lean.frame_types == full.frame_types
    # the stage then declares no residual field: a model of the residual stream is refused
    import datapipe
    from datapipe.errors import ConfigError

    def pipeline(streams: list[str]) -> Pipeline:
        return Pipeline.from_dict(
            {
                "nodes": {
                    "src": {"stage": "files", "params": {"root": str(b2_clip.parent)}},
                    "cv": {"stage": "video.coviar", "inputs": "src",
                           "params": {"residual": False}},
                    "fit": {"stage": "train.video", "inputs": "cv",
                            "params": {"streams": streams}},
                }
            }
        )  # fmt: skip

    datapipe.validate(pipeline(["iframe", "mv"]))
    with pytest.raises(ConfigError, match="coviar_residual"):
        datapipe.validate(pipeline(["iframe", "mv", "residual"]))


def test_coviar_stage_writes_compact_shards_that_reconstruct_the_frames(
    b2_clip: Path, tmp_path: Path
) -> None:
    """Through the engine: int8 residuals by default, int16 exact on request; frames decoded
    by PyAV are rebuilt from the shards alone (I-frame at p - mv, plus the residual)."""
    path = b2_clip
    root = tmp_path / "videos"
    root.mkdir()
    (root / "clip.mp4").write_bytes(path.read_bytes())
    _, _, rgb = _raw_decode(path)
    sizes = {}
    for dtype, compress in (("int8", ["coviar_mv", "coviar_residual"]), ("int16", False)):
        params = {"stride": 2} if dtype == "int8" else {"stride": 2, "residual_dtype": "int16"}
        pipeline = Pipeline.from_dict(
            {
                "nodes": {
                    "src": {"stage": "files", "params": {"root": str(root), "kinds": ["video"]}},
                    "cv": {"stage": "video.coviar", "inputs": "src", "params": params},
                },
                "output": {"compress": compress},
            }
        )
        out = tmp_path / dtype
        assert run_local(pipeline, out, workers=1, timeout_s=60).counts["ok"] == 1
        shards = sorted((out / "shards").glob("*.tar"))
        sizes[dtype] = sum(p.stat().st_size for p in shards)
        (sample,) = iter_samples(shards)
        mv, residual = sample["coviar_mv"], sample["coviar_residual"]
        assert mv.dtype == np.int16 and residual.dtype == np.dtype(dtype)
        assert sample["coviar_frame_idx"].tolist() == list(range(0, 24, 2))
        height, width = mv.shape[1:3]
        yy, xx = np.mgrid[0:height, 0:width]
        for k, t in enumerate(sample["coviar_frame_idx"]):
            iframe = sample["coviar_iframes"][sample["coviar_gop"][k]].astype(np.int16)
            warped = iframe[yy - mv[k, ..., 1], xx - mv[k, ..., 0]]
            error = np.abs(warped + decode_residual(residual[k]) - rgb[t])
            assert error.max() <= (1 if dtype == "int8" else 0), (dtype, t)
    assert sizes["int8"] * 4 < sizes["int16"]
