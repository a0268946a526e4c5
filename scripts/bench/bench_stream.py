"""Benchmark datapipe.stream against a plain PyTorch DataLoader (a benchmark, not a test).

It writes N photos (default 2,000 JPEGs of 500x375, quality 90, random crops of
scikit-learn's two sample images, one class folder per source image), prepares shards once
with ``files -> image.resize(size=112)`` and the local executor (timed, but not part of the
comparison), then times full epochs of ``batch`` samples per batch for each loader, with 0 and
2 DataLoader workers:

- ``plain``: a map-style ``Dataset`` doing what ``image.resize(size=112)`` does, by hand:
  ``Image.open(path).convert("RGB")``, the shorter side resized to 112 (bicubic), the centre
  112x112 kept (what one writes without datapipe), ``shuffle=True``, the default collate;
- ``plain+draft``: the same with ``img.draft("RGB", ...)`` first (JPEG DCT scaling, as
  ``image.resize`` does): ``from_pipeline``'s like-for-like peer (the script checks that the
  two give the same pixels);
- ``from_shards``: the prepared 112x112 shards, ``datapipe.stream.collate``;
- ``webdataset + DataLoader``: the same shards through webdataset (every member decoded,
  a seeded 1,000-sample shuffle buffer, shards split by worker): ``from_shards``' peer;
- ``from_pipeline``: the raw JPEG folder, decode + resize on the fly in the workers;
- with ``--progressive``, the two ways to change the size every epoch (stretch, bilinear, like
  ``plain``): ``resize live``, ``from_pipeline`` over ``files -> represent.resize`` (reduced
  JPEG decoding), and ``dct shards + resize``, ``from_shards`` over prepared ``jpeg.dct``
  shards (zigzag channels, ``--keep`` coefficients, int16; also gzip-compressed,
  ``output.compress``) with ``represent.resize`` (input dct) as a loader stage. The bytes on
  disk of the JPEGs and of each output are printed.

Each epoch includes starting the workers. The loaders take turns epoch by epoch, and the
median of ``--repeats`` epochs (default 5) is reported as samples/s, as a ratio to ``plain``
with the same number of workers, and as a ratio to the like-for-like peer (:data:`PEERS`):
``from_shards`` against webdataset on the same shards, ``from_pipeline`` against
``plain+draft``.

Run from the repository root::

    .venv/bin/python scripts/bench/bench_stream.py
    .venv/bin/python scripts/bench/bench_stream.py --n 5000 --workers 0 2 4 --json /tmp/stream.json
    .venv/bin/python scripts/bench/bench_stream.py --quick    # 500 photos, 2 workers

``--report PATH`` writes the rows for ``scripts/bench.py``: each streaming loader against its
peer (target: at least its samples/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from results import Row, write_report
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader, Dataset

from datapipe.config import OutputSpec
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stages.compressed.jpeg_dct import JpegDCTStage
from datapipe.stages.io.files import Files
from datapipe.stages.io.image_resize import ImageResize
from datapipe.stages.represent.resize import ProgressiveResize
from datapipe.stream import collate, from_pipeline, from_shards

SIZE = 112
PHOTO = (500, 375)  # width, height


#: the loader each streaming one is held against: the same input, what a user would write
PEERS = {"from_shards": "webdataset + DataLoader", "from_pipeline": "plain+draft"}


def make_photos(root: Path, n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` JPEG crops of the sklearn sample photos under ``root/<name>/``; (path, label)."""
    data = load_sample_images()
    rng = np.random.default_rng(seed)
    names = [Path(f).stem for f in data.filenames]
    out = []
    for i in range(n):
        label = i % len(data.images)
        img = data.images[label]
        top = int(rng.integers(0, img.shape[0] - PHOTO[1] + 1))
        left = int(rng.integers(0, img.shape[1] - PHOTO[0] + 1))
        crop = img[top : top + PHOTO[1], left : left + PHOTO[0]]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = root / names[label] / f"{names[label]}_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(path, "JPEG", quality=90)
        out.append((str(path), label))
    return out


class PlainPhotos(Dataset):
    """What one writes without datapipe: Pillow decode + resize per item."""

    def __init__(self, items: list[tuple[str, int]], draft: bool = False) -> None:
        self.items = items
        self.draft = draft

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        with Image.open(path) as img:
            w, h = img.size
            scale = SIZE / min(w, h)
            target = (max(SIZE, round(w * scale)), max(SIZE, round(h * scale)))
            if self.draft:
                img.draft("RGB", target)
            rgb = np.asarray(img.convert("RGB").resize(target, Image.Resampling.BICUBIC))
        top, left = (rgb.shape[0] - SIZE) // 2, (rgb.shape[1] - SIZE) // 2
        crop = rgb[top : top + SIZE, left : left + SIZE]
        return torch.from_numpy(np.ascontiguousarray(crop)), label


def webdataset_loader(shards: list[str], batch: int, workers: int, epoch: int) -> DataLoader:
    """The like-for-like peer of ``from_shards``: webdataset over the same tar shards, every
    member decoded (``.npy`` arrays, ``.json`` scalars), a 1,000-sample shuffle buffer
    seeded by the epoch, shards split between the workers, the default collate."""
    import random

    import webdataset as wds

    dataset = (
        wds.WebDataset(shards, shardshuffle=False, workersplitter=wds.split_by_worker,
                       empty_check=False)
        .shuffle(1000, rng=random.Random(epoch))
        .decode()
        .to_tuple("image.npy", "label_id.json")
    )  # fmt: skip
    return DataLoader(dataset, batch_size=batch, num_workers=workers)


def time_epoch(loader: Any) -> tuple[float, int]:
    """Samples/s of one epoch (worker start-up included) and the samples read."""
    t0 = time.perf_counter()
    count = 0
    for batch in loader:
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        count += images.shape[0]
    return count / (time.perf_counter() - t0), count


def check_same_pixels(live: Any, items: list[tuple[str, int]], root: Path, n: int = 8) -> None:
    """``from_pipeline`` and its peer must compute the same images (else the race is unfair)."""
    peer = PlainPhotos(items, draft=True)
    index = {
        Path(p).relative_to(root).with_suffix("").as_posix(): i for i, (p, _) in enumerate(items)
    }
    live.set_epoch(0)
    for sample, _ in zip(live, range(n), strict=False):
        theirs = peer[index[sample["key"]]][0]
        if not torch.equal(sample["image"], theirs):
            raise SystemExit(f"from_pipeline and plain+draft differ on {sample['key']}")


def report_rows(epochs: dict[tuple[str, int], list[float]], args: argparse.Namespace) -> list[Row]:
    """Each streaming loader against its like-for-like peer, per worker count."""
    rows = []
    for (name, w), rates in epochs.items():
        peer = PEERS.get(name)
        if peer is None:
            continue
        what = "shards written by datapipe" if name == "from_shards" else "JPEG files"
        rows.append(
            Row(
                f"stream {args.n} samples ({what}) -> 112 px batches of {args.batch}, "
                f"{w} DataLoader workers",
                "samples/s",
                True,
                name,
                rates,
                {peer: epochs[peer, w]},
                {peer: ">= 1.0"} if name in ("from_shards", "from_pipeline") else {},
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="number of photos")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=5, help="epochs per loader (median kept)")
    ap.add_argument("--quick", action="store_true", help="500 photos, 2 workers only")
    ap.add_argument("--report", type=Path, default=None, help="rows for scripts/bench.py")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: tmp)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--progressive", action="store_true", help="add the per-epoch resizers")
    ap.add_argument("--keep", type=int, default=16, help="DCT coefficients kept (--progressive)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.workers = 500, [2]
    torch.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_stream-"))
    try:
        t0 = time.perf_counter()
        items = make_photos(work / "photos", args.n)
        print(f"{args.n} photos of {PHOTO[0]}x{PHOTO[1]} in {time.perf_counter() - t0:.1f} s")
        pipeline = Pipeline.chain(Files(root=str(work / "photos")), ImageResize(size=SIZE))
        t0 = time.perf_counter()
        report = run_local(pipeline, work / "out", workers=max(args.workers) or 1)
        prep = time.perf_counter() - t0
        print(f"prepared {report.samples} samples in {report.shards} shards in {prep:.1f} s")

        loaders: dict[str, Callable[[int, int], Any]] = {
            "plain": lambda w, e: DataLoader(
                PlainPhotos(items), batch_size=args.batch, shuffle=True, num_workers=w
            ),
            "plain+draft": lambda w, e: DataLoader(
                PlainPhotos(items, draft=True), batch_size=args.batch, shuffle=True, num_workers=w
            ),
        }
        shards = from_shards(work / "out")
        live = from_pipeline(pipeline)
        check_same_pixels(live, items, work / "photos")

        def streaming(ds: Any) -> Callable[[int, int], Any]:
            def make(w: int, e: int) -> DataLoader:
                ds.set_epoch(e)
                return DataLoader(ds, batch_size=args.batch, num_workers=w, collate_fn=collate)

            return make

        loaders["from_shards"] = streaming(shards)
        tars = [str(p) for p in sorted((work / "out" / "shards").glob("*.tar"))]
        loaders["webdataset + DataLoader"] = lambda w, e: webdataset_loader(tars, args.batch, w, e)
        loaders["from_pipeline"] = streaming(live)
        if args.progressive:
            resize = {"size": SIZE, "mode": "stretch", "resample": "bilinear"}
            dct = JpegDCTStage(layout="channels", keep=args.keep)
            gz = OutputSpec(compress=["dct_y", "dct_cb", "dct_cr"])
            for folder, output in (("dct", None), ("dct-gz", gz)):
                t0 = time.perf_counter()
                chain = Pipeline.chain(Files(root=str(work / "photos")), dct, output=output)
                run_local(chain, work / folder, workers=max(args.workers) or 1)
                took = time.perf_counter() - t0
                print(f"prepared {folder} shards (keep {args.keep}) in {took:.1f} s")
            for name, folder in (("JPEG files", work / "photos"), ("image shards", work / "out"),
                                 ("DCT shards", work / "dct"),
                                 ("DCT shards, gzip", work / "dct-gz")):  # fmt: skip
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                print(f"  {name}: {size / 2**20:.1f} MiB")
            stage = ProgressiveResize(input="dct", **resize)
            loaders["dct shards + resize"] = streaming(
                from_shards(work / "dct", stages=[stage], fields=["image"])
            )
            loaders["dct gzip shards + resize"] = streaming(
                from_shards(work / "dct-gz", stages=[stage], fields=["image"])
            )
            live_resize = Pipeline.chain(
                Files(root=str(work / "photos")), ProgressiveResize(**resize)
            )
            loaders["resize live"] = streaming(from_pipeline(live_resize))
        rows, epochs = [], {}
        for w in args.workers:
            for epoch in range(args.repeats):  # round-robin: drift hits every loader alike
                for name, make_loader in loaders.items():
                    rate, count = time_epoch(make_loader(w, epoch))
                    if count != args.n:
                        raise SystemExit(f"{name} with {w} workers read {count} of {args.n}")
                    epochs.setdefault((name, w), []).append(rate)
            for name in loaders:
                rate = statistics.median(epochs[name, w])
                rows.append({"loader": name, "workers": w, "samples_per_s": round(rate, 1)})
        base = {r["workers"]: r["samples_per_s"] for r in rows if r["loader"] == "plain"}
        print(
            f"\nbatch {args.batch}, {args.n} samples, {os.cpu_count()} CPUs, median of "
            f"{args.repeats} epochs\n"
        )
        rate = {(r["loader"], r["workers"]): r["samples_per_s"] for r in rows}
        print("| loader | workers | samples/s | vs plain | vs its peer |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            r["vs_plain"] = round(r["samples_per_s"] / base[r["workers"]], 2)
            peer = PEERS.get(r["loader"])
            if peer is not None:
                r["vs_peer"] = round(r["samples_per_s"] / rate[peer, r["workers"]], 2)
            vs_peer = f"{r['vs_peer']:.2f}x ({peer})" if peer else ""
            print(
                f"| {r['loader']} | {r['workers']} | {r['samples_per_s']:,.0f} "
                f"| {r['vs_plain']:.2f}x | {vs_peer} |"
            )
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "prepare_s": prep}, indent=2))
        write_report(args.report, report_rows(epochs, args))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
