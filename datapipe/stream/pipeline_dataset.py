"""``from_pipeline``: run a pipeline's Map stages on the fly, inside DataLoader workers.

At construction (in the calling process, once):

1. the pipeline is built (a :class:`~datapipe.graph.Pipeline`, or a YAML path + variables);
2. every Source lists its inputs; keys are checked and de-duplicated as ``datapipe run`` does
   (a rejected or duplicate key goes to ``dataset.excluded`` with the reason);
3. every Select/Fit barrier is evaluated once over the light view of the inputs that reach it,
   with the pool ``datapipe run`` would use (stages with ``isolate = True`` run in child
   processes under the pipeline's time limit and memory cap). Inputs that a Select removes,
   or that fail or are filtered on the way to a barrier, go to ``dataset.excluded``; Fit
   states are handed to the Map stages. Barriers see ``ctx.epoch == 0`` and are not
   re-evaluated per epoch.

The remaining input items (sorted by key) are the units that are permuted and split across
ranks and workers per epoch (:mod:`datapipe.stream.split`). A worker runs each item through
the fused Map stages with :class:`~datapipe.engine.runner.ItemRunner` for the current epoch
(``ctx.epoch``), inline: there is no per-item sandbox here, a decoder that crashes takes its
DataLoader worker down, and the DataLoader raises. For untrusted media prefer preparing shards
with ``datapipe run`` and reading them with :func:`~datapipe.stream.from_shards`.

Items that end in an error or are filtered by a Map stage are skipped, remembered (never run
again while the dataset lives, in any worker or epoch) and replaced by a good item drawn from
a seeded permutation of the rank's list (:mod:`datapipe.stream.base`). ``dataset.collate``
batches the samples by the leaves' declared field shapes (:mod:`datapipe.stream.collate`); a
``transform`` that changes shapes or adds arrays needs its own
``Collate({**dataset.collate.fields, ...})``. ``len()`` counts *items*: a stage
that expands one item into several samples makes a rank yield more samples than ``len()``,
and ranks may then yield different numbers of samples even with ``even="pad"`` or ``"drop"``
(those equalise items, not samples). For distributed training on expanding pipelines, write
shards first (the sample list is then known) or cut every rank to a common number of batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from datapipe.engine.barriers import evaluate_barriers
from datapipe.engine.planning import plan_run
from datapipe.engine.pool import PoolSettings, make_pool
from datapipe.engine.runner import ItemResult, ItemRunner, ItemTask
from datapipe.engine.sources import list_sources, preflight
from datapipe.graph import Pipeline
from datapipe.keys import item_key_of
from datapipe.stage import Record
from datapipe.stream.base import BadUnit, Sample, StreamDataset, Transform, to_torch
from datapipe.stream.collate import Collate, merge_specs

logger = logging.getLogger(__name__)


def _reason(res: ItemResult) -> str:
    if res.status == "filtered":
        return f"filtered by {res.stage}: {res.message}"
    where = f" in {res.stage}" if res.stage else ""
    return f"{res.error_class}{where}: {res.message}"


def leaf_specs(pipeline: Pipeline) -> dict[str, str]:
    """``{field: shape pattern}`` of what the pipeline writes: every leaf's fields (a field two
    leaves declare differently counts as ``*``)."""
    specs: dict[str, str] = {}
    for leaf in pipeline.leaves():
        merge_specs(pipeline.fields_at(leaf), specs)
    return specs


def list_inputs(pipeline: Pipeline, excluded: dict[str, str]) -> dict[str, tuple[str, Record]]:
    """``{key: (source node, record)}`` of every listed input with a valid, unique key; the
    others go to ``excluded`` with the reason, as ``datapipe run`` rejects them."""
    preflight(pipeline)
    plan = plan_run(list_sources(pipeline).records, {}, None)
    for row in plan.rejected:
        excluded[row.key] = f"{row.error_class}: {row.message}"
    return plan.records


def run_barriers(
    p: Pipeline, records: dict[str, tuple[str, Record]], excluded: dict[str, str]
) -> dict[str, Any]:
    """Run every Select/Fit once; removes what they drop from ``records``; returns fitted."""
    settings = PoolSettings.from_pipeline(p)
    outcome = evaluate_barriers(p, records, lambda fitted: make_pool(settings, p, fitted))
    for key, res in outcome.stopped.items():
        excluded[key] = _reason(res)
        records.pop(key, None)
    for key, decisions in outcome.filtered_by.items():
        node, reason = next(iter(decisions.items()))
        excluded[key] = f"filtered by {node}: {reason}"
        records.pop(key, None)
    return outcome.fitted


class PipelineDataset(StreamDataset):
    """Samples computed on the fly from a pipeline; build it with :func:`from_pipeline`."""

    _where = "from_pipeline"

    def __init__(
        self,
        pipeline: Pipeline | str | Path,
        *,
        variables: Mapping[str, str] | None = None,
        fields: Iterable[str] | None = None,
        keys: Iterable[str] | None = None,
        **kw: Any,
    ) -> None:
        self.shown = frozenset(fields) | {"key"} if fields is not None else None
        if not isinstance(pipeline, Pipeline):
            pipeline = Pipeline.from_yaml(pipeline, variables)
        self.pipeline = pipeline
        excluded: dict[str, str] = {}
        records = list_inputs(pipeline, excluded)
        self.fitted = run_barriers(pipeline, records, excluded)
        if keys is not None:  # after the barriers: they see every input, as in a run
            wanted = {item_key_of(k) for k in keys}
            records = {k: v for k, v in records.items() if k in wanted}
        super().__init__(sorted(records), **kw)
        self.records = [records[k] for k in self.keys]
        self.excluded = excluded
        #: the ``collate_fn`` for these samples: masks by the leaves' declared shapes
        self.collate = Collate(leaf_specs(pipeline))
        if excluded:
            logger.info("%s: %d inputs left out at construction", pipeline.name, len(excluded))

    def _open(self, epoch: int) -> tuple[Callable[[int], list[Sample]], Callable[[], None]]:
        runner = ItemRunner(self.pipeline, self.fitted, epoch=epoch)

        def produce(unit: int) -> list[Sample]:
            key = self.keys[unit]
            source, record = self.records[unit]
            res = runner.run(ItemTask(key, source, record, encode=False))
            if res.status != "ok":
                raise BadUnit(key, _reason(res))
            if not res.records:
                raise BadUnit(key, "the pipeline produced no samples")
            return [to_torch(fields, self.shown) for _, fields in res.records]

        return produce, lambda: None

    def __repr__(self) -> str:
        return (
            f"PipelineDataset({self.pipeline.name!r}, items={len(self.keys)}, "
            f"rank={self.rank}/{self.world_size}, len={len(self)}, even={self.even!r})"
        )


def from_pipeline(
    pipeline: Pipeline | str | Path,
    *,
    seed: int = 0,
    shuffle: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    variables: Mapping[str, str] | None = None,
    fields: Iterable[str] | None = None,
    even: str = "pad",
    transform: Transform | None = None,
    errors_path: str | Path | None = None,
    keys: Iterable[str] | None = None,
) -> PipelineDataset:
    """Stream a pipeline's output, computed on the fly, as a torch ``IterableDataset``.

    Parameters
    ----------
    pipeline : a :class:`~datapipe.graph.Pipeline`, or the path of a pipeline YAML file.
    seed, shuffle : the epoch order of the *items* is a permutation seeded by
        ``(seed, epoch)`` (``shuffle=False``: key order). The stages' own seed stays the
        pipeline's ``seed:``, so samples equal those ``datapipe run`` writes.
    rank, world_size, even, transform, errors_path : as in :func:`from_shards`.
    variables : ``${name}`` values for a YAML pipeline (like ``--var``).
    fields : the fields a sample carries (``key`` always comes); default: what ``datapipe
        run`` would write (the pipeline's ``output.fields`` / ``output.exclude``).
    keys : only the inputs of these keys (a sample key ``KEY@NNNN`` names input ``KEY``); the
        Fit and Select stages still see every input, so their states equal a run's.

    Returns
    -------
    PipelineDataset
        Yields the same dicts as :func:`from_shards` over a run of the same pipeline (arrays
        as tensors, scalars and strings as Python values, ``key``), all samples of an
        expanded item one after the other. ``set_epoch(e)`` changes the order and the
        ``ctx.epoch`` the Map stages see. ``len()`` counts items (see the module docstring).
        ``collate`` is the ``collate_fn`` for its fields: a field whose declared shape is
        variable (``N 3``, ``H W 3``, ``*``) always gets its ``FIELD_mask``, a fixed one never.

    Examples
    --------
    >>> from torch.utils.data import DataLoader
    >>> from datapipe.stream import from_pipeline
    >>> ds = from_pipeline("pipeline.yaml", variables={"data": "photos"})  # doctest: +SKIP
    >>> batch = next(iter(DataLoader(ds, batch_size=8, collate_fn=ds.collate)))  # doctest: +SKIP
    """
    return PipelineDataset(
        pipeline,
        variables=variables,
        fields=fields,
        seed=seed,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
        even=even,
        transform=transform,
        errors_path=errors_path,
        keys=keys,
    )
