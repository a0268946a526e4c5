"""The checks :mod:`datapipe.graph` runs on a pipeline: single nodes (what the params declare,
params naming other nodes, renames), then, once the graph is ordered, how fields flow along
the edges and what ``output.compress`` names."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any

from datapipe.errors import Problem
from datapipe.fields import FIELD_NAME, Field
from datapipe.stage import StageKind

if TYPE_CHECKING:
    from datapipe.graph import Node, Pipeline

#: per node, the fields its records carry: name -> (spec, the node that produced it)
Available = dict[str, dict[str, tuple[Field, str]]]


def check_declarations(nodes: Mapping[str, Node]) -> tuple[list[Problem], set[str]]:
    """Each stage can say what it consumes and produces with its params: a param naming a
    field that is no field name (``Field`` raises ValueError) is a problem at that param, not
    a crash. Returns the problems and the nodes whose declarations failed."""
    problems, failed = [], set()
    for node in nodes.values():
        try:
            node.stage.consumes()
            node.stage.produces()
        except ValueError as exc:
            named = [k for k, v in node.stage.get_params().items() if _mentions(v, str(exc))]
            where = f"nodes.{node.id}.params" + (f".{named[0]}" if len(named) == 1 else "")
            problems.append(Problem(where, str(exc)))
            failed.add(node.id)
    return problems, failed


def check_inputs_of(inputs: Mapping[str, Sequence[str]], names: Sequence[str]) -> list[Problem]:
    """The inputs of nodes that could not be built (``inputs``: node -> its inputs) still
    name nodes of the file (``names``)."""
    problems = []
    for nid, ups in inputs.items():
        for i, up in enumerate(ups):
            if up not in names:
                hint = get_close_matches(up, names, n=1)
                sug = f"; did you mean {hint[0]!r}?" if hint else ""
                problems.append(Problem(f"nodes.{nid}.inputs[{i}]", f"no node named {up!r}{sug}"))
    return problems


def check_node_refs(
    nodes: Mapping[str, Node],
    broken: frozenset[str],
    upstream: Callable[[str], set[str]] | None,
) -> list[Problem]:
    """Params declared with a :class:`~datapipe.stage.NodeRef` name an existing node of the
    right kind and stage, which comes before the node naming it (checked when ``upstream``
    is given, that is when the graph is wired)."""
    problems = []
    for node in nodes.values():
        for param, (target, ref) in node.stage.node_refs().items():
            if target in broken:
                continue
            where = f"nodes.{node.id}.params.{param}"
            what = f"{ref.kind.value} node" + (
                f" of {' or '.join(ref.stages)}" if ref.stages else ""
            )
            fits = [
                n.id
                for n in nodes.values()
                if n.kind is ref.kind and (not ref.stages or n.stage.name in ref.stages)
            ]
            have = f" (candidates: {', '.join(fits)})" if fits else f"; the pipeline has no {what}"
            other = nodes.get(target)
            if other is None:
                hint = get_close_matches(target, fits, n=1)
                sug = f"; did you mean {hint[0]!r}?" if hint else have
                problems.append(Problem(where, f"no node named {target!r}{sug}"))
            elif other.kind is not ref.kind or (ref.stages and other.stage.name not in ref.stages):
                problems.append(
                    Problem(
                        where,
                        f"{target!r} is a {other.stage.name} node ({other.kind.value}); "
                        f"{node.stage.name} needs a {what}{have}",
                    )
                )
            elif ref.kind is StageKind.SINK:  # sinks are leaves: named ones just run first
                if target == node.id:
                    problems.append(Problem(where, f"{node.id!r} names itself"))
            elif upstream is not None and target not in upstream(node.id):
                problems.append(
                    Problem(
                        where,
                        f"{target!r} does not come before {node.id!r}: a fitted state reaches "
                        f"only the nodes downstream of its node; feed {node.id!r} from it",
                    )
                )
    return problems


def check_rename(node: Node) -> list[Problem]:
    """Renamed fields exist, get valid, distinct names, and damage counts stay counted."""
    problems = []
    declared = {f.name for f in node.stage.produces()}
    new_names = [new for _, new in node.rename]
    for old, new in node.rename:
        where = f"nodes.{node.id}.rename.{old}"
        if old not in declared:
            known = ", ".join(sorted(declared)) or "nothing"
            problems.append(
                Problem(
                    where, f"{node.stage.name} produces no field {old!r} (it produces: {known})"
                )
            )
        elif not FIELD_NAME.match(new):
            problems.append(Problem(where, f"{new!r} is not a field name ({FIELD_NAME.pattern})"))
        elif old.endswith("_damage") and not new.endswith("_damage"):
            problems.append(
                Problem(
                    where,
                    f"{new!r} must end in '_damage' like {old!r}, so the "
                    "run report still counts damaged items",
                )
            )
        elif new_names.count(new) > 1 or (new in declared and new not in dict(node.rename)):
            problems.append(Problem(where, f"{new!r} would name two fields of {node.id!r}"))
    return problems


def in_file_order(problems: list[Problem], sections: list[str]) -> list[Problem]:
    """``problems`` sorted by the section their path starts with (``nodes``, ``output``,
    ``run``, in the order given), stable within a section; other paths last."""

    def rank(problem: Problem) -> int:
        top = problem.path.split(".")[0].split("[")[0]
        return sections.index(top) if top in sections else len(sections)

    return sorted(problems, key=rank)


def _mentions(value: Any, message: str) -> bool:
    """Whether a param value (a string, or a list of them) is quoted in ``message``."""
    if isinstance(value, str):
        return repr(value) in message
    if isinstance(value, (list, tuple)):
        return any(_mentions(v, message) for v in value)
    return False


def check_fields(p: Pipeline) -> tuple[list[Problem], Available]:
    """Fields flow along the edges: every consumed field is offered by the inputs with a
    fitting dtype and shape, and no two nodes produce a field where their records meet.
    Returns the problems and, per node, the fields its records carry (with their producer)."""
    problems: list[Problem] = []
    available: Available = {}
    for nid in p.order:
        node = p.nodes_by_id[nid]
        where = f"nodes.{nid}"
        incoming = _meet([available[up] for up in node.inputs], where, problems)
        for want in node.stage.consumes():
            have = incoming.get(want.name)
            if have is None:
                offered = ", ".join(sorted(incoming)) or "nothing"
                problems.append(
                    Problem(
                        where,
                        (
                            f"{node.stage.name} consumes field {want.name!r} ({want.dtype}, "
                            f"shape '{want.shape}') but its inputs provide: {offered}"
                        ),
                    )
                )
                continue
            got, producer = have
            why = want.dtype_mismatch(got) or want.shape_mismatch(got)
            if why:
                problems.append(
                    Problem(
                        where,
                        (
                            f"{node.stage.name} consumes field {want.name!r} but node "
                            f"{producer!r} "
                            f"produces it with {why}"
                        ),
                    )
                )
        out = dict(incoming)
        for f in node.produces():
            out[f.name] = (f, nid)
        available[nid] = out
    leaves = [n for n in p.order if n in p.leaves()]
    for source in (n for n in p.order if p.nodes_by_id[n].kind is StageKind.SOURCE):
        # an item's written record joins the leaves its source reaches (not the others')
        reached = p.downstream(source)
        mine = [n for n in leaves if n in reached]
        if len(mine) > 1:
            _meet([available[n] for n in mine], "output", problems)
    return problems, available


def _meet(
    branches: list[dict[str, tuple[Field, str]]], where: str, problems: list[Problem]
) -> dict[str, tuple[Field, str]]:
    """The fields of records that meet (a node with several inputs, or the leaves); a
    field that two different nodes produce would silently overwrite one: a problem."""
    merged: dict[str, tuple[Field, str]] = {}
    for fields in branches:
        for name, (f, producer) in fields.items():
            seen = merged.get(name)
            if seen is not None and seen[1] != producer:
                problems.append(
                    Problem(
                        where,
                        f"nodes {seen[1]!r} and {producer!r} both produce field {name!r} "
                        "and their records meet here, so one value would be lost; give "
                        f"one of them another name (rename: {{{name}: NEW_NAME}})",
                    )
                )
            merged[name] = (f, producer)
    return merged


def check_compress(p: Pipeline) -> list[Problem]:
    """Every field named in ``output.compress`` is an array some leaf writes."""
    names = p.output.compress
    if not isinstance(names, list):
        return []
    written = {k: f for leaf in p.leaves() for k, f in p.fields_at(leaf).items()}
    scalars = {"str", "int", "float", "bool", "json"}
    problems = []
    for name in names:
        if name not in written:
            hint = ", ".join(sorted(written)) or "nothing"
            why = f"no leaf writes a field {name!r}; they write: {hint}"
        elif set(written[name].dtypes) <= scalars:
            why = f"field {name!r} is not an array ({written[name].dtype})"
        else:
            continue
        problems.append(Problem("output.compress", why))
    return problems
