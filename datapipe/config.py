"""Pipeline files: safe YAML loading, ``${var}`` substitution, and the typed spec.

The JSON Schema in ``datapipe/schemas/pipeline.schema.json`` is generated from
:class:`PipelineSpec` (``python scripts/gen_schemas.py``); a test keeps the two in sync.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from datapipe.errors import ConfigError, Problem

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NODE_ID = r"^[A-Za-z][A-Za-z0-9_-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeSpec(_Strict):
    """One node of the DAG: which stage, its params, which nodes feed it."""

    stage: str = Field(description="Registered stage name, e.g. 'image.resize'.")
    params: dict[str, Any] = Field(default_factory=dict, description="The stage's parameters.")
    inputs: list[str] | str = Field(
        default_factory=list, description="Name(s) of upstream nodes: one name or a list."
    )
    rename: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "New names for fields this node produces, e.g. {video_damage: mv_damage}, so two "
            "branches that produce the same field can meet."
        ),
    )

    @field_validator("inputs", mode="after")
    @classmethod
    def _one_or_many(cls, v: list[str] | str) -> list[str]:
        return [v] if isinstance(v, str) else v


class OutputSpec(_Strict):
    """How committed samples are laid out in shards."""

    shard_size: int = Field(1000, ge=1, description="Most samples in one shard.")
    shard_bytes: int = Field(256 * 2**20, ge=1024, description="Most bytes in one shard.")
    fields: list[str] | None = Field(None, description="Fields to write (default: all).")
    exclude: list[str] = Field(
        default_factory=lambda: ["path", "mtime_ns"],
        description="Fields never written (default: machine-specific source fields).",
    )
    compress: bool | list[str] | Literal["auto"] = Field(
        "auto",
        description=(
            "gzip array fields as KEY.FIELD.npy.gz: true for every array, false for none, a "
            "list of field names, or 'auto' (default): the fields their stage marks as "
            "compressible (mostly zeros or repeats, such as CoViAR motion and residuals)."
        ),
    )


class RunSpec(_Strict):
    """Execution settings; each can be overridden on the command line."""

    workers: int = Field(0, ge=0, description="Worker processes (0: in-process when safe).")
    timeout_s: float = Field(120.0, gt=0, description="Time limit per item, seconds.")
    memory_mb: int = Field(4096, ge=64, description="Memory cap per worker process, MiB.")
    retries: int = Field(0, ge=0, description="Extra attempts for items that timed out or crashed.")


class PipelineSpec(_Strict):
    """A datapipe pipeline file."""

    name: str = Field("pipeline", description="A name for reports.")
    description: str = ""
    seed: int = Field(0, description="Seed handed to every stage.")
    vars: dict[str, str] = Field(default_factory=dict, description="Defaults for ${var}.")
    nodes: dict[str, NodeSpec] = Field(description="The DAG, node name -> node.")
    output: OutputSpec = Field(default_factory=OutputSpec)
    run: RunSpec = Field(default_factory=RunSpec)

    @field_validator("nodes")
    @classmethod
    def _node_names(cls, v: dict[str, NodeSpec]) -> dict[str, NodeSpec]:
        bad = [n for n in v if not re.match(NODE_ID, n)]
        if bad:
            raise ValueError(f"node names must match {NODE_ID}: {bad}")
        if not v:
            raise ValueError("a pipeline needs at least one node")
        return v


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a pipeline file with ``yaml.safe_load``; a parse error names the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"pipeline file not found: {path}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read pipeline file {path}: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem("", f"malformed YAML at {where}{problem}")], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem("", "a pipeline file must be a mapping with 'nodes'")], str(path)
        )
    return data


def substitute_vars(data: Any, variables: dict[str, str], source: str | None = None) -> Any:
    """Replace ``${name}`` in every string from ``variables``, then the environment."""
    missing: list[Problem] = []

    def sub(value: Any, path: str) -> Any:
        if isinstance(value, str):

            def one(m: re.Match[str]) -> str:
                name = m.group(1)
                if name in variables:
                    return str(variables[name])
                if name in os.environ:
                    return os.environ[name]
                missing.append(Problem(path, f"undefined variable ${{{name}}}"))
                return m.group(0)

            return _VAR.sub(one, value)
        if isinstance(value, dict):
            return {k: sub(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    out = sub(data, "")
    if missing:
        raise ConfigError(missing, source)
    return out


def parse_spec(
    data: dict[str, Any], source: str | None = None, variables: dict[str, str] | None = None
) -> PipelineSpec:
    """Validate raw pipeline data into a :class:`PipelineSpec`, all problems at once."""
    declared = data.get("vars") if isinstance(data.get("vars"), dict) else {}
    merged = {**{str(k): str(v) for k, v in declared.items()}, **(variables or {})}
    body = {k: v for k, v in data.items() if k != "vars"}
    body = substitute_vars(body, merged, source)
    try:
        return PipelineSpec(**body, vars=merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            got = "" if err["type"] == "missing" else f"; got {err.get('input')!r}"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(Problem(loc, f"{msg}{got}"))
        raise ConfigError(problems, source) from None


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON Schema of pipeline files, as shipped in ``datapipe.schemas``."""
    schema = PipelineSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "datapipe/pipeline.schema.json"
    return schema
