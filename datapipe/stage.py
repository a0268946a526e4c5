"""The stage contract: five kinds of stage, typed params, declared fields.

A stage's constructor stores its validated parameters and nothing else, so a stage pickles
into worker processes and its parameters are its identity (scikit-learn's estimator rule).
The engine only ever talks to stages through the methods below.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from datapipe.errors import ParamError, Problem
from datapipe.fields import Field
from datapipe.urls import local_path

Record = dict[str, Any]

#: a Source record carrying this key is an input the source found but cannot offer (a labels
#: CSV naming a missing file); the engine records it as an error row with this message
SOURCE_ERROR = "source_error"


class _NamesFile:
    """Marker of params that name a file whose contents decide the stage's output."""

    def __repr__(self) -> str:
        return "FilePath"


#: a param naming a file (model weights, a TorchScript module): its contents, not its name,
#: are part of the pipeline fingerprint, so replacing the file redoes what depends on it
FilePath = Annotated[str, _NamesFile(), AfterValidator(local_path)]


def _names_file(annotation: Any) -> bool:
    if any(isinstance(m, _NamesFile) for m in getattr(annotation, "__metadata__", ())):
        return True
    if get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        return any(_names_file(a) for a in get_args(annotation))
    return False


class StageKind(str, enum.Enum):
    SOURCE = "source"
    MAP = "map"
    SELECT = "select"
    FIT = "fit"
    SINK = "sink"


@dataclass(frozen=True)
class NodeRef:
    """Marker of a param that names another node of the pipeline, which must be of ``kind``
    (and, when ``stages`` is not empty, run one of those stages) and come before the node that
    names it. ``datapipe validate`` checks it, so a stage needs no wiring code of its own::

        fit_node: Annotated[str, NodeRef(StageKind.FIT, ("points.learned_fit",))] = "sampler"

    A Sink naming another Sink (a trainer distilling from another trainer's model) makes the
    engine run the named one first; the names must not form a cycle. The param may sit in a
    nested params block (``compress.distill.teacher``).
    """

    kind: StageKind
    stages: tuple[str, ...] = ()

    def __repr__(self) -> str:
        of = f" of {' or '.join(self.stages)}" if self.stages else ""
        return f"NodeRef({self.kind.value}{of})"


def _union_member(annotation: Any, find: Callable[[Any], Any]) -> Any:
    """The first non-None ``find(member)`` of a union annotation's members, else None."""
    if get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        for arg in get_args(annotation):
            found = find(arg)
            if found is not None:
                return found
    return None


def _node_ref(annotation: Any, metadata: Sequence[Any] = ()) -> NodeRef | None:
    for m in (*metadata, *getattr(annotation, "__metadata__", ())):
        if isinstance(m, NodeRef):
            return m
    return _union_member(annotation, _node_ref)


def _nested_params(annotation: Any) -> type[Params] | None:
    """The Params class of a nested params block (``Block`` or ``Block | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, Params):
        return annotation
    return _union_member(annotation, _nested_params)


class Params(BaseModel):
    """Base of every stage's parameter model: strict about unknown names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def file_params(cls) -> tuple[str, ...]:
        """Names of the params declared as :data:`FilePath` (or ``FilePath | None``)."""
        return tuple(
            name
            for name, info in cls.model_fields.items()
            if _names_file(info.annotation) or any(isinstance(m, _NamesFile) for m in info.metadata)
        )

    @classmethod
    def node_params(cls) -> dict[str, NodeRef]:
        """The params that name another node (declared with a :class:`NodeRef`), nested
        blocks' as dotted paths (``compress.distill.teacher``)."""
        out = {}
        for name, info in cls.model_fields.items():
            ref = _node_ref(info.annotation, info.metadata)
            if ref is not None:
                out[name] = ref
            block = _nested_params(info.annotation)
            if block is not None:
                out.update({f"{name}.{k}": r for k, r in block.node_params().items()})
        return out


@dataclass
class Context:
    """What a stage may know about the run: where relative paths start, the seed, the epoch."""

    base_dir: Path = field(default_factory=Path.cwd)
    seed: int = 0
    epoch: int = 0
    node: str = ""
    #: state handed on by Fit nodes, by node name
    fitted: dict[str, Any] = field(default_factory=dict)
    #: Sink nodes only: a folder of the sink's own (``OUT/train/NODE`` for a trainer), the
    #: committed shards, and a digest of the committed samples (with the sink's params it
    #: tells whether an earlier result still holds)
    out_dir: Path | None = None
    #: Sink nodes only: the run's output directory (what ``datapipe.stream.from_shards`` reads)
    run_dir: Path | None = None
    shards: list[Path] = field(default_factory=list)
    samples_digest: str = ""
    #: Sink nodes only: the run's pipeline, and whether a stage upstream of the sink depends
    #: on the epoch (a resize schedule): a trainer then recomputes its inputs every epoch
    #: (``datapipe.stream.from_pipeline``) instead of reading the committed shards
    pipeline: Any = None
    epoch_dependent: bool = False
    #: Sink nodes only: the sinks that ran before this one in this run (the ones it names
    #: run first): their summaries (``{"error": ...}`` for one that failed) and folders
    sink_results: dict[str, Any] = field(default_factory=dict)
    sink_dirs: dict[str, Path] = field(default_factory=dict)

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


@dataclass
class Selection:
    """What a Select stage returns: the keys kept, a score per key, a reason per removed key."""

    keep: set[str]
    scores: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


class Stage:
    """Base class of all stages. Subclass one of the kinds below, not this."""

    name: ClassVar[str] = ""
    kind: ClassVar[StageKind]
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]] = Params
    CONSUMES: ClassVar[tuple[Field, ...]] = ()
    PRODUCES: ClassVar[tuple[Field, ...]] = ()
    #: True for stages that decode untrusted media: the engine runs them in child processes
    #: with a time limit and a memory cap.
    isolate: ClassVar[bool] = False
    #: True for stages whose output depends on ``ctx.epoch`` (a resize schedule): the epoch
    #: then becomes part of the pipeline fingerprint, so another epoch is produced anew.
    epoch_dependent: ClassVar[bool] = False
    #: params that build a working instance, for the conformance suite and docs
    EXAMPLE_PARAMS: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = self.build_params(params)

    @classmethod
    def build_params(cls, params: Mapping[str, Any], where: str = "params") -> Params:
        """Validate raw params into the typed model; every problem reported at once."""
        try:
            return cls.Params(**params)
        except ValidationError as exc:
            raise ParamError([_param_problem(cls, where, err) for err in exc.errors()]) from None

    def get_params(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")

    def named_files(self) -> dict[str, str]:
        """The :data:`FilePath` params that are set: name -> path as written."""
        out = {}
        for name in self.params.file_params():
            value = getattr(self.params, name)
            if value is not None:
                out[name] = str(value)
        return out

    def node_refs(self) -> dict[str, tuple[str, NodeRef]]:
        """The params naming other nodes that are set: param -> (node name, what it must be)."""
        out = {}
        for name, ref in self.params.node_params().items():
            value: Any = self.params
            for part in name.split("."):
                value = getattr(value, part) if value is not None else None
            if value is not None:
                out[name] = (str(value), ref)
        return out

    def consumes(self) -> tuple[Field, ...]:
        """Fields this stage reads from its input record (may depend on params)."""
        return self.CONSUMES

    def produces(self) -> tuple[Field, ...]:
        """Fields this stage adds to the record (may depend on params)."""
        return self.PRODUCES

    def token(self) -> str:
        """Deterministic identity: stage name, version and a hash of the params."""
        blob = json.dumps(
            {"stage": self.name, "version": self.version, "params": self.get_params()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_params() == other.get_params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.token()))


@dataclass
class SourceListing:
    """What a Source listed: the ``records``, and how many entries it passed over and why
    (``skipped``: category -> count, e.g. ``{"hidden": 2, "symlink": 0, "unknown_ext": 5}``),
    so that nothing is left out without a word."""

    records: list[Record]
    skipped: dict[str, int] = field(default_factory=dict)


class Source(Stage):
    """Lists inputs as light records: ``key``, ``path``, ``label``, ``size``, ``mtime_ns``.

    Implement :meth:`list_items`; a source that passes over some entries (hidden files, links,
    unknown types) also overrides :meth:`listing` to say how many, and why."""

    kind = StageKind.SOURCE

    def list_items(self, ctx: Context) -> Iterator[Record]:
        raise NotImplementedError

    def listing(self, ctx: Context) -> SourceListing:
        """Every record, with the counts of what was skipped (none by default). The engine
        calls this; it returns a new object each time, so the stage itself keeps no state."""
        return SourceListing(list(self.list_items(ctx)))

    def preflight(self, ctx: Context) -> None:
        """Raise ConfigError for problems found before any work (e.g. a missing root)."""

    def signature(self, ctx: Context, records: Sequence[Record]) -> str:
        """Dataset-level facts of the listed ``records`` that change every item's output
        (e.g. the class list behind ``label_id``)."""
        return ""


class Map(Stage):
    """Record -> new fields. Pure and deterministic given (record, params, seed).

    ``process`` returns a dict of the fields it produces; a list of dicts to expand one
    record into several samples; or raises :class:`~datapipe.errors.Filtered` to drop it.
    """

    kind = StageKind.MAP

    def process(self, record: Record, ctx: Context) -> Record | list[Record]:
        raise NotImplementedError


class Select(Stage):
    """Dataset-level choice of keys from a light view; a barrier in the DAG."""

    kind = StageKind.SELECT

    def select(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> Selection:
        raise NotImplementedError


class Fit(Stage):
    """Learns a small state from a light view and hands it on to downstream stages."""

    kind = StageKind.FIT

    def fit(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> dict[str, Any]:
        raise NotImplementedError


class Sink(Stage):
    """Consumes the committed samples at the end of the DAG (a trainer, an exporter).

    It runs after every item is committed, once per run. Besides one pass over the decoded
    records, its context gives what a trainer needs to read them for many epochs: the
    committed shards (``ctx.shards``, for a streaming loader), a folder of its own
    (``ctx.out_dir``, which exists; checkpoints and models go there) and ``ctx.samples_digest``,
    which changes exactly when the committed samples do. A sink's params are not part of the
    items' fingerprint: changing them re-runs the sink, never the items.
    """

    kind = StageKind.SINK
    #: the folder under the output that holds each node's ``out_dir`` (``OUT/FOLDER/NODE``)
    folder: ClassVar[str] = "sinks"

    def consume(self, records: Iterator[Record], ctx: Context) -> dict[str, Any]:
        """Consume every committed record; return a JSON-able summary for the run report."""
        raise NotImplementedError


def _param_problem(cls: type[Stage], where: str, err: Mapping[str, Any]) -> Problem:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    path = f"{where}.{loc}" if loc else where
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        known = ", ".join(sorted(cls.Params.model_fields)) or "none"
        from difflib import get_close_matches

        hint = get_close_matches(str(err["loc"][-1]), list(cls.Params.model_fields), n=1)
        msg = f"unknown parameter of {cls.name}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        return Problem(path, f"{msg} (known: {known})")
    got = err.get("input")
    got_txt = f"; got {got!r}" if kind != "missing" else ""
    return Problem(path, f"the {loc!r} parameter of {cls.name}: {err.get('msg')}{got_txt}")


def to_jsonable(value: Any) -> Any:
    """Numpy scalars to Python scalars, recursively; used for light views and reports."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
