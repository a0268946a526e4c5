"""Sub-commands of the ``datapipe`` CLI; each returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from datapipe.errors import ConfigError, Problem

EXIT_OK, EXIT_ITEMS = 0, 3


def _vars(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError([Problem("--var", f"expected NAME=VALUE, got {pair!r}")])
        k, v = pair.split("=", 1)
        out[k] = v
    return out


def _load(args: argparse.Namespace) -> Any:
    from datapipe.graph import Pipeline

    return Pipeline.from_yaml(args.pipeline, _vars(args.var))


def _add_pipeline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML file")
    p.add_argument("--var", action="append", metavar="NAME=VALUE", help="set ${NAME} in the file")


def _add_exec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="local", choices=["local", "dask"], help="where to run")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler (tcp://HOST:PORT; default $DASK_SCHEDULER_ADDRESS, else a "
        "LocalCluster of --workers processes)",
    )
    p.add_argument("--workers", type=int, help="worker processes (default: the file's run.workers)")
    p.add_argument("--timeout", type=float, dest="timeout_s", help="time limit per item, seconds")
    p.add_argument("--memory-mb", type=int, help="memory cap per worker process, MiB")
    p.add_argument("--retries", type=int, help="extra attempts for timeouts and crashes")
    p.add_argument("--retry-errors", action="store_true", help="process items that failed before")
    p.add_argument(
        "--epoch",
        type=int,
        help="the epoch stages see (ctx.epoch), e.g. for a resize "
        "schedule; part of the fingerprint of epoch-dependent pipelines",
    )
    p.add_argument("--report", type=Path, help="write the JSON run report here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def cmd_run(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    report = _execute(pipeline, args.out, args)
    return EXIT_ITEMS if report.counts.get("error") else EXIT_OK


def _execute(pipeline: Any, out: Path, args: argparse.Namespace) -> Any:
    from datapipe.executors import get_executor
    from datapipe.hooks import ProgressHooks, RunHooks
    from datapipe.store.files import atomic_write

    if args.workers is not None and args.workers < 0:
        raise ConfigError([Problem("--workers", f"must be >= 0; got {args.workers}")])
    if args.report and not args.report.parent.resolve().is_dir():
        raise ConfigError([Problem("--report", f"folder {args.report.parent} does not exist")])
    hooks = RunHooks() if args.quiet else ProgressHooks()
    run = get_executor(args.executor)
    extra = {"scheduler": args.scheduler} if args.executor == "dask" else {}
    if args.scheduler and args.executor != "dask":
        raise ConfigError([Problem("--scheduler", "needs --executor dask")])
    report = run(
        pipeline,
        out,
        **extra,
        hooks=hooks,
        retry_errors=args.retry_errors,
        workers=args.workers,
        timeout_s=args.timeout_s,
        memory_mb=args.memory_mb,
        retries=args.retries,
        epoch=args.epoch,
    )
    if args.report:
        atomic_write(args.report, json.dumps(report.to_dict(), indent=2, sort_keys=True))
    if not args.quiet:
        print(summary_text(report))
    return report


def summary_text(report: Any) -> str:
    c = report.counts
    lines = [f"{report.pipeline}: {report.status} in {report.elapsed_s:.1f} s -> {report.output}"]
    if c.get("processed", 0) == 0 and not c.get("newly_filtered"):
        lines.append(f"  nothing to do: {c.get('listed', 0)} inputs, all unchanged")
    else:
        lines.append(
            f"  processed {c.get('processed', 0)} of {c.get('listed', 0)} inputs "
            f"({c.get('unchanged', 0)} unchanged): ok {c.get('ok', 0)}, "
            f"error {c.get('error', 0)}, filtered {c.get('filtered', 0)}"
        )
    from datapipe.cli.render import skipped_lines

    lines += skipped_lines(getattr(report, "skipped", None))
    for node, s in report.selections.items():
        lines.append(f"  {node}: kept {s['kept']} of {s['seen']}")
    if report.errors_by_class:
        by = ", ".join(f"{k} {v}" for k, v in sorted(report.errors_by_class.items()))
        lines.append(f"  errors by class: {by}")
    if c.get("damaged"):
        lines.append(
            f"  {c['damaged']} items written with tolerated damage (see datapipe manifest)"
        )
    if report.stages:
        per = ", ".join(
            f"{node} {1e3 * s['seconds'] / max(1, s['items']):.2f}"
            for node, s in report.stages.items()
        )
        lines.append(f"  ms per item: {per}")
    lines.append(f"  output: {report.samples} samples in {report.shards} shards")
    return "\n".join(lines)


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    print(f"{args.pipeline}: ok ({len(pipeline.nodes)} nodes: {' -> '.join(pipeline.order)})")
    return EXIT_OK


def cmd_describe(args: argparse.Namespace) -> int:
    from datapipe.cli.render import render_file, render_text

    pipeline = _load(args)
    if args.out and args.out.suffix.lower() not in (".png", ".svg", ".dot", ".gv"):
        raise ConfigError(
            [
                Problem(
                    "--out", f"unknown picture format {args.out.suffix!r}; use .png, .svg or .dot"
                )
            ]
        )
    if args.json:
        print(json.dumps(pipeline.describe(), indent=2))
    else:
        print(render_text(pipeline))
    if args.out:
        render_file(pipeline, args.out)
        print(f"wrote {args.out}")
    return EXIT_OK


def cmd_stages(args: argparse.Namespace) -> int:
    from datapipe import registry

    stages = registry.all_stages()
    if args.json:
        print(
            json.dumps(
                {
                    n: {
                        "kind": c.kind.value,
                        "description": c.description,
                        "params": c.Params.model_json_schema(),
                    }
                    for n, c in stages.items()
                },
                indent=2,
            )
        )
        return EXIT_OK
    width = max((len(n) for n in stages), default=0)
    for name, cls in stages.items():
        print(f"{name:<{width}}  {cls.kind.value:<6}  {cls.description}")
    return EXIT_OK


def cmd_manifest(args: argparse.Namespace) -> int:
    from datapipe.store.output import open_manifest_readonly

    m = open_manifest_readonly(args.dir)
    try:
        if args.export:
            lines = list(m.export_jsonl())
            Path(args.export).write_text("".join(line + "\n" for line in lines))
            print(f"wrote {len(lines)} rows to {args.export}")
            return EXIT_OK
        counts = m.counts()
        runs = m.runs()
        shards = m.shards()
        print(
            f"{args.dir}: {sum(counts.values())} inputs: ok {counts['ok']}, "
            f"error {counts['error']}, filtered {counts['filtered']}"
        )
        print(
            f"  {sum(n for n, _ in shards.values())} samples in {len(shards)} shards, "
            f"{sum(b for _, b in shards.values()) / 1e6:.2f} MB"
        )
        if runs:
            last = runs[-1]
            took = (last["finished"] or last["started"]) - last["started"]
            print(
                f"  {len(runs)} runs; last: #{last['id']} {last['status']}, {took:.1f} s, "
                f"fingerprint {last['fingerprint']}"
            )
            from datapipe.cli.render import skipped_lines

            for line in skipped_lines(last["counts"].get("skipped")):
                print(line)
        damaged = m.damaged()
        if damaged:
            print(
                f"  {len(damaged)} items written with tolerated damage (strict mode would fail "
                "them):"
            )
            for r in damaged[: args.limit]:
                print(f"    {r.key} {r.notes}")
        classes = m.error_classes()
        if classes:
            print("  failed items by error class:")
            for cls, n in classes.items():
                print(f"    {cls}: {n}")
                shown = [r for r in m.iter_rows("error") if r.error_class == cls][: args.limit]
                for r in shown:
                    print(f"      {r.key} [{r.stage}] {r.message}")
        return EXIT_OK
    finally:
        m.close()


def cmd_show(args: argparse.Namespace) -> int:
    from datapipe.engine.driver import iter_samples
    from datapipe.store.output import SHARD_DIR

    paths = sorted((Path(args.dir) / SHARD_DIR).glob("*.tar"))
    shown = 0
    for rec in iter_samples(paths):
        if args.key and rec["key"] != args.key:
            continue
        print(rec["key"])
        for name, value in sorted(rec.items()):
            if name == "key":
                continue
            desc = (
                f"array {value.dtype} {tuple(value.shape)}"
                if hasattr(value, "shape")
                else repr(value)[:80]
            )
            print(f"  {name}: {desc}")
        shown += 1
        if shown >= args.limit:
            break
    if args.key and not shown:
        print(f"no sample {args.key!r} in {args.dir}", file=sys.stderr)
        return 2
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from datapipe.demo.runner import run_demo

    return run_demo(args)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a pipeline into a sharded output directory")
    _add_pipeline_arg(p)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    _add_exec_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a pipeline file without reading any data")
    _add_pipeline_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("describe", help="print the DAG; --out dag.png|svg|dot draws it")
    _add_pipeline_arg(p)
    p.add_argument("--out", type=Path, help="picture of the DAG (.png, .svg or .dot)")
    p.add_argument("--json", action="store_true", help="machine-readable description")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("stages", help="list every registered stage")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser("manifest", help="summarise a run's output and list failed items")
    p.add_argument("dir", type=Path)
    p.add_argument("--limit", type=int, default=5, help="failed items shown per error class")
    p.add_argument("--export", type=Path, help="write every row as JSON lines")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("show", help="print the fields of samples in an output directory")
    p.add_argument("dir", type=Path)
    p.add_argument("key", nargs="?")
    p.add_argument("--limit", type=int, default=3)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("demo", help="generate the built-in sample data and run the demo pipelines")
    p.add_argument("--out", type=Path, default=Path("datapipe-demo"), help="demo output folder")
    p.add_argument("--seed", type=int, default=0)
    _add_exec_args(p)
    p.set_defaults(func=cmd_demo)
