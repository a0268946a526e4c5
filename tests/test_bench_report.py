"""The benchmark report (``scripts/bench.py``): figures computed by hand, and the README's
performance section kept equal to what the committed results say."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from results import Row, read_report, speedup, spread, write_report  # noqa: E402


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_driver", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_driver"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_speedup_pairs_rounds_and_follows_the_unit() -> None:
    # seconds, lower is better: per-round ratios 2, 3, 1, 4, 5 -> median 3
    row = Row("t", "s", False, "ours", [1, 1, 2, 1, 1], {"peer": [2, 3, 2, 4, 5]})
    assert speedup(row, "peer") == 3
    # rates, higher is better: ratios 0.5, 0.5, 2 -> median 0.5
    rate = Row("t", "1/s", True, "ours", [1, 2, 8], {"peer": [2, 4, 4]})
    assert speedup(rate, "peer") == 0.5
    # unequal repeat counts: the ratio of the medians (peer 6 / ours 2)
    unpaired = Row("t", "s", False, "ours", [1, 2, 3], {"peer": [6, 6]})
    assert speedup(unpaired, "peer") == 3


def test_spread_is_half_the_iqr_over_the_median() -> None:
    # inclusive quartiles of 1..5 are 2 and 4: (4 - 2) / 2 / 3
    assert spread([1, 2, 3, 4, 5]) == pytest.approx(1 / 3)
    assert spread([1, 2, 3, 4, 100]) == pytest.approx(1 / 3)  # one outlier does not swamp it
    assert spread([2, 4]) == pytest.approx(1 / 3)  # few values: half the range over the median
    assert spread([7]) == 0


def test_a_method_without_measurements_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Row("t", "s", False, "ours", [1.0], {"peer": []})


def test_report_round_trips_and_targets_are_judged(tmp_path: Path) -> None:
    rows = [Row("t", "s", False, "ours", [1, 1, 1, 1, 1], {"p": [2] * 5}, {"p": ">= 1.7"})]
    write_report(tmp_path / "r.json", rows)
    assert read_report(tmp_path / "r.json") == rows
    bench = _bench_module()
    assert bench.target_met(">= 1.7", 2.0) is True
    assert bench.target_met(">= 1.7", 1.69) is False
    assert bench.target_met("<= 2", 2.0) is True
    assert bench.target_met("", 5.0) is None
    run = {"name": "x", "command": "scripts/bench/x.py --quick", "rows": rows}
    (entry,) = bench.flatten([run], "machine", "2026-01-01")
    assert entry["x_peer"] == 2.0 and entry["met"] is True
    meta = {"quick": True, "date": "2026-01-01", "machine": "m", "python": "3", "seconds": 1.0}
    table = bench.markdown([entry], {**meta, "benches": [{**run, "returncode": 0}]})
    assert "| 2.00 | >= 1.7 met |" in table and "`scripts/bench/x.py --quick`" in table


def test_readme_performance_section_matches_the_committed_results() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", "--readme", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
