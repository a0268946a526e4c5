"""One shared check over every registered stage (scikit-learn's parametrize_with_checks idea),
plus the schemas and packaging staying in sync with the code."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import jsonschema
import pytest

import fault_stages
from datapipe import registry
from datapipe.config import pipeline_json_schema
from datapipe.demo.demos import demo_pipelines
from datapipe.errors import ParamError
from datapipe.fields import Field
from datapipe.schemas import load_schema
from datapipe.stage import Stage, StageKind

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
fault_stages.register_all()
STAGES = registry.all_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_contract(name: str) -> None:
    cls = STAGES[name]
    assert cls.name == name
    assert isinstance(cls.kind, StageKind)
    assert cls.description and "\n" not in cls.description
    stage: Stage = cls(**cls.EXAMPLE_PARAMS)
    # params round-trip and are the stage's identity
    again = cls(**stage.get_params())
    assert again == stage and again.token() == stage.token()
    # the constructor stores params only, so stages pickle into worker processes
    clone = pickle.loads(pickle.dumps(stage))
    assert clone == stage and clone.get_params() == stage.get_params()
    assert vars(clone).keys() == {"params"}
    for f in (*stage.consumes(), *stage.produces()):
        assert isinstance(f, Field)
    # bad params give the standard message with the key path
    with pytest.raises(ParamError) as info:
        cls(**stage.get_params(), not_a_param=1)
    assert f"params.not_a_param: unknown parameter of {name}" in str(info.value)


def test_builtin_stages_are_registered_through_entry_points() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = meta["project"]["entry-points"]["datapipe.stages"]
    assert set(declared) <= set(registry._load_entry_points())
    assert {"files", "image.resize", "select.random"} <= set(declared)


def test_pipeline_schema_file_matches_code() -> None:
    shipped = json.loads((ROOT / "schemas" / "pipeline.schema.json").read_text())
    assert shipped == pipeline_json_schema(), "run: python scripts/tools/gen_schemas.py"


@pytest.mark.parametrize("path", demo_pipelines(), ids=lambda p: p.name)
def test_demo_pipelines_validate_against_schema(path: Path) -> None:
    import yaml

    jsonschema.validate(yaml.safe_load(path.read_text()), load_schema("pipeline"))


def test_schema_rejects_what_the_code_rejects() -> None:
    bad = {"nodes": {"a": {"stage": "files", "bogus": 1}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, load_schema("pipeline"))


def test_every_package_folder_is_listed_in_pyproject() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    mapping = meta["tool"]["setuptools"]["package-dir"]
    found = set()
    for prefix, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    found = {p for p in found if not re.search(r"__pycache__", p)}
    assert found == listed


def test_run_report_matches_its_schema(tmp_path: Path) -> None:
    from datapipe.executors.local import run_local
    from datapipe.graph import Pipeline

    p = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "test.counter", "params": {"n": 4}},
                "sel": {"stage": "select.random", "inputs": "src", "params": {"count": 2}},
                "s": {"stage": "test.square", "inputs": "sel"},
            }
        }
    )
    report = run_local(p, tmp_path / "out").to_dict()
    jsonschema.validate(json.loads(json.dumps(report)), load_schema("run_report"))
    sel = report["selections"]["sel"]
    assert report["counts"]["ok"] == 2 and (sel["seen"], sel["kept"]) == (4, 2)


def test_every_ops_export_resolves_to_a_documented_function() -> None:
    from datapipe import ops

    for name in ops.__all__:
        fn = getattr(ops, name)
        assert callable(fn), name
        assert (fn.__doc__ or "").strip(), f"ops.{name} has no docstring"
