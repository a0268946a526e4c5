"""Benchmark datapipe's incremental bookkeeping at scale (a benchmark, not a test).

For each N (default 100, 10,000, 100,000) it writes N tiny distinct 8x8 JPEGs under class
folders and runs ``files -> image.resize(size=8)`` with the local executor four times on the
same output:

1. first run: wall time, µs per item, peak RSS of this process (``ru_maxrss``, a lifetime
   peak, so sizes run in ascending order) and of the largest worker child;
2. unchanged re-run: wall time and its ratio to the first run (goal: < 5 % at 100,000);
3. touched re-run: 1 % of the files get a new mtime but the same bytes (hashed, 0 processed);
4. changed re-run: another 1 % get new bytes (exactly those are processed).

The counts in every run report are checked; the script exits 1 if any is wrong. It also times
the loop a user would otherwise write (Pillow decode + resize, ``webdataset.TarWriter``, no
manifest, no incrementality), and the same by hand with as many processes as ``--workers``
(a ``multiprocessing`` pool, Pillow ``draft`` + resize, ``tarfile``, one shard per task), so
the first-run overhead is reported as ratios to both.

Run from the repository root::

    .venv/bin/python scripts/bench/bench_incremental.py --json /tmp/bench.json
    .venv/bin/python scripts/bench/bench_incremental.py --sizes 100 10000 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stages.io.files import Files
from datapipe.stages.io.image_resize import ImageResize, decode_resize

N_CLASSES = 10
N_BASES = 16
SHARD_SIZE = 1000  # the store's default, used for the peer too


def base_jpegs(n: int = N_BASES) -> list[bytes]:
    """A handful of distinct 8x8 JPEGs, encoded once."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def with_comment(jpeg: bytes, text: str) -> bytes:
    """Insert a COM segment after SOI: same pixels, different bytes (and content hash)."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def input_path(root: Path, i: int) -> Path:
    return root / f"class{i % N_CLASSES}" / f"{i:07d}.jpg"


def make_inputs(root: Path, n: int, bases: list[bytes]) -> None:
    for c in range(N_CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        input_path(root, i).write_bytes(with_comment(bases[i % len(bases)], f"item {i:07d} v1"))


def one_percent(n: int, offset: int) -> list[int]:
    """Every 100th index, starting at ``offset`` (at least one)."""
    return list(range(offset % n, n, 100)) or [0]


def peak_rss_mib() -> tuple[float, float]:
    """Lifetime peak RSS of this process and of the largest reaped child, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(kids, 1)


def timed_run(pipeline: Pipeline, out: Path, workers: int) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    report = run_local(pipeline, out, workers=workers)
    return time.perf_counter() - t0, report.to_dict()


def check(
    problems: list[str], n: int, phase: str, rep: dict[str, Any], processed: int, unchanged: int
) -> None:
    c = rep["counts"]
    want = {"processed": processed, "ok": processed, "error": 0, "unchanged": unchanged}
    want.update(listed=n)
    for name, value in want.items():
        if c.get(name) != value:
            problems.append(f"N={n} {phase}: {name}={c.get(name)}, expected {value}")
    if rep["samples"] != n:
        problems.append(f"N={n} {phase}: store holds {rep['samples']} samples, expected {n}")


def bench_datapipe(
    n: int, work: Path, workers: int, bases: list[bytes], problems: list[str]
) -> dict[str, Any]:
    root, out = work / f"in-{n}", work / f"out-{n}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    make_inputs(root, n, bases)
    row: dict[str, Any] = {"n": n, "generate_s": round(time.perf_counter() - t0, 3)}
    pipeline = Pipeline.chain(Files(root=str(root), kinds=["image"]), ImageResize(size=8))

    first, rep = timed_run(pipeline, out, workers)
    check(problems, n, "first", rep, n, 0)
    row.update(first_s=first, us_per_item=first / n * 1e6)
    row["rss_mib"], row["child_rss_mib"] = peak_rss_mib()

    again, rep = timed_run(pipeline, out, workers)
    check(problems, n, "unchanged", rep, 0, n)
    row.update(unchanged_s=again, unchanged_pct=100 * again / first)

    for i in one_percent(n, 0):  # same bytes, mtime one second later
        st = input_path(root, i).stat()
        os.utime(input_path(root, i), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    row["touched_s"], rep = timed_run(pipeline, out, workers)
    check(problems, n, "touched", rep, 0, n)

    changed = one_percent(n, 50)
    for i in changed:
        input_path(root, i).write_bytes(with_comment(bases[i % len(bases)], f"item {i:07d} v2"))
    row["changed_s"], rep = timed_run(pipeline, out, workers)
    check(problems, n, "changed", rep, len(changed), n - len(changed))
    row["changed_n"] = len(changed)
    return row


def bench_peer(n: int, work: Path) -> float:
    """What a user would write by hand: decode, resize, TarWriter; no manifest."""
    root, out = work / f"in-{n}", work / f"peer-{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    paths = sorted(root.rglob("*.jpg"))
    writer: wds.TarWriter | None = None
    for j, path in enumerate(paths):
        if j % SHARD_SIZE == 0:
            if writer is not None:
                writer.close()
            writer = wds.TarWriter(str(out / f"shard-{j // SHARD_SIZE:05d}.tar"))
        image = decode_resize(str(path), 8)
        label = path.parent.name
        key = f"{label}/{path.stem}"
        writer.write({"__key__": key, "image.npy": image, "cls": classes.index(label)})
    if writer is not None:
        writer.close()
    return time.perf_counter() - t0


def _peer_shard(job: tuple[int, list[str], str, list[str], int]) -> int:
    """One shard of the pool peer: Pillow ``draft`` + resize, ``.npy`` bytes, ``tarfile``."""
    import tarfile

    index, paths, out, classes, size = job
    with tarfile.open(Path(out) / f"shard-{index:05d}.tar", "w") as tar:
        for path in paths:
            with Image.open(path) as img:
                img.draft("RGB", (size, size))
                image = np.asarray(img.convert("RGB").resize((size, size)))
            label = Path(path).parent.name
            key = f"{label}/{Path(path).stem}"
            buf = io.BytesIO()
            np.save(buf, image)
            for name, blob in (("image.npy", buf.getvalue()),
                               ("cls", str(classes.index(label)).encode())):  # fmt: skip
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return len(paths)


def bench_peer_pool(n: int, work: Path, workers: int) -> float:
    """The same by hand with ``workers`` processes (a ``multiprocessing`` pool, one shard per
    task): what the local executor with as many workers is held against."""
    import multiprocessing

    root, out = work / f"in-{n}", work / f"pool-{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    paths = [str(p) for p in sorted(root.rglob("*.jpg"))]
    jobs = [(j // SHARD_SIZE, paths[j : j + SHARD_SIZE], str(out), classes, 8)
            for j in range(0, len(paths), SHARD_SIZE)]  # fmt: skip
    with multiprocessing.get_context("fork").Pool(max(workers, 1)) as pool:
        done = sum(pool.imap_unordered(_peer_shard, jobs))
    assert done == len(paths)
    return time.perf_counter() - t0


def fmt_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'N':>7} {'first s':>9} {'us/item':>8} {'RSS MiB':>8} {'unchg s':>8} {'ratio %':>8} "
        f"{'touch s':>8} {'chg s':>8} {'peer s':>8} {'dp/peer':>8} {'pool s':>8} {'dp/pool':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        peer = r.get("peer_s")
        lines.append(
            f"{r['n']:>7} {r['first_s']:>9.2f} {r['us_per_item']:>8.0f} {r['rss_mib']:>8.0f} "
            f"{r['unchanged_s']:>8.3f} {r['unchanged_pct']:>8.2f} {r['touched_s']:>8.3f} "
            f"{r['changed_s']:>8.3f} "
            + (f"{peer:>8.2f} {r['first_s'] / peer:>8.2f}" if peer else f"{'-':>8} {'-':>8}")
            + (f" {r['pool_s']:>8.2f} {r['dp_over_pool']:>8.2f}" if r.get("pool_s") else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 100_000])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    ap.add_argument("--workers", type=int, default=0, help="datapipe --workers (default 0)")
    ap.add_argument(
        "--peer-max", type=int, default=10_000, help="largest N for the hand-written peer loop"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    args = ap.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="datapipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bases, rows, problems = base_jpegs(), [], []
    try:
        for n in sorted(args.sizes):
            print(f"N={n} ...", file=sys.stderr, flush=True)
            row = bench_datapipe(n, work, args.workers, bases, problems)
            if n <= args.peer_max:
                row["peer_s"] = bench_peer(n, work)
                row["dp_over_peer"] = row["first_s"] / row["peer_s"]
                row["pool_s"] = bench_peer_pool(n, work, args.workers)
                row["dp_over_pool"] = row["first_s"] / row["pool_s"]
            rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            print(fmt_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if not args.keep:
                for sub in ("in", "out", "peer", "pool"):
                    shutil.rmtree(work / f"{sub}-{n}", ignore_errors=True)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(fmt_table(rows))
    print(f"workers={args.workers}  cpus={os.cpu_count()}  python={sys.version.split()[0]}")
    for p in problems:
        print(f"WRONG COUNT: {p}", file=sys.stderr)
    if args.json:
        result = {"workers": args.workers, "rows": rows, "problems": problems}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
