"""``from_shards``: a run's output directory as a shuffled, rank- and worker-split dataset.

Which samples: with a manifest (``OUT/manifest.sqlite``, opened read-only), the samples of
every input whose row is ``ok``, read from the shard that row names (samples a re-run
superseded but compaction has not yet removed are ignored). Without one, every sample of the
shards listed in ``OUT/index.json``. The sample list is sorted by key, so it is the same on
every rank and machine whatever the shard order.

Each shard is indexed once from its tar headers; a sample is then one ``pread`` of its bytes,
decoded with ``np.load(allow_pickle=False)`` or ``json``. There is no shuffle buffer: the
whole list is permuted per epoch (see :mod:`datapipe.stream.split`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datapipe.engine.runner import MapFailure, apply_map
from datapipe.errors import ConfigError, Problem, StoreError
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.keys import item_key_of
from datapipe.stage import Context, Map
from datapipe.stream.base import BadUnit, Sample, StreamDataset, Transform, to_torch
from datapipe.stream.collate import Collate, merge_specs
from datapipe.stream.pipeline_dataset import leaf_specs
from datapipe.stream.tarindex import SampleRef, ShardReader, index_shard, sample_ref

logger = logging.getLogger(__name__)


def _catalogue(out: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The shard files to read and, with a manifest, ``{input key: shard name}`` of ok rows."""
    manifest = out / "manifest.sqlite"
    if manifest.exists():
        try:
            db = sqlite3.connect(manifest.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                names = [n for (n,) in db.execute("SELECT name FROM shards ORDER BY name")]
                ok = dict(db.execute("SELECT key, shard FROM items WHERE status='ok'").fetchall())
            finally:
                db.close()
            return [out / "shards" / n for n in names], ok
        except sqlite3.Error as exc:
            logger.warning("cannot read %s (%s); using index.json", manifest, exc)
    index = out / "index.json"
    if index.exists():
        try:
            listed = json.loads(index.read_text())["shards"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{index} is not a datapipe index: {exc}") from None
        return [out / s for s in listed], None
    raise StoreError(f"{out} holds no datapipe output (no manifest.sqlite or index.json found)")


Specs = Mapping[str, Field | str] | Pipeline | str | Path


def recorded_specs(out: Path) -> dict[str, str] | None:
    """``{field: shape pattern}`` the run recorded in ``OUT/index.json`` under ``"fields"`` (a
    list of ``Field.to_dict()``), or None when it recorded none."""
    try:
        listed = json.loads((out / "index.json").read_text()).get("fields")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(listed, list):
        return None
    try:
        return merge_specs({f["name"]: f.get("shape", "*") for f in listed}, {})
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        logger.warning("%s: ignoring the recorded field specs (%s)", out, exc)
        return None


def shard_specs(out: Path, specs: Specs | None, stages: Sequence[Map]) -> dict[str, str] | None:
    """The shape patterns of a shard dataset's fields: the pipeline's (given, or recorded by
    the run), then what ``stages`` produce, then an explicit mapping. None: nothing known."""
    if specs is None or isinstance(specs, Mapping):
        known = recorded_specs(out)
    else:
        known = leaf_specs(specs if isinstance(specs, Pipeline) else Pipeline.from_yaml(specs))
    for stage in stages:
        known = known if known is not None else {}
        known.update({f.name: f.shape for f in stage.produces()})
    if isinstance(specs, Mapping):
        known = {**(known or {}), **merge_specs(specs, {})}
    return known


def _stage_fields(stages: Sequence[Map]) -> tuple[frozenset[str], frozenset[str]]:
    """(needed, produced): the fields the stages consume that no earlier stage produces (the
    shards must hold them), and every field the stages produce (no shard needs to)."""
    needed: set[str] = set()
    produced: set[str] = set()
    for stage in stages:
        if not isinstance(stage, Map):
            raise TypeError(
                f"The 'stages' parameter of from_shards takes Map stages; got {stage!r}"
            )
        needed |= {f.name for f in stage.consumes()} - produced
        produced |= {f.name for f in stage.produces()}
    return frozenset(needed - {"key"}), frozenset(produced)


def _check_offered(needed: frozenset[str], offered: set[str]) -> None:
    """A stage that needs a field no sample has is a configuration error, not a bad sample."""
    lacking = sorted(needed - offered) if offered else []
    if lacking:
        raise ConfigError(
            [
                Problem(
                    "from_shards.stages",
                    f"the stages consume {lacking}, which no sample holds; "
                    f"the samples hold: {', '.join(sorted(offered))}",
                )
            ]
        )


class ShardDataset(StreamDataset):
    """Samples of a datapipe output directory; build it with :func:`from_shards`."""

    _where = "from_shards"

    def __init__(
        self,
        out_dir: str | Path,
        *,
        fields: Iterable[str] | None = None,
        stages: Sequence[Map] = (),
        specs: Specs | None = None,
        **kw: Any,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.stages = tuple(stages)
        self.needed, produced = _stage_fields(self.stages)
        #: the fields a sample carries out (None: all); with stages, more may be read
        self.shown = frozenset(fields) | {"key"} if fields is not None else None
        if fields is not None:  # read what was asked and the stages need, not what they make
            self.fields: frozenset[str] | None = (frozenset(fields) - produced) | self.needed
        else:
            self.fields = None
        refs, files, excluded = self._build()
        refs.sort(key=lambda r: r.key)
        super().__init__([r.key for r in refs], **kw)
        self.refs = refs
        self.files = files
        self.excluded = excluded
        known = shard_specs(self.out_dir, specs, self.stages)
        if known is None:
            logger.info(
                "%s: no field specs recorded or given (specs=...); dataset.collate masks "
                "every array field as shape '*'",
                self.out_dir,
            )
        #: the ``collate_fn`` for these samples: masks by the fields' declared shapes
        self.collate = Collate(known or {})

    def _build(self) -> tuple[list[SampleRef], list[tuple[str, int, int]], dict[str, str]]:
        paths, ok = _catalogue(self.out_dir)
        refs: dict[str, SampleRef] = {}
        files: list[tuple[str, int, int]] = []
        excluded: dict[str, str] = {}
        problems: dict[str, str] = {}
        interned: dict = {}
        offered: set[str] = set()
        for path in paths:
            if not path.is_file():
                problems[path.name] = f"shard {path.name} is missing"
                logger.warning("%s: shard %s is missing", self.out_dir, path)
                continue
            idx = index_shard(path)
            if idx.problem:
                problems[path.name] = idx.problem
            shard = len(files)
            files.append((idx.path, idx.size, idx.mtime_ns))
            for key, members in idx.samples:
                offered.update(m[0] for m in members)
                if ok is not None and ok.get(item_key_of(key)) != path.name:
                    continue  # superseded by a later run, or not committed
                if key in refs:
                    excluded.setdefault(key, f"duplicate: also in {path.name}; kept the first")
                    continue
                if self.fields is not None or self.needed:
                    wanted = self.fields if self.fields is not None else self.needed
                    missing = sorted(wanted - {m[0] for m in members} - {"key"})
                    if missing:
                        excluded[key] = f"missing field(s) {', '.join(missing)}"
                        continue
                    if self.fields is not None:  # read only the wanted members' span
                        members = tuple(m for m in members if m[0] in self.fields)
                refs[key] = sample_ref(key, shard, members, interned)
        _check_offered(self.needed, offered)
        if ok is not None:  # ok rows whose samples were not found
            found = {item_key_of(k) for k in refs} | {item_key_of(k) for k in excluded}
            for key, shard_name in ok.items():
                if key not in found:
                    excluded[key] = problems.get(shard_name, f"not found in shard {shard_name}")
        if excluded:
            logger.warning(
                "%s: %d samples left out, e.g. %s",
                self.out_dir,
                len(excluded),
                next(iter(excluded.items())),
            )
        return list(refs.values()), files, excluded

    def _open(self, epoch: int) -> tuple[Callable[[int], list[Sample]], Callable[[], None]]:
        reader = ShardReader(self.files)

        contexts = [Context(seed=self.seed, epoch=epoch, node=st.name) for st in self.stages]

        def produce(unit: int) -> list[Sample]:
            record = reader.read(self.refs[unit])
            if not self.stages:
                return [to_torch(record)]
            key = record["key"]
            item = item_key_of(key)  # a sample of an expanded item keeps its suffix, then more
            samples = [(key[len(item) :], record)]
            for stage, ctx in zip(self.stages, contexts, strict=True):
                try:
                    samples = apply_map(stage, samples, ctx)
                except MapFailure as f:
                    why = f"{f.error_class or f.status} in {stage.name}: {f.message}"
                    raise BadUnit(key, why) from None
            return [to_torch({**rec, "key": item + sub}, self.shown) for sub, rec in samples]

        return produce, reader.close

    def __repr__(self) -> str:
        return (
            f"ShardDataset({str(self.out_dir)!r}, samples={len(self.keys)}, "
            f"rank={self.rank}/{self.world_size}, len={len(self)}, even={self.even!r})"
        )


def from_shards(
    out_dir: str | Path,
    *,
    seed: int = 0,
    shuffle: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    fields: Iterable[str] | None = None,
    even: str = "pad",
    stages: Sequence[Map] = (),
    transform: Transform | None = None,
    errors_path: str | Path | None = None,
    specs: Specs | None = None,
) -> ShardDataset:
    """Stream the samples of a ``datapipe run`` output as a torch ``IterableDataset``.

    Parameters
    ----------
    out_dir : the run's output directory (``shards/``, ``manifest.sqlite``, ``index.json``).
    seed, shuffle : the epoch order is a permutation seeded by ``(seed, epoch)``; with
        ``shuffle=False`` samples come in key order. Call ``set_epoch`` every epoch.
    rank, world_size : this process's place in distributed training; default from
        ``torch.distributed`` when it is initialised, else ``0, 1``.
    fields : the fields a sample carries (``key`` always comes); only these are read, plus
        what ``stages`` consume. Samples lacking one are left out when the dataset is built
        (listed in ``dataset.excluded``).
    even : ``"pad"``, ``"drop"`` or ``"none"``: how ranks are equalised when ``world_size``
        does not divide the number of samples (see :mod:`datapipe.stream.split`).
    stages : Map stage instances run on every decoded sample in the worker, in order, with
        ``ctx.epoch`` the epoch of ``set_epoch`` (e.g. ``represent.resize`` with a schedule
        and ``input: dct`` over stored coefficients). Their outputs merge over the sample; a
        sample they fail or filter is skipped and replaced like one that does not decode.
        Samples lacking a field they consume are left out when the dataset is built. They run
        inline, without the sandbox of ``datapipe run``.
    transform : applied to every sample dict in the worker, after decoding and the stages;
        its exceptions propagate (they are bugs, not bad samples).
    errors_path : a JSON-lines file every worker appends skipped samples to.
    specs : the declared shapes of the fields, for ``dataset.collate``: the pipeline that
        wrote the output (a :class:`~datapipe.graph.Pipeline` or a YAML path), or a mapping
        ``{field: Field or shape pattern}`` (e.g. ``{"points": "N 3"}``), which overrides the
        rest. Default: what the run recorded in ``index.json``, if anything. Fields ``stages``
        produce take their declared shapes; arrays of fields nothing declares count as ``"*"``.

    Returns
    -------
    ShardDataset
        Yields dicts: ``key`` (str); ``.npy`` fields as tensors (``torch.from_numpy``, same
        dtype and shape; 0-d arrays as 0-d tensors); ``.json`` fields as Python values (ints,
        floats, strings, lists, dicts); ``.bin`` fields as bytes. ``len()`` is the number of
        samples this rank reads per epoch; a sample that fails to decode is skipped, recorded
        in ``dataset.skipped`` / ``errors_path``, never read again and replaced (see
        :mod:`datapipe.stream.base`). ``collate`` is the ``collate_fn`` for its fields: a field
        whose declared shape is variable always gets its ``FIELD_mask``, a fixed one never.

    Examples
    --------
    >>> from torch.utils.data import DataLoader
    >>> from datapipe.stream import from_shards
    >>> ds = from_shards("out", seed=0, specs="pipeline.yaml")  # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_size=64, collate_fn=ds.collate)  # doctest: +SKIP
    >>> for epoch in range(3):  # doctest: +SKIP
    ...     ds.set_epoch(epoch)
    ...     for batch in loader:
    ...         ...
    """
    return ShardDataset(
        out_dir,
        fields=fields,
        seed=seed,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
        even=even,
        stages=stages,
        transform=transform,
        errors_path=errors_path,
        specs=specs,
    )
