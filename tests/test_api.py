"""The front door: ``datapipe.run`` and ``datapipe.validate``, which the CLI and the demo call
(neither imports the other)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_cli import GOOD, make_data

import datapipe
from datapipe.cli import main
from datapipe.demo import demos
from datapipe.demo.demos import demo_pipelines
from datapipe.errors import ConfigError, Problem

PACKAGE = Path(datapipe.__file__).resolve().parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_data(tmp_path / "data")
    (tmp_path / "p.yaml").write_text(GOOD)
    return tmp_path


def test_validate_returns_problems_not_raises(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    assert datapipe.validate(tmp_path / "good.yaml") == []
    (tmp_path / "bad.yaml").write_text(GOOD.replace("image.resize", "image.resze"))
    problems = datapipe.validate(str(tmp_path / "bad.yaml"))
    assert [p.path for p in problems] == ["nodes.resize.stage"]
    assert isinstance(problems[0], Problem) and "did you mean 'image.resize'" in problems[0].message
    missing = datapipe.validate(tmp_path / "none.yaml")
    assert len(missing) == 1 and "not found" in missing[0].message


def test_validate_fills_vars_and_takes_a_pipeline(tmp_path: Path) -> None:
    (tmp_path / "v.yaml").write_text(GOOD.replace("{size: 8}", "{size: '${side}'}"))
    assert datapipe.validate(tmp_path / "v.yaml", vars={"side": "8"}) == []
    assert [p.path for p in datapipe.validate(tmp_path / "v.yaml", vars={"side": "x"})] == [
        "nodes.resize.params.size"
    ]
    pipeline = datapipe.load_pipeline(tmp_path / "v.yaml", {"side": "8"})
    assert datapipe.validate(pipeline) == []


def test_run_takes_a_path_or_a_pipeline(project: Path) -> None:
    report = datapipe.run(project / "p.yaml", project / "a")
    assert report.counts["ok"] == 6 and report.counts["error"] == 0
    pipeline = datapipe.load_pipeline(project / "p.yaml")
    again = datapipe.run(pipeline, project / "b", workers=0, epoch=0)
    assert again.counts["ok"] == 6 and again.samples == report.samples


BAD_SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "workers": ({"workers": -1}, "must be >= 0"),
    "timeout_s": ({"timeout_s": 0}, "must be > 0"),
    "memory_mb": ({"memory_mb": 1}, "must be >= 64"),
    "retries": ({"retries": -1}, "must be >= 0"),
    "epoch": ({"epoch": -1}, "must be >= 0"),
    "executor": ({"executor": "nosuch"}, "unknown executor 'nosuch'"),
    "scheduler": ({"scheduler": "tcp://h:1"}, "needs executor='dask'"),
}


@pytest.mark.parametrize("name", sorted(BAD_SETTINGS))
def test_run_refuses_bad_settings_before_touching_the_output(project: Path, name: str) -> None:
    settings, needle = BAD_SETTINGS[name]
    with pytest.raises(ConfigError) as info:
        datapipe.run(project / "p.yaml", project / "out", **settings)
    assert [p.path for p in info.value.problems] == [name]
    assert needle in str(info.value)
    assert not (project / "out").exists()


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found


def test_demo_does_not_import_the_cli() -> None:
    # the demo's own modules, and the summary module it prints with
    for path in [*(PACKAGE / "demo").glob("*.py"), PACKAGE / "summary.py"]:
        cli_imports = {m for m in _imports(path) if m.startswith("datapipe.cli")}
        assert not cli_imports, (path.name, cli_imports)
    assert "_execute" not in (PACKAGE / "cli" / "commands.py").read_text()


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, Path, dict[str, Any]]] = []

    def __call__(self, pipeline: Any, out: Path, **options: Any) -> Any:
        self.calls.append((pipeline, Path(out), options))
        return SimpleNamespace(counts={"error": 0}, sinks={})


def test_demo_runs_every_pipeline_through_datapipe_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _Recorder()
    monkeypatch.setattr(datapipe, "run", record)
    monkeypatch.setattr(
        "datapipe.demo.sample_data.generate_sample_data", lambda root, seed: {"images": 0}
    )
    code = demos.run_demo(tmp_path / "d", seed=3, quiet=True, workers=0, train=False)
    assert code == 0
    names = [p.stem for p in demo_pipelines()]
    assert [out for _, out, _ in record.calls] == [tmp_path / "d" / n for n in names]
    assert all(options == {"workers": 0} for *_, options in record.calls)


def test_cli_goes_through_the_front_door(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Any] = []

    def validate(pipeline: Any, vars: Any = None) -> list[Problem]:
        seen.append(("validate", Path(pipeline), vars))
        return [Problem("nodes.x", "made up")]

    record = _Recorder()
    monkeypatch.setattr(datapipe, "validate", validate)
    monkeypatch.setattr(datapipe, "run", record)
    monkeypatch.setattr(sys, "argv", ["datapipe"])
    assert main(["validate", str(project / "p.yaml"), "--var", "a=b"]) == 2
    assert seen == [("validate", project / "p.yaml", {"a": "b"})]
    assert "nodes.x: made up" in capsys.readouterr().err
    assert main(["run", str(project / "p.yaml"), "--out", "o", "-q", "--workers", "0"]) == 0
    (pipeline, out, options), *_ = record.calls
    assert Path(pipeline) == project / "p.yaml" and out == Path("o")
    assert options["workers"] == 0 and options["progress"] is False
