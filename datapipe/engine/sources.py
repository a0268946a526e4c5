"""What the Source nodes list: every executor and ``datapipe.stream.from_pipeline`` start
here.

:func:`preflight` runs the sources' own checks (a missing root, an unreadable labels file)
before an output directory is touched; :func:`list_sources` lists every source's records, in
node order, with the sources' signatures (dataset-level facts that go into the fingerprint)
and what they passed over. Keys are checked and de-duplicated later, by
:func:`datapipe.engine.planning.plan_run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datapipe.graph import Pipeline
from datapipe.stage import Record, StageKind


@dataclass
class Listing:
    #: (source node, record), in node order and each source's own order
    records: list[tuple[str, Record]] = field(default_factory=list)
    #: one per source node, in node order
    signatures: list[str] = field(default_factory=list)
    #: what the sources passed over, by category (``hidden``, ``symlink``, ...), summed
    skipped: dict[str, int] = field(default_factory=dict)


def preflight(pipeline: Pipeline) -> None:
    """Source checks that must fail (ConfigError) before the output directory is touched."""
    for node in pipeline.of_kind(StageKind.SOURCE):
        node.stage.preflight(pipeline.context(node.id))


def list_sources(pipeline: Pipeline) -> Listing:
    """Every source's records, signature and skipped counts."""
    out = Listing()
    for node in pipeline.of_kind(StageKind.SOURCE):
        ctx = pipeline.context(node.id)
        found = node.stage.listing(ctx)  # type: ignore[attr-defined]
        for why, n in found.skipped.items():
            out.skipped[why] = out.skipped.get(why, 0) + n
        out.signatures.append(node.stage.signature(ctx, found.records))  # type: ignore[attr-defined]
        out.records.extend((node.id, rec) for rec in found.records)
    return out
