"""Run every benchmark and write one report: ``scripts/results/RESULTS.md`` (one table),
``results.png`` (ours against each peer, log scale) and ``results.json``.

Each benchmark under ``scripts/bench/`` runs as its own process with ``--report`` and writes
its rows (:mod:`bench.results`): our raw repeats and each peer's, measured side by side in
the same run. A figure here is the median of those repeats with its spread (half the
min-max range over the median); ``x peer`` is how many times faster ours is (> 1: faster).

    .venv/bin/python scripts/bench.py --quick            # every benchmark, small sizes (< 5 min)
    .venv/bin/python scripts/bench.py                    # the full sizes
    .venv/bin/python scripts/bench.py --only resize fps  # some of them (merged into the report)
    .venv/bin/python scripts/bench.py --readme           # README's performance section from
                                                         # results.json (--check: compare only)
    .venv/bin/python scripts/bench.py --render           # RESULTS.md and the plot, again
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from results import median, read_report, speedup, spread  # noqa: E402

RESULTS = ROOT / "scripts" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Bench:
    """One benchmark script and its arguments in each mode."""

    name: str
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()

    def command(self, quick: bool) -> list[str]:
        return [f"scripts/bench/{self.script}", *(self.quick if quick else self.full)]


BENCHES = (
    Bench("resize", "bench_resize.py", ("--quick",)),
    Bench("jpeg_dct", "bench_jpeg_dct.py", ("--quick",)),
    Bench("video", "bench_video.py", ("--quick",)),
    Bench("keyframes", "bench_keyframes.py", ("--quick",)),
    Bench("dynamic_image", "bench_dynamic_image.py", ("--quick",)),
    Bench("fps", "bench_fps.py", ("--quick",)),
    Bench("points", "bench_points.py", ("--quick",)),
    Bench("point_cascade", "bench_point_cascade.py", ("--quick",)),
    Bench("kcenter", "bench_kcenter.py", ("--quick",)),
    Bench("barrier", "bench_barrier.py", ("--quick",)),
    Bench("chain", "bench_chain.py", ("--quick",)),
    Bench("stream", "bench_stream.py", ("--quick",)),
    Bench("local_executor", "bench_incremental.py", ("--quick",), ("--workers", "2")),
    Bench("dask", "bench_dask.py", ("--quick",)),
)


def machine() -> str:
    """CPU model, cores and memory of this machine, in a few words."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = ""
    model = re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b", "", model)
    return f"{' '.join(model.split())}, {os.cpu_count()} cores{memory}"


def run_bench(bench: Bench, quick: bool, log_dir: Path) -> dict[str, Any]:
    """Run one benchmark; its rows, command, wall time and exit status."""
    command = bench.command(quick)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, *command, "--report", str(report)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t0
        (log_dir / f"{bench.name}.log").write_text(proc.stdout + proc.stderr)
        rows = read_report(report) if proc.returncode == 0 and report.exists() else []
    return {
        "name": bench.name,
        "command": " ".join(command),
        "seconds": round(seconds, 1),
        "returncode": proc.returncode,
        "rows": rows,
    }


def target_met(target: str, value: float) -> bool | None:
    """Whether ``value`` meets ``target`` (``">= 1.7"``, ``"<= 2"``); None without one."""
    found = re.fullmatch(r"\s*(>=|<=)\s*([0-9.]+)\s*", target or "")
    if not found:
        return None
    bound = float(found.group(2))
    return value >= bound if found.group(1) == ">=" else value <= bound


def figure(values: list[float], unit: str) -> str:
    m = median(values)
    digits = 0 if m >= 100 else 1 if m >= 10 else 2 if m >= 1 else 3
    return f"{m:.{digits}f} {unit} ± {100 * spread(values):.0f}% (n={len(values)})"


def flatten(runs: list[dict[str, Any]], host: str, date: str) -> list[dict[str, Any]]:
    """One entry per (task, peer): the table's rows, in the JSON as in the Markdown."""
    out = []
    for run in runs:
        for row in run["rows"]:
            for peer, values in row.peers.items():
                x = speedup(row, peer)
                target = row.target.get(peer, "")
                out.append(
                    {
                        "bench": run["name"],
                        "task": row.task,
                        "ours_name": row.ours_name,
                        "ours": figure(row.ours, row.unit),
                        "ours_median": median(row.ours),
                        "ours_spread": spread(row.ours),
                        "ours_values": row.ours,
                        "peer": peer,
                        "peer_figure": figure(values, row.unit),
                        "peer_median": median(values),
                        "peer_spread": spread(values),
                        "peer_values": values,
                        "unit": row.unit,
                        "x_peer": x,
                        "target": target,
                        "met": target_met(target, x),
                        "note": row.note,
                        "machine": host,
                        "date": date,
                        "command": run["command"],
                    }
                )
    return out


def history(meta: dict[str, Any]) -> str:
    """The invocations that wrote the report's rows, oldest first."""
    parts = []
    for run in meta.get("history", []):
        what = "all benchmarks" if not run["only"] else "`--only " + " ".join(run["only"]) + "`"
        failed = f", failed: {', '.join(run['failed'])}" if run.get("failed") else ""
        parts.append(f"{run['date']} {what} ({run['seconds']:.0f} s{failed})")
    return "; ".join(parts)


def markdown(entries: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    mark = {True: "met", False: "**missed**", None: ""}
    lines = [
        "# Benchmark results",
        "",
        f"Written by `scripts/bench.py{' --quick' if meta['quick'] else ''}` on {meta['date']} "
        f"({meta['machine']}; Python {meta['python']}). Runs: {history(meta)}. "
        "Each figure is the median of n repeats ± half their interquartile range (half their "
        "range under 4 repeats), relative to the median; `x peer` is how many times faster ours "
        "is than the peer (> 1: faster): the median of the per-round ratios where the methods "
        "ran in turns, else the ratio of the medians. "
        "Run the command (from the repository root, with `.venv/bin/python`) to reproduce a row.",
        "",
        "| task | ours | peer | x peer | target | machine | date | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        target = f"{e['target']} {mark[e['met']]}".strip()
        note = f" ({e['note']})" if e["note"] else ""
        lines.append(
            f"| {e['task']}{note} | {e['ours_name']}: {e['ours']} | {e['peer']}: "
            f"{e['peer_figure']} | {e['x_peer']:.2f} | {target} | {e['machine']} | "
            f"{e['date']} | `{e['command']}` |"
        )
    failed = [b for b in meta["benches"] if b["returncode"] != 0]
    if failed:
        lines += ["", "Benchmarks that failed (see `scripts/results/logs/`):"]
        lines += [f"- `{b['command']}`: exit status {b['returncode']}" for b in failed]
    return "\n".join(lines) + "\n"


def plot(entries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def short(text: str, n: int = 85) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    labels = [short(f"{e['task']} vs {e['peer']}") for e in entries]
    values = [e["x_peer"] for e in entries]
    colours = {True: "tab:green", False: "tab:red", None: "tab:blue"}
    fig, ax = plt.subplots(figsize=(13, 0.22 * len(entries) + 1.0))
    y = range(len(entries))
    ax.barh(list(y), values, color=[colours[e["met"]] for e in entries])
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_ylim(len(entries) - 0.5, -0.5)  # first row on top, no empty margin
    ax.set_xlabel("x peer (how many times faster ours is; log scale)")
    ax.set_title("green: target met, red: missed, blue: no target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The README's rows: for each task, every peer with a target, else its first peer."""
    by_task: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in rows:
        by_task.setdefault((e["bench"], e["task"]), []).append(e)
    out = []
    for entries in by_task.values():
        out += [e for e in entries if e["target"]] or entries[:1]
    return out


def readme_section(data: dict[str, Any]) -> str:
    """The README's performance section: the headline rows, each with its command."""
    meta = data["meta"]
    lines = [
        BEGIN,
        f"Measured by `scripts/bench.py{' --quick' if meta['quick'] else ''}` on {meta['date']} "
        f"({meta['machine']}). Per task: the peer a target names, else the first peer; "
        "every peer, with spreads and repeat counts, is in "
        "[scripts/results/RESULTS.md](scripts/results/RESULTS.md).",
        "",
        "| task | ours | peer | x peer | target | command |",
        "|---|---|---|---|---|---|",
    ]
    for e in headline(data["rows"]):
        met = {True: " met", False: " **missed**", None: ""}[e["met"]]
        ours = f"{e['ours_name']}: {e['ours'].split(' ± ')[0]}"
        peer = f"{e['peer']}: {e['peer_figure'].split(' ± ')[0]}"
        lines.append(
            f"| {e['task']} | {ours} | {peer} | {e['x_peer']:.2f} | {e['target']}{met} | "
            f"`{e['command']}` |"
        )
    lines.append(END)
    return "\n".join(lines)


def update_readme(check: bool) -> int:
    data = json.loads((RESULTS / "results.json").read_text())
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    new = head + readme_section(data) + rest.split(END, 1)[1]
    if check:
        if new != text:
            print("README.md's performance section is stale: run scripts/bench.py --readme")
            return 1
        return 0
    README.write_text(new)
    return 0


def merge(previous: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries of the benchmarks run now, and the previous report's for the others."""
    fresh = {r["name"] for r in runs}
    return [e for e in previous if e["bench"] not in fresh]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: the whole run < 5 min")
    ap.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], default=None)
    ap.add_argument("--readme", action="store_true", help="rewrite README's section and stop")
    ap.add_argument("--check", action="store_true", help="with --readme: compare only")
    ap.add_argument("--render", action="store_true", help="rewrite RESULTS.md and the plot")
    args = ap.parse_args()
    if args.readme:
        return update_readme(args.check)
    if args.render:  # from results.json, after a change to how the report is drawn
        data = json.loads((RESULTS / "results.json").read_text())
        (RESULTS / "RESULTS.md").write_text(markdown(data["rows"], data["meta"]))
        plot(data["rows"], RESULTS / "results.png")
        return 0

    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / "logs"
    log_dir.mkdir(exist_ok=True)
    chosen = [b for b in BENCHES if args.only is None or b.name in args.only]
    host, date = machine(), dt.date.today().isoformat()
    t0 = time.perf_counter()
    runs = []
    for bench in chosen:
        print(f"{bench.name} ...", end=" ", flush=True)
        run = run_bench(bench, args.quick, log_dir)
        status = "ok" if run["returncode"] == 0 else f"FAILED ({run['returncode']})"
        print(f"{run['seconds']:.0f} s, {len(run['rows'])} rows, {status}", flush=True)
        runs.append(run)
    entries = flatten(runs, host, date)
    json_path = RESULTS / "results.json"
    past: list[dict[str, Any]] = []
    if args.only and json_path.exists():
        previous = json.loads(json_path.read_text())
        past = previous["meta"].get("history", [])
        entries = merge(previous["rows"], runs) + entries
        order = [b.name for b in BENCHES]
        entries.sort(key=lambda e: order.index(e["bench"]) if e["bench"] in order else len(order))
    meta = {
        "quick": args.quick,
        "date": date,
        "machine": host,
        "python": platform.python_version(),
        "seconds": time.perf_counter() - t0,
        "benches": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
    }
    failed = [r["name"] for r in runs if r["returncode"] != 0]
    now = {"date": date, "only": args.only, "seconds": meta["seconds"], "failed": failed}
    meta["history"] = [*past, now]
    json_path.write_text(json.dumps({"meta": meta, "rows": entries}, indent=1) + "\n")
    (RESULTS / "RESULTS.md").write_text(markdown(entries, meta))
    if entries:
        plot(entries, RESULTS / "results.png")
    print(f"{len(entries)} rows -> {RESULTS / 'RESULTS.md'} ({meta['seconds']:.0f} s)")
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
