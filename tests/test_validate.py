"""`datapipe validate` finds every problem at once, before any data: problems in several
sections, Fit wiring, field names named by params, and keys given twice in the YAML. The CLI
cases run the real console script (exit code 2, one message, no traceback)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import pytest

from datapipe import registry
from datapipe.config import load_yaml
from datapipe.errors import ConfigError
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context, Fit, Map, NodeRef, Params, Record, StageKind
from runs import cli


def validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bad.yaml").write_text(text)
    return cli("validate", "bad.yaml", cwd=tmp_path)


def problem_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The problems of a usage error: the ``  - PATH: MESSAGE`` lines, or the one problem."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert proc.stderr.count("datapipe: error") == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    if len(lines) == 1:
        return [lines[0].split("bad.yaml: ", 1)[1]]
    assert lines[0].endswith(f"{len(lines) - 1} problems in bad.yaml:"), lines[0]
    return [line.removeprefix("  - ") for line in lines[1:]]


CLOUDS = """\
nodes:
  src: {stage: files, params: {root: data, kinds: [pointcloud]}}
  read: {stage: points.read, inputs: src}
"""


# -- every section at once ------------------------------------------------------------------------
def test_problems_in_nodes_output_and_run_come_in_one_message(tmp_path: Path) -> None:
    proc = validate(
        tmp_path,
        "nodes:\n"
        "  src: {stage: files, params: {root: data}}\n"
        "  resize: {stage: image.resze, inputs: src, params: {size: 8}}\n"
        "output: {shard_size: -5}\n"
        "run: {timeout_s: 0}\n",
    )
    problems = problem_lines(proc)
    assert [p.split(":")[0] for p in problems] == [
        "nodes.resize.stage",
        "output.shard_size",
        "run.timeout_s",
    ]
    assert "did you mean 'image.resize'" in problems[0]
    assert problems[1].endswith("got -5") and problems[2].endswith("got 0")


def test_a_bad_node_entry_does_not_hide_the_other_nodes(tmp_path: Path) -> None:
    proc = validate(
        tmp_path,
        "nodes:\n"
        "  src: {stage: files, params: {root: data}, colour: red}\n"  # the entry itself is bad
        "  resize: {stage: image.resize, inputs: src, params: {sise: 8}}\n"
        "  pick: {stage: select.random, inputs: rezise, params: {fraction: 0.5}}\n"
        "run: {workers: -1}\n",
    )
    paths = sorted(p.split(":")[0] for p in problem_lines(proc))
    assert paths == sorted(
        ["nodes.src.colour", "nodes.resize.params.sise", "nodes.pick.inputs[0]", "run.workers"]
    )


def test_an_undefined_variable_is_one_problem_among_the_others(tmp_path: Path) -> None:
    proc = validate(
        tmp_path,
        "nodes:\n"
        "  src: {stage: files, params: {root: data}}\n"
        '  resize: {stage: image.resize, inputs: src, params: {size: "${side}"}}\n'
        "output: {shard_bytes: 10}\n",
    )
    assert problem_lines(proc) == [
        "nodes.resize.params.size: undefined variable ${side}",
        "output.shard_bytes: Input should be greater than or equal to 1024; got 10",
    ]


# -- Fit wiring ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fit_node", "needle"),
    [
        (
            "read",
            "'read' is a points.read node (map); points.learned needs a fit node of "
            "points.learned_fit; the pipeline has no fit node of points.learned_fit",
        ),
        ("nosuch", "no node named 'nosuch'; the pipeline has no fit node of points.learned_fit"),
    ],
)
def test_fit_node_must_name_a_fit_of_the_right_stage(
    tmp_path: Path, fit_node: str, needle: str
) -> None:
    proc = validate(
        tmp_path,
        CLOUDS
        + f"  pick: {{stage: points.learned, inputs: read, params: {{fit_node: {fit_node}}}}}\n",
    )
    assert problem_lines(proc) == [f"nodes.pick.params.fit_node: {needle}"]


def test_a_good_fit_node_validates(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        CLOUDS + "  sampler: {stage: points.learned_fit, inputs: read, params: {m: 8}}\n"
        "  pick: {stage: points.learned, inputs: sampler, params: {fit_node: sampler}}\n"
    )
    proc = cli("validate", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "src -> read -> sampler -> pick" in proc.stdout


class _Params(Params):
    fit_node: Annotated[str, NodeRef(StageKind.FIT, ("test.v_mean",))] = "fit"


class _Mean(Fit):
    name = "test.v_mean"
    description = "A Fit for the wiring checks."
    CONSUMES = (Field("index", "int", ""),)

    def fit(self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context) -> dict:
        return {"mean": 0.0}


class _Other(_Mean):
    name = "test.v_other"
    description = "Another Fit, of the wrong stage."


class _Use(Map):
    name = "test.v_use"
    description = "Reads the state of a test.v_mean node."
    Params = _Params
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (Field("used", "float", ""),)

    def process(self, record: Record, ctx: Context) -> Record:
        return {"used": ctx.fitted[self.params.fit_node]["mean"]}


@pytest.fixture
def wiring_stages() -> Iterator[None]:
    for cls in (_Mean, _Other, _Use):
        registry.register(cls)
    yield
    for cls in (_Mean, _Other, _Use):
        registry.unregister(cls.name)


def _problems(nodes: dict[str, Any], **extra: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict({"nodes": nodes, **extra})
    return [str(p) for p in info.value.problems]


def test_a_fit_of_another_stage_is_named_with_the_candidates(wiring_stages: None) -> None:
    problems = _problems(
        {
            "src": {"stage": "test.counter"},
            "mean": {"stage": "test.v_mean", "inputs": "src"},
            "other": {"stage": "test.v_other", "inputs": "mean"},
            "use": {"stage": "test.v_use", "inputs": "other", "params": {"fit_node": "other"}},
        }
    )
    assert problems == [
        "nodes.use.params.fit_node: 'other' is a test.v_other node (fit); test.v_use needs a "
        "fit node of test.v_mean (candidates: mean)"
    ]


def test_a_fit_that_does_not_come_before_its_user_is_a_problem(wiring_stages: None) -> None:
    nodes = {
        "src": {"stage": "test.counter"},
        "fit": {"stage": "test.v_mean", "inputs": "src"},
        "use": {"stage": "test.v_use", "inputs": "src"},  # a sibling of the Fit, not after it
    }
    problems = _problems(nodes)
    assert problems[0].startswith("nodes.use.params.fit_node: 'fit' does not come before 'use'")
    nodes["use"]["inputs"] = "fit"
    assert Pipeline.from_dict({"nodes": nodes}).order == ["src", "fit", "use"]


def test_fit_wiring_is_reported_with_other_sections(wiring_stages: None) -> None:
    problems = _problems(
        {
            "src": {"stage": "test.counter"},
            "typo": {"stage": "test.sqare", "inputs": "src"},
            "use": {"stage": "test.v_use", "inputs": "src", "params": {"fit_node": "src"}},
        },
        output={"shard_size": 0},
    )
    assert [p.split(":")[0] for p in problems] == [
        "nodes.typo.stage",
        "nodes.use.params.fit_node",
        "output.shard_size",
    ]


# -- field names named by params ------------------------------------------------------------------
FIELD_PARAMS = {
    "points.fps.field": CLOUDS
    + "  pick: {stage: points.fps, inputs: read, params: {m: 4, field: Bad-Name}}\n",
    "embed.pixels.out": (
        "nodes:\n"
        "  src: {stage: files, params: {root: data, kinds: [image]}}\n"
        "  resize: {stage: image.resize, inputs: src, params: {size: 8}}\n"
        "  pick: {stage: embed.pixels, inputs: resize, params: {out: Bad-Name}}\n"
    ),
}


@pytest.mark.parametrize("case", sorted(FIELD_PARAMS))
def test_a_param_naming_a_bad_field_is_a_validation_problem(tmp_path: Path, case: str) -> None:
    param = case.rsplit(".", 1)[1]
    problems = problem_lines(validate(tmp_path, FIELD_PARAMS[case]))
    assert problems == [
        f"nodes.pick.params.{param}: field name 'Bad-Name' must match ^[a-z][a-z0-9_]*$"
    ]


def test_a_bad_field_name_comes_with_the_other_problems(tmp_path: Path) -> None:
    text = (
        FIELD_PARAMS["points.fps.field"]
        + "  typo: {stage: points.fsp, inputs: read}\nrun: {retries: -1}\n"
    )
    paths = [p.split(":")[0] for p in problem_lines(validate(tmp_path, text))]
    assert sorted(paths) == ["nodes.pick.params.field", "nodes.typo.stage", "run.retries"]


# -- keys given twice ---------------------------------------------------------------------------
def test_a_node_given_twice_is_an_error_with_both_lines(tmp_path: Path) -> None:
    proc = validate(
        tmp_path,
        "nodes:\n"
        "  src: {stage: files, params: {root: data}}\n"
        "  resize: {stage: image.resize, inputs: src, params: {size: 8}}\n"
        "  resize: {stage: image.resize, inputs: src, params: {size: 16}}\n",
    )
    assert problem_lines(proc) == [
        "nodes.resize: duplicate key on line 4 (first on line 3); YAML would keep only the last one"
    ]


def test_every_duplicate_key_at_any_depth_is_reported(tmp_path: Path) -> None:
    proc = validate(
        tmp_path,
        "name: a\n"
        "nodes:\n"
        "  src:\n"
        "    stage: files\n"
        "    params: {root: data, kinds: [image], root: other}\n"
        "output: {shard_size: 4}\n"
        "name: b\n",
    )
    problems = problem_lines(proc)
    assert problems == [
        "nodes.src.params.root: duplicate key on line 5 (first on line 5); YAML would keep "
        "only the last one",
        "name: duplicate key on line 7 (first on line 1); YAML would keep only the last one",
    ]


def test_anchors_and_merge_keys_still_load(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "vars: {data: d}\n"
        "base: &base {stage: image.resize, params: {size: 8}}\n"
        "nodes:\n"
        "  a: {<<: *base, inputs: src}\n"
        "  b: {<<: *base, stage: image.resize, inputs: src}\n"  # an explicit key overrides
        "  c: *base\n"
    )
    data = load_yaml(path)
    assert data["nodes"]["b"] == {"stage": "image.resize", "params": {"size": 8}, "inputs": "src"}
    assert data["nodes"]["c"] == {"stage": "image.resize", "params": {"size": 8}}
