"""Progressive resizing: ``ops.decode_jpeg_reduced`` against what a user would write:
Pillow ``draft()`` + resize, simplejpeg with ``min_width``/``min_height`` + resize, and the
plain Pillow decode-full-then-resize.

A 1280 x 854 photo (scikit-learn's two sample photos and their mirror images, JPEG quality 90,
4:2:0, baseline; ``--progressive`` for a progressive one) to a square training image of each
size. Both methods crop the centre and resize with the same Pillow filter in one step
(``resize(box=...)``); ours decodes at 1/2, 1/4 or 1/8 scale first. Also shown: the
``image.resize`` stage's ``decode_resize`` (draft, resize the whole image, then crop), from a
file; and ``ops.decode_dct_reduced`` from DCT coefficients already read by ``jpeg.dct`` (the
low k x k frequencies of the scale, k-point IDCT), alone and with the coefficient read. Timed
interleaved round-robin after a warm-up; medians over ``--repeats``.

``--quick`` takes 10 repeats instead of 30. ``--report PATH`` writes, in the shared format of
``results.py``, one row per size for ours against Pillow draft + resize, simplejpeg and Pillow
full + resize, and one per size for the decode from DCT coefficients against Pillow full +
resize (every repeat, in ms per image).

    python scripts/bench/bench_resize.py [--sizes 56 112 224] [--filter bicubic] [--repeats 30]
        [--progressive] [--quick] [--json F] [--report F]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from results import Row, write_report
from sklearn.datasets import load_sample_images

from datapipe.stages.compressed.jpeg_dct import read_jpeg_dct
from datapipe.stages.io.image_resize import decode_resize
from datapipe.stages.represent.dct_decode import decode_dct_reduced
from datapipe.stages.represent.resample import FILTERS
from datapipe.stages.represent.resize import decode_jpeg_reduced


def photo_1280x854() -> np.ndarray:
    china, flower = (np.asarray(im) for im in load_sample_images().images)
    top = np.concatenate([china, flower], axis=1)
    return np.concatenate([top, top[:, ::-1][:, :, ::-1]], axis=0)


def full_then_resize(data: bytes, size: int, resample: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return _crop_resize(img, size, resample)


def _crop_resize(img: Image.Image, size: int, resample: int) -> np.ndarray:
    """The centre square of ``img`` resized to ``size`` in one step (``box``)."""
    W, H = img.size
    s = max(size / W, size / H)
    side = min(size / s, W, H)  # no rounding past the image's edge
    box = ((W - side) / 2, (H - side) / 2, (W + side) / 2, (H + side) / 2)
    return np.asarray(img.convert("RGB").resize((size, size), resample, box=box))


def _at_least(width: int, height: int, size: int) -> tuple[int, int]:
    """The smallest decode that still holds a ``size`` centre square at full detail."""
    scale = size / min(width, height)
    return -(-width * size // min(width, height)), max(size, round(height * scale))


def pillow_draft(data: bytes, size: int, resample: int) -> np.ndarray:
    """What a Pillow user writes for a small image: ``draft()`` (libjpeg's DCT scaling to the
    smallest scale at least that large), then the same crop-resize."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", _at_least(*img.size, size))
        return _crop_resize(img, size, resample)


def simplejpeg_min(data: bytes, size: int, resample: int) -> np.ndarray:
    """simplejpeg (libjpeg-turbo) decoding at the smallest scale with ``min_width`` /
    ``min_height``, then the same crop-resize."""
    import simplejpeg

    width, height = simplejpeg.decode_jpeg_header(data)[:2]
    w, h = _at_least(width, height, size)
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=w, min_height=h)
    return _crop_resize(Image.fromarray(rgb), size, resample)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[56, 112, 224])
    parser.add_argument("--filter", default="bicubic", choices=sorted(FILTERS))
    parser.add_argument("--repeats", type=int, default=None, help="default 30 (--quick: 10)")
    parser.add_argument("--progressive", action="store_true")
    parser.add_argument("--quick", action="store_true", help="10 repeats")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = parser.parse_args()
    repeats = args.repeats or (10 if args.quick else 30)

    buf = io.BytesIO()
    Image.fromarray(photo_1280x854()).save(buf, "JPEG", quality=90, progressive=args.progressive)
    data = buf.getvalue()
    resample = FILTERS[args.filter]
    kind = "progressive" if args.progressive else "baseline"
    print(f"1280x854 {kind} JPEG, {len(data)} bytes; filter {args.filter}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    dct = read_jpeg_dct(data)
    print("\n| size | ours ms (img/s) | Pillow full + resize ms (img/s) | ours / full "
          "| Pillow draft + resize ms | ours / draft | simplejpeg min_* + resize ms "
          "| ours / simplejpeg | image.resize ms | PSNR ours vs full | from DCT ms (img/s) "
          "| DCT / full | DCT read + decode ms | PSNR DCT vs full |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    report: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        path.write_bytes(data)
        for size in args.sizes:
            methods = {
                "ours": lambda s=size: decode_jpeg_reduced(data, s, resample=args.filter),
                "full": lambda s=size: full_then_resize(data, s, resample),
                "draft": lambda s=size: pillow_draft(data, s, resample),
                "simplejpeg": lambda s=size: simplejpeg_min(data, s, resample),
                "image.resize": lambda s=size: decode_resize(str(path), s),
                "dct": lambda s=size: decode_dct_reduced(dct, s, resample=args.filter),
                "dct+read": lambda s=size: decode_dct_reduced(
                    read_jpeg_dct(data), s, resample=args.filter
                ),
            }
            for fn in methods.values():
                fn()
            times: dict[str, list[float]] = {name: [] for name in methods}
            for _ in range(repeats):
                for name, fn in methods.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            med = {name: float(np.median(ts)) for name, ts in times.items()}
            ref = methods["full"]()
            quality = psnr(methods["ours"](), ref)
            dct_quality = psnr(methods["dct"](), ref)
            rows.append({"size": size, "ms": {k: v * 1e3 for k, v in med.items()},
                         "ratio": med["ours"] / med["full"], "psnr_db": quality,
                         "ratio_draft": med["ours"] / med["draft"],
                         "ratio_simplejpeg": med["ours"] / med["simplejpeg"],
                         "dct_ratio": med["dct"] / med["full"],
                         "dct_psnr_db": dct_quality})  # fmt: skip
            print(f"| {size} | {med['ours'] * 1e3:.2f} ({1 / med['ours']:.0f}) "
                  f"| {med['full'] * 1e3:.2f} ({1 / med['full']:.0f}) "
                  f"| {med['ours'] / med['full']:.2f} | {med['draft'] * 1e3:.2f} "
                  f"| {med['ours'] / med['draft']:.2f} | {med['simplejpeg'] * 1e3:.2f} "
                  f"| {med['ours'] / med['simplejpeg']:.2f} | {med['image.resize'] * 1e3:.2f} "
                  f"| {quality:.1f} dB | {med['dct'] * 1e3:.2f} ({1 / med['dct']:.0f}) "
                  f"| {med['dct'] / med['full']:.2f} | {med['dct+read'] * 1e3:.2f} "
                  f"| {dct_quality:.1f} dB |")  # fmt: skip
            ms = {name: [t * 1e3 for t in ts] for name, ts in times.items()}
            report += [
                Row(f"1280x854 {kind} JPEG -> {size} px", "ms/image", False,
                    "decode_jpeg_reduced", ms["ours"],
                    {"Pillow draft + resize": ms["draft"],
                     "simplejpeg min_* + resize": ms["simplejpeg"],
                     "Pillow full + resize": ms["full"]},
                    note=f"filter {args.filter}; PSNR vs full {quality:.1f} dB"),
                Row(f"DCT coefficients -> {size} px", "ms/image", False,
                    "decode_dct_reduced", ms["dct"], {"Pillow full + resize": ms["full"]},
                    note=f"coefficients already read by jpeg.dct; the peer decodes the "
                         f"{kind} JPEG; PSNR vs full {dct_quality:.1f} dB"),
            ]  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"jpeg": kind, "filter": args.filter, "rows": rows}))
    write_report(args.report, report)


if __name__ == "__main__":
    main()
