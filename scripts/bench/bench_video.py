"""Video readers (motion vectors, frame types, I-frames, packets, CoViAR) against the peers a
user would otherwise pick, measured in one run and printed as one table.

Clips, generated once with PyAV into ``--workdir`` (a temporary folder by default), 640x480,
30 fps, a textured background panning 1 px/frame with a textured square moving (3, 1)
px/frame and mild noise:

- ``h264``: libx264 preset veryfast, crf 23, GOP 30 (keyint 30, no scene cuts), 2 B-frames
  (b-adapt 0, no B-pyramid), 1 reference frame; 300 frames.
- ``mpeg4``: FFmpeg's MPEG-4 Part 2 encoder at 4 Mb/s, GOP 12, no B-frames (CoViAR's
  re-encoding setting); 300 frames.
- ``h264`` again with 1,000 frames for the memory rows (100 vs 1,000 frames of one stream).

Threads: every PyAV decode below runs with ``thread_type="NONE"`` (one thread) unless a row
says AUTO. datapipe's readers pin one thread: FFmpeg's frame threading makes H.264 motion
vectors differ from run to run, and the engine parallelises over files, not inside one.
OpenCV's Farneback runs with OpenCV's default thread count.

Motion peers: PyAV's own ``+export_mvs`` side data (the sparse per-block vectors a PyAV user
reads), mv-extractor with frame decoding off (``motion-vector-extractor``, in the ``bench``
extra on Linux x86-64), and dense optical flow
(Farneback, DIS fast) both at full resolution and at the motion-vector grid's resolution
(frames shrunk 16x first: the same output size as the block-16 field).

Method: each round runs every method once, interleaved; a row reports the median over rounds
and a ratio is the median of the per-round ratios (the machine may be shared and noisy).
Farneback is timed on the first ``--flow-pairs`` frame pairs of each clip (decoding excluded,
which flatters it). Peak memory is measured in a fresh child process per run: RSS after
imports and an 8-frame warm-up, the RSS high-water mark of the measured call (``VmHWM``, reset
after the warm-up), and tracemalloc's peak (numpy and Python allocations; FFmpeg's own buffers
show in RSS only).

``--quick`` uses 60-frame clips and 3 flow pairs, leaves out the rows no ratio or report uses
(block 8, AUTO threads, CoViAR) and the memory table. ``--report PATH`` writes, in the shared
format of ``results.py``, one row per clip for motion vectors (against every decode and flow
peer, with the targets of the ratio table), I-frames and frame types (every round, frames/s).

    pip install opencv-python-headless   # the Farneback peer (or: pip install -e .[bench])
    python scripts/bench/bench_video.py [--rounds 5] [--flow-pairs 30] [--workdir DIR] [--quick]
        [--report F]
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from results import Row, write_report

from datapipe.stages.common.motion_vectors import motion_vectors
from datapipe.stages.common.video_synth import texture, write_clip
from datapipe.stages.compressed.video_coviar import coviar
from datapipe.stages.compressed.video_frames import frame_types, iframes
from datapipe.stages.compressed.video_mv import encode_mv
from datapipe.stages.compressed.video_packets import read_video_packets

WIDTH, HEIGHT, FPS = 640, 480, 30
CLIPS = {
    "h264": {"codec": "libx264", "gop": 30, "bframes": 2, "options": {"crf": "23"}},
    "mpeg4": {"codec": "mpeg4", "gop": 12, "bframes": 0},
}


def render(n: int, seed: int = 0) -> np.ndarray:
    """Panning background, moving square, mild noise: uint8 (n, H, W, 3)."""
    rng = np.random.default_rng(seed)
    wide = texture(WIDTH + n + 8, HEIGHT, rng, cell=8)
    patch = texture(160, 160, rng, cell=6)
    out = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(n):
        frame = wide[:, t : t + WIDTH].astype(np.int16)
        x, y = (40 + 3 * t) % (WIDTH - 160), (40 + t) % (HEIGHT - 160)
        frame[y : y + 160, x : x + 160] = patch
        frame += rng.integers(-3, 4, frame.shape, dtype=np.int16)
        out[t] = np.clip(frame, 0, 255)
    return out


def make_clips(workdir: Path, frames: int = 300, long: int | None = 1000) -> dict[str, Path]:
    """Each clip of ``CLIPS`` with ``frames`` frames and, unless ``long`` is None, the h264 one
    with ``long`` frames (``h264_long``, for the memory rows); kept in ``workdir``."""
    paths = {name: workdir / f"{name}_640x480_{frames}.mp4" for name in CLIPS}
    specs = dict(CLIPS)
    if long is not None:
        paths["h264_long"] = workdir / f"h264_640x480_{long}.mp4"
        specs["h264_long"] = CLIPS["h264"]
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        video = render(max(frames, long or 0))
        for name in missing:
            n = long if name == "h264_long" else frames
            write_clip(paths[name], video[:n], fps=FPS, **specs[name])  # type: ignore[arg-type]
    return paths


# -- the methods: each returns the number of frames it covered ------------------------------------
def pyav_decode(path: Path, threads: str = "NONE", rgb: str | None = None) -> int:
    n = 0
    reformatter = VideoReformatter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = threads
        if threads == "NONE":
            stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            if rgb == "to_ndarray":
                frame.to_ndarray(format="rgb24")
            elif rgb == "reformatter":
                reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            n += 1
    return n


def rgb_frames(path: Path, count: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
        return frames


def farneback(frames: list[np.ndarray]) -> int:
    import cv2

    prev = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    for rgb in frames[1:]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        cv2.calcOpticalFlowFarneback(prev, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        prev = gray
    return len(frames) - 1


def pyav_side_data(path: Path) -> int:
    """What a PyAV user writes for motion vectors: ``+export_mvs`` and each frame's sparse
    side data as an array (one row per block, no dense field)."""
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            vectors = frame.side_data.get("MOTION_VECTORS")
            if vectors is not None:
                vectors.to_ndarray()
            n += 1
    return n


def mv_extractor(path: Path) -> int | None:
    """mv-extractor (``motion-vector-extractor`` on PyPI) with frame decoding to images off;
    None where it is not installed (the ``bench`` extra has it on Linux x86-64)."""
    try:
        from mvextractor.videocap import VideoCap
    except ImportError:
        return None
    cap = VideoCap()
    cap.open(str(path))
    cap.set_decode_frames(False)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def grid_flow(frames: list[np.ndarray], method: str, block: int = 16) -> int:
    """Dense optical flow at the motion-vector grid's resolution (each frame shrunk by
    ``block`` first): the same output size as ``motion_vectors``' block-16 field."""
    import cv2

    h, w = frames[0].shape[0] // block, frames[0].shape[1] // block
    small = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (w, h), interpolation=cv2.INTER_AREA)
             for f in frames]  # fmt: skip
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST) if method == "dis" else None
    for prev, gray in itertools.pairwise(small):
        if dis is not None:
            dis.calc(prev, gray, None)
        else:
            cv2.calcOpticalFlowFarneback(prev, gray, None, 0.5, 1, 5, 3, 5, 1.1, 0)
    return len(frames) - 1


QUICK_SKIP = (
    "PyAV decode, no conversion, AUTO threads",
    "ours motion_vectors, block 8",
    "ours coviar (stride 10: all traced, 1/10 kept)",
)


def method_table(
    path: Path, flow: list[np.ndarray] | None, quick: bool = False
) -> dict[str, Callable[[], int]]:
    """Every method on ``path``; ``quick`` leaves out ``QUICK_SKIP``."""
    methods: dict[str, Callable[[], int]] = {
        "PyAV decode, no conversion (floor)": lambda: pyav_decode(path),
        "PyAV decode, no conversion, AUTO threads": lambda: pyav_decode(path, "AUTO"),
        "PyAV decode -> RGB (to_ndarray)": lambda: pyav_decode(path, rgb="to_ndarray"),
        "PyAV decode -> RGB (one VideoReformatter)": lambda: pyav_decode(path, rgb="reformatter"),
        "ours motion_vectors, block 16": lambda: len(motion_vectors(path).mv),
        "ours motion_vectors, block 8": lambda: len(motion_vectors(path, block=8).mv),
        "ours frame_types": lambda: len(frame_types(path).types),
        "ours packets (demux only)": lambda: len(read_video_packets(path).size),
        "ours iframes (frames of the clip covered)": lambda: _iframes_cover(path),
        "ours coviar (stride 10: all traced, 1/10 kept)": lambda: len(
            coviar(path, stride=10).frame_types
        ),
    }
    if quick:
        methods = {k: v for k, v in methods.items() if k not in QUICK_SKIP}
    methods["PyAV +export_mvs side data (sparse, per block)"] = lambda: pyav_side_data(path)
    if mv_extractor(path) is not None:
        methods["mv-extractor, frames not decoded to images"] = lambda: mv_extractor(path) or 0
    if flow is not None:
        methods["OpenCV Farneback flow (pairs, RGB given)"] = lambda: farneback(flow)
        methods["OpenCV Farneback at the MV grid (1/16, RGB given)"] = lambda: grid_flow(
            flow, "farneback"
        )
        methods["OpenCV DIS at the MV grid (1/16, RGB given)"] = lambda: grid_flow(flow, "dis")
    return methods


def _iframes_cover(path: Path) -> int:
    """The frames of the clip the I-frames stand for: the clip's frame count, as its stream
    declares it (or, when it does not, counted by demuxing its packets)."""
    iframes(path)
    return clip_frames(path)


@functools.cache
def clip_frames(path: Path) -> int:
    """The clip's frame count: the stream's declared count, else its packets counted."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def measure(methods: dict[str, Callable[[], int]], rounds: int) -> dict[str, list[float]]:
    for fn in methods.values():  # warm-up: numba kernels, page cache
        fn()
    fps: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            n = fn()
            fps[name].append(n / (time.perf_counter() - t0))
    return fps


def ratio(fps: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(fps[a], fps[b], strict=True))


_MEMORY_CHILD = """
import json, sys, tracemalloc
from datapipe.stages.common.motion_vectors import motion_vectors

def status(key):  # kB, from this process's own memory map (fresh after exec)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

path, n = sys.argv[1], int(sys.argv[2])
motion_vectors(path, max_frames=8)
base = status("VmRSS")
try:  # reset the high-water mark to the current RSS
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
tracemalloc.start()
field = motion_vectors(path, max_frames=n)
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({"frames": len(field.mv), "base_kb": base, "peak_kb": status("VmHWM"),
                  "traced": traced, "out": field.mv.nbytes}))
"""


def memory(path: Path, frames: int) -> dict[str, int]:
    run = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(path), str(frames)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


FLOOR = "PyAV decode, no conversion (floor)"
RGB = "PyAV decode -> RGB (to_ndarray)"
FARNEBACK = "OpenCV Farneback flow (pairs, RGB given)"
MV = "ours motion_vectors, block 16"


def report_rows(clip: str, fps: dict[str, list[float]], note: str) -> list[Row]:
    """The headline rows of one clip: motion vectors against every decode and flow peer (the
    ratio table's targets), I-frames against decode -> RGB, frame types against the bare
    decode a PyAV user reads them from."""
    mv_peers = {k: v for k, v in fps.items() if not k.startswith(("ours", "PyAV decode, no conv"))}
    mv_target = {FLOOR: ">= 0.8", RGB: ">= 1.2", FARNEBACK: ">= 20"}
    return [
        Row(f"motion vectors, {clip}", "frames/s", True, MV, fps[MV],
            {FLOOR: fps[FLOOR], **mv_peers}, {k: v for k, v in mv_target.items() if k in fps},
            note),
        Row(f"I-frames, {clip}", "frames/s", True, "ours iframes (frames of the clip covered)",
            fps["ours iframes (frames of the clip covered)"], {RGB: fps[RGB]},
            note="frames/s of the clip covered by its key frames"),
        Row(f"frame types, {clip}", "frames/s", True, "ours frame_types", fps["ours frame_types"],
            {FLOOR: fps[FLOOR]}, note="the peer decodes every frame, where PyAV gives its type"),
    ]  # fmt: skip


def npy_bytes(a: np.ndarray) -> int:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return len(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flow-pairs", type=int, default=None, help="30 (--quick: 3)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--quick", action="store_true", help="60-frame clips, fewer rows, no memory table"
    )
    parser.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = parser.parse_args()
    flow_pairs = args.flow_pairs or (3 if args.quick else 30)
    try:
        import cv2  # noqa: F401

        have_cv2 = True
    except ImportError:
        have_cv2 = False
        print("OpenCV is not installed: the Farneback rows are skipped", file=sys.stderr)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_video_"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = make_clips(workdir, 60, None) if args.quick else make_clips(workdir)
    print(f"clips in {workdir} ({time.perf_counter() - t0:.0f} s to make)")
    print(f"PyAV {av.__version__}, FFmpeg libavcodec {av.library_versions['libavcodec']}")

    results = {}
    for name in CLIPS:
        flow = rgb_frames(paths[name], flow_pairs + 1) if have_cv2 else None
        results[name] = measure(method_table(paths[name], flow, args.quick), args.rounds)

    floor, rgb, ours = FLOOR, RGB, MV
    counts = ", ".join(f"{n} {clip_frames(paths[n])}" for n in CLIPS)
    print(f"\nframes/s, median of {args.rounds} rounds (640x480; frames: {counts})\n")
    names = list(CLIPS)
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for method in results[names[0]]:
        cells = [f"{statistics.median(results[n][method]):,.0f}" for n in names]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print("\nratios (median of per-round ratios; target in brackets)\n")
    print("| ratio | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    checks = [
        ("motion_vectors / floor [>= 0.8]", ours, floor),
        ("motion_vectors / decode->RGB, to_ndarray [>= 1.2]", ours, rgb),
        (
            "motion_vectors / decode->RGB, one VideoReformatter",
            ours,
            "PyAV decode -> RGB (one VideoReformatter)",
        ),
        ("iframes / decode->RGB (clip coverage)", "ours iframes (frames of the clip covered)", rgb),
        ("packets / floor", "ours packets (demux only)", floor),
        ("frame_types / floor", "ours frame_types", floor),
        ("AUTO threads / NONE (floor)", "PyAV decode, no conversion, AUTO threads", floor),
    ]
    if have_cv2:
        checks.insert(
            2,
            (
                "motion_vectors / Farneback [>= 20]",
                ours,
                "OpenCV Farneback flow (pairs, RGB given)",
            ),
        )
    checks = [c for c in checks if c[1] in results[names[0]] and c[2] in results[names[0]]]
    for label, a, b in checks:
        print(f"| {label} | " + " | ".join(f"{ratio(results[n], a, b):.2f}" for n in names) + " |")

    if "h264_long" in paths:
        print("\nmotion_vectors memory, h264 640x480 (child process, block 16)\n")
        print("| frames | RSS after warm-up | peak RSS of the call | tracemalloc peak | mv array |")
        print("|---|---|---|---|---|")
        for n in (100, 1000):
            m = memory(paths["h264_long"], n)
            print(
                f"| {m['frames']} | {m['base_kb'] / 1024:.0f} MB | {m['peak_kb'] / 1024:.0f} MB "
                f"| {m['traced'] / 2**20:.1f} MB | {m['out'] / 2**20:.2f} MB |"
            )

    print("\nstored size per clip (mv as int16 quarter pixels, .npy) vs the source video\n")
    print("| clip | source | block 16 | block 8 |")
    print("|---|---|---|---|")
    for name in names:
        src = paths[name].stat().st_size
        sizes = [npy_bytes(encode_mv(motion_vectors(paths[name], block=b).mv)) for b in (16, 8)]
        print(
            f"| {name} | {src / 1e6:.2f} MB | {sizes[0] / 1e6:.2f} MB ({sizes[0] / src:.2f}x) "
            f"| {sizes[1] / 1e6:.2f} MB ({sizes[1] / src:.2f}x) |"
        )
    note = f"Farneback: first {flow_pairs} frame pairs, decoding excluded" if have_cv2 else ""
    report = [
        row
        for name in names
        for row in report_rows(f"{name} 640x480, {clip_frames(paths[name])} frames",
                               results[name], note)
    ]  # fmt: skip
    write_report(args.report, report)


if __name__ == "__main__":
    main()
