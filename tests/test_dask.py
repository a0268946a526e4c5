"""The Dask executor on real clusters: a LocalCluster, and `dask scheduler` + `dask worker`
processes on loopback. Same results as the local executor; worker and scheduler deaths.

Tests share the session's LocalCluster (the ``dask_scheduler`` fixture) unless they kill or
configure their own: a worker SIGKILLed, the scheduler killed, an unreachable address, a
scheduler-side retry limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import dask
import numpy as np
import pytest

from datapipe.demo.demos import demo_pipelines
from datapipe.demo.sample_data import generate_sample_data
from datapipe.engine.report import RunReport
from datapipe.errors import ExecutorError
from datapipe.executors import dask_executor
from datapipe.executors.dask_executor import run_dask
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.store import iter_samples
from datapipe.store.codec import split_member
from datapipe.store.manifest import Manifest
from runs import ok_rows

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "cli_with_test_stages.py"
DASK = Path(sys.executable).parent / "dask"
ROW_FIELDS = (
    "key",
    "status",
    "stage",
    "error_class",
    "message",
    "n_samples",
    "label",
    "hash",
    "fingerprint",
    "size",
)


def _rows(out: Path) -> dict[str, tuple]:
    m = Manifest(out / "manifest.sqlite")
    try:
        return {r.key: tuple(getattr(r, f) for f in ROW_FIELDS) for r in m.iter_rows()}
    finally:
        m.close()


def _arrays(out: Path) -> dict[str, dict]:
    return {s["key"]: s for s in iter_samples(sorted((out / "shards").glob("*.tar")))}


def _member_keys(out: Path, field: str) -> Counter[str]:
    keys: Counter[str] = Counter()
    for shard in (out / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            keys.update(split_member(n)[0] for n in tar.getnames() if n.endswith(field))
    return keys


def _same_samples(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, b[key][name])
                assert value.dtype == b[key][name].dtype
            else:
                assert value == b[key][name]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    generate_sample_data(root, seed=0)
    return root


@pytest.fixture(scope="module")
def local_runs(
    demo_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, RunReport]]:
    """Every demo pipeline run once by the local executor: the reference of the Dask runs."""
    out = tmp_path_factory.mktemp("local")
    runs = {}
    for path in demo_pipelines():
        pipeline = Pipeline.from_yaml(path, {"data": str(demo_data)})
        runs[path.stem] = (out / path.stem, run_local(pipeline, out / path.stem, workers=1))
    return runs


@pytest.mark.parametrize("path", demo_pipelines(), ids=lambda p: p.stem)
def test_dask_matches_local_on_every_demo_pipeline(
    demo_data: Path,
    local_runs: dict[str, tuple[Path, RunReport]],
    tmp_path: Path,
    path: Path,
    dask_scheduler: str,
) -> None:
    pipeline = Pipeline.from_yaml(path, {"data": str(demo_data)})
    local_out, local = local_runs[path.stem]
    remote = run_dask(pipeline, tmp_path / "dask", scheduler=dask_scheduler)
    assert local.counts == remote.counts
    # the workers' stage timings reach the client's report
    assert {n: s["items"] for n, s in remote.stages.items()} == {
        n: s["items"] for n, s in local.stages.items()
    }
    assert _rows(local_out) == _rows(tmp_path / "dask")
    _same_samples(_arrays(local_out), _arrays(tmp_path / "dask"))
    again = run_dask(pipeline, tmp_path / "dask", scheduler=dask_scheduler)
    assert again.counts["processed"] == 0


def _faulty_tree(root: Path, names: list[str]) -> None:
    (root / "x").mkdir(parents=True)
    for i, name in enumerate(names):
        (root / "x" / f"{name}.jpg").write_bytes(bytes(i + 1))


def test_crashing_inputs_become_error_rows_on_dask(tmp_path: Path, dask_scheduler: str) -> None:
    """Isolated stages crash a child, not the Dask worker; a crash in a trusted stage kills
    Dask workers until the poison item is found and recorded after bounded retries."""
    _faulty_tree(tmp_path / "in", ["segv_1", "hang_1", "good_1", "good_2", "good_3"])
    isolated = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "files", "params": {"root": str(tmp_path / "in")}},
                "f": {"stage": "test.faulty", "inputs": "src"},
            }
        }
    )
    report = run_dask(isolated, tmp_path / "out1", scheduler=dask_scheduler, timeout_s=5)
    assert report.errors_by_class == {"crash": 1, "timeout": 1}
    assert report.counts["ok"] == 3

    _faulty_tree(tmp_path / "in2", ["segv_1", "good_1", "good_2", "good_3", "good_4"])
    trusted = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "files", "params": {"root": str(tmp_path / "in2")}},
                "f": {"stage": "test.faulty_inline", "inputs": "src"},
            }
        }
    )
    # its own LocalCluster: the retry limit is the scheduler's, and workers get killed
    with dask.config.set({"distributed.scheduler.allowed-failures": 2}):
        report = run_dask(trusted, tmp_path / "out2", workers=2)
    rows = _rows(tmp_path / "out2")
    assert rows["x/segv_1"][1:4] == ("error", None, "crash")
    assert {k for k, r in rows.items() if r[1] == "ok"} == {f"x/good_{i}" for i in range(1, 5)}


def test_unreachable_scheduler_is_a_clear_usage_error(
    tmp_path: Path, image_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = Pipeline.from_dict(
        {"nodes": {"src": {"stage": "files", "params": {"root": str(image_tree)}}}}
    )
    monkeypatch.setattr(dask_executor, "CONNECT_TIMEOUT_S", 1)  # the CLI below waits 5 s
    t0 = time.monotonic()
    with pytest.raises(ExecutorError) as info:
        run_dask(pipeline, tmp_path / "out", scheduler="tcp://127.0.0.1:9")
    assert info.value.exit_code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in str(info.value)
    assert time.monotonic() - t0 < 60  # a bound on hanging, not a speed claim
    proc = subprocess.run(
        [
            sys.executable,
            str(LAUNCHER),
            "run",
            "-q",
            "--executor",
            "dask",
            "--scheduler",
            "tcp://127.0.0.1:9",
            "--out",
            str(tmp_path / "o2"),
            _write_yaml(tmp_path, image_tree.parent, 0),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot reach the Dask scheduler" in proc.stderr


# -- a real cluster of processes ----------------------------------------------------------------
def _write_yaml(tmp: Path, root: Path, sleep_s: float) -> str:
    path = tmp / "slow.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: slow
        nodes:
          src: {{stage: files, params: {{root: {str(root)!r}}}}}
          work: {{stage: test.faulty, inputs: src, params: {{sleep_s: {sleep_s}}}}}
        output: {{shard_size: 3}}
    """)
    )
    return str(path)


class Cluster:
    """`dask scheduler` and `dask worker` processes on loopback, each in its own group."""

    def __init__(self, tmp: Path) -> None:
        self.file = tmp / "scheduler.json"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
        self.procs: dict[str, subprocess.Popen] = {}
        self.start(
            "scheduler",
            [
                str(DASK),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(self.file),
            ],
        )
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        import json

        self.address = json.loads(self.file.read_text())["address"]

    def start(self, name: str, cmd: list[str]) -> None:
        self.procs[name] = subprocess.Popen(
            cmd,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def add_worker(self, name: str) -> None:
        self.start(
            name,
            [
                str(DASK),
                "worker",
                "--scheduler-file",
                str(self.file),
                "--nthreads",
                "1",
                "--no-dashboard",
                "--name",
                name,
            ],
        )

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def close(self) -> None:
        for name in list(self.procs):
            if self.procs[name].poll() is None:
                self.kill(name)


def _wait_rows(out: Path, n: int, proc: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while ok_rows(out / "manifest.sqlite") < n:
        assert proc.poll() is None, "the run ended before the fault was injected"
        assert time.monotonic() < deadline
        time.sleep(0.05)


N_SLOW = 48


@pytest.fixture
def slow_inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    for i in range(N_SLOW):
        (root / "a" / f"item_{i:03d}.jpg").write_bytes(bytes([i % 256]) * (i + 1))
    return root


def _check_complete(out: Path) -> None:
    keys = _member_keys(out, ".value.npy")
    assert set(keys) == {f"a/item_{i:03d}" for i in range(N_SLOW)}
    assert max(keys.values()) == 1
    assert ok_rows(out / "manifest.sqlite") == N_SLOW
    assert not list(out.rglob(".*tmp-*"))


def test_sigkill_a_worker_mid_run(tmp_path: Path, slow_inputs: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.add_worker("w1")
        cluster.add_worker("w2")
        out = tmp_path / "out"
        cmd = [
            sys.executable,
            str(LAUNCHER),
            "run",
            "-q",
            _write_yaml(tmp_path, slow_inputs, 0.1),
            "--out",
            str(out),
            "--executor",
            "dask",
            "--scheduler",
            cluster.address,
        ]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        _wait_rows(out, 6, proc)
        cluster.kill("w1")  # nanny and worker: it does not come back
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        _check_complete(out)
    finally:
        cluster.close()


def test_scheduler_death_is_clear_and_a_rerun_resumes(
    tmp_path: Path, slow_inputs: Path, dask_scheduler: str
) -> None:
    cluster = Cluster(tmp_path)
    out = tmp_path / "out"
    yaml_path = _write_yaml(tmp_path, slow_inputs, 0.1)
    try:
        cluster.add_worker("w1")
        cmd = [
            sys.executable,
            str(LAUNCHER),
            "run",
            "-q",
            yaml_path,
            "--out",
            str(out),
            "--executor",
            "dask",
            "--scheduler",
            cluster.address,
        ]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        _wait_rows(out, 6, proc)
        cluster.kill("scheduler")
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 1, err
        assert "lost the Dask scheduler" in err and "Traceback" not in err
        done = ok_rows(out / "manifest.sqlite")
        assert 0 < done < N_SLOW
    finally:
        cluster.close()
    rerun = subprocess.run(
        [
            sys.executable,
            str(LAUNCHER),
            "run",
            "-q",
            yaml_path,
            "--out",
            str(out),
            "--executor",
            "dask",
            "--scheduler",
            dask_scheduler,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    _check_complete(out)


def test_demo_runs_on_dask_through_the_cli(
    tmp_path: Path, local_runs: dict[str, tuple[Path, RunReport]], dask_scheduler: str
) -> None:
    """`datapipe demo --executor dask` writes what the local executor writes for the same
    sample data (the demo's is generated with seed 0, as ``demo_data``). The training demos
    are left out (``--no-train``): their trainers run in the driver whatever the executor,
    and test_cli runs them."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "datapipe.cli",
            "demo",
            "-q",
            "--out",
            str(tmp_path / "demo"),
            "--executor",
            "dask",
            "--scheduler",
            dask_scheduler,
            "--no-train",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for name, (local, _) in local_runs.items():
        assert _rows(tmp_path / "demo" / name).keys() == _rows(local).keys()
        _same_samples(_arrays(tmp_path / "demo" / name), _arrays(local))


@pytest.mark.parametrize("n", [10, 29])
def test_dask_honours_shard_size_as_local_does(tmp_path: Path, n: int, dask_scheduler: str) -> None:
    """Partitions leave partly filled shards; they are merged into full ones, so the layout
    is the local executor's: shard_size samples each, one shard partly filled."""
    from datapipe.config import OutputSpec
    from datapipe.graph import Node
    from fault_stages import Counter, Root, Square

    nodes = [
        Node("src", Counter(n=n)),
        Node("sq", Square(), ("src",)),
        Node("root", Root(), ("sq",)),  # item 5 fails: 9 or 28 samples
    ]
    p = Pipeline(nodes, output=OutputSpec(shard_size=3))
    run_local(p, tmp_path / "local", workers=0)
    run_dask(p, tmp_path / "dask", scheduler=dask_scheduler)
    sizes = {}
    for name in ("local", "dask"):
        m = Manifest(tmp_path / name / "manifest.sqlite")
        sizes[name] = sorted((s for s, _ in m.shards().values()), reverse=True)
        assert sorted(p.name for p in (tmp_path / name / "shards").glob("*.tar")) == sorted(
            m.shards()
        )
        m.close()
    full, rest = divmod(n - 1, 3)
    assert sizes["dask"] == sizes["local"] == [3] * full + ([rest] if rest else [])
    assert _rows(tmp_path / "local") == _rows(tmp_path / "dask")
    _same_samples(_arrays(tmp_path / "local"), _arrays(tmp_path / "dask"))
    # every committed row names the shard that holds its sample
    m = Manifest(tmp_path / "dask" / "manifest.sqlite")
    for row in m.iter_rows("ok"):
        with tarfile.open(tmp_path / "dask" / "shards" / row.shard) as tar:
            assert f"{row.key}.root.npy" in tar.getnames()
    m.close()
