"""The key-frame Map stages; the algorithms are in :mod:`~datapipe.stages.keyframes.methods`.

Each consumes ``path`` (a video) and produces ``keyframe_idx`` (int64, K: positions among
all frames, presentation order), ``keyframe_pts`` (float64, K: seconds), ``video_damage``
(frames concealed or lost; 0 for a clean file) and, with ``decode: true``, ``keyframes``
(uint8, K H W 3: RGB of the selected frames only). They decode untrusted media, so they run
isolated (``isolate = True``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field as PField
from pydantic import model_validator

from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.common.video_open import DEFAULT_MAX_PIXELS
from datapipe.stages.keyframes import methods as kf
from datapipe.stages.keyframes import signals as sig

KEYFRAME_IDX = Field("keyframe_idx", "int64", "K", "selected frames: positions among all frames")
KEYFRAME_PTS = Field("keyframe_pts", "float64", "K", "selected frames: presentation time (s)")
KEYFRAMES = Field("keyframes", "uint8", "K H W 3", "selected frames, RGB")
VIDEO_DAMAGE = Field("video_damage", "int", "", "frames concealed or lost (0: clean)")

_TOO_FEW = "Fewer frames than k: 'error' (invalid), 'clamp' (keep them all)"


class VideoParams(Params):
    strict: bool = PField(False, description="Damaged video is an error, not a count.")
    max_pixels: int = PField(DEFAULT_MAX_PIXELS, ge=1, description="Refuse larger frames.")


class KeyFrameParams(VideoParams):
    decode: bool = PField(
        False, description="Also output the selected frames as RGB; no other frame is converted."
    )


def selection_record(sel: kf.KeyFrameSelection, fields: tuple[Field, ...]) -> Record:
    """The record of a selection, holding exactly ``fields``."""
    values = {
        "keyframe_idx": sel.indices,
        "keyframe_pts": sel.seconds,
        "keyframes": sel.frames,
        "video_damage": int(sel.damaged),
        "keyframe_score": sel.scores,
        "scene_cuts": sel.cuts,
    }
    return {f.name: values[f.name] for f in fields}


class KeyFrameStage(Map):
    """Base of the key-frame stages: consumes ``path``, produces the selection fields."""

    CONSUMES = (Field("path", "str", ""),)
    isolate = True
    #: fields produced besides the common ones
    EXTRA: ClassVar[tuple[Field, ...]] = ()

    def produces(self) -> tuple[Field, ...]:
        frames = (KEYFRAMES,) if self.params.decode else ()  # type: ignore[attr-defined]
        return (KEYFRAME_IDX, KEYFRAME_PTS, *self.EXTRA, *frames, VIDEO_DAMAGE)

    def select(self, path: str, record: Record, ctx: Context) -> kf.KeyFrameSelection:
        raise NotImplementedError

    def process(self, record: Record, ctx: Context) -> Record:
        sel = self.select(str(ctx.resolve(record["path"])), record, ctx)
        return selection_record(sel, self.produces())


class UniformParams(KeyFrameParams):
    k: int | None = PField(None, ge=1, description="Frames to keep, first to last evenly.")
    every: int | None = PField(None, ge=1, description="Keep every n-th frame instead.")
    too_few: Literal["error", "clamp", "repeat"] = PField(
        "error", description=f"{_TOO_FEW}, 'repeat' (exactly k, frames repeat)."
    )

    @model_validator(mode="after")
    def _one_budget(self) -> UniformParams:
        if (self.k is None) == (self.every is None):
            raise ValueError("give exactly one of 'k' or 'every'")
        return self


class UniformKeyFrames(KeyFrameStage):
    """``k`` frames at uniform intervals (first to last), or every n-th frame; demux only."""

    name = "keyframes.uniform"
    description = "K frames at uniform intervals (or every n-th), from the demuxer alone."
    Params = UniformParams
    EXAMPLE_PARAMS = {"k": 8}

    def select(self, path: str, record: Record, ctx: Context) -> kf.KeyFrameSelection:
        p = self.params
        return kf.keyframes_uniform(
            path,
            k=p.k,
            every=p.every,
            too_few=p.too_few,
            decode=p.decode,
            strict=p.strict,
            max_pixels=p.max_pixels,
        )


class TSNParams(KeyFrameParams):
    k: int = PField(8, ge=1, description="Segments, one frame from each.")
    mode: Literal["train", "test"] = PField(
        "train", description="'train': seeded random frame per segment; 'test': the centre."
    )
    too_few: Literal["error", "clamp", "repeat"] = PField(
        "error", description=f"{_TOO_FEW}, 'repeat' (exactly k, frames repeat)."
    )


class TSNKeyFrames(KeyFrameStage):
    """TSN segment sampling. In ``train`` mode each segment's frame is drawn from a generator
    seeded by (pipeline seed, key, epoch): the streaming loader's ``set_epoch`` (or
    ``datapipe run --epoch``) gives other frames, and the same epoch the same ones."""

    name = "keyframes.tsn"
    description = "TSN segment sampling: a random frame per segment (train) or the centres (test)."
    Params = TSNParams
    EXAMPLE_PARAMS = {"k": 4, "mode": "train"}

    @property  # type: ignore[override]
    def epoch_dependent(self) -> bool:  # type: ignore[override]
        """Only the training draw depends on ``ctx.epoch``; test mode is epoch-free."""
        return self.params.mode == "train"

    def select(self, path: str, record: Record, ctx: Context) -> kf.KeyFrameSelection:
        p = self.params
        return kf.keyframes_tsn(
            path,
            p.k,
            mode=p.mode,
            seed=ctx.seed,
            key=str(record.get("key") or record["path"]),
            epoch=ctx.epoch,
            too_few=p.too_few,
            decode=p.decode,
            strict=p.strict,
            max_pixels=p.max_pixels,
        )


class IFramesParams(KeyFrameParams):
    k: int | None = PField(None, ge=1, description="Keep k key frames spread evenly (None: all).")
    too_few: Literal["error", "clamp", "repeat"] = PField(
        "error", description=f"{_TOO_FEW}, 'repeat' (exactly k, key frames repeat)."
    )


class IFrameKeyFrames(KeyFrameStage):
    """The codec's key frames from the packets' key flags (no decoding); ``decode`` decodes
    those packets alone."""

    name = "keyframes.iframes"
    description = "Codec key frames (I-frames) from the packets' key flags, without decoding."
    Params = IFramesParams

    def select(self, path: str, record: Record, ctx: Context) -> kf.KeyFrameSelection:
        p = self.params
        return kf.keyframes_iframes(
            path,
            k=p.k,
            too_few=p.too_few,
            decode=p.decode,
            strict=p.strict,
            max_pixels=p.max_pixels,
        )


class MotionParams(KeyFrameParams):
    k: int | None = PField(None, ge=1, description="Keep the k highest peaks.")
    threshold: float | None = PField(
        None, ge=0, description="Keep peaks with at least this energy (pixels per frame)."
    )
    min_gap: int = PField(5, ge=1, description="Frames between two peaks, at least.")
    smooth: int = PField(1, ge=1, description="Moving-average window over the energy, frames.")
    block: Literal[4, 8, 16] = PField(16, description="Motion-vector grid cell, pixels.")
    too_few: Literal["error", "clamp"] = PField("error", description=f"{_TOO_FEW}.")

    @model_validator(mode="after")
    def _some_budget(self) -> MotionParams:
        if self.k is None and self.threshold is None:
            raise ValueError("give 'k', 'threshold' or both")
        return self


class MotionKeyFrames(KeyFrameStage):
    """Local maxima of motion-vector energy with a minimum gap, in the compressed domain;
    ``keyframe_score`` is each peak's energy (mean motion, pixels per frame)."""

    name = "keyframes.motion"
    description = "Peaks of codec motion-vector energy with a minimum gap (no RGB decode)."
    Params = MotionParams
    EXAMPLE_PARAMS = {"k": 3}
    EXTRA = (Field("keyframe_score", "float32", "K", "motion energy of each peak, px/frame"),)

    def select(self, path: str, record: Record, ctx: Context) -> kf.KeyFrameSelection:
        p = self.params
        return kf.keyframes_motion(
            path,
            k=p.k,
            threshold=p.threshold,
            min_gap=p.min_gap,
            smooth=p.smooth,
            block=p.block,
            too_few=p.too_few,
            decode=p.decode,
            strict=p.strict,
            max_pixels=p.max_pixels,
        )


class SceneParams(KeyFrameParams):
    threshold: float = PField(
        sig.SCENE_THRESHOLD, gt=0, le=1, description="Histogram change (0..1) that makes a cut."
    )
    min_scene_len: int = PField(
        sig.MIN_SCENE_LEN, ge=1, description="Frames a scene lasts, at least."
    )
    grid: int = PField(sig.GRID, ge=1, le=32, description="Cells per side of the raster.")
    bins: int = PField(sig.BINS, ge=2, le=256, description="Luma histogram bins per cell.")
    max_side: int = PField(128, ge=8, description="Luma subsampled to about this many pixels.")


class SceneKeyFrames(KeyFrameStage):
    """The first frame of each scene; scenes split at hard cuts found by luma histogram change
    on a subsampled Y plane. ``scene_cuts`` lists the cuts, ``keyframe_score`` the change."""

    name = "keyframes.scene"
    description = "First frame of each scene, hard cuts by luma histogram change (low-res Y)."
    Params = SceneParams
    EXTRA = (
        Field("scene_cuts", "int64", "C", "frames where a new scene starts (hard cuts)"),
        Field("keyframe_score", "float32", "K", "histogram change at each scene start"),
    )

    def select(self, path: str, record: Record, ctx: Context) -> kf.KeyFrameSelection:
        p = self.params
        return kf.keyframes_scene(
            path,
            threshold=p.threshold,
            min_scene_len=p.min_scene_len,
            grid=p.grid,
            bins=p.bins,
            max_side=p.max_side,
            decode=p.decode,
            strict=p.strict,
            max_pixels=p.max_pixels,
        )
