"""The pipeline: a DAG of named nodes, validated before any data is read.

The graph is plain data (nodes, edges, declared fields). Executors are functions of it; this
module imports no executor and no concrete stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from difflib import get_close_matches
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from datapipe import registry
from datapipe.config import (
    OutputSpec,
    PipelineSpec,
    RunSpec,
    SpecDraft,
    draft_spec,
    load_yaml,
)
from datapipe.digest import file_digest
from datapipe.errors import ConfigError, ParamError, Problem
from datapipe.fields import Field
from datapipe.graph_checks import (
    check_compress,
    check_declarations,
    check_fields,
    check_inputs_of,
    check_node_refs,
    check_rename,
    in_file_order,
)
from datapipe.stage import Context, Stage, StageKind


@dataclass(frozen=True)
class Node:
    """A stage instance at a named place in the DAG; ``rename`` gives fields the stage
    produces other names here (pairs of old, new), so that two branches producing one field
    can meet."""

    id: str
    stage: Stage
    inputs: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> StageKind:
        return self.stage.kind

    @property
    def renames(self) -> dict[str, str]:
        return dict(self.rename)

    def produces(self) -> tuple[Field, ...]:
        """The fields this node adds to the record, under their names here."""
        names = self.renames
        return tuple(replace(f, name=names.get(f.name, f.name)) for f in self.stage.produces())


class Pipeline:
    """A validated DAG of stages.

    Build it from Python (:meth:`chain` or a list of :class:`Node`) or from a YAML file
    (:meth:`from_yaml`). Construction validates everything and raises one
    :class:`~datapipe.errors.ConfigError` listing every problem.

    Examples
    --------
    >>> from datapipe.stages.io.files import Files
    >>> from datapipe.stages.io.image_resize import ImageResize
    >>> p = Pipeline.chain(Files(root="photos"), ImageResize(size=32))
    >>> [n.id for n in p.nodes]
    ['files', 'image_resize']
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        *,
        name: str = "pipeline",
        seed: int = 0,
        output: OutputSpec | None = None,
        run: RunSpec | None = None,
        base_dir: str | Path | None = None,
        source: str | None = None,
    ) -> None:
        self._setup(nodes, name, seed, output, run, base_dir, source)
        problems = self._validate()
        if problems:
            raise ConfigError(problems, source)
        #: what ``encode_sample`` gzips: True, False or a set of field names
        self.compress: bool | frozenset[str] = self._resolve_compress()

    def _setup(
        self,
        nodes: Iterable[Node],
        name: str,
        seed: int,
        output: OutputSpec | None,
        run: RunSpec | None,
        base_dir: str | Path | None,
        source: str | None,
    ) -> None:
        self.nodes_by_id: dict[str, Node] = {}
        self.name = name
        self.seed = seed
        self.output = output or OutputSpec()
        self.run = run or RunSpec()
        self.base_dir = Path(base_dir) if base_dir else Path.cwd()
        self.source = source
        #: the spec it was built from, ``${var}``s filled in (None for ``Pipeline.chain``)
        self.spec: PipelineSpec | None = None
        self._duplicates: list[Problem] = []
        self._undeclared: set[str] = set()
        for node in nodes:
            if node.id in self.nodes_by_id:
                self._duplicates.append(Problem(f"nodes.{node.id}", "duplicate node name"))
            self.nodes_by_id[node.id] = node

    def _validate(self, broken: frozenset[str] = frozenset()) -> list[Problem]:
        """Every problem of the graph. ``broken``: nodes that exist but could not be built
        (an unknown stage, bad params), so naming them is no problem of its own; the checks
        that need the whole graph (cycles, fields) wait until nothing is broken."""
        problems = list(self._duplicates)
        declared, self._undeclared = check_declarations(self.nodes_by_id)
        problems += declared
        problems += self._check_structure(broken)
        wired = not problems and not broken
        problems += check_node_refs(self.nodes_by_id, broken, self.upstream if wired else None)
        if not wired:
            return problems
        found: list[Problem] = []
        self.order = self._toposort(found)
        if not found:
            fields, self._available = check_fields(self)
            found += fields
        if not found:
            found += check_compress(self)
        return problems + found

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def chain(cls, *stages: Stage, **kwargs: Any) -> Pipeline:
        """A linear pipeline; node names come from stage names (``a.b`` -> ``a_b``)."""
        nodes, prev = [], None
        for stage in stages:
            base = stage.name.replace(".", "_")
            nid, i = base, 1
            while any(n.id == nid for n in nodes):
                i += 1
                nid = f"{base}_{i}"
            nodes.append(Node(nid, stage, (prev,) if prev else ()))
            prev = nid
        return cls(nodes, **kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, variables: Mapping[str, str] | None = None) -> Pipeline:
        path = Path(path)
        return cls.from_dict(
            load_yaml(path), source=str(path), base_dir=path.resolve().parent, variables=variables
        )

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        *,
        source: str | None = None,
        base_dir: str | Path | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> Pipeline:
        """Build from the data of a pipeline file; the top-level sections, the stages, their
        params and the graph are all checked before anything is raised."""
        draft = draft_spec(data, dict(variables or {}))
        if draft.spec is None:
            raise ConfigError(draft.problems, source)
        return cls._build(draft.spec, source, base_dir, draft)

    @classmethod
    def from_spec(
        cls, spec: PipelineSpec, *, source: str | None = None, base_dir: str | Path | None = None
    ) -> Pipeline:
        return cls._build(spec, source, base_dir)

    @classmethod
    def _build(
        cls,
        spec: PipelineSpec,
        source: str | None,
        base_dir: str | Path | None,
        draft: SpecDraft | None = None,
    ) -> Pipeline:
        """Build the stages and check the graph; with the ``draft`` of a file, its problems
        come too, its broken nodes count as present, and a value holding an undefined
        ``${var}`` has that one problem only."""
        broken = draft.broken if draft else frozenset()
        problems: list[Problem] = []
        unbuilt = set(broken)
        nodes: list[Node] = []
        known = registry.all_stages()
        for nid, ns in spec.nodes.items():
            where = f"nodes.{nid}"
            if ns.stage not in known:
                problems.append(
                    Problem(f"{where}.stage", registry.unknown_stage_message(ns.stage, known))
                )
                unbuilt.add(nid)
                continue
            stage_cls = known[ns.stage]
            try:
                stage = stage_cls.__new__(stage_cls)
                stage.params = stage_cls.build_params(ns.params, where=f"{where}.params")
            except ParamError as exc:
                problems += exc.problems
                unbuilt.add(nid)
                continue
            nodes.append(Node(nid, stage, tuple(ns.inputs), tuple(ns.rename.items())))
        problems += check_inputs_of(
            {n: spec.nodes[n].inputs for n in unbuilt & spec.nodes.keys()}, [*spec.nodes, *broken]
        )
        p = cls.__new__(cls)
        p._setup(nodes, spec.name, spec.seed, spec.output, spec.run, base_dir, source)
        problems += p._validate(frozenset(unbuilt))
        if draft is not None:
            problems = [*draft.problems, *(q for q in problems if q.path not in draft.unresolved)]
        if problems:  # in the order of the file's sections: nodes, output, run
            raise ConfigError(in_file_order(problems, list(PipelineSpec.model_fields)), source)
        p.compress = p._resolve_compress()
        p.spec = spec
        return p

    def stored(self) -> dict[str, Any] | None:
        """What a run keeps of its pipeline (``OUT/pipeline.json``): the spec with its
        variables filled in and the folder relative paths start from; None without a spec.
        :meth:`from_stored` rebuilds the pipeline from it."""
        if self.spec is None:
            return None
        return {"base_dir": str(self.base_dir), "pipeline": self.spec.model_dump(mode="json")}

    @classmethod
    def from_stored(cls, data: Mapping[str, Any], source: str | None = None) -> Pipeline:
        """The pipeline :meth:`stored` describes."""
        return cls.from_dict(data["pipeline"], source=source, base_dir=data["base_dir"])

    # -- validation -----------------------------------------------------------------------
    def _check_structure(self, broken: frozenset[str] = frozenset()) -> list[Problem]:
        problems = []
        ids = list(self.nodes_by_id)
        for node in self.nodes_by_id.values():
            where = f"nodes.{node.id}"
            for i, up in enumerate(node.inputs):
                if up in broken:
                    continue
                if up not in self.nodes_by_id:
                    hint = get_close_matches(up, [*ids, *broken], n=1)
                    sug = f"; did you mean {hint[0]!r}?" if hint else f" (nodes: {', '.join(ids)})"
                    problems.append(Problem(f"{where}.inputs[{i}]", f"no node named {up!r}{sug}"))
                elif self.nodes_by_id[up].kind is StageKind.SINK:
                    problems.append(
                        Problem(f"{where}.inputs[{i}]", f"{up!r} is a sink and has no output")
                    )
            if node.id not in self._undeclared:
                problems += check_rename(node)
            if node.kind is StageKind.SOURCE and node.inputs:
                problems.append(
                    Problem(f"{where}.inputs", f"{node.stage.name} is a source and takes no inputs")
                )
            if node.kind is not StageKind.SOURCE and not node.inputs:
                problems.append(
                    Problem(f"{where}.inputs", f"{node.stage.name} needs at least one input node")
                )
        if not broken and not any(n.kind is StageKind.SOURCE for n in self.nodes_by_id.values()):
            problems.append(Problem("nodes", "the pipeline has no source stage"))
        return problems

    def _toposort(self, problems: list[Problem]) -> list[str]:
        """The nodes in an order where each follows its inputs, and a Sink follows the Sinks
        its params name (a distillation teacher trains before its student)."""
        after = {n.id: list(n.inputs) for n in self.nodes_by_id.values()}
        for node in self.nodes_by_id.values():
            for target, ref in node.stage.node_refs().values():
                if ref.kind is StageKind.SINK and target in after:
                    after[node.id].append(target)
        sorter = TopologicalSorter(after)
        try:
            return list(sorter.static_order())
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            problems.append(Problem("nodes", f"the graph has a cycle: {cycle}"))
            return []

    def _resolve_compress(self) -> bool | frozenset[str]:
        setting = self.output.compress
        if setting == "auto":
            return frozenset(n for n, f in self.written_fields().items() if f.compress)
        return setting if isinstance(setting, bool) else frozenset(setting)

    # -- queries --------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        return [self.nodes_by_id[n] for n in self.order]

    def fields_at(self, node_id: str) -> dict[str, Field]:
        """The fields a record carries after ``node_id``."""
        return {k: f for k, (f, _) in self._available[node_id].items()}

    def written_fields(self) -> dict[str, Field]:
        """The fields a written sample carries: every leaf's, less what ``output`` leaves out."""
        out = self.output
        keep = set(out.fields) if out.fields is not None else None
        drop = {*out.exclude, "key"}
        return {
            name: f
            for leaf in self.leaves()
            for name, f in self.fields_at(leaf).items()
            if name not in drop and (keep is None or name in keep)
        }

    def of_kind(self, *kinds: StageKind) -> list[Node]:
        return [n for n in self.nodes if n.kind in kinds]

    def upstream(self, node_id: str) -> set[str]:
        """Every node ``node_id`` depends on, itself included."""
        seen, todo = set(), [node_id]
        while todo:
            nid = todo.pop()
            if nid not in seen:
                seen.add(nid)
                todo.extend(self.nodes_by_id[nid].inputs)
        return seen

    def downstream(self, node_id: str) -> set[str]:
        return {n.id for n in self.nodes if node_id in self.upstream(n.id)}

    def leaves(self) -> list[str]:
        """Nodes whose output no other node consumes (the record that gets written)."""
        used = {u for n in self.nodes if n.kind is not StageKind.SINK for u in n.inputs}
        return [n.id for n in self.nodes if n.id not in used and n.kind is not StageKind.SINK]

    def context(self, node_id: str = "", epoch: int = 0) -> Context:
        return Context(base_dir=self.base_dir, seed=self.seed, epoch=epoch, node=node_id)

    def describe(self) -> dict[str, Any]:
        """The DAG as plain data: nodes, their stage, params, inputs and fields."""
        return {
            "name": self.name,
            "nodes": [
                {
                    "id": n.id,
                    "stage": n.stage.name,
                    "kind": n.kind.value,
                    "params": n.stage.get_params(),
                    "inputs": list(n.inputs),
                    **({"rename": n.renames} if n.rename else {}),
                    "consumes": [f.to_dict() for f in n.stage.consumes()],
                    "produces": [f.to_dict() for f in n.produces()],
                }
                for n in self.nodes
            ],
        }

    def fingerprint(
        self,
        source_signatures: Sequence[str] = (),
        only: set[str] | None = None,
        epoch: int = 0,
        fitted: Mapping[str, str] | None = None,
    ) -> str:
        """Hash of everything that decides an item's output: stages, versions, params, wiring,
        the contents of files named by :data:`~datapipe.stage.FilePath` params, the seed, the
        written fields and ``fitted`` (Fit node -> digest of the state it learned). Shard
        sizes and run settings are not part of it. ``only`` restricts it to a sub-graph (e.g.
        what feeds a barrier)."""
        # sinks consume committed samples: their params never change an item's output
        scope = [
            n for n in self.nodes if (only is None or n.id in only) and n.kind is not StageKind.SINK
        ]
        blob: dict[str, Any] = {
            "nodes": [
                [n.id, n.stage.name, n.stage.version, n.stage.get_params(), list(n.inputs)]
                + ([sorted(n.rename)] if n.rename else [])
                for n in scope
            ],
            "seed": self.seed,
            "fields": self.output.fields,
            "exclude": sorted(self.output.exclude),
            "sources": list(source_signatures),
        }
        compress = self.compress
        if compress:  # how samples are stored (absent: older fingerprints hold)
            blob["compress"] = True if compress is True else sorted(compress)
        if any(n.stage.epoch_dependent for n in scope):
            blob["epoch"] = epoch
        files = {
            f"{n.id}.{name}": file_digest(self.base_dir / Path(path).expanduser())
            for n in scope
            for name, path in n.stage.named_files().items()
        }
        if files:  # absent: fingerprints of pipelines without such params hold
            blob["files"] = files
        states = {nid: d for nid, d in (fitted or {}).items() if nid in {n.id for n in scope}}
        if states:
            blob["fitted"] = states
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]
