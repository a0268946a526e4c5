"""The few lines printed after a run (``datapipe run``, ``datapipe demo``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

RETRY_HINT = "failed items stay failed on re-runs; --retry-errors tries them again"
_SKIPPED = {
    "hidden": ("hidden entry", "hidden entries", "names starting with '.'"),
    "symlink": ("symlink", "symlinks", "follow_symlinks: true follows links inside the root"),
    "unknown_ext": (
        "file with an unlisted extension",
        "files with an unlisted extension",
        "the kinds and extensions params list more",
    ),
    "special": ("special file", "special files", "FIFOs, sockets, devices"),
}


def skipped_lines(skipped: dict[str, int] | None, indent: str = "  ") -> list[str]:
    """One line per category of inputs the sources passed over (none when nothing was):
    ``skipped 2 hidden entries (names starting with '.')``."""
    lines = []
    for category, n in (skipped or {}).items():
        if not n:
            continue
        one, many, why = _SKIPPED.get(category, (category, category, ""))
        note = f" ({why})" if why else ""
        lines.append(f"{indent}skipped {n} {one if n == 1 else many}{note}")
    return lines


def sink_lines(sinks: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    """One line per sink of the run with its summary; a trainer's reads
    ``classifier: val_accuracy 0.912, reused, 10 epochs, 77,652 params, 0.32 MB``."""
    lines = []
    for node, summary in sorted((sinks or {}).items()):
        if not isinstance(summary, dict):
            lines.append(f"{indent}{node}: {summary!r}"[:200])
            continue
        if "error" in summary:
            lines.append(f"{indent}{node}: failed ({summary['error']}): {summary.get('message')}")
            continue
        if "val_accuracy" not in summary:
            parts = [f"{k} {v}" for k, v in sorted(summary.items())]
            lines.append(f"{indent}{node}: {', '.join(parts)}"[:200])
            continue
        parts = _model_parts(summary, "trained", TRAINER_FIGURES)
        skipped = sum((summary.get("skipped") or {}).values())
        if skipped:
            parts.append(f"{skipped} samples skipped")
        lines.append(f"{indent}{node}: {', '.join(parts)}")
        if isinstance(summary.get("compressed"), dict):
            lines.append(compressed_line(node, summary["compressed"], indent))
    return lines


def compressed_line(node: str, c: dict[str, Any], indent: str = "  ") -> str:
    """``classifier compressed (prune 50% l1): val_accuracy 0.890, reused, 0.08 MB, MACs
    0.26x, batch-64 latency 0.41x`` (the ratios against the fp32 model)."""
    parts = _model_parts(c, "made", COMPRESSED_FIGURES)
    return f"{indent}{node} compressed ({c.get('variant')}): {', '.join(parts)}"


#: the figures of a trainer's summary line and how each is written
TRAINER_FIGURES: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("epochs_run", lambda v: f"{v} epochs"),
    ("subset", lambda v: f"on {v}"),
    ("params", lambda v: f"{v:,} params"),
    ("model_bytes", lambda v: f"{v / 1e6:.2f} MB"),
)
#: those of its compressed model's line
COMPRESSED_FIGURES: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("model_bytes", lambda v: f"{v / 1e6:.2f} MB"),
    ("macs_ratio", lambda v: f"MACs {v:.2f}x"),
    ("latency_ratio", lambda v: f"batch-64 latency {v:.2f}x"),
)


def _model_parts(
    summary: dict[str, Any], fresh: str, figures: tuple[tuple[str, Callable[[Any], str]], ...]
) -> list[str]:
    """``val_accuracy 0.912``, ``reused`` or ``fresh``, then each figure the summary has."""
    acc = summary.get("val_accuracy")
    parts = [f"val_accuracy {acc:.3f}" if isinstance(acc, float) else f"val_accuracy {acc}"]
    parts.append("reused" if summary.get("reused") else fresh)
    parts += [write(summary[key]) for key, write in figures if summary.get(key) is not None]
    return parts


def earlier_failures(report: Any) -> int:
    """Items of the output that failed in an earlier run and were not tried again."""
    from datapipe.store.output import MANIFEST, open_manifest_readonly

    if not (Path(report.output) / MANIFEST).exists():
        return 0
    manifest = open_manifest_readonly(report.output)
    try:
        stored = manifest.counts().get("error", 0)
    finally:
        manifest.close()
    return max(0, stored - report.counts.get("error", 0))


def summary_text(report: Any, earlier_failed: int = 0) -> str:
    """What a run did, in a few lines; ``earlier_failed``: see :func:`earlier_failures`."""
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
    lines += skipped_lines(getattr(report, "skipped", None))
    for node, s in report.selections.items():
        took = s.get("light_s", 0.0) + s.get("select_s", 0.0)
        lines.append(f"  {node}: kept {s['kept']} of {s['seen']} ({took:.1f} s)")
    if report.errors_by_class:
        by = ", ".join(f"{k} {v}" for k, v in sorted(report.errors_by_class.items()))
        lines.append(f"  errors by class: {by} (datapipe manifest {report.output} lists them)")
    if earlier_failed:
        lines.append(f"  {earlier_failed} inputs failed in an earlier run and were not retried")
    if report.errors_by_class or earlier_failed:
        lines.append(f"  {RETRY_HINT}")
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
    lines += sink_lines(getattr(report, "sinks", None))
    return "\n".join(lines)
