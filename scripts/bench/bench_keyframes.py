"""Key-frame selection against the PyAV baselines a user would write, side by side.

For each method: our time, the baseline's time and their ratio (best of ``--repeat``), on
synthetic H.264 clips (``video_synth``: a textured square over a textured background, a
hard cut to a darker scene in the middle, off the GOP grid). Baselines:

- ``full RGB``: decode every frame with PyAV and convert it (``to_ndarray("rgb24")``), then
  pick: what a loader without seeking does;
- ``seq + pick``: decode every frame, convert only the selected ones (decord-style
  ``get_batch`` without an index);
- ``video.iframes``: the key-frame-only reader (``skip_frame="NONKEY"``);
- ``RGB hist``: full RGB decode, then the same cell histograms on a gray conversion
  (what PySceneDetect's detectors do: every pixel decoded and converted).

Usage: ``python scripts/bench/bench_keyframes.py [--size 640x360] [--frames 300] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from datapipe.stages.common.video_synth import Square, render, write_clip
from datapipe.stages.compressed.video_frames import read_iframes
from datapipe.stages.keyframes.index import uniform_indices
from datapipe.stages.keyframes.methods import (
    keyframes_iframes,
    keyframes_motion,
    keyframes_scene,
    keyframes_tsn,
    keyframes_uniform,
)
from datapipe.stages.keyframes.signals import frame_cues, grid_histogram


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def full_rgb(path: Path, pick: np.ndarray) -> np.ndarray:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack([frames[i] for i in pick])


def seq_pick(path: Path, pick: np.ndarray) -> np.ndarray:
    want = set(pick.tolist())
    out = {}
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in want:
                out[i] = f.to_ndarray(format="rgb24")
    return np.stack([out[i] for i in pick])


def rgb_hist(path: Path) -> list[float]:
    change, prev = [], None
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            rgb = f.to_ndarray(format="rgb24").astype(np.float32)
            gray = (rgb @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
            h = grid_histogram(gray)
            change.append(0.0 if prev is None else float(0.5 * np.abs(h - prev).sum(1).mean()))
            prev = h
    return change


def make_clip(path: Path, width: int, height: int, frames: int) -> None:
    square = Square(x0=width // 8, y0=height // 8, side=height // 4, dx=1, dy=0)
    a = render(width, height, frames, square, seed=1)
    b = render(width, height, frames, square, seed=2)
    a[frames // 2 + 3 :] = b[frames // 2 + 3 :] // 2  # a hard cut to a darker scene
    write_clip(path, a, gop=30, bframes=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        make_clip(path, width, height, args.frames)
        n, r = args.frames, args.repeat
        print(f"clip: {width}x{height}, {n} frames, H.264 GOP 30, 2 B-frames; best of {r}")
        print(f"{'method':<34}{'ours s':>9}{'baseline':>16}{'base s':>9}{'ratio':>8}")

        def row(name: str, ours: float, base_name: str, base: float) -> None:
            print(f"{name:<34}{ours:9.4f}{base_name:>16}{base:9.4f}{base / ours:7.1f}x")

        for k in (8, 32):
            pick = uniform_indices(n, k)
            ours = best(lambda k=k: keyframes_uniform(path, k=k, decode=True), r)
            row(
                f"uniform k={k} decode",
                ours,
                "full RGB",
                best(lambda pick=pick: full_rgb(path, pick), r),
            )
            row(
                f"uniform k={k} decode",
                ours,
                "seq + pick",
                best(lambda pick=pick: seq_pick(path, pick), r),
            )
        row(
            "uniform k=8 indices only",
            best(lambda: keyframes_uniform(path, k=8), r),
            "seq + pick",
            best(lambda: seq_pick(path, uniform_indices(n, 8)), r),
        )
        row(
            "tsn k=8 train decode",
            best(lambda: keyframes_tsn(path, 8, mode="train", decode=True), r),
            "full RGB",
            best(lambda: full_rgb(path, uniform_indices(n, 8)), r),
        )
        row(
            "iframes decode",
            best(lambda: keyframes_iframes(path, decode=True), r),
            "video.iframes",
            best(lambda: read_iframes(path), r),
        )
        row(
            "iframes indices only",
            best(lambda: keyframes_iframes(path), r),
            "video.iframes",
            best(lambda: read_iframes(path), r),
        )
        full = best(lambda: full_rgb(path, np.arange(1)), r)
        row(
            "motion k=4 (compressed domain)",
            best(lambda: keyframes_motion(path, k=4), r),
            "full RGB",
            full,
        )
        scene = keyframes_scene(path)
        row(
            "scene (Y plane histograms)",
            best(lambda: keyframes_scene(path), r),
            "RGB hist",
            best(lambda: rgb_hist(path), r),
        )
        row("cues (learned scorer input)", best(lambda: frame_cues(path), r), "full RGB", full)
        print(f"scene cuts found: {scene.cuts.tolist()} (planted: [{n // 2 + 3}])")


if __name__ == "__main__":
    main()
