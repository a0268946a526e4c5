"""Key-frame selection against the PyAV baselines a user would write, side by side.

For each method: our time, the baseline's time and their ratio (best of ``--repeat``, timed
interleaved round-robin after a warm-up call), on synthetic H.264 clips (``video_synth``: a
textured square over a textured background, a hard cut to a darker scene in the middle, off
the GOP grid). Baselines:

- ``full RGB``: decode every frame with PyAV and convert it (``to_ndarray("rgb24")``), then
  pick: what a loader without seeking does;
- ``seq + pick``: decode every frame, convert only the selected ones (decord-style
  ``get_batch`` without an index);
- ``video.iframes``: the key-frame-only reader (``skip_frame="NONKEY"``);
- ``RGB hist``: full RGB decode, then the same cell histograms on a gray conversion
  (what PySceneDetect's detectors do: every pixel decoded and converted);
- ``PySceneDetect``: its ``ContentDetector`` on the same clip (PyAV backend), where
  ``scenedetect`` is installed (the ``bench`` extra: ``bash scripts/setup.sh --bench``);
- ``key packets``: key-frame timestamps from the demuxer's packet flags, no decoding (the
  like-for-like peer of an index computation);
- ``PyAV seek``: each key frame fetched by seeking to its timestamp and decoding one frame.

``--quick`` uses a 320x180 clip of 90 frames. ``--report PATH`` writes, in the shared format of
``results.py``, one row per headline method (uniform and TSN decode, I-frame decode, motion,
scene, cues) against its baselines (every repeat, in ms per clip).

Usage: ``python scripts/bench/bench_keyframes.py [--size 640x360] [--frames 300] [--repeat 5]
[--quick] [--report F]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from results import Row, write_report

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


def measure(methods: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each call of each method: one warm-up call each, then ``repeat`` rounds
    interleaved round-robin (the machine may be shared and noisy)."""
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


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


def key_packets(path: Path) -> list[int]:
    """Key-frame presentation timestamps from the demuxer's packet flags: no decoding, what a
    PyAV user reads for key-frame indices."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return [int(p.pts) for p in c.demux(stream) if p.is_keyframe and p.pts is not None]


def seek_keys(path: Path) -> list[np.ndarray]:
    """Each key frame decoded by seeking to it (``container.seek`` to its timestamp, one
    decoded frame), what a PyAV user writes to fetch key frames."""
    frames = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for pts in key_packets(path):
            c.seek(pts, stream=stream, any_frame=False, backward=True)
            frame = next(c.decode(stream))
            frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def scenedetect_cuts(path: Path) -> list[int] | None:
    """PySceneDetect's content detector (PyAV backend) on the clip: the frame of each cut;
    None where ``scenedetect`` is not installed (``bash scripts/setup.sh --bench``)."""
    try:
        from scenedetect import ContentDetector, SceneManager, open_video
    except ImportError:
        return None
    video = open_video(str(path), backend="pyav")
    manager = SceneManager()
    manager.add_detector(ContentDetector())
    manager.detect_scenes(video)
    return [start.frame_num for start, _ in manager.get_scene_list()[1:]]


def make_clip(path: Path, width: int, height: int, frames: int) -> None:
    square = Square(x0=width // 8, y0=height // 8, side=height // 4, dx=1, dy=0)
    a = render(width, height, frames, square, seed=1)
    b = render(width, height, frames, square, seed=2)
    a[frames // 2 + 3 :] = b[frames // 2 + 3 :] // 2  # a hard cut to a darker scene
    write_clip(path, a, gop=30, bframes=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default=None, help="640x360 (--quick: 320x180)")
    ap.add_argument("--frames", type=int, default=None, help="300 (--quick: 90)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a 320x180 clip of 90 frames")
    ap.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = ap.parse_args()
    size = args.size or ("320x180" if args.quick else "640x360")
    frames = args.frames or (90 if args.quick else 300)
    width, height = (int(v) for v in size.split("x"))
    report: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        make_clip(path, width, height, frames)
        n, r = frames, args.repeat
        clip = f"{width}x{height}, {n} frames"
        print(f"clip: {width}x{height}, {n} frames, H.264 GOP 30, 2 B-frames; best of {r}")
        print(f"{'method':<34}{'ours s':>9}{'baseline':>16}{'base s':>9}{'ratio':>8}")

        def task(
            name: str,
            ours: Callable[[], object],
            peers: dict[str, Callable[[], object]],
            stage: str | None = None,
        ) -> None:
            """Time ours and its baselines together and print a row per baseline; with
            ``stage`` (ours, by its stage's name), a headline task: add its report row."""
            times = measure({"ours": ours, **peers}, r)
            for base_name in peers:
                base, best = min(times[base_name]), min(times["ours"])
                print(f"{name:<34}{best:9.4f}{base_name:>16}{base:9.4f}{base / best:7.1f}x")
            if stage is not None:
                ms = {k: [t * 1e3 for t in v] for k, v in times.items()}
                peer_ms = {k: ms[k] for k in peers}
                report.append(Row(f"{name} ({clip})", "ms/clip", False, stage, ms["ours"], peer_ms))

        for k in (8, 32):
            pick = uniform_indices(n, k)
            task(
                f"uniform k={k} decode",
                lambda k=k: keyframes_uniform(path, k=k, decode=True),
                {
                    "full RGB": lambda pick=pick: full_rgb(path, pick),
                    "seq + pick": lambda pick=pick: seq_pick(path, pick),
                },
                stage="keyframes.uniform" if k == 8 else None,
            )
        task(
            "uniform k=8 indices only",
            lambda: keyframes_uniform(path, k=8),
            {"key packets": lambda: key_packets(path)},
        )
        task(
            "tsn k=8 train decode",
            lambda: keyframes_tsn(path, 8, mode="train", decode=True),
            {"full RGB": lambda: full_rgb(path, uniform_indices(n, 8))},
            "keyframes.tsn",
        )
        task(
            "iframes decode",
            lambda: keyframes_iframes(path, decode=True),
            {"video.iframes": lambda: read_iframes(path), "PyAV seek": lambda: seek_keys(path)},
            "keyframes.iframes",
        )
        task(
            "iframes indices only",
            lambda: keyframes_iframes(path),
            {"key packets": lambda: key_packets(path)},
        )
        task(
            "motion k=4 (compressed domain)",
            lambda: keyframes_motion(path, k=4),
            {"full RGB": lambda: full_rgb(path, np.arange(1))},
            "keyframes.motion",
        )
        scene = keyframes_scene(path)
        theirs = scenedetect_cuts(path)
        scene_peers: dict[str, Callable[[], object]] = {"RGB hist": lambda: rgb_hist(path)}
        if theirs is not None:
            scene_peers["PySceneDetect"] = lambda: scenedetect_cuts(path)
        task(
            "scene (Y plane histograms)",
            lambda: keyframes_scene(path),
            scene_peers,
            "keyframes.scene",
        )
        task(
            "cues (learned scorer input)",
            lambda: frame_cues(path),
            {"full RGB": lambda: full_rgb(path, np.arange(1))},
            "keyframes.cues",
        )
        print(f"scene cuts found: {scene.cuts.tolist()} (planted: [{n // 2 + 3}]); "
              f"PySceneDetect ContentDetector: {theirs}")  # fmt: skip
    write_report(args.report, report)


if __name__ == "__main__":
    main()
