"""Benchmark the local executor at scale and its incremental bookkeeping (not a test).

For each N (default 100, 10,000, 100,000) it writes N small distinct JPEGs (``--image`` pixels
square, default 96) under class folders and runs ``files -> image.resize(size=--resize)``
(default 64) with the local executor (``--workers``, default 2):

1. ``--repeats`` rounds (default 5), each a first run into a fresh output (wall time, µs per
   item, the parent's peak RSS during it, reset per run through ``/proc/self/clear_refs``)
   and an unchanged re-run (goal: < 5 % of the first run at 100,000), then the peers:
   - the same by hand with as many processes (a ``multiprocessing`` pool, Pillow ``draft``
     + resize, ``.npy`` bytes, ``tarfile``, one shard per task): the issue's yardstick,
     first run <= 1.15x its time;
   - the loop one writes in one process (Pillow decode + resize, ``webdataset.TarWriter``),
     up to ``--peer-max`` items;
2. a touched re-run: 1 % of the files get a new mtime but the same bytes (hashed, 0 processed);
3. a changed re-run: another 1 % get new bytes (exactly those are processed).

The counts in every run report are checked; the script exits 1 if any is wrong. Figures are
medians over the rounds. ``--report`` writes the rows for ``scripts/bench.py``: the first run
against the pool peer at the largest N, the unchanged re-run against the first run, and the
per-item cost at the largest N against the next (flat within 1.3x).

Run from the repository root::

    .venv/bin/python scripts/bench/bench_incremental.py --json /tmp/bench.json
    .venv/bin/python scripts/bench/bench_incremental.py --quick   # 100, 500, 2,000 items
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
from results import Row, median, write_report

from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stages.io.files import Files
from datapipe.stages.io.image_resize import ImageResize, decode_resize

N_CLASSES = 10
N_BASES = 16
SHARD_SIZE = 1000  # the store's default, used for the peer too


def base_jpegs(side: int, n: int = N_BASES) -> list[bytes]:
    """A handful of distinct ``side`` x ``side`` JPEGs, encoded once."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
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


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs``), so each run reports its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak RSS of this process since the last reset (else its lifetime peak), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


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


def pipeline_for(root: Path, resize: int) -> Pipeline:
    return Pipeline.chain(Files(root=str(root), kinds=["image"]), ImageResize(size=resize))


def first_and_rerun(
    n: int, work: Path, workers: int, problems: list[str], resize: int
) -> tuple[float, float, float]:
    """A first run into a fresh output and an unchanged re-run: (first s, re-run s, parent
    peak RSS MiB during the first run)."""
    root, out = work / f"in-{n}", work / f"out-{n}"
    shutil.rmtree(out, ignore_errors=True)
    pipeline = pipeline_for(root, resize)
    reset_peak_rss()
    first, rep = timed_run(pipeline, out, workers)
    rss = peak_rss_mib()
    check(problems, n, "first", rep, n, 0)
    again, rep = timed_run(pipeline, out, workers)
    check(problems, n, "unchanged", rep, 0, n)
    return first, again, rss


def touched_and_changed(
    n: int, work: Path, workers: int, bases: list[bytes], problems: list[str], resize: int
) -> dict[str, Any]:
    """On the last output: 1 % touched (same bytes), then another 1 % changed."""
    root, out = work / f"in-{n}", work / f"out-{n}"
    pipeline = pipeline_for(root, resize)
    row: dict[str, Any] = {}
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


def bench_peer(n: int, work: Path, resize: int) -> float:
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
        image = decode_resize(str(path), resize)
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


def bench_peer_pool(n: int, work: Path, workers: int, resize: int) -> float:
    """The same by hand with ``workers`` processes (a ``multiprocessing`` pool, one shard per
    task): what the local executor with as many workers is held against."""
    import multiprocessing

    root, out = work / f"in-{n}", work / f"pool-{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    paths = [str(p) for p in sorted(root.rglob("*.jpg"))]
    jobs = [(j // SHARD_SIZE, paths[j : j + SHARD_SIZE], str(out), classes, resize)
            for j in range(0, len(paths), SHARD_SIZE)]  # fmt: skip
    with multiprocessing.get_context("fork").Pool(max(workers, 1)) as pool:
        done = sum(pool.imap_unordered(_peer_shard, jobs))
    assert done == len(paths)
    return time.perf_counter() - t0


def measure(
    n: int, work: Path, args: argparse.Namespace, bases: list[bytes], problems: list[str]
) -> dict[str, Any]:
    """``args.repeats`` rounds, each a first run + unchanged re-run and then the peers
    (interleaved, so drift hits every method alike); then the touched and changed re-runs."""
    t0 = time.perf_counter()
    make_inputs(work / f"in-{n}", n, bases)
    row: dict[str, Any] = {"n": n, "generate_s": round(time.perf_counter() - t0, 3)}
    runs: dict[str, list[float]] = {"first_s": [], "unchanged_s": [], "rss_mib": []}
    runs.update(pool_s=[], peer_s=[])
    for _ in range(args.repeats):
        first, again, rss = first_and_rerun(n, work, args.workers, problems, args.resize)
        runs["first_s"].append(first)
        runs["unchanged_s"].append(again)
        runs["rss_mib"].append(rss)
        runs["pool_s"].append(bench_peer_pool(n, work, args.workers, args.resize))
        if n <= args.peer_max:
            runs["peer_s"].append(bench_peer(n, work, args.resize))
    row.update(touched_and_changed(n, work, args.workers, bases, problems, args.resize))
    row["runs"] = {k: [round(v, 4) for v in vs] for k, vs in runs.items() if vs}
    first = median(runs["first_s"])
    row.update(first_s=first, us_per_item=first / n * 1e6, rss_mib=median(runs["rss_mib"]))
    row.update(unchanged_s=median(runs["unchanged_s"]))
    row["unchanged_pct"] = 100 * row["unchanged_s"] / first
    row["pool_s"] = median(runs["pool_s"])
    row["dp_over_pool"] = first / row["pool_s"]
    if runs["peer_s"]:
        row["peer_s"] = median(runs["peer_s"])
        row["dp_over_peer"] = first / row["peer_s"]
    return row


def report_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[Row]:
    """The issue's targets as rows: against the pool peer at the largest N, the unchanged
    re-run against the first run, and the per-item cost at the largest N against the next
    (where growth shows: at the smallest N the start-up of the workers dominates)."""
    big, small = rows[-1], rows[-2] if len(rows) > 1 else rows[0]
    first, pool = big["runs"]["first_s"], big["runs"]["pool_s"]
    what = f"{big['n']:,} JPEGs {args.image}px -> image.resize({args.resize}) -> shards"
    rss = ", ".join(f"{r['rss_mib']:.0f} MiB at {r['n']:,}" for r in rows)
    out = [
        Row(
            f"local executor, {args.workers} workers, {what}",
            "s",
            False,
            "datapipe run (first run)",
            first,
            {f"multiprocessing pool of {args.workers} (Pillow draft + resize, tarfile)": pool},
            {f"multiprocessing pool of {args.workers} (Pillow draft + resize, tarfile)": ">= 0.87"},
            f"parent peak RSS {rss}",
        ),
        Row(
            f"unchanged re-run, {what}",
            "s",
            False,
            "re-run (nothing to do)",
            big["runs"]["unchanged_s"],
            {"the first run": first},
            {"the first run": ">= 20"},
            "target: the re-run under 5 % of the first run",
        ),
    ]
    if len(rows) > 1:
        for run, phase in (("first_s", "a first run"), ("unchanged_s", "an unchanged re-run")):
            per_item = [t / big["n"] * 1e6 for t in big["runs"][run]]
            small_per_item = [t / small["n"] * 1e6 for t in small["runs"][run]]
            out.append(
                Row(
                    f"per-item cost of {phase}, {big['n']:,} against {small['n']:,} items",
                    "us/item",
                    False,
                    f"{big['n']:,} items",
                    per_item,
                    {f"{small['n']:,} items": small_per_item},
                    {f"{small['n']:,} items": ">= 0.77"},
                    "target: flat within 1.3x",
                )
            )
    return out


def fmt_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'N':>7} {'first s':>9} {'us/item':>8} {'RSS MiB':>8} {'unchg s':>8} {'ratio %':>8} "
        f"{'touch s':>8} {'chg s':>8} {'pool s':>8} {'dp/pool':>8} {'loop s':>8} {'dp/loop':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        peer = r.get("peer_s")
        lines.append(
            f"{r['n']:>7} {r['first_s']:>9.2f} {r['us_per_item']:>8.0f} {r['rss_mib']:>8.0f} "
            f"{r['unchanged_s']:>8.3f} {r['unchanged_pct']:>8.2f} {r['touched_s']:>8.3f} "
            f"{r['changed_s']:>8.3f} {r['pool_s']:>8.2f} {r['dp_over_pool']:>8.2f} "
            + (f"{peer:>8.2f} {r['first_s'] / peer:>8.2f}" if peer else f"{'-':>8} {'-':>8}")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 100_000])
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    ap.add_argument("--workers", type=int, default=2, help="datapipe --workers (default 2)")
    ap.add_argument("--image", type=int, default=96, help="side of the input JPEGs, pixels")
    ap.add_argument("--resize", type=int, default=64, help="image.resize size")
    ap.add_argument("--repeats", type=int, default=5, help="first runs (and peers) per size")
    ap.add_argument(
        "--peer-max", type=int, default=10_000, help="largest N for the one-process peer loop"
    )
    ap.add_argument("--quick", action="store_true", help="sizes 100, 500 and 2,000")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--report", type=Path, default=None, help="rows for scripts/bench.py")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = [100, 500, 2000]

    work = args.workdir or Path(tempfile.mkdtemp(prefix="datapipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bases, rows, problems = base_jpegs(args.image), [], []
    try:
        for n in sorted(args.sizes):
            print(f"N={n} ...", file=sys.stderr, flush=True)
            row = measure(n, work, args, bases, problems)
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
    print("medians of", args.repeats, "repeats; RSS: the parent's peak during a first run")
    for p in problems:
        print(f"WRONG COUNT: {p}", file=sys.stderr)
    if args.json:
        result = {"workers": args.workers, "rows": rows, "problems": problems}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    write_report(args.report, report_rows(rows, args))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
