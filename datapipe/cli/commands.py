"""Sub-commands of the ``datapipe`` CLI; each returns an exit code. They go through the public
front door (:func:`datapipe.run`, :func:`datapipe.validate`), as any Python caller would."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datapipe
from datapipe.api import check_settings
from datapipe.errors import ConfigError, DatapipeError, Problem

EXIT_OK, EXIT_USAGE, EXIT_ITEMS = 0, 2, 3


class UsageError(DatapipeError):
    """A command-line mistake outside any pipeline file (exit code 2, one line)."""


# -- argument types ----------------------------------------------------------------------------
def setting_type(name: str, conv: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse ``type`` for a run setting, with the limits of the pipeline schema."""

    def parse(text: str) -> int | float:
        try:
            value = conv(text)
        except ValueError:
            noun = "an integer" if conv is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}; got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
        _, problems = check_settings(**{name: value})
        if problems:
            raise argparse.ArgumentTypeError(problems[0].message.split(";")[0] + f"; got {text}")
        return value

    parse.__name__ = conv.__name__
    return parse


def count_type(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}; got {text}")
        return value

    parse.__name__ = "int"
    return parse


def _vars(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError([Problem("--var", f"expected NAME=VALUE, got {pair!r}")])
        k, v = pair.split("=", 1)
        out[k] = v
    return out


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`datapipe.run` given on the command line."""
    if args.scheduler and args.executor != "dask":
        raise UsageError("--scheduler needs --executor dask")
    return {
        "executor": args.executor,
        "scheduler": args.scheduler,
        "progress": not args.quiet,
        "retry_errors": args.retry_errors,
        "workers": args.workers,
        "timeout_s": args.timeout_s,
        "memory_mb": args.memory_mb,
        "retries": args.retries,
        "epoch": args.epoch,
    }


# -- commands ------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from datapipe.store.files import atomic_write
    from datapipe.summary import earlier_failures, summary_text

    options = _run_options(args)
    if args.report and not args.report.parent.resolve().is_dir():
        raise UsageError(f"--report: folder {args.report.parent} does not exist")
    report = datapipe.run(args.pipeline, args.out, vars=_vars(args.var), **options)
    if args.report:
        atomic_write(args.report, json.dumps(report.to_dict(), indent=2, sort_keys=True))
    if not args.quiet:
        print(summary_text(report, earlier_failures(report)))
    failed_sink = any(isinstance(s, dict) and "error" in s for s in report.sinks.values())
    return EXIT_ITEMS if report.counts.get("error") or failed_sink else EXIT_OK


def summary_text(report: Any, earlier_failed: int = 0) -> str:
    """See :func:`datapipe.summary.summary_text` (kept here for existing callers)."""
    from datapipe.summary import summary_text as text

    return text(report, earlier_failed)


def cmd_validate(args: argparse.Namespace) -> int:
    variables = _vars(args.var)
    problems = datapipe.validate(args.pipeline, variables)
    if problems:
        raise ConfigError(problems, str(args.pipeline))
    if not args.quiet:
        pipeline = datapipe.load_pipeline(args.pipeline, variables)
        print(f"{args.pipeline}: ok ({len(pipeline.nodes)} nodes: {' -> '.join(pipeline.order)})")
    return EXIT_OK


def cmd_describe(args: argparse.Namespace) -> int:
    from datapipe.cli.render import render_file, render_text

    pipeline = datapipe.load_pipeline(args.pipeline, _vars(args.var))
    if args.out and args.out.suffix.lower() not in (".png", ".svg", ".dot", ".gv"):
        raise UsageError(
            f"--out: unknown picture format {args.out.suffix!r}; use .png, .svg or .dot"
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
    from datapipe.cli.stagedoc import describe_stage, stage_json

    if args.name:
        if args.name not in registry.all_stages():
            raise UsageError(registry.unknown_stage_message(args.name))
        cls = registry.get(args.name)
        if args.json:
            print(json.dumps({args.name: stage_json(cls)}, indent=2))
        else:
            print(describe_stage(cls))
        return EXIT_OK
    loaded, broken = {}, {}
    for name in registry.names():
        try:
            loaded[name] = registry.get(name)
        except registry.StageLoadError as exc:  # a broken plugin hides no other stage
            broken[name] = str(exc)
    for message in broken.values():
        print(f"datapipe: warning: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({n: stage_json(c) for n, c in loaded.items()}, indent=2))
        return EXIT_OK
    width = max((len(n) for n in loaded), default=0)
    for name, cls in loaded.items():
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
            from datapipe.summary import sink_lines, skipped_lines

            for line in skipped_lines(last["counts"].get("skipped")):
                print(line)
            sinks = last["counts"].get("sinks")
            if sinks:
                print("  sinks of the last run:")
                for line in sink_lines(sinks, indent="    "):
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
            print("  failed items by error class (they stay failed; run --retry-errors):")
            for cls, n in classes.items():
                print(f"    {cls}: {n}")
                shown = [r for r in m.iter_rows("error") if r.error_class == cls][: args.limit]
                for r in shown:
                    print(f"      {r.key} [{r.stage}] {r.message}")
        return EXIT_OK
    finally:
        m.close()


def cmd_show(args: argparse.Namespace) -> int:
    from datapipe.store.output import MANIFEST, SHARD_DIR
    from datapipe.store.shards import iter_samples

    root = Path(args.dir)
    if not (root / MANIFEST).is_file():
        what = "does not exist" if not root.exists() else f"is no datapipe output (no {MANIFEST})"
        raise UsageError(f"{args.dir} {what}")
    if not args.key:
        for line in trainer_lines(root):
            print(line)
    paths = sorted((root / SHARD_DIR).glob("*.tar"))
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
        raise UsageError(f"no sample {args.key!r} in {args.dir}")
    return EXIT_OK


def trainer_summaries(root: Path) -> dict[str, dict[str, Any]]:
    """Per trainer node its summary: the last run's sink summaries in the manifest, else the
    trainer's own ``OUT/train/NODE/report.json`` (an output written before they were kept)."""
    from datapipe.store.output import open_manifest_readonly

    m = open_manifest_readonly(root)
    try:
        runs = m.runs()
    finally:
        m.close()
    kept = runs[-1]["counts"].get("sinks") or {} if runs else {}
    found = {node: dict(s) for node, s in kept.items() if isinstance(s, dict)}
    for report in sorted(root.glob("train/*/report.json")):
        if report.parent.name in found:
            continue
        try:
            data = json.loads(report.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found[report.parent.name] = data
    return found


def trainer_lines(root: Path) -> list[str]:
    """The trainer section of ``datapipe show``: the line per trainer node that the run
    summary and ``datapipe manifest`` print (none: no lines)."""
    from datapipe.summary import sink_lines

    summaries = trainer_summaries(root)
    return ["trainers:", *sink_lines(summaries)] if summaries else []


def cmd_predict(args: argparse.Namespace) -> int:
    from datapipe.predict import PredictError, predict

    try:
        results = predict(
            args.trainer,
            args.files,
            pipeline=args.pipeline,
            vars=_vars(args.var),
            workers=args.workers,
            threads=args.threads,
            timeout_s=args.timeout_s,
            epoch=args.epoch,
            compressed=args.compressed,
        )
    except PredictError as exc:
        raise UsageError(str(exc)) from None
    failed = 0
    for result in results:
        failed += "error" in result
        print(json.dumps(result), flush=True)
    return EXIT_ITEMS if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from datapipe.demo.demos import run_demo

    return run_demo(
        args.out, seed=args.seed, quiet=args.quiet, train=not args.no_train, **_run_options(args)
    )
