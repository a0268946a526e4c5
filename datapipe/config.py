"""Pipeline files: safe YAML loading, ``${var}`` substitution, and the typed spec.

The JSON Schema in ``datapipe/schemas/pipeline.schema.json`` is generated from
:class:`PipelineSpec` (``python scripts/tools/gen_schemas.py``); a test keeps the two in sync.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
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


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that notes every mapping key given twice (plain YAML keeps the last
    one silently) in :attr:`problems`, with its key path and line numbers."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[Problem] = []

    def construct_document(self, node: yaml.Node) -> Any:
        self.problems += _duplicate_keys(node, "", set())
        return super().construct_document(node)


def _duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> list[Problem]:
    """Keys given twice in one mapping, anywhere under ``node`` (each node walked once, so
    aliases cost nothing)."""
    if id(node) in seen:
        return []
    seen.add(id(node))
    found: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            here = path
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                here = f"{path}.{key.value}" if path else str(key.value)
                line = key.start_mark.line + 1
                ident = (key.tag, key.value)
                if ident in first:
                    found.append(
                        Problem(
                            here,
                            f"duplicate key on line {line} (first on line {first[ident]}); "
                            "YAML would keep only the last one",
                        )
                    )
                first.setdefault(ident, line)
            found += _duplicate_keys(value, here, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{path}[{i}]", seen)
    return found


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a pipeline file safely (``yaml.SafeLoader`` rules); a parse error names the line,
    a key given twice in one mapping is an error too (both lines named)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"pipeline file not found: {path}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read pipeline file {path}: {exc}"]) from None
    loader = UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem("", f"malformed YAML at {where}{problem}")], str(path)) from None
    finally:
        loader.dispose()
    if loader.problems:
        raise ConfigError(loader.problems, str(path))
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem("", "a pipeline file must be a mapping with 'nodes'")], str(path)
        )
    return data


def substitute_vars(
    data: Any,
    variables: dict[str, str],
    source: str | None = None,
    problems: list[Problem] | None = None,
) -> Any:
    """Replace ``${name}`` in every string from ``variables``, then the environment. An
    undefined name is a :class:`ConfigError`, or is appended to ``problems`` when given (the
    ``${name}`` is then left as it is)."""
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
    if missing and problems is None:
        raise ConfigError(missing, source)
    if problems is not None:
        problems += missing
    return out


def parse_spec(
    data: dict[str, Any], source: str | None = None, variables: dict[str, str] | None = None
) -> PipelineSpec:
    """Validate raw pipeline data into a :class:`PipelineSpec`, all problems at once."""
    draft = draft_spec(data, variables)
    if draft.problems or draft.spec is None:
        raise ConfigError(draft.problems, source)
    return draft.spec


@dataclass(frozen=True)
class SpecDraft:
    """Every problem of a pipeline file's top level, with the best spec that can be made
    without the parts at fault, so the stages and the graph can still be checked."""

    #: None when no spec can be made at all (``nodes`` missing or not a mapping)
    spec: PipelineSpec | None
    problems: list[Problem]
    #: nodes left out of ``spec`` because their own entry is wrong (their names exist)
    broken: frozenset[str] = frozenset()
    #: key paths holding an undefined ``${var}``: their value is not checked any further
    unresolved: frozenset[str] = frozenset()


def draft_spec(data: dict[str, Any], variables: dict[str, str] | None = None) -> SpecDraft:
    """Validate raw pipeline data, reporting every problem; a key at fault is dropped (its
    default applies) and a node at fault left out, then the rest is validated again."""
    declared = data.get("vars") if isinstance(data.get("vars"), dict) else {}
    merged = {**{str(k): str(v) for k, v in declared.items()}, **(variables or {})}
    problems: list[Problem] = []
    body = {k: v for k, v in data.items() if k != "vars"}
    body = substitute_vars(body, merged, problems=problems)
    unresolved = frozenset(p.path for p in problems)
    broken: set[str] = set()
    for _ in range(4):  # each pass drops what the last one found; a few always suffice
        try:
            spec = PipelineSpec.model_validate({**body, "vars": merged})
            return SpecDraft(spec, problems, frozenset(broken), unresolved)
        except ValidationError as exc:
            errors = exc.errors()
        for err in errors:
            problem = _spec_problem(err)
            if problem not in problems and problem.path not in unresolved:
                problems.append(problem)
        if not _drop_faults(body, [tuple(e["loc"]) for e in errors], broken):
            break
    return SpecDraft(None, problems, frozenset(broken), unresolved)


def _spec_problem(err: Any) -> Problem:
    loc = ".".join(str(p) for p in err["loc"])
    got = "" if err["type"] == "missing" else f"; got {err.get('input')!r}"
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return Problem(loc, f"{msg}{got}")


def _drop_faults(body: dict[str, Any], locs: list[tuple[Any, ...]], broken: set[str]) -> bool:
    """Remove from ``body`` what each error location points at (a node entry as a whole);
    False when nothing could be removed (no spec can be made)."""
    changed = False
    for loc in locs:
        if not loc or loc[0] not in body:
            continue
        top, section = loc[0], body[loc[0]]
        if top == "nodes":
            if not isinstance(section, dict):
                continue
            if len(loc) == 1:  # the node names: leave out the ill-named ones
                bad = [n for n in section if not re.match(NODE_ID, str(n))]
            else:
                bad = [loc[1]] if loc[1] in section else []
            for name in bad:
                del section[name]
                broken.add(str(name))
                changed = True
        elif len(loc) > 1 and isinstance(section, dict) and loc[1] in section:
            del section[loc[1]]
            changed = True
        else:
            del body[top]
            changed = True
    return changed


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON Schema of pipeline files, as shipped in ``datapipe.schemas``."""
    schema = PipelineSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "datapipe/pipeline.schema.json"
    return schema
