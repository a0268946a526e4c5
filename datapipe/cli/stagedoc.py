"""A stage described from its class: params (type, default, allowed values), fields, an example
node. Used by ``datapipe stages NAME`` and by ``scripts/tools/gen_readme_stages.py``."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any

import yaml

from datapipe.fields import Field
from datapipe.stage import Stage, StageKind

_BOUNDS = (
    ("minimum", ">="),
    ("exclusiveMinimum", ">"),
    ("maximum", "<="),
    ("exclusiveMaximum", "<"),
)


@dataclass(frozen=True)
class ParamDoc:
    """One param of a stage, as a user reads it."""

    name: str
    type: str
    #: the default as JSON text; None when the param is required
    default: str | None
    allowed: tuple[str, ...]
    limits: str
    doc: str

    def summary(self) -> str:
        """``integer, >= 1; default 224`` or ``one of crop, stretch; default "crop"``."""
        kind = f"one of {', '.join(self.allowed)}" if self.allowed else self.type
        if self.limits:
            kind += f", {self.limits}"
        return kind + ("; required" if self.default is None else f"; default {self.default}")


def _type_of(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(dict.fromkeys(_type_of(s, defs) for s in schema["anyOf"]))
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type_of(schema.get('items', {}), defs)}]"
    if kind == "object":
        return "mapping"
    return str(kind)


def _allowed(schema: dict[str, Any]) -> tuple[str, ...]:
    """Enumerated values (``enum``/``const``, also inside ``anyOf``), or () when open."""
    if "enum" in schema:
        return tuple(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return (json.dumps(schema["const"]),)
    if "anyOf" in schema:
        parts = [_allowed(s) for s in schema["anyOf"]]
        if all(parts):
            return tuple(v for p in parts for v in p)
    return ()


def _limits(schema: dict[str, Any]) -> str:
    for option in [schema, *schema.get("anyOf", [])]:
        found = [f"{sym} {option[key]}" for key, sym in _BOUNDS if key in option]
        if found:
            return ", ".join(found)
    return ""


def param_docs(cls: type[Stage]) -> list[ParamDoc]:
    """Every param of ``cls`` in declaration order."""
    schema = cls.Params.model_json_schema()
    props, defs = schema.get("properties", {}), schema.get("$defs", {})
    out = []
    for name, field in cls.Params.model_fields.items():
        prop = props.get(name, {})
        if field.is_required():
            default = None
        else:
            value = field.get_default(call_default_factory=True)
            default = json.dumps(value if not hasattr(value, "model_dump") else value.model_dump())
        allowed = _allowed(prop)
        out.append(
            ParamDoc(
                name=name,
                type=_type_of(prop, defs),
                default=default,
                allowed=allowed,
                limits=_limits(prop),
                doc=field.description or "",
            )
        )
    return out


def example_stage(cls: type[Stage]) -> Stage | None:
    """An instance built from the stage's ``EXAMPLE_PARAMS`` (None when they do not build)."""
    try:
        return cls(**cls.EXAMPLE_PARAMS)
    except Exception:
        return None


def field_text(f: Field) -> str:
    """``image: uint8 [H W 3]``."""
    shape = f" [{f.shape}]" if f.shape and f.shape != "*" else ""
    return f"{f.name}: {f.dtype}{shape}"


def example_node(cls: type[Stage]) -> str:
    """A pipeline-file node using the stage, as YAML (params from ``EXAMPLE_PARAMS``)."""
    lines = [f"{cls.name.rsplit('.', 1)[-1]}:", f"  stage: {cls.name}"]
    if cls.kind is not StageKind.SOURCE:
        lines.append("  inputs: src")
    if cls.EXAMPLE_PARAMS:
        params = yaml.safe_dump(
            {"params": cls.EXAMPLE_PARAMS}, sort_keys=False, default_flow_style=None, width=70
        )
        lines += [f"  {line}" for line in params.splitlines()]
    return "\n".join(lines)


def _wrap(text: str, indent: int, hang: int = 0, width: int = 79) -> list[str]:
    first, rest = " " * indent, " " * (indent + hang)
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest) or [first]


def describe_stage(cls: type[Stage]) -> str:
    """The text of ``datapipe stages NAME``, at most 79 columns wide (but for long words)."""
    lines = [f"{cls.name} ({cls.kind.value})", *_wrap(cls.description, 2)]
    if cls.isolate:
        lines += _wrap("Decodes untrusted input: runs in a child process under the time limit.", 2)
    if cls.epoch_dependent:
        lines += _wrap("Its output depends on the epoch (datapipe run --epoch N).", 2)
    params = param_docs(cls)
    lines.append("params:" if params else "params: none")
    for p in params:
        lines += _wrap(f"{p.name}: {p.summary()}", 2, hang=4)
        if p.doc:
            lines += _wrap(p.doc, 6)
    stage = example_stage(cls)
    if stage is not None:
        note = " (with the example params)" if cls.EXAMPLE_PARAMS else ""
        for title, fields in (("consumes", stage.consumes()), ("produces", stage.produces())):
            lines.append(f"{title}{note}:" if fields else f"{title}: nothing")
            for f in fields:
                lines += _wrap(field_text(f) + (f" - {f.doc}" if f.doc else ""), 2, hang=4)
    lines.append("example node:")
    lines += [f"  {line}" for line in example_node(cls).splitlines()]
    return "\n".join(lines)


def stage_json(cls: type[Stage]) -> dict[str, Any]:
    """One entry of ``datapipe stages --json`` (its shape is part of the CLI contract)."""
    return {
        "kind": cls.kind.value,
        "description": cls.description,
        "params": cls.Params.model_json_schema(),
    }
