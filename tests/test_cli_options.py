"""The command line behaves like a well-kept CLI: nonsensical options are refused with exit 2,
-v/-q go anywhere, help fits 80 columns and lists every option, a closed pipe ends quietly,
``stages NAME`` describes a stage, and re-runs say that failed items stay failed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from test_cli import GOOD, add_bad_files, assert_usage_error, make_data

from datapipe import registry
from datapipe.cli import build_parser
from runs import cli, datapipe_cmd

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
#: the stages pyproject.toml declares (test stages registered at run time left out)
BUILTIN = sorted(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "datapipe.stages"
    ]
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_data(tmp_path / "data")
    (tmp_path / "p.yaml").write_text(GOOD)
    return tmp_path


# -- option limits -------------------------------------------------------------------------------
BAD_OPTIONS = {
    "timeout_zero": (["--timeout", "0"], "argument --timeout: must be > 0; got 0"),
    "timeout_nan": (["--timeout", "nan"], "argument --timeout: must be a finite number"),
    "epoch_negative": (["--epoch", "-1"], "argument --epoch: must be >= 0; got -1"),
    "memory_tiny": (["--memory-mb", "1"], "argument --memory-mb: must be >= 64; got 1"),
    "workers_negative": (["--workers", "-1"], "argument --workers: must be >= 0; got -1"),
    "retries_negative": (["--retries", "-1"], "argument --retries: must be >= 0; got -1"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_run_refuses_nonsensical_settings(project: Path, case: str) -> None:
    args, needle = BAD_OPTIONS[case]
    proc = cli("run", "p.yaml", "--out", "out", *args, cwd=project)
    assert_usage_error(proc, needle)
    assert not (project / "out").exists(), "a refused option must not touch the output"


def test_demo_refuses_a_negative_seed(tmp_path: Path) -> None:
    proc = cli("demo", "--out", "d", "--seed", "-1", cwd=tmp_path)
    assert_usage_error(proc, "argument --seed: must be >= 0; got -1")
    assert not (tmp_path / "d").exists()


def test_verbosity_flags_work_after_the_command(project: Path) -> None:
    quiet = cli("validate", "p.yaml", "-q", cwd=project)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""
    before = cli("-q", "validate", "p.yaml", cwd=project)
    assert before.returncode == 0 and before.stdout == ""
    loud = cli("validate", "p.yaml", "--verbose", cwd=project)
    assert loud.returncode == 0 and "ok" in loud.stdout
    # --workers 0 (in-process where safe) stays valid, with -v after the command
    run = cli("run", "p.yaml", "--out", "out", "--workers", "0", "-v", "-q", cwd=project)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # -q: no summary
    assert list((project / "out" / "shards").glob("*.tar"))


# -- show, closed pipes ----------------------------------------------------------------------------
def test_show_on_a_missing_or_foreign_folder_is_a_usage_error(tmp_path: Path) -> None:
    missing = cli("show", tmp_path / "nope", cwd=tmp_path)
    assert_usage_error(missing, "nope", "does not exist")
    (tmp_path / "plain").mkdir()
    foreign = cli("show", "plain", cwd=tmp_path)
    assert_usage_error(foreign, "plain is no datapipe output (no manifest.sqlite)")


def _closed_stdout(*args: str | Path, cwd: Path) -> tuple[int, str]:
    """Run the CLI with its stdout read by nobody (as `| head -0` would); (exit code, stderr)."""
    proc = subprocess.Popen(
        [*datapipe_cmd(), *map(str, args)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter is even up: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    return proc.wait(timeout=240), err


def test_a_closed_pipe_ends_quietly(project: Path) -> None:
    assert cli("run", "p.yaml", "--out", "out", "-q", cwd=project).returncode == 0
    for args in (["manifest", "out"], ["stages"], ["show", "out"]):
        code, err = _closed_stdout(*args, cwd=project)
        assert err == "", (args, err)
        assert code == 141, (args, code)


# -- help ------------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_help_fits_80_columns_and_lists_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    parsers = {"datapipe": parser, **_subparsers(parser)}
    assert {"run", "validate", "describe", "stages", "manifest", "show", "demo"} <= set(parsers)
    for name, p in parsers.items():
        text = p.format_help()
        wide = [line for line in text.splitlines() if len(line) > 80]
        assert not wide, (name, wide)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            label = action.option_strings[-1] if action.option_strings else action.metavar
            assert action.help and action.help != argparse.SUPPRESS, (name, label)
            assert str(label) in text, (name, label)
    for flag in ("-v", "-q"):  # also after every command
        for name, p in parsers.items():
            assert any(flag in a.option_strings for a in p._actions), (name, flag)


def test_top_level_help_names_exit_codes() -> None:
    proc = subprocess.run(
        [*datapipe_cmd(), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=120,
    )
    assert proc.returncode == 0
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    for code in ("0  all good", "1  internal failure", "2  bad config", "3  finished"):
        assert code in proc.stdout


# -- failed items stay failed ----------------------------------------------------------------------
def test_summary_says_failed_items_stay_failed(project: Path) -> None:
    bad = add_bad_files(project / "data")
    first = cli("run", "p.yaml", "--out", "out", cwd=project)
    assert first.returncode == 3, first.stderr
    assert "--retry-errors" in first.stdout
    again = cli("run", "p.yaml", "--out", "out", cwd=project)
    assert again.returncode == 0, again.stderr
    assert f"{len(bad)} inputs failed in an earlier run and were not retried" in again.stdout
    assert "--retry-errors" in again.stdout
    retried = cli("run", "p.yaml", "--out", "out", "--retry-errors", cwd=project)
    assert retried.returncode == 3
    assert "earlier run" not in retried.stdout


# -- stages NAME -----------------------------------------------------------------------------------
def test_stages_name_describes_params_fields_and_an_example(tmp_path: Path) -> None:
    proc = cli("stages", "image.resize", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("image.resize (map)\n")
    assert registry.get("image.resize").description in out
    assert "  size: integer, >= 1, <= 8192; default 224" in out
    assert 'mode: one of "crop", "stretch"; default "crop"' in out
    assert "consumes:\n  path: str" in out
    assert "  image: uint8 [224 224 3]" in out
    example = yaml.safe_load(out.split("example node:\n", 1)[1])
    assert example == {"resize": {"stage": "image.resize", "inputs": "src"}}
    assert all(len(line) <= 80 for line in out.splitlines())

    unknown = cli("stages", "image.resze", cwd=tmp_path)
    assert_usage_error(unknown, "unknown stage 'image.resze'; did you mean 'image.resize'?")


def test_stages_json_keeps_its_shape(tmp_path: Path) -> None:
    every = json.loads(cli("stages", "--json", cwd=tmp_path).stdout)
    assert set(every) >= set(BUILTIN)
    for entry in every.values():
        assert set(entry) == {"kind", "description", "params"}
    one = cli("stages", "select.random", "--json", cwd=tmp_path)
    assert json.loads(one.stdout) == {"select.random": every["select.random"]}


@pytest.mark.parametrize("name", BUILTIN)
def test_every_stage_description_has_a_working_example_node(name: str) -> None:
    from datapipe.cli.stagedoc import describe_stage

    cls = registry.get(name)
    text = describe_stage(cls)
    assert text.startswith(f"{name} ({cls.kind.value})\n")
    for section in ("params:", "consumes", "produces", "example node:"):
        assert section in text, section
    node = yaml.safe_load(text.split("example node:\n", 1)[1])
    (_, spec), *rest = node.items()
    assert not rest and spec["stage"] == name
    assert ("inputs" in spec) == (cls.kind.value != "source")
    cls.build_params(spec.get("params", {}))  # the example's params are valid


# -- repository hygiene ----------------------------------------------------------------------------
def test_demo_default_output_is_git_ignored() -> None:
    from datapipe.demo.demos import DEFAULT_OUT

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(
        ["git", "check-ignore", "-q", str(DEFAULT_OUT / "data" / "a.jpg")],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{DEFAULT_OUT}/ is not in .gitignore"


def test_readme_names_the_system_packages_setup_installs() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    listed = setup.split("SYSTEM_PACKAGES=(", 1)[1].split(")", 1)[0].split()
    assert set(listed) == {"libturbojpeg0", "libgomp1", "libusb-1.0-0"}
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for word in (*listed, "sudo", "apt-get"):
        assert word in quick, word
