"""Synthetic clips with known motion: the one clip generator of the demo's sample data, the
tests and the benchmarks.

A textured square moves by a fixed integer ``(dx, dy)`` pixels per frame over a static
textured background (:func:`moving_square_clip`), or the whole picture pans by ``(dx, dy)``
per frame (:func:`panning_clip`), so the true motion of every block is known; or a coloured
disc crosses a noisy background, with an optional hard cut (:func:`disc_clip`, the demo's
sample videos, encoded to the same bytes on every machine). Clips are encoded with PyAV
(:func:`write_clip`: libx264, mpeg4, mpeg2video, libx265, libvpx-vp9), optionally with an
audio track or with irregular timestamps (variable frame rate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Square:
    """Where the moving square is: top-left ``(x0 + dx * t, y0 + dy * t)``, side ``side``."""

    x0: int
    y0: int
    side: int
    dx: int
    dy: int

    def box(self, t: int) -> tuple[int, int, int, int]:
        """(x, y, x_end, y_end) of the square in frame ``t``."""
        x, y = self.x0 + self.dx * t, self.y0 + self.dy * t
        return x, y, x + self.side, y + self.side


def texture(width: int, height: int, rng: np.random.Generator, cell: int = 4) -> np.ndarray:
    """Smooth random colour texture, uint8 (height, width, 3): noise upscaled ``cell`` times."""
    coarse = rng.integers(0, 256, size=(-(-height // cell), -(-width // cell), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def render(width: int, height: int, frames: int, square: Square, seed: int = 0) -> np.ndarray:
    """uint8 (frames, height, width, 3): the square pasted over a static background."""
    rng = np.random.default_rng(seed)
    background = texture(width, height, rng, cell=8)
    patch = texture(square.side, square.side, rng, cell=4)
    out = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        x, y, x1, y1 = square.box(t)
        xa, ya, xb, yb = max(x, 0), max(y, 0), min(x1, width), min(y1, height)
        if xa < xb and ya < yb:
            out[t, ya:yb, xa:xb] = patch[ya - y : yb - y, xa - x : xb - x]
    return out


_ENCODER_OPTIONS = {
    "libx264": lambda bf, gop: {
        "preset": "veryfast",
        "crf": "18",
        "threads": "1",
        "x264-params": f"bframes={bf}:b-adapt=0:b-pyramid=none:ref=1:scenecut=0:keyint={gop}",
    },
    "libx265": lambda bf, gop: {
        "preset": "ultrafast",
        "x265-params": f"log-level=error:bframes={bf}:keyint={gop}:pools=1:frame-threads=1",
    },
    "libvpx-vp9": lambda bf, gop: {"deadline": "realtime", "cpu-used": "8", "threads": "1"},
}


def write_clip(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    fps: int = 25,
    gop: int = 12,
    bframes: int = 0,
    pts: list[int] | None = None,
    audio: bool = False,
    container: str | None = None,
    options: dict[str, str] | None = None,
    faststart: bool = False,
    bitexact: bool = False,
) -> None:
    """Encode uint8 RGB ``frames`` (T, H, W, 3) to ``path`` (yuv420p).

    ``pts`` (in units of 1/fps) gives irregular timestamps for a variable-frame-rate clip;
    ``audio`` adds a quiet AAC tone interleaved with the video; ``faststart`` puts the MP4
    index before the media data; ``bitexact`` keeps library version strings out of the
    container. ``options`` are encoder options, over the defaults of ``codec``.
    """
    import av

    n, height, width = frames.shape[:3]
    muxer = {"movflags": "+faststart"} if faststart else {}
    if bitexact:
        muxer["fflags"] = "+bitexact"
    with av.open(os.fspath(path), mode="w", format=container, options=muxer or None) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.gop_size = gop
        ctx.thread_count = 1
        if codec in _ENCODER_OPTIONS:
            ctx.options = {**_ENCODER_OPTIONS[codec](bframes, gop), **(options or {})}
        else:
            ctx.max_b_frames = bframes
            ctx.bit_rate = 4_000_000
            if options:
                ctx.options = options
        sound = out.add_stream("aac", rate=16000) if audio else None
        samples = 0
        for t in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[t]), format="rgb24")
            frame.pts = pts[t] if pts is not None else t
            out.mux(stream.encode(frame))
            while sound is not None and samples < (t + 1) * 16000 // fps:
                tone = np.sin(np.arange(samples, samples + 1024) * 0.05, dtype=np.float64)
                chunk = av.AudioFrame.from_ndarray(
                    (0.1 * tone).astype(np.float32)[None], format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.pts = 16000, samples
                out.mux(sound.encode(chunk))
                samples += 1024
        out.mux(stream.encode(None))
        if sound is not None:
            out.mux(sound.encode(None))


def moving_square_clip(
    path: str | os.PathLike[str],
    *,
    codec: str = "libx264",
    size: tuple[int, int] = (160, 120),
    frames: int = 24,
    motion: tuple[int, int] = (2, 1),
    side: int = 32,
    seed: int = 0,
    **encode: object,
) -> Square:
    """Render and encode a moving-square clip; returns where the square is."""
    width, height = size
    square = Square(x0=width // 8, y0=height // 8, side=side, dx=motion[0], dy=motion[1])
    write_clip(path, render(width, height, frames, square, seed), codec=codec, **encode)  # type: ignore[arg-type]
    return square


def render_pan(
    width: int, height: int, frames: int, motion: tuple[int, int], seed: int = 0
) -> np.ndarray:
    """uint8 (frames, height, width, 3): a window over a large texture whose content moves by
    ``motion`` = (dx, dy) >= 0 pixels per frame (the window slides the other way)."""
    dx, dy = motion
    if dx < 0 or dy < 0:
        raise ValueError(f"pan motion must be non-negative, got {motion}")
    big = texture(
        width + dx * (frames - 1), height + dy * (frames - 1), np.random.default_rng(seed)
    )
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        x, y = dx * (frames - 1 - t), dy * (frames - 1 - t)
        out[t] = big[y : y + height, x : x + width]
    return out


def panning_clip(
    path: str | os.PathLike[str],
    *,
    codec: str = "libx264",
    size: tuple[int, int] = (160, 96),
    frames: int = 24,
    motion: tuple[int, int] = (2, 1),
    seed: int = 0,
    **encode: object,
) -> None:
    """Render and encode a clip whose whole picture moves by ``motion`` pixels per frame."""
    write_clip(path, render_pan(*size, frames, motion, seed), codec=codec, **encode)  # type: ignore[arg-type]


#: libx264 options of :func:`disc_clip`, whose bytes are the same on every machine: one
#: thread makes x264's decisions independent of the core count, and ``asm=0`` because its
#: SIMD kernels are not bit-exact across CPU feature sets (its AVX-512 path varied between
#: runs). x264's own defaults otherwise (B-frames, adaptive key frames).
REPRODUCIBLE_X264 = {"threads": "1", "preset": "veryfast", "crf": "26", "x264-params": "asm=0"}


def render_disc(
    width: int,
    height: int,
    frames: int,
    rng: np.random.Generator,
    *,
    direction: Literal["right", "down"] | None = None,
    cut: bool = False,
) -> np.ndarray:
    """uint8 (frames, height, width, 3): a coloured disc over a noisy textured background,
    crossing the picture to the right or down (``direction``) or standing still; with ``cut``
    the background changes at frame ``frames // 2 + 3`` (off the GOP grid of the demo's
    clips, so that no scheduled key frame hides it). Sizes are multiples of 16 in practice
    (the background is 16-pixel noise)."""
    radius = height // 6
    backgrounds = [texture(width, height, rng, cell=16).astype(np.float32) for _ in range(2)]
    colour = rng.uniform(0, 255, size=3).astype(np.float32)
    x0 = float(rng.uniform(radius, width / 3))
    y0 = float(rng.uniform(radius, height / 3))
    dx = (width - 2 * radius - x0) / frames if direction == "right" else 0.0
    dy = (height - 2 * radius - y0) / frames if direction == "down" else 0.0
    cut_at = frames // 2 + 3 if cut else frames
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        background = backgrounds[1 if t >= cut_at else 0]
        frame = background + rng.normal(0.0, 3.0, size=background.shape).astype(np.float32)
        disc = (xx - (x0 + dx * t)) ** 2 + (yy - (y0 + dy * t)) ** 2 <= radius**2
        frame[disc] = colour
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def disc_clip(
    path: str | os.PathLike[str],
    rng: np.random.Generator,
    *,
    direction: Literal["right", "down"] | None = None,
    size: tuple[int, int] = (96, 64),
    frames: int = 16,
    cut: bool = False,
    fps: int = 12,
    gop: int = 8,
) -> None:
    """Render (:func:`render_disc`) and encode a disc clip to an H.264 MP4 at ``path``
    (folders created), the same bytes on every machine for the same ``rng`` state
    (:data:`REPRODUCIBLE_X264`, a bit-exact container): the demo's sample videos."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    pixels = render_disc(*size, frames, rng, direction=direction, cut=cut)
    write_clip(
        path,
        pixels,
        fps=fps,
        gop=gop,
        container="mp4",
        options=REPRODUCIBLE_X264,
        bitexact=True,
    )
