"""Speed of reading JPEG DCT coefficients (``ops.read_jpeg_dct``) against the peers.

Photos are cut from scikit-learn's sample images (china.jpg, flower.jpg), resized to each size
(upscaled for 1024x768), given sensor-like noise (sigma ``--noise``; 0 disables it) so the bit
rate is that of camera photos, and saved at quality 90, 4:2:0, baseline and progressive.
For each size and mode, every method decodes the same ``--images`` in-memory files per call;
methods run interleaved round-robin and the table shows the median time per image and, in
parentheses, the ratio to Pillow's full RGB decode (target for ours: <= 1.0, goal <= 0.6).

Methods:
- ours: ``read_jpeg_dct(bytes)`` (libturbojpeg via ctypes) -> int16 Y/Cb/Cr + tables, with
  the C row filter (the optional ``_jpeg_filter`` extension, when built) and with the ctypes
  Python callback used when no compiler was available at install time;
- ours, stage: ``jpeg.dct`` from the file path, channels layout K=24, dequantized, chroma on
  the luma grid (what a frequency-domain model consumes; issue target: <= 0.7x), and with
  chroma on its own grid;
- jpeglib: ``jpeglib.read_dct(path)`` + ``.Y .Cb .Cr`` (its default libjpeg 6b; the oracle);
- PIL full: ``np.asarray(Image.open(...))``, the RGB decode;
- PIL draft 1/8: the DCT-scaled 1/8 decode, a proxy for the entropy-decoding floor;
- simplejpeg: ``simplejpeg.decode_jpeg`` to RGB, the fastest pixel decoder a user could pick.

``--quick`` takes 4 images per cell and 10 rounds. ``--report PATH`` writes, in the shared
format of ``results.py``, one row per size and mode for ``read_jpeg_dct`` (C filter when built)
and one per size for the stage on baseline files, each against every pixel decoder and jpeglib
(every round, in ms per image), with the targets above against Pillow's full decode.

    python scripts/bench/bench_jpeg_dct.py [--images 8] [--rounds 15] [--noise 2]
        [--sizes 224x224,1024x768] [--quick] [--json out.json] [--report F]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, features
from results import Row, write_report
from sklearn.datasets import load_sample_images

from datapipe.stage import Context
from datapipe.stages.common import libturbojpeg
from datapipe.stages.compressed.jpeg_dct import JpegDCTStage, read_jpeg_dct

MODES = {"baseline": {}, "progressive": {"progressive": True}}


def make_photos(n: int, size: tuple[int, int], noise: float, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB photos of ``size`` (w, h): random crops of the sample images, resized."""
    rng = np.random.default_rng(seed)
    sources = [np.asarray(im) for im in load_sample_images().images]
    w, h = size
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        scale = rng.uniform(0.6, 1.0)  # crop 60-100% of the source with the target's aspect
        ch = int(min(src.shape[0], src.shape[1] * h / w) * scale)
        cw = int(ch * w / h)
        y = int(rng.integers(0, src.shape[0] - ch + 1))
        x = int(rng.integers(0, src.shape[1] - cw + 1))
        img = Image.fromarray(src[y : y + ch, x : x + cw]).resize((w, h), Image.Resampling.LANCZOS)
        arr = np.asarray(img).astype(np.float32)
        if noise > 0:
            arr += rng.normal(0, noise, arr.shape).astype(np.float32)
        out.append(np.clip(arr, 0, 255).round().astype(np.uint8))
    return out


def encode(arr: np.ndarray, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, subsampling=2, **options)
    return buf.getvalue()


def methods(files: list[bytes], paths: list[str]) -> dict[str, Callable[[], object]]:
    import jpeglib

    stage = JpegDCTStage(layout="channels", keep=24, dequantize=True, chroma="luma_grid")
    own = JpegDCTStage(layout="channels", keep=24, dequantize=True, chroma="own_grid")
    ctx = Context()

    def draft(b: bytes) -> np.ndarray:
        im = Image.open(io.BytesIO(b))
        im.draft("RGB", (im.width // 8, im.height // 8))
        return np.asarray(im)

    def jpeglib_read(p: str) -> object:
        d = jpeglib.read_dct(p)
        return d.Y, d.Cb, d.Cr

    def ours(native: int | None) -> Callable[[], object]:
        def run() -> object:
            saved, libturbojpeg.NATIVE_FILTER = libturbojpeg.NATIVE_FILTER, native
            try:
                return [read_jpeg_dct(b) for b in files]
            finally:
                libturbojpeg.NATIVE_FILTER = saved

        return run

    found = {}
    if libturbojpeg.NATIVE_FILTER is not None:
        found["ours: read_jpeg_dct (bytes), C filter"] = ours(libturbojpeg.NATIVE_FILTER)
    peers = {}
    try:
        import simplejpeg

        peers["simplejpeg decode -> RGB"] = lambda: [simplejpeg.decode_jpeg(b) for b in files]
    except ImportError:  # the [bench] extra is not installed
        pass
    return {
        **found,
        "ours: read_jpeg_dct (bytes), Python filter": ours(None),
        "ours: jpeg.dct stage (path, K=24, deq, luma grid)": lambda: [
            stage.process({"path": p}, ctx) for p in paths
        ],
        "ours: jpeg.dct stage (path, K=24, deq, own grid)": lambda: [
            own.process({"path": p}, ctx) for p in paths
        ],
        "jpeglib read_dct + .Y .Cb .Cr": lambda: [jpeglib_read(p) for p in paths],
        "PIL full decode -> RGB ndarray": lambda: [
            np.asarray(Image.open(io.BytesIO(b))) for b in files
        ],
        "PIL draft 1/8 (entropy floor proxy)": lambda: [draft(b) for b in files],
        **peers,
    }


def bench(
    fns: dict[str, Callable[[], object]], rounds: int, per_call: int
) -> dict[str, list[float]]:
    """Ms per image of each method in each round, timed round-robin."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3 / per_call)
    return times


FULL = "PIL full decode -> RGB ndarray"
STAGE = "ours: jpeg.dct stage (path, K=24, deq, luma grid)"


def report_rows(times: dict[str, list[float]], task: str, column: str, mode: str) -> list[Row]:
    """The headline rows of one size and mode: ``read_jpeg_dct`` (C filter when built) and,
    on baseline files, the stage, each against every peer (target: <= 1.0x, and the issue's
    <= 0.7x for the stage, of Pillow's full decode time)."""
    peers = {name: ts for name, ts in times.items() if not name.startswith("ours")}
    ours = next(name for name in times if name.startswith("ours: read_jpeg_dct"))
    goal = "goal <= 0.6x Pillow's full decode (speedup >= 1.67)"
    rows = [Row(f"{task}: DCT coefficients", "ms/image", False, ours, times[ours], peers,
                {FULL: ">= 1.0"}, f"{column}; {goal}")]  # fmt: skip
    if mode == "baseline":
        note = f"{column}; from the file path, the peers from bytes; target <= 0.7x Pillow's"
        rows.append(Row(f"{task}: jpeg.dct stage", "ms/image", False, STAGE, times[STAGE], peers,
                        {FULL: ">= 1.43"}, f"{note} full decode"))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--images", type=int, default=None, help="images per size and mode (8; --quick: 4)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="15 (--quick: 10)")
    parser.add_argument("--noise", type=float, default=2.0, help="sensor noise sigma (0: none)")
    parser.add_argument(
        "--sizes", default="224x224,1024x768", help="comma-separated WxH (default: %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="4 images per cell, 10 rounds")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = parser.parse_args()
    args.images = args.images or (4 if args.quick else 8)
    args.rounds = args.rounds or (10 if args.quick else 15)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]

    import jpeglib

    try:
        import simplejpeg

        peer = f"simplejpeg {simplejpeg.__version__}"
    except ImportError:
        peer = "simplejpeg not installed"

    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, Pillow "
        f"{Image.__version__} (libjpeg-turbo {features.version('libjpeg_turbo')}), {peer}, "
        f"jpeglib {jpeglib.__version__} ({jpeglib.version.get()}); "
        f"{args.images} images per cell, {args.rounds} rounds, median ms per image; C row "
        f"filter {'built' if libturbojpeg.NATIVE_FILTER else 'NOT built'}; stage row uses the "
        f"{'C' if libturbojpeg.NATIVE_FILTER else 'Python'} filter"
    )
    results: dict[str, dict[str, float]] = {}
    columns = []
    report: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in sizes:
            photos = make_photos(args.images, (w, h), args.noise)
            for mode, options in MODES.items():
                col = f"{w}x{h} {mode}"
                files = [encode(a, **options) for a in photos]
                paths = []
                for i, data in enumerate(files):
                    path = Path(tmp) / f"{w}x{h}_{mode}_{i}.jpg"
                    path.write_bytes(data)
                    paths.append(str(path))
                bpp = 8 * sum(map(len, files)) / (len(files) * w * h)
                columns.append(f"{col} ({bpp:.1f} bpp)")
                times = bench(methods(files, paths), args.rounds, len(files))
                for name, ms in times.items():
                    results.setdefault(name, {})[columns[-1]] = statistics.median(ms)
                report += report_rows(times, f"JPEG {w}x{h} {mode}", columns[-1], mode)

    base = results[FULL]
    width = max(map(len, results)) + 2
    print("| method".ljust(width) + " | " + " | ".join(columns) + " |")
    print("|" + "-" * width + "|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
    for name, row in results.items():
        cells = [f"{row[c]:.3f} ({row[c] / base[c]:.2f}x)".ljust(len(c)) for c in columns]
        print(f"| {name}".ljust(width) + " | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    write_report(args.report, report)


if __name__ == "__main__":
    main()
