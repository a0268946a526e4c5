"""A run killed with SIGKILL half-way, then run again, ends with every key exactly once and
no partial shard. Uses the real console entry point in a real subprocess."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import textwrap
import time
from collections import Counter
from pathlib import Path

from datapipe.store.codec import split_member
from runs import ok_rows

N_ITEMS = 60
LAUNCHER = Path(__file__).parent / "cli_with_test_stages.py"


def _pipeline(tmp: Path, root: Path) -> Path:
    path = tmp / "slow.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: slow
        nodes:
          src: {{stage: files, params: {{root: {str(root)!r}, kinds: [image]}}}}
          slow: {{stage: test.faulty, inputs: src, params: {{sleep_s: 0.05}}}}
        output: {{shard_size: 4}}
        run: {{workers: 2}}
    """)
    )
    return path


def test_sigkill_halfway_then_resume(tmp_path: Path) -> None:
    root = tmp_path / "in" / "a"
    root.mkdir(parents=True)
    for i in range(N_ITEMS):
        (root / f"item_{i:03d}.jpg").write_bytes(bytes([i]) * (i + 1))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(LAUNCHER),
        "run",
        str(_pipeline(tmp_path, tmp_path / "in")),
        "--out",
        str(out),
        "-q",
    ]

    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while ok_rows(out / "manifest.sqlite") < 12 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-run
    proc.wait()
    done_before = ok_rows(out / "manifest.sqlite")
    assert 0 < done_before < N_ITEMS, "the kill should land half-way"

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr

    keys: Counter[str] = Counter()
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:  # a partial shard would fail to parse here
            keys.update(
                split_member(m.name)[0] for m in tar.getmembers() if m.name.endswith(".value.npy")
            )
    assert set(keys) == {f"a/item_{i:03d}" for i in range(N_ITEMS)}
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    assert not list(out.rglob(".*tmp-*")), "temporary files survived"
    assert ok_rows(out / "manifest.sqlite") == N_ITEMS

    third = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0
    con = sqlite3.connect(out / "manifest.sqlite")
    counts = con.execute("SELECT counts FROM runs ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert '"processed": 0' in counts
