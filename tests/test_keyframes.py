"""Key-frame selection: index arithmetic, I-frames, motion peaks, scene cuts, the learned
scorer, decoding only the selected frames, and bad input through the engine.

Every clip is generated here with PyAV: textured scenes (hard cuts planted at known frames,
or a gradual pan and brightness ramp that must not count as a cut) and a textured square
whose speed peaks at known frames (``datapipe.stages.common.video_synth``).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from datapipe import registry
from datapipe.errors import ConfigError, ItemError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stage import Context
from datapipe.stages.common.video_synth import panning_clip, texture, write_clip
from datapipe.stages.keyframes import decode as keyframes_decode
from datapipe.stages.keyframes.decode import gop_plan, scan_frames
from datapipe.stages.keyframes.index import (
    motion_peaks,
    scene_cuts,
    top_k_with_gap,
    tsn_indices,
    tsn_segments,
    uniform_indices,
)
from datapipe.stages.keyframes.learned import (
    CUE_NAMES,
    FrameCues,
    LearnedFit,
    LearnedKeyFrames,
    fit_scorer,
    load_weights,
    read_labels,
    save_weights,
    score_frames,
)
from datapipe.stages.keyframes.methods import (
    keyframes_iframes,
    keyframes_motion,
    keyframes_scene,
    keyframes_tsn,
    keyframes_uniform,
    motion_signal,
)
from datapipe.stages.keyframes.signals import frame_cues
from datapipe.stages.keyframes.stages import (
    IFrameKeyFrames,
    MotionKeyFrames,
    SceneKeyFrames,
    TSNKeyFrames,
    UniformKeyFrames,
)
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest
from datapipe.stream import from_pipeline

MAPS = (UniformKeyFrames, TSNKeyFrames, IFrameKeyFrames, MotionKeyFrames, SceneKeyFrames)
STAGES = (*MAPS, FrameCues, LearnedFit, LearnedKeyFrames)
for _cls in STAGES:
    registry.register(_cls)

FPS = 25
#: clip name -> (frames, planted cuts, write_clip options)
CUT_CLIPS: dict[str, tuple[int, tuple[int, ...], dict[str, Any]]] = {
    "cuts_a": (48, (13, 30), {}),
    "cuts_b": (48, (7, 21, 40), {"bframes": 2}),
    "cuts_c": (48, (17, 33), {"codec": "mpeg4"}),
}
#: speed profile of the motion clip: 1 px/frame, with bumps peaking at frames 10 and 28
BUMP = (2, 4, 8, 4, 2)
MOTION_PEAKS = (10, 28)


def render(
    frames: int,
    *,
    cuts: tuple[int, ...] = (),
    speeds: np.ndarray | None = None,
    pan: int = 1,
    ramp: float = 1.0,
    seed: int = 0,
    size: tuple[int, int] = (160, 120),
    side: int = 40,
) -> np.ndarray:
    """uint8 (T, H, W, 3): one textured background per scene (new scene at each cut),
    panned ``pan`` px and brightened ``ramp`` levels per frame, and a textured square moving
    right by ``speeds[t]`` px at frame ``t`` (2 px/frame by default)."""
    rng = np.random.default_rng(seed)
    w, h = size
    starts = [0, *cuts]
    scenes = [texture(w + pan * frames + 1, h, rng, cell=8).astype(np.float32) for _ in starts]
    patch = texture(side, side, rng, cell=4)
    v = np.full(frames, 2) if speeds is None else np.asarray(speeds)
    x = 8 + np.concatenate([[0], np.cumsum(v[1:])])
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        scene = scenes[int(np.searchsorted(starts, t, side="right")) - 1]
        bg = 0.6 * scene[:, pan * t : pan * t + w] + 40 + ramp * t
        out[t] = np.clip(bg, 0, 255).astype(np.uint8)
        out[t, 30 : 30 + side, x[t] : x[t] + side] = patch
    return out


def motion_speeds(frames: int = 40) -> np.ndarray:
    v = np.ones(frames, np.int64)
    for peak in MOTION_PEAKS:
        v[peak - 2 : peak + 3] = BUMP
    return v


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build clips on first use, once per module."""
    root = tmp_path_factory.mktemp("keyframe_clips")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name in made:
            return made[name]
        path = root / f"{name}.mp4"
        if name in CUT_CLIPS:
            n, cuts, options = CUT_CLIPS[name]
            frames = render(n, cuts=cuts, seed=len(made))
            write_clip(path, frames, fps=FPS, gop=12, **options)
        elif name == "motion":
            frames = render(40, speeds=motion_speeds(), pan=0, ramp=0, side=48)
            write_clip(path, frames, fps=FPS, gop=12)
        elif name == "gradual":  # no cut: a strong pan and brightness ramp only
            write_clip(path, render(48, pan=2, ramp=2.0, seed=5), fps=FPS, gop=12)
        elif name == "t30":
            write_clip(path, render(30, seed=7), fps=FPS, gop=12, bframes=2)
        elif name == "short":
            write_clip(path, render(3, seed=8), fps=FPS)
        elif name == "hevc":
            if "libx265" not in av.codecs_available:
                pytest.skip("this PyAV build has no libx265 encoder")
            write_clip(path, render(30, cuts=(12,), seed=9), codec="libx265", fps=FPS, gop=10)
        made[name] = path
        return path

    return get


def full_decode(path: Path) -> tuple[list[np.ndarray], list[bool]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [bool(f.key_frame) for f in frames]


@pytest.fixture
def rgb_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the frames converted to RGB by the key-frame stages."""
    calls: list[int] = []
    real = keyframes_decode.to_rgb

    def spy(reformatter: Any, frame: av.VideoFrame) -> np.ndarray:
        calls.append(frame.pts)
        return real(reformatter, frame)

    monkeypatch.setattr(keyframes_decode, "to_rgb", spy)
    return calls


# -- index arithmetic ----------------------------------------------------------------------------
def test_uniform_indices_hand_computed() -> None:
    assert uniform_indices(30, 4).tolist() == [0, 10, 19, 29]
    assert uniform_indices(30, 2).tolist() == [0, 29]
    assert uniform_indices(30, 1).tolist() == [14]
    assert uniform_indices(10, 10).tolist() == list(range(10))
    assert uniform_indices(30, every=8).tolist() == [0, 8, 16, 24]
    assert uniform_indices(5, 7, too_few="repeat").tolist() == [0, 1, 1, 2, 3, 3, 4]
    assert uniform_indices(5, 7, too_few="clamp").tolist() == [0, 1, 2, 3, 4]
    for k in (0, -1):
        with pytest.raises(ItemError) as info:
            uniform_indices(30, k)
        assert info.value.error_class == "invalid"
    with pytest.raises(ItemError, match="k=31 frames requested but the video has only 30"):
        uniform_indices(30, 31)
    with pytest.raises(ItemError) as info:
        uniform_indices(0, 1)
    assert info.value.error_class == "empty"


def test_tsn_indices_hand_computed_and_seeded_by_seed_key_epoch() -> None:
    assert tsn_indices(30, 4, mode="test").tolist() == [3, 11, 18, 26]
    assert tsn_indices(8, 8, mode="test").tolist() == list(range(8))
    start, end = tsn_segments(30, 4)
    assert start.tolist() == [0, 7, 15, 22] and end.tolist() == [7, 15, 22, 30]
    draws = {}
    for epoch in range(6):
        idx = tsn_indices(30, 4, mode="train", seed=3, key="clip", epoch=epoch)
        assert ((idx >= start) & (idx < end)).all(), idx
        again = tsn_indices(30, 4, mode="train", seed=3, key="clip", epoch=epoch)
        assert np.array_equal(idx, again)
        draws[epoch] = tuple(idx.tolist())
    assert len(set(draws.values())) >= 5  # epochs draw other frames
    other_key = tsn_indices(30, 4, mode="train", seed=3, key="other", epoch=0)
    other_seed = tsn_indices(30, 4, mode="train", seed=4, key="clip", epoch=0)
    assert tuple(other_key.tolist()) != draws[0] or tuple(other_seed.tolist()) != draws[0]
    with pytest.raises(ItemError) as info:
        tsn_indices(3, 4)
    assert info.value.error_class == "invalid"
    assert tsn_indices(3, 6, mode="train", too_few="repeat").tolist() == [0, 0, 1, 1, 2, 2]


def test_peaks_gaps_and_cuts_on_small_signals() -> None:
    assert top_k_with_gap(np.array([0.1, 0.9, 0.8, 0.2, 0.7]), 2, min_gap=2).tolist() == [1, 4]
    assert top_k_with_gap(np.array([0.1, 0.9, 0.8, 0.2, 0.7]), 3, min_gap=1).tolist() == [1, 2, 4]
    assert top_k_with_gap(np.ones(6), 5, min_gap=3).tolist() == [0, 3]
    e = np.array([0, 3, 1, 0, 5, 0, 2, 4, 0.0])
    assert motion_peaks(e).tolist() == [1, 4, 7]
    assert motion_peaks(e, threshold=3.5).tolist() == [4, 7]
    assert motion_peaks(e, k=1).tolist() == [4]
    assert motion_peaks(e, min_gap=4).tolist() == [4]  # 1 and 7 are within 4 of 4
    assert motion_peaks(np.array([0, 2, 2, 2, 0.0])).tolist() == [2]  # plateau: its middle
    assert scene_cuts(np.array([0, 0.1, 0.9, 0.8, 0.1, 0.7, 0]), 0.5, 2).tolist() == [2, 5]
    assert scene_cuts(np.array([0.9, 0, 0.9]), 0.5, 3).tolist() == []
    with pytest.raises(ItemError) as info:
        top_k_with_gap(np.array([0.1, np.nan]), 1)
    assert info.value.error_class == "nonfinite"


# -- reading the clips ------------------------------------------------------------------------
def test_uniform_and_tsn_on_a_clip_decode_only_the_selected_frames(
    clip: Callable[[str], Path], rgb_spy: list[int]
) -> None:
    path = clip("t30")  # 30 frames, B-frames
    full, _ = full_decode(path)
    assert len(full) == 30
    sel = keyframes_uniform(path, k=4, decode=True)
    assert sel.indices.tolist() == [0, 10, 19, 29] and sel.n_frames == 30
    np.testing.assert_allclose(sel.seconds, sel.indices / FPS)
    assert len(rgb_spy) == 4
    np.testing.assert_array_equal(sel.frames, np.stack([full[i] for i in sel.indices]))
    rgb_spy.clear()
    sel = keyframes_tsn(path, 4, mode="test", decode=True)
    assert sel.indices.tolist() == [3, 11, 18, 26] and len(rgb_spy) == 4
    np.testing.assert_array_equal(sel.frames, np.stack([full[i] for i in sel.indices]))
    rgb_spy.clear()
    every = keyframes_uniform(path, every=7, decode=True)
    assert every.indices.tolist() == [0, 7, 14, 21, 28] and len(rgb_spy) == 5
    np.testing.assert_array_equal(every.frames, np.stack([full[i] for i in every.indices]))
    assert keyframes_uniform(path, k=4).frames is None  # no decode: nothing converted
    assert len(rgb_spy) == 5


def test_tsn_stage_follows_the_epoch_in_training_only(clip: Callable[[str], Path]) -> None:
    path = str(clip("t30"))
    train, test = TSNKeyFrames(k=4, mode="train"), TSNKeyFrames(k=4, mode="test")
    assert train.epoch_dependent and not test.epoch_dependent

    def picks(stage: TSNKeyFrames, epoch: int, key: str = "a") -> list[int]:
        rec = stage.process({"path": path, "key": key}, Context(seed=1, epoch=epoch))
        return rec["keyframe_idx"].tolist()

    by_epoch = [picks(train, e) for e in range(5)]
    assert by_epoch[0] == picks(train, 0) and len({tuple(p) for p in by_epoch}) >= 4
    assert all(picks(test, e) == [3, 11, 18, 26] for e in range(3))


def test_streaming_loader_set_epoch_changes_tsn_frames(
    clip: Callable[[str], Path], tmp_path: Path
) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    (root / "a.mp4").write_bytes(clip("t30").read_bytes())
    pipeline = Pipeline.from_dict(
        {
            "seed": 2,
            "nodes": {
                "src": {"stage": "files", "params": {"root": str(root), "kinds": ["video"]}},
                "tsn": {"stage": "keyframes.tsn", "inputs": "src", "params": {"k": 5}},
            },
        }
    )
    ds = from_pipeline(pipeline, shuffle=False)
    seen = []
    for epoch in (0, 1, 2, 0):
        ds.set_epoch(epoch)
        (sample,) = list(ds)
        seen.append(sample["keyframe_idx"].tolist())
    assert seen[0] == seen[3] and len({tuple(s) for s in seen[:3]}) == 3
    expected = tsn_indices(30, 5, mode="train", seed=2, key="a", epoch=1).tolist()
    assert seen[1] == expected


@pytest.mark.parametrize("name", ["t30", "cuts_b", "cuts_c", "hevc"])
def test_iframes_are_the_frames_pyav_flags_as_key(
    name: str, clip: Callable[[str], Path], rgb_spy: list[int]
) -> None:
    path = clip(name)
    full, key = full_decode(path)
    sel = keyframes_iframes(path, decode=True)
    assert sel.indices.tolist() == [i for i, k in enumerate(key) if k]
    assert len(rgb_spy) == len(sel.indices) >= 2
    np.testing.assert_array_equal(sel.frames, np.stack([full[i] for i in sel.indices]))
    # key frames alone are sent to the decoder: key-frame-only decoding
    table = scan_frames(path)
    assert gop_plan(table, sel.indices).sum() == len(sel.indices)
    assert keyframes_iframes(path, k=2).indices.tolist() == [sel.indices[0], sel.indices[-1]]
    with pytest.raises(ItemError) as info:
        keyframes_iframes(path, k=len(sel.indices) + 1)
    assert info.value.error_class == "invalid" and "key frames" in info.value.message
    clamped = keyframes_iframes(path, k=len(sel.indices) + 1, too_few="clamp")
    assert np.array_equal(clamped.indices, sel.indices)
    # repeat: exactly k, each key frame held for a run (k - 1 steps over the key frames)
    n, k = len(sel.indices), 2 * len(sel.indices) + 1
    runs = [(i * (n - 1) * 2 + (k - 1)) // (2 * (k - 1)) for i in range(k)]  # round half up
    repeated = keyframes_iframes(path, k=k, too_few="repeat", decode=True)
    assert repeated.indices.tolist() == [int(sel.indices[j]) for j in runs]
    np.testing.assert_array_equal(repeated.frames, np.stack([full[i] for i in repeated.indices]))


@pytest.mark.parametrize("name", ["cuts_b", "cuts_c", "hevc"])
def test_any_selection_decodes_equal_to_a_full_decode(
    name: str, clip: Callable[[str], Path], rgb_spy: list[int]
) -> None:
    """GOP skipping with B-frames, MPEG-4 Part 2 and open-GOP HEVC (leading pictures)."""
    path = clip(name)
    full, _ = full_decode(path)
    table = scan_frames(path)
    n = len(full)
    for idx in ([n - 1], [1, 2, 3], [5, 11, 12, 13], list(range(0, n, 5)), [9, 9, n - 2]):
        rgb_spy.clear()
        frames = keyframes_decode.decode_selected(path, table, np.array(idx))
        np.testing.assert_array_equal(frames, np.stack([full[i] for i in idx]))
        assert len(rgb_spy) == len(set(idx))


def test_motion_peaks_at_the_frames_of_fastest_motion(
    clip: Callable[[str], Path], rgb_spy: list[int]
) -> None:
    path = clip("motion")
    sel = keyframes_motion(path, k=2, min_gap=5, decode=True)
    assert sel.indices.tolist() == list(MOTION_PEAKS)
    assert len(rgb_spy) == 2  # the peaks only; the energy comes from the bitstream
    full, _ = full_decode(path)
    np.testing.assert_array_equal(sel.frames, np.stack([full[i] for i in MOTION_PEAKS]))
    assert sel.scores is not None and (sel.scores > 0).all()
    # all peaks above a threshold halfway between the slow and the fast square
    mid = float(sel.scores.min()) / 2
    assert keyframes_motion(path, threshold=mid, min_gap=5).indices.tolist() == [10, 28]
    assert keyframes_motion(path, k=1, min_gap=5).indices.tolist() in ([10], [28])
    with pytest.raises(ItemError) as info:
        keyframes_motion(path, k=3, threshold=mid, min_gap=5)
    assert info.value.error_class == "invalid" and "motion peaks" in info.value.message
    assert keyframes_motion(path, k=3, threshold=mid, too_few="clamp").indices.tolist() == [10, 28]


def test_motion_without_a_peak_and_clamp_keeps_its_most_moving_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Energy that only rises (a steady zoom) has no local maximum. ``error`` says so;
    ``clamp`` keeps one frame, the last (highest energy), not an empty selection."""
    from datapipe.stages.keyframes import methods

    path = tmp_path / "pan.mp4"
    panning_clip(path, motion=PAN, bframes=2)
    _, field = motion_signal(path)
    rising = np.linspace(0.0, 1.0, len(field.pts))
    monkeypatch.setattr(methods, "motion_signal", lambda *a, **kw: (rising, field))
    with pytest.raises(ItemError) as info:
        keyframes_motion(path, k=2)
    assert info.value.error_class == "empty"
    sel = keyframes_motion(path, k=2, too_few="clamp", decode=True)
    assert sel.indices.tolist() == [len(rising) - 1]
    full, _ = full_decode(path)
    np.testing.assert_array_equal(sel.frames, full[-1:])


def test_motion_needs_a_codec_with_vectors(clip: Callable[[str], Path]) -> None:
    with pytest.raises(ItemError) as info:
        keyframes_motion(clip("hevc"), k=2)
    assert info.value.error_class == "unsupported" and "hevc" in info.value.message
    cues = frame_cues(clip("hevc")).values  # the other cues still work, motion is 0
    assert not cues[:, CUE_NAMES.index("motion")].any()
    assert cues[12, CUE_NAMES.index("change")] > 0.15


@pytest.mark.parametrize("name", sorted(CUT_CLIPS))
def test_scene_cuts_have_precision_and_recall_one(
    name: str, clip: Callable[[str], Path], rgb_spy: list[int]
) -> None:
    path = clip(name)
    _, planted, _ = CUT_CLIPS[name]
    sel = keyframes_scene(path, decode=True)
    assert sel.cuts is not None and sel.cuts.tolist() == list(planted)
    assert sel.indices.tolist() == [0, *planted]
    assert len(rgb_spy) == len(planted) + 1
    full, _ = full_decode(path)
    np.testing.assert_array_equal(sel.frames, np.stack([full[i] for i in sel.indices]))
    np.testing.assert_allclose(sel.seconds, sel.indices / FPS)
    # a looser threshold must not add cuts either (the margin is real)
    assert keyframes_scene(path, threshold=0.1).cuts.tolist() == list(planted)


def test_gradual_change_is_not_a_cut_and_min_scene_len_holds(
    clip: Callable[[str], Path], tmp_path: Path
) -> None:
    assert keyframes_scene(clip("gradual")).indices.tolist() == [0]
    assert keyframes_scene(clip("motion")).indices.tolist() == [0]
    path = tmp_path / "close.mp4"
    write_clip(path, render(30, cuts=(10, 13), seed=11), fps=FPS)
    assert keyframes_scene(path, min_scene_len=5).cuts.tolist() == [10]
    assert keyframes_scene(path, min_scene_len=3).cuts.tolist() == [10, 13]


#: the whole picture pans by PAN px/frame: every block's true motion is PAN_SPEED px/frame
PAN = (2, 1)
PAN_SPEED = math.hypot(*PAN)
PYRAMID = {"x264-params": "bframes=3:b-adapt=0:b-pyramid=normal:ref=1:scenecut=0:keyint=12"}
#: name -> (file name, panning_clip keyword arguments); as in test_video.py
PANS: dict[str, tuple[str, dict[str, Any]]] = {
    "h264_b2": ("pan_b2.mp4", {"bframes": 2}),
    "h264_pyramid": ("pan_pyramid.mp4", {"options": PYRAMID}),
    "h264_pyramid_ts": ("pan_pyramid.ts", {"options": PYRAMID, "container": "mpegts"}),
    "mpeg2_b2": ("pan_mpeg2.mp4", {"codec": "mpeg2video", "bframes": 2}),
}


@pytest.mark.parametrize("name", list(PANS))
def test_motion_energy_is_the_pan_speed_in_every_frame(name: str, tmp_path: Path) -> None:
    """A vector spans its reference distance (2 or 3 frames for the P-frames and the outer
    B-frames here, 1 or 2 with B-pyramid): the energy of keyframes.motion and the motion cue
    of keyframes.cues must be per frame, the same in every frame of a steady pan."""
    filename, options = PANS[name]
    if options.get("codec", "libx264") not in av.codecs_available:
        pytest.skip("this PyAV build lacks the encoder")
    path = tmp_path / filename
    panning_clip(path, motion=PAN, **options)
    energy, field = motion_signal(path)
    types = "".join(field.frame_types)
    assert types.startswith("IBBBP" if "pyramid" in name else "IBBP")
    cue = np.expm1(frame_cues(path).values[:, CUE_NAMES.index("motion")].astype(np.float64))
    # cells that carry a vector; the others (intra blocks) count as 0 in the energy
    covered = (field.mv != 0).any(axis=-1).mean(axis=(1, 2))
    tol = 0.2  # px/frame; dividing by the wrong distance is off by 0.3 to 1.1 here
    for t, kind in enumerate(types):
        if kind not in "PB" or not field.has_vectors[t]:
            continue
        if name.startswith("mpeg2") and kind == "P":
            # MPEG-2 vectors cannot point outside the picture: the content entering at the
            # top and left edges since the previous anchor is coded intra
            assert covered[t] >= 0.7, (t, kind)
        else:
            assert covered[t] == 1.0, (t, kind)
        expected = PAN_SPEED * covered[t]
        assert abs(energy[t] - expected) <= tol, (t, kind, energy[t])
        assert abs(cue[t] - expected) <= tol, (t, kind, cue[t])
    # I-frames take the value interpolated from their neighbours
    for t in np.flatnonzero(~field.has_vectors):
        if 0 < t < len(types) - 1 and field.has_vectors[t - 1] and field.has_vectors[t + 1]:
            assert energy[t] == pytest.approx((energy[t - 1] + energy[t + 1]) / 2)
    np.testing.assert_allclose(cue, energy, atol=1e-3)
    sel = keyframes_motion(path, k=2, min_gap=3)  # its scores are this energy
    assert sel.scores is not None
    np.testing.assert_allclose(sel.scores, energy[sel.indices], rtol=1e-6)


# -- learned scorer ---------------------------------------------------------------------------
LEARN_CLIPS = {
    "train/a": (44, (11, 29)),
    "train/b": (44, (8, 33)),
    "train/c": (44, (19, 37)),
    "held/d": (44, (14, 26)),
    "held/e": (44, (9, 31)),
}


@pytest.fixture(scope="module")
def learn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learn") / "videos"
    for i, (name, (n, cuts)) in enumerate(LEARN_CLIPS.items()):
        path = root / f"{name}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_clip(path, render(n, cuts=cuts, seed=20 + i), fps=FPS, gop=12, bframes=i % 2)
    return root


def test_learned_scorer_ranks_planted_cuts_top_and_reloads_identically(
    learn_root: Path, tmp_path: Path
) -> None:
    cues = {name: frame_cues(learn_root / f"{name}.mp4").values for name in LEARN_CLIPS}
    assert all(c.shape == (44, len(CUE_NAMES)) for c in cues.values())
    train = [n for n in LEARN_CLIPS if n.startswith("train/")]
    positives = []
    for name in train:
        y = np.zeros(44, bool)
        y[list(LEARN_CLIPS[name][1])] = True
        positives.append(y)
    state = fit_scorer([cues[n] for n in train], positives)
    for name in ("held/d", "held/e"):
        scores = score_frames(cues[name], state)
        top = np.argsort(-scores)[:2]
        assert sorted(top.tolist()) == list(LEARN_CLIPS[name][1])
        assert top_k_with_gap(scores, 2, 5).tolist() == list(LEARN_CLIPS[name][1])
    save_weights(state, tmp_path / "w.json")
    again = load_weights(tmp_path / "w.json")
    for c in cues.values():
        assert np.array_equal(score_frames(c, state), score_frames(c, again))
    with pytest.raises(ValueError, match="positive and negative"):
        fit_scorer([cues["train/a"]], [np.zeros(44, bool)])


def test_weights_files_are_checked_and_never_unpickled(tmp_path: Path) -> None:
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "w.pkl").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError):
        load_weights(tmp_path / "w.pkl")
    assert not (tmp_path / "pwned").exists()
    good = {
        "format": "datapipe.keyframes.scorer/1",
        "cues": list(CUE_NAMES),
        "mean": [0.0] * 7,
        "scale": [1.0] * 7,
        "coef": [1.0] * 7,
        "intercept": 0.0,
    }
    for broken, match in (
        ({**good, "format": "x"}, "not a key-frame scorer"),
        ({**good, "cues": ["a"]}, "other cues"),
        ({**good, "coef": [1.0] * 6}, "'coef' must be a list of 7"),
        ({**good, "scale": [0.0] * 7}, "zero"),
        ({**good, "intercept": "nan"}, "intercept"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=match):
            load_weights(tmp_path / "bad.json")


def test_labels_files_csv_and_json(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("video,frame\ntrain/a.mp4,11\ntrain/a.mp4,29\nb.mp4,3\n")
    assert read_labels(tmp_path / "l.csv") == {"train/a": [11, 29], "b": [3]}
    (tmp_path / "l.json").write_text(json.dumps({"train/a.mp4": [11], "c.mp4": []}))
    assert read_labels(tmp_path / "l.json") == {"train/a": [11], "c": []}
    (tmp_path / "rows.json").write_text(json.dumps([["a.mp4", 2], {"video": "a.mp4", "frame": 5}]))
    assert read_labels(tmp_path / "rows.json") == {"a": [2, 5]}
    (tmp_path / "bad.csv").write_text("video,frame\na.mp4,x\n")
    with pytest.raises(ValueError, match="not an integer"):
        read_labels(tmp_path / "bad.csv")


def _learned_pipeline(root: Path, fit: dict[str, Any], k: int = 2) -> Pipeline:
    return Pipeline.from_dict(
        {
            "seed": 0,
            "nodes": {
                "src": {"stage": "files", "params": {"root": str(root), "kinds": ["video"]}},
                "cues": {"stage": "keyframes.cues", "inputs": "src"},
                "scorer": {"stage": "keyframes.learned_fit", "inputs": "cues", "params": fit},
                "pick": {
                    "stage": "keyframes.learned",
                    "inputs": "scorer",
                    "params": {"k": k, "min_gap": 5, "decode": True},
                },
            },
        }
    )


def _samples(out: Path) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in iter_samples(sorted((out / "shards").glob("*.tar")))}


def test_learned_fit_and_map_through_the_engine(learn_root: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    rows = [f"{n}.mp4,{f}" for n, (_, cuts) in LEARN_CLIPS.items() if "train" in n for f in cuts]
    labels.write_text("video,frame\n" + "\n".join(rows) + "\n")
    weights = tmp_path / "scorer.json"
    fit = {"labels": str(labels), "save": str(weights)}
    report = run_local(_learned_pipeline(learn_root, fit), tmp_path / "a", workers=1)
    assert report.counts["ok"] == 5 and report.counts["error"] == 0
    a = _samples(tmp_path / "a")
    for name, (_, cuts) in LEARN_CLIPS.items():
        assert a[name]["keyframe_idx"].tolist() == list(cuts), name
        assert a[name]["keyframes"].shape == (2, 120, 160, 3)
        np.testing.assert_allclose(a[name]["keyframe_pts"], np.array(cuts) / FPS)
    assert json.loads(weights.read_text())["trained_on"]["positives"] == 6
    # saved weights reload into the same scores; a proxy signal (scene cuts) learns too
    run_local(_learned_pipeline(learn_root, {"weights": str(weights)}), tmp_path / "b", workers=1)
    b = _samples(tmp_path / "b")
    run_local(_learned_pipeline(learn_root, {"labels": "scene"}), tmp_path / "c", workers=1)
    c = _samples(tmp_path / "c")
    for name in LEARN_CLIPS:
        assert np.array_equal(a[name]["keyframe_score"], b[name]["keyframe_score"])
        assert c[name]["keyframe_idx"].tolist() == list(LEARN_CLIPS[name][1])
    (tmp_path / "off.csv").write_text("train/a.mp4,99\n")
    with pytest.raises(ConfigError, match="frame 99 outside its 44 frames"):
        run_local(
            _learned_pipeline(learn_root, {"labels": str(tmp_path / "off.csv")}),
            tmp_path / "d",
            workers=1,
        )


def test_learned_map_budget_errors(learn_root: Path) -> None:
    cues = frame_cues(learn_root / "held/d.mp4")
    y = np.zeros(44, bool)
    y[[14, 26]] = True
    ctx = Context(fitted={"scorer": fit_scorer([cues.values], [y])})
    rec = {"frame_cues": cues.values, "frame_pts": cues.seconds}
    with pytest.raises(ItemError) as info:
        LearnedKeyFrames(k=45).process(rec, ctx)
    assert info.value.error_class == "invalid"
    with pytest.raises(ItemError, match="frames 20 apart fit"):
        LearnedKeyFrames(k=4, min_gap=20).process(rec, ctx)
    clamped = LearnedKeyFrames(k=4, min_gap=20, too_few="clamp").process(rec, ctx)
    assert 1 <= len(clamped["keyframe_idx"]) < 4
    assert (np.diff(clamped["keyframe_idx"]) >= 20).all()
    with pytest.raises(ItemError, match="no fitted key-frame scorer"):
        LearnedKeyFrames().process(rec, Context())


# -- bad input ------------------------------------------------------------------------------------
def _mdat(data: bytes) -> tuple[int, int]:
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"mdat":
            return pos, size
        pos += size
    raise AssertionError("no mdat box")


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


def bad_videos(root: Path, good: Path) -> dict[str, str]:
    """Write bad inputs under ``root``; returns file name -> expected error class."""
    data = good.read_bytes()
    root.mkdir(parents=True, exist_ok=True)
    (root / "zero.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(3).bytes(4000))
    (root / "text.mp4").write_text("this is not a video\n" * 20)
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index at the end: gone
    _audio_only(root / "audio_only.mp4")
    pos, size = _mdat(data)  # every frame's payload zeroed: packets, but nothing decodes
    (root / "undecodable.mp4").write_bytes(data[: pos + 8] + bytes(size - 8) + data[pos + size :])
    return {
        "zero.mp4": "empty",
        "garbage.mp4": "corrupt",
        "text.mp4": "corrupt",
        "truncated.mp4": "truncated",
        "audio_only.mp4": "unsupported",
        "undecodable.mp4": "corrupt",
    }


SELECTORS: dict[str, Callable[[Path], Any]] = {
    "uniform": lambda p: keyframes_uniform(p, k=2),
    "tsn": lambda p: keyframes_tsn(p, 2),
    "iframes": lambda p: keyframes_iframes(p),
    "motion": lambda p: keyframes_motion(p, k=1),
    "scene": lambda p: keyframes_scene(p),
    "cues": lambda p: frame_cues(p),
}


def test_bad_videos_raise_the_reader_error_classes(
    clip: Callable[[str], Path], tmp_path: Path
) -> None:
    expected = bad_videos(tmp_path, clip("t30"))
    for name, error_class in expected.items():
        for method, select in SELECTORS.items():
            with pytest.raises(ItemError) as info:
                select(tmp_path / name)
            assert info.value.error_class == error_class, (name, method, info.value)
    with pytest.raises(ItemError) as info:
        keyframes_uniform(tmp_path, k=2)
    assert info.value.error_class == "io"


def test_engine_turns_bad_videos_and_budgets_into_error_rows(
    clip: Callable[[str], Path], tmp_path: Path
) -> None:
    root = tmp_path / "videos"
    expected = {f"bad/{n[:-4]}": c for n, c in bad_videos(root / "bad", clip("t30")).items()}
    (root / "good").mkdir()
    (root / "good" / "t30.mp4").write_bytes(clip("t30").read_bytes())
    (root / "good" / "short.mp4").write_bytes(clip("short").read_bytes())
    expected.update({"good/t30": "", "good/short": "invalid"})
    pipeline = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "files", "params": {"root": str(root), "kinds": ["video"]}},
                "pick": {
                    "stage": "keyframes.uniform",
                    "inputs": "src",
                    "params": {"k": 4, "decode": True},
                },
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
        else:
            assert row.status == "ok", (key, row.message)
    assert "k=4 frames requested but the video has only 3" in rows["good/short"].message
    assert report.counts["ok"] == 1
    sample = _samples(out)["good/t30"]
    assert sample["keyframe_idx"].tolist() == [0, 10, 19, 29]
    assert sample["keyframes"].shape == (4, 120, 160, 3) and sample["video_damage"] == 0


def test_budget_params_are_checked_before_any_data() -> None:
    from datapipe.errors import ParamError

    for cls, params in (
        (UniformKeyFrames, {"k": 0}),
        (UniformKeyFrames, {}),
        (UniformKeyFrames, {"k": 2, "every": 3}),
        (TSNKeyFrames, {"k": 0}),
        (IFrameKeyFrames, {"k": 0}),
        (MotionKeyFrames, {}),
        (LearnedKeyFrames, {"k": 0}),
    ):
        with pytest.raises(ParamError):
            cls(**params)


# -- stage contract -------------------------------------------------------------------------------
def _contract(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared conformance check (also run by test_conformance once the stages are
    declared as entry points)."""
    import test_conformance

    monkeypatch.setitem(test_conformance.STAGES, cls.name, cls)  # type: ignore[attr-defined]
    test_conformance.test_stage_contract(cls.name)


@pytest.mark.parametrize("cls", MAPS, ids=lambda c: c.name)
@pytest.mark.parametrize("decode", [False, True])
def test_stage_output_matches_its_declared_fields(
    cls: type, decode: bool, clip: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _contract(cls, monkeypatch)
    stage = cls(**{**cls.EXAMPLE_PARAMS, "decode": decode})
    out = stage.process({"path": str(clip("cuts_a")), "key": "k"}, Context())
    assert set(out) == {f.name for f in stage.produces()}
    assert ("keyframes" in out) == decode
    for f in stage.produces():
        assert f.check_value(out[f.name]) is None, f.check_value(out[f.name])
    assert out["video_damage"] == 0


def test_learned_stages_contract(
    clip: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for cls in (FrameCues, LearnedFit, LearnedKeyFrames):
        _contract(cls, monkeypatch)
    cues = FrameCues().process({"path": str(clip("cuts_a"))}, Context())
    for f in FrameCues().produces():
        assert f.check_value(cues[f.name]) is None, f.check_value(cues[f.name])
    state = LearnedFit(labels="scene").fit(["a"], {"frame_cues": [cues["frame_cues"]]}, Context())
    assert json.loads(json.dumps(state)) == state
    stage = LearnedKeyFrames(k=2)
    out = stage.process(cues, Context(fitted={"scorer": state}))
    assert out["keyframe_idx"].tolist() == [13, 30]
    for f in stage.produces():
        assert f.check_value(out[f.name]) is None, f.check_value(out[f.name])
