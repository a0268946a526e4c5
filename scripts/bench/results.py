"""The one format every benchmark reports in, so ``scripts/bench.py`` can gather them.

A benchmark given ``--report PATH`` writes a JSON list of rows there. A row is one task: our
repeated measurements and, for each peer, its own, taken side by side in the same run (round
by round where the benchmark can: round i of ours pairs with round i of each peer). Values
are raw repeats (not medians): the report takes the median and the spread itself, so every
figure in RESULTS.md comes from >= 5 repeats of one command.

    from results import Row, write_report
    rows = [Row("JPEG -> 112 px", "ms/image", False, "decode_jpeg_reduced", ours_ms,
                {"Pillow draft + resize": draft_ms})]
    write_report(args.report, rows)
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    """One task: ours against each peer, every value a repeat of the same measurement.

    ``higher_is_better`` says which way the unit points (samples/s: True; ms: False).
    ``target`` maps a peer to the goal for ``speedup`` against it (> 1: ours faster), e.g.
    ``{"multiprocessing pool": ">= 0.87"}``; a peer without one is shown for information.
    """

    task: str
    unit: str
    higher_is_better: bool
    ours_name: str
    ours: list[float]
    peers: dict[str, list[float]]
    target: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        if not self.ours or any(not v for v in self.peers.values()):
            raise ValueError(f"{self.task}: every method needs at least one measurement")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """The noise of a figure, relative to its median: half the interquartile range from four
    values on (one slow repeat does not swamp it), else half the min-max range."""
    m = median(values)
    if not m:
        return 0.0
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return (q3 - q1) / 2 / abs(m)
    return (max(values) - min(values)) / 2 / abs(m)


def speedup(row: Row, peer: str) -> float:
    """How many times faster ours is than ``peer`` (> 1: ours is faster). With as many
    repeats on each side (rounds run interleaved), the median of the per-round ratios, so a
    round slowed by the machine slows both sides; else the ratio of the medians."""
    ours, theirs = row.ours, row.peers[peer]
    if len(ours) == len(theirs) and all(ours) and all(theirs):
        pairs = zip(ours, theirs, strict=True)
        return median([o / t if row.higher_is_better else t / o for o, t in pairs])
    o, t = median(ours), median(theirs)
    return o / t if row.higher_is_better else t / o


def write_report(path: Path | str | None, rows: Sequence[Row]) -> None:
    """Write ``rows`` to ``path`` (nothing when None: ``--report`` was not given)."""
    if path is None:
        return
    Path(path).write_text(json.dumps([asdict(r) for r in rows], indent=1))


def read_report(path: Path | str) -> list[Row]:
    return [Row(**r) for r in json.loads(Path(path).read_text())]
