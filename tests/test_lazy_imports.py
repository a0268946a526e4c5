"""The registry imports a stage's module only when the stage is used, and stage modules keep
their heavy libraries for the functions that decode: ``datapipe validate`` and ``datapipe
stages`` load none of them. Third-party stages come in through entry points, lazily too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_cli import GOOD, make_data

from datapipe.demo.demos import demo_pipelines
from runs import cli

HEAVY = ("torch", "av", "open3d", "numba", "sklearn", "dask", "distributed", "scipy")

#: runs CLI commands in one interpreter, then prints which heavy modules it imported
PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from datapipe.cli import main
    codes = []
    for argv in json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(io.StringIO()):
            codes.append(main(argv))
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
    print(json.dumps({"codes": codes, "heavy": heavy, "modules": sorted(sys.modules)}))
    """
)


def probe(commands: list[list[str]], cwd: Path, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands), json.dumps(HEAVY)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_validate_imports_no_heavy_library(tmp_path: Path) -> None:
    commands = [["validate", str(path)] for path in demo_pipelines()]
    result = probe(commands, tmp_path)
    assert result["codes"] == [0] * len(commands)
    assert result["heavy"] == []


def test_stages_imports_no_heavy_library(tmp_path: Path) -> None:
    commands = [["stages"], ["stages", "--json"], ["stages", "video.coviar"]]
    result = probe(commands, tmp_path)
    assert result["codes"] == [0, 0, 0]
    assert result["heavy"] == []


def test_validate_imports_only_the_stages_it_uses(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD)
    make_data(tmp_path / "data")
    modules = set(probe([["validate", "p.yaml"]], tmp_path)["modules"])
    assert "datapipe.stages.io.image_resize" in modules
    # files -> image.resize -> select.random: no module of the other families is loaded
    for family in ("compressed", "points", "keyframes", "represent"):
        loaded = [m for m in modules if m.startswith(f"datapipe.stages.{family}.")]
        assert not loaded, loaded


PLUGIN = """
from datapipe.fields import Field
from datapipe.stage import Map

IMPORTED = True


class Twice(Map):
    name = "mylab.twice"
    description = "Double a number (a third-party stage)."
    CONSUMES = (Field("label_id", "int"),)
    PRODUCES = (Field("twice", "int"),)

    def process(self, record, ctx):
        return {"twice": 2 * record["label_id"]}
"""


@pytest.fixture
def plugin(tmp_path: Path) -> dict[str, str]:
    """A package installed only as a dist-info on PYTHONPATH: one good stage, one broken."""
    site = tmp_path / "site"
    (site / "mylab-0.1.dist-info").mkdir(parents=True)
    (site / "mylab-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mylab\nVersion: 0.1\n"
    )
    (site / "mylab-0.1.dist-info" / "entry_points.txt").write_text(
        "[datapipe.stages]\nmylab.twice = mylab_stages:Twice\nmylab.broken = mylab_missing:Nope\n"
    )
    (site / "mylab_stages.py").write_text(PLUGIN)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_entry_point_stages_are_listed_used_and_loaded_lazily(
    tmp_path: Path, plugin: dict[str, str]
) -> None:
    make_data(tmp_path / "data")
    (tmp_path / "p.yaml").write_text(GOOD)
    (tmp_path / "twice.yaml").write_text(
        "nodes:\n  src: {stage: files, params: {root: data}}\n"
        "  t: {stage: mylab.twice, inputs: src}\n"
    )
    listed = subprocess.run(
        [sys.executable, "-m", "datapipe.cli", "stages"],
        cwd=tmp_path,
        env=plugin,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert "mylab.twice" in names and "files" in names and "mylab.broken" not in names
    assert "mylab.broken" in listed.stderr and "mylab_missing" in listed.stderr
    assert "Traceback" not in listed.stderr

    result = probe([["validate", "p.yaml"], ["validate", "twice.yaml"]], tmp_path, plugin)
    assert result["codes"] == [0, 0]
    other = probe([["validate", "p.yaml"]], tmp_path, plugin)
    assert "mylab_stages" not in other["modules"]  # not used, not imported


def test_a_broken_plugin_is_one_clear_error_where_used(
    tmp_path: Path, plugin: dict[str, str]
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "b.yaml").write_text(
        "nodes:\n  src: {stage: files, params: {root: data}}\n"
        "  b: {stage: mylab.broken, inputs: src}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "datapipe.cli", "validate", "b.yaml"],
        cwd=tmp_path,
        env=plugin,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "stage 'mylab.broken' (mylab_missing:Nope) cannot be loaded" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = cli("validate", "b.yaml", cwd=tmp_path)  # without the plugin: an unknown stage
    assert ok.returncode == 2 and "unknown stage 'mylab.broken'" in ok.stderr
