"""Classify new files with a trained ``train.*`` node: the pipeline's Map stages, then the model.

``predict(OUT/train/NODE, paths)`` takes the Map stages between the pipeline's source and the
trainer node (its upstream), runs each file through them in isolated worker processes as
``datapipe run`` does (a hang, a crash or an out-of-memory is that file's error; no media is
decoded in this process), turns each record into model inputs as validation did
(``inputs_from_spec``: centre crops, no flips), normalises them with ``model.json``'s mean and
std, and yields one result per file, in input order. Model calls are batched.

Choices:

- The pipeline is the one ``--pipeline`` names, else a copy kept in OUT
  (:data:`STORED_PIPELINES`); its trainer node must be the trainer of ``model.json``.
- Select stages between the source and the trainer pass every file through: they only chose
  the training set. A Fit stage there refuses prediction: its state was learned from the whole
  training set and OUT does not keep it.
- A file that a stage expands into several samples is classified by the mean of its samples'
  probabilities.
- The file's record carries the fields of the ``files`` source, with no label.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datapipe.config import OutputSpec
from datapipe.errors import DatapipeError
from datapipe.graph import Pipeline
from datapipe.stage import Record, StageKind

if TYPE_CHECKING:
    from torch import Tensor

    from datapipe.engine.runner import ItemResult
    from datapipe.train.saved import TrainedModel

logger = logging.getLogger(__name__)

#: where an output directory may keep the definition of the pipeline that produced it
STORED_PIPELINES = ("pipeline.yaml", "pipeline.json")


class PredictError(DatapipeError):
    """Prediction cannot start: not a trainer folder, no pipeline, an unsupported chain."""


@dataclass
class Trained:
    """A trainer folder: the ``model.json`` of the model used (the fp32 one, or that of
    ``compressed/``, in ``model_dir``) and the folder's place in its output directory."""

    folder: Path
    spec: dict[str, Any]
    model_dir: Path

    @property
    def node(self) -> str:
        return self.folder.name

    @property
    def out(self) -> Path:
        return self.folder.parent.parent


def load_trained(trainer_dir: str | Path, compressed: bool = False) -> Trained:
    """The trainer folder's ``model.json`` (with ``compressed``, that of its compressed
    variant); :class:`PredictError` when it is no trainer's or has no such variant."""
    folder = Path(trainer_dir)
    model_dir = folder / "compressed" if compressed else folder
    spec_path, weights = model_dir / "model.json", folder / "model.pt"
    if compressed and weights.is_file() and not spec_path.is_file():
        raise PredictError(
            f"{folder} has no compressed model (no compressed/model.json); give the trainer "
            "node a compress: block and run the pipeline again"
        )
    if not spec_path.is_file() or not weights.is_file():
        what = "does not exist" if not folder.exists() else "is not a trainer folder"
        missing = "model.json" if not spec_path.is_file() else "model.pt"
        raise PredictError(f"{folder} {what} (no {missing}; expected OUT/train/NODE)")
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as exc:
        raise PredictError(f"{spec_path} cannot be read: {exc}") from None
    needed = ("model", "trainer", "inputs", "normalize", "classes")
    if not isinstance(spec, dict) or any(k not in spec for k in needed):
        raise PredictError(f"{spec_path} is no trainer's model spec (needs {', '.join(needed)})")
    return Trained(folder, spec, model_dir)


def find_pipeline(
    trained: Trained, pipeline: str | Path | Pipeline | None, vars: Mapping[str, str] | None
) -> Pipeline:
    """The pipeline that produced the trainer's output: ``pipeline`` if given, else a copy kept
    in OUT. Its node of the trainer's name must run the trainer that wrote ``model.json``."""
    if pipeline is None:
        stored = [trained.out / n for n in STORED_PIPELINES if (trained.out / n).is_file()]
        if not stored:
            raise PredictError(
                f"cannot find the pipeline that produced {trained.out} (it keeps no "
                f"{' or '.join(STORED_PIPELINES)}); pass --pipeline FILE"
            )
        pipeline = stored[0]
    if isinstance(pipeline, Pipeline):
        p = pipeline
    elif Path(pipeline).name == "pipeline.json" and Path(pipeline).parent == trained.out:
        # the copy `datapipe run` keeps: variables filled in, paths relative to its base_dir
        p = Pipeline.from_stored(json.loads(Path(pipeline).read_text()), source=str(pipeline))
    else:
        p = Pipeline.from_yaml(pipeline, vars)
    node = p.nodes_by_id.get(trained.node)
    where = p.source or p.name
    if node is None or node.kind is not StageKind.SINK:
        raise PredictError(f"pipeline {where} has no trainer node {trained.node!r}")
    if node.stage.name != trained.spec["trainer"]:
        raise PredictError(
            f"node {trained.node!r} of {where} runs {node.stage.name}, but the model in "
            f"{trained.folder} was trained by {trained.spec['trainer']}"
        )
    # the compress: block does not change the fp32 model (it is reused when only that changes)
    params = node.stage.params.model_dump(mode="json", exclude={"compress"})
    saved = {k: v for k, v in (trained.spec.get("params") or {}).items() if k != "compress"}
    if saved and saved != params:
        logger.warning(
            "the params of %s in %s differ from those the model was trained with",
            trained.node,
            where,
        )
    return p


def prediction_pipeline(p: Pipeline, node_id: str, fields: Sequence[str]) -> Pipeline:
    """The part of ``p`` that feeds ``node_id``: its source and the Map (and Select) stages
    up to the trainer's inputs, writing only ``fields``."""
    keep = p.upstream(node_id) - {node_id}
    nodes = [n for n in p.nodes if n.id in keep]
    fits = [n.id for n in nodes if n.kind is StageKind.FIT]
    if fits:
        raise PredictError(
            f"cannot predict through the Fit node(s) {', '.join(fits)}: their state was "
            "learned from the training set and is not kept"
        )
    sources = [n.id for n in nodes if n.kind is StageKind.SOURCE]
    if len(sources) != 1:
        raise PredictError(
            f"{node_id} is fed by {len(sources)} sources ({', '.join(sources)}); "
            "prediction needs exactly one"
        )
    return Pipeline(
        nodes,
        name=p.name,
        seed=p.seed,
        output=OutputSpec(fields=list(fields), exclude=[]),
        run=p.run,
        base_dir=p.base_dir,
        source=p.source,
    )


def _record(path: str, key: str) -> Record:
    """What the ``files`` source lists for ``path``, without a label (raises OSError)."""
    full = os.path.abspath(path)
    st = os.stat(full)
    kind = (mimetypes.guess_type(full)[0] or "").split("/")[0]
    return {
        "key": key,
        "path": full,
        "relpath": os.path.basename(full),
        "kind": kind if kind in ("image", "video") else "",
        "label": "",
        "label_id": -1,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def _error(path: str, error_class: str, message: str) -> dict[str, Any]:
    return {"path": path, "error": error_class, "message": message}


def predict(
    trainer_dir: str | Path,
    paths: Iterable[str | Path],
    *,
    pipeline: str | Path | Pipeline | None = None,
    vars: Mapping[str, str] | None = None,
    workers: int | None = None,
    threads: int | None = None,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    epoch: int | None = None,
    batch_size: int = 64,
    compressed: bool = False,
) -> Iterator[dict[str, Any]]:
    """Classify ``paths`` with the model of ``trainer_dir`` (OUT/train/NODE); one dict per
    path, in order: ``{"path", "class", "probability"}``, or ``{"path", "error",
    "message"}`` for a file the stages or the model's inputs reject.

    ``pipeline``: the pipeline file that produced OUT (default: a copy kept in OUT; ``vars``
    fill its ``${name}``). ``workers`` (>= 1; default: its ``run.workers``), ``timeout_s``
    and ``memory_mb`` bound the isolated worker processes; ``threads``: torch threads here.
    ``epoch`` (what stages see as ``ctx.epoch``; default: the trainer's last epoch when a
    stage on the way depends on it, as its validation did, else 0). ``compressed``: use the
    model the trainer's ``compress:`` block made (``compressed/``) instead of the fp32 one.
    Raises :class:`PredictError` (or ``ConfigError``) before any file is read when the
    folder, the pipeline or the model cannot be used."""
    from datapipe.engine.pool import PoolSettings
    from datapipe.train.saved import LOAD_ERRORS, TrainedModel

    trained = load_trained(trainer_dir, compressed)
    full = find_pipeline(trained, pipeline, vars)
    fields = list(trained.spec["inputs"].get("fields") or [])
    chain = prediction_pipeline(full, trained.node, fields)
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    try:
        model = TrainedModel(trained.model_dir, trained.spec)
    except LOAD_ERRORS as exc:
        raise PredictError(f"cannot rebuild the model of {trained.folder}: {exc}") from None
    if epoch is None:
        scheduled = any(n.stage.epoch_dependent for n in chain.nodes)
        epoch = int((trained.spec.get("params") or {}).get("epochs", 1)) - 1 if scheduled else 0
    settings = PoolSettings.from_pipeline(
        chain, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb, epoch=epoch
    )
    source = chain.of_kind(StageKind.SOURCE)[0].id
    return _predict(model, chain, source, [str(p) for p in paths], settings, max(1, batch_size))


def _predict(
    model: TrainedModel,
    chain: Pipeline,
    source: str,
    paths: list[str],
    settings: Any,
    batch_size: int,
) -> Iterator[dict[str, Any]]:
    """Results in input order: items wait for the ones before them, and go to the model in
    batches of about ``batch_size`` samples."""
    from datapipe.engine.runner import ItemTask

    done: dict[int, dict[str, Any] | list[tuple[Tensor, ...]]] = {}
    tasks = []
    for i, path in enumerate(paths):
        key = f"file{i:07d}"
        try:
            tasks.append(ItemTask(key, source, _record(path, key), encode=False))
        except OSError as exc:
            done[i] = _error(path, "io", f"cannot read input: {exc}")
    pending: list[int] = []
    queued = 0
    nxt = 0
    for i, res in _run(chain, tasks, settings):
        if i >= 0:
            done[i] = _outcome(model, paths[i], res)
        while nxt in done:
            outcome = done[nxt]
            pending.append(nxt)
            queued += len(outcome) if isinstance(outcome, list) else 0
            nxt += 1
        if queued >= batch_size:
            yield from _flush(model, paths, pending, done)
            pending, queued = [], 0
    yield from _flush(model, paths, pending, done)


def _run(
    chain: Pipeline, tasks: list[Any], settings: Any
) -> Iterator[tuple[int, ItemResult | None]]:
    """``(input index, result)`` as the isolated workers finish; first ``(-1, None)``, so
    that results decided without a worker come out too."""
    from datapipe.engine.pool import ProcessPool

    yield -1, None
    if not tasks:
        return
    index = {t.key: int(t.key[4:]) for t in tasks}
    pool = ProcessPool(
        chain,
        workers=min(max(1, settings.workers), len(tasks)),
        timeout_s=settings.timeout_s,
        memory_mb=settings.memory_mb,
        retries=settings.retries,
        epoch=settings.epoch,
    )
    with pool:
        for res in pool.imap_unordered(tasks):
            yield index[res.key], res


def _outcome(
    model: TrainedModel, path: str, res: ItemResult | None
) -> dict[str, Any] | list[tuple[Tensor, ...]]:
    """An error dict, or the prepared inputs of the item's samples."""
    assert res is not None
    if res.status == "error":
        return _error(path, res.error_class or "failed", res.message or "")
    if res.status == "filtered" or not res.records:
        why = res.message or "no samples"
        return _error(path, "filtered", f"{res.stage or 'a stage'} dropped it: {why}")
    prepared = []
    for _, record in res.records:
        xs = model.prepare(record)
        if isinstance(xs[0], str):
            return _error(path, *xs)  # type: ignore[arg-type]
        prepared.append(xs)
    return prepared  # type: ignore[return-value]


def _flush(
    model: TrainedModel,
    paths: list[str],
    pending: list[int],
    done: dict[int, dict[str, Any] | list[tuple[Tensor, ...]]],
) -> Iterator[dict[str, Any]]:
    """One model call for the samples of ``pending``; their results in order."""
    samples = [xs for i in pending if isinstance(done[i], list) for xs in done[i]]
    probs = model.classify(samples) if samples else None
    at = 0
    for i in pending:
        outcome = done.pop(i)
        if isinstance(outcome, dict):
            yield outcome
            continue
        assert probs is not None
        mean = probs[at : at + len(outcome)].mean(0)
        at += len(outcome)
        best = int(mean.argmax())
        yield {"path": paths[i], "class": model.name(best), "probability": float(mean[best])}
