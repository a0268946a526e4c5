"""What every ``train.*`` stage shares: the common params, the reuse and resume logic, the
split, the loop call and the files a trainer writes (OUT/train/NODE/).

A concrete trainer says which fields it reads (:meth:`Trainer.consumes`), how a batch
becomes tensors (:meth:`Trainer.make_inputs`, a :class:`~datapipe.train.inputs.Inputs`) and
which model it trains on them (:meth:`Trainer.make_model`); the rest is here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field as PField

from datapipe.errors import SinkError
from datapipe.stage import Context, Params, Record, Sink
from datapipe.stages.train.compress import (
    COMPRESSED,
    compress_trained,
    compressed_fingerprint,
    compressed_summary,
)
from datapipe.stages.train.compress_params import CompressParams
from datapipe.stages.train.distill import find_teacher
from datapipe.stages.train.reselect import ReselectParams, make_reselection, write_selection_log

if TYPE_CHECKING:
    from torch import nn

    from datapipe.train import TrainResult
    from datapipe.train.inputs import Inputs

#: the report keys a trainer's sink summary (run report, manifest, ``datapipe show``) carries
SUMMARY_KEYS = ("val_accuracy", "reused", "epochs_run", "params", "model_bytes", "skipped")


class TrainParams(Params):
    """Params every ``train.*`` stage accepts."""

    label: str = PField("label_id", description="Integer class field (-1: unlabelled, left out).")
    epochs: int = PField(10, ge=1, le=10_000, description="Passes over the training split.")
    batch_size: int = PField(64, ge=1, le=8192, description="Samples per step.")
    lr: float = PField(0.1, gt=0, description="Peak learning rate (cosine decay).")
    optimizer: Literal["sgd", "adamw"] = PField("sgd", description="SGD momentum 0.9, or AdamW.")
    seed: int = PField(0, ge=0, description="Seed of the split, the order and the weights.")
    val_fraction: float = PField(
        0.2, gt=0, lt=1, description="Share of keys held out (by key hash)."
    )
    threads: int = PField(2, ge=1, le=256, description="torch threads.")
    workers: int = PField(0, ge=0, le=64, description="DataLoader worker processes.")
    export: list[Literal["onnx", "pt2"]] = PField(
        [], description="Also write model.onnx (ONNX, the export extra) / model.pt2 (torch.export)."
    )
    compress: CompressParams | None = PField(
        None,
        description="Also make a compressed model (prune, distill, quantize); "
        "OUT/train/NODE/compressed/.",
    )
    reselect: ReselectParams | None = PField(
        None,
        description="Train each epoch on a subset re-chosen every few epochs from the "
        "model's scores; OUT/train/NODE/selection.jsonl.",
    )


class Trainer(Sink):
    """A Sink that trains a model on the committed samples (see the module docstring)."""

    folder: ClassVar[str] = "train"
    #: whether the current training reads an epoch-dependent upstream (set by consume)
    epoch_dependent: bool = False
    #: bump when the training code changes what a run of the same params produces
    CODE_VERSION: ClassVar[str] = "2"

    # -- what a concrete trainer provides ---------------------------------------------------
    def read_fields(self) -> list[str]:
        """The sample fields training reads (the label is added)."""
        raise NotImplementedError

    def make_inputs(self) -> Inputs:
        """A fresh inputs object (batch -> tensors) for this trainer's params."""
        raise NotImplementedError

    def make_model(self, num_classes: int, shapes: list[list[int]]) -> nn.Module:
        """The model to train, for the per-input sample shapes the inputs found."""
        raise NotImplementedError

    # -- the shared part ---------------------------------------------------------------------
    def fingerprint(self, ctx: Context) -> str:
        """What the trained model depends on: the committed samples, the params, the code;
        with an epoch-dependent upstream also every upstream stage's params (the committed
        samples are epoch 0's: a schedule's later sizes are not in them)."""
        params = self.params.model_dump(mode="json", exclude={"compress"})  # its own digest
        parts = [ctx.samples_digest, self.name, self.version, params, self.CODE_VERSION]
        if ctx.epoch_dependent and ctx.pipeline is not None:
            nodes = ctx.pipeline.nodes_by_id
            for nid in sorted(ctx.pipeline.upstream(ctx.node) - {ctx.node}):
                parts.append([nid, nodes[nid].stage.name, nodes[nid].stage.token()])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]

    def consume(self, records: Iterator[Record], ctx: Context) -> dict[str, Any]:
        assert ctx.out_dir is not None and ctx.run_dir is not None
        out, fp = ctx.out_dir, self.fingerprint(ctx)
        block = self.params.compress
        teacher = None
        if block is not None and block.distill is not None:
            teacher = find_teacher(ctx, block.distill, self.params.label)
        cfp = compressed_fingerprint(fp, block, teacher) if block is not None else ""
        data: TrainingData | None = None
        report = reused_report(out, fp)
        if report is None:
            # a checkpoint per training setup: a killed run resumes its own, never another's
            checkpoints = out / "checkpoints"
            for old in checkpoints.glob("*"):
                if old.name not in (fp, cfp):
                    shutil.rmtree(old, ignore_errors=True)
            data = self._data(ctx)
            report = self._train(ctx, out, checkpoints / fp, data)
            report.update(fingerprint=fp, reused=False, dataset_fingerprint=ctx.samples_digest)
            write_json(out / "report.json", report)
        if block is None:
            shutil.rmtree(out / COMPRESSED, ignore_errors=True)
            return summary(report)
        compressed = compress_trained(
            self, out, report, cfp, lambda: data or self._data(ctx), teacher
        )
        return {**summary(report), "compressed": compressed_summary(compressed)}

    def _labels(self, ctx: Context) -> tuple[dict[str, int], dict[int, str]]:
        """``{key: class index}`` of the labelled samples and the class names by index."""
        from datapipe.stream import from_shards
        from datapipe.train.inputs import label_value

        p = self.params
        assert ctx.run_dir is not None
        names: dict[int, str] = {}
        fields = [p.label, "label"] if p.label != "label" else [p.label]
        labelled: dict[str, int] = {}
        for sample in from_shards(ctx.run_dir, shuffle=False, fields=fields):
            value = label_value(sample.get(p.label))
            if value is not None:
                labelled[sample["key"]] = value
                name = sample.get("label")
                if isinstance(name, str) and name:
                    names.setdefault(value, name)
        return labelled, names

    def _split(self, ctx: Context, labelled: dict[str, int]) -> tuple[set[str], set[str]]:
        from datapipe.train import split_by_key

        p = self.params
        classes = sorted(set(labelled.values()))
        if len(classes) < 2:
            raise SinkError(
                "too_few_classes",
                f"training needs 2 classes in {p.label!r}; the committed samples have "
                f"{len(classes)} ({len(labelled)} labelled samples)",
            )
        val_keys = split_by_key(labelled, labelled.values(), p.val_fraction, p.seed)
        train_keys = set(labelled) - val_keys
        if not train_keys or not val_keys:
            raise SinkError(
                "empty_split",
                f"an empty split: {len(train_keys)} training, {len(val_keys)} validation "
                f"keys (val_fraction {p.val_fraction}); more samples per class are needed",
            )
        return train_keys, val_keys

    def _data(self, ctx: Context) -> TrainingData:
        """The labelled committed samples, split, streamed and probed for their shapes."""
        labelled, names = self._labels(ctx)
        train_keys, val_keys = self._split(ctx, labelled)
        num_classes = max(labelled.values()) + 1
        self.epoch_dependent = ctx.epoch_dependent
        train, val = self._streams(ctx, train_keys, val_keys)
        return TrainingData(
            train=train,
            val=val,
            shapes=self._probe(val),
            class_names=[names.get(i, str(i)) for i in range(num_classes)],
            train_samples=len(train_keys),
            train_labels={k: labelled[k] for k in train_keys},
        )

    def workers(self) -> int:
        """DataLoader workers: an epoch-dependent upstream decodes media every epoch, in
        worker processes, never in this one (and only inputs the isolated run already read
        without error)."""
        return max(self.params.workers, 1) if self.epoch_dependent else self.params.workers

    def loaders(self, data: TrainingData, samples: bool = False) -> tuple[Any, Any]:
        """The training and validation DataLoaders of ``data``; with ``samples``, training
        batches are lists of sample dicts (what distillation looks the teacher up by)."""
        from torch.utils.data import DataLoader

        p = self.params
        opts = {"num_workers": self.workers(), "persistent_workers": False}
        train, val = data.train, data.val
        return (
            DataLoader(
                train,
                batch_size=p.batch_size,
                collate_fn=list if samples else train.collate,
                **opts,
            ),
            DataLoader(val, batch_size=max(p.batch_size, 256), collate_fn=val.collate, **opts),
        )

    def _train(
        self, ctx: Context, out: Path, checkpoint_dir: Path, data: TrainingData
    ) -> dict[str, Any]:
        import torch

        from datapipe.train import TrainConfig, fit

        p = self.params
        assert ctx.run_dir is not None
        config = TrainConfig(
            epochs=p.epochs,
            batch_size=p.batch_size,
            lr=p.lr,
            optimizer=p.optimizer,
            seed=p.seed,
            threads=p.threads,
            label=p.label,
            field=self.read_fields()[0],
        )
        torch.manual_seed(p.seed)
        model = self.make_model(len(data.class_names), data.shapes)
        train, val = self.loaders(data)
        reselect = None
        if p.reselect is not None:
            score_data = self._stream(ctx, set(data.train_labels), shuffle=False)
            reselect = make_reselection(
                p.reselect, data.train_labels, score_data, p.seed, self.workers()
            )
        result = fit(
            model,
            train,
            val,
            config,
            checkpoint_dir=checkpoint_dir,
            inputs=self.make_inputs(),
            reselect=reselect,
        )
        self.write_model(out, model, result, data)
        report = self.make_report(out, result, data)
        if reselect is not None:
            report["reselect"] = write_selection_log(out, reselect)
        return report

    def _streams(self, ctx: Context, train_keys: set[str], val_keys: set[str]) -> tuple[Any, Any]:
        """The training and validation streams: the committed shards, or, when a stage
        upstream depends on the epoch (a resize schedule), the pipeline recomputed every
        epoch (``from_pipeline``; validation held at the last epoch: the final size)."""
        from datapipe.stream import from_pipeline, from_shards
        from datapipe.train import KeyFilter
        from datapipe.train.data import FixedEpoch

        p = self.params
        fields = [*self.read_fields(), p.label]
        if p.reselect is not None:  # a stream whose subset changes by epoch (select)
            train = self._stream(ctx, train_keys, shuffle=True)
        elif not ctx.epoch_dependent:
            train = KeyFilter(from_shards(ctx.run_dir, seed=p.seed, fields=fields), train_keys)
        else:
            train = from_pipeline(ctx.pipeline, seed=p.seed, fields=fields, keys=train_keys)
            train = KeyFilter(train, train_keys)
        if not ctx.epoch_dependent:
            val = from_shards(ctx.run_dir, shuffle=False, fields=fields)
            return train, KeyFilter(val, val_keys)
        val = from_pipeline(ctx.pipeline, shuffle=False, fields=fields, keys=val_keys)
        return train, FixedEpoch(KeyFilter(val, val_keys), p.epochs - 1)

    def _stream(self, ctx: Context, keys: set[str], shuffle: bool) -> Any:
        """The samples of ``keys`` as a stream with ``select`` (the committed shards, or the
        pipeline recomputed every epoch)."""
        from datapipe.stream import from_pipeline, from_shards

        p = self.params
        fields = [*self.read_fields(), p.label]
        if ctx.epoch_dependent:
            stream = from_pipeline(
                ctx.pipeline, seed=p.seed, shuffle=shuffle, fields=fields, keys=keys
            )
        else:
            stream = from_shards(ctx.run_dir, seed=p.seed, shuffle=shuffle, fields=fields)
        stream.select(keys)
        return stream

    def _probe(self, val: Any) -> list[list[int]]:
        """The per-input sample shapes, from the first validation samples that make a batch."""
        inputs = self.make_inputs()
        batch: list[dict[str, Any]] = []
        for sample in val:
            batch.append(sample)
            _, y = inputs(batch[-1:], train=False, skipped=Counter())
            if len(y):
                return inputs.describe()["shapes"]
            if len(batch) >= 64:
                break
        raise SinkError(
            "no_usable_samples",
            f"none of the first validation samples has usable {self.read_fields()} fields "
            "(missing, wrongly shaped or not finite)",
        )

    def write_model(
        self,
        out: Path,
        model: nn.Module,
        result: TrainResult,
        data: TrainingData,
        extra: dict[str, Any] | None = None,
        weights: bool = True,
    ) -> None:
        """``out/model.json`` (what rebuilds the model and prepares its inputs, plus
        ``extra``); with ``weights``, ``out/model.pt`` (the state_dict) and the ``export``
        formats (an int8 model is written by its own code)."""
        import torch

        from datapipe.models import model_spec
        from datapipe.train import write_atomic

        out.mkdir(parents=True, exist_ok=True)
        if weights:
            state = model.state_dict()
            write_atomic(out / "model.pt", lambda f: torch.save(state, f))
        inputs = self.make_inputs().describe()
        spec = {
            "model": model_spec(model),
            "trainer": self.name,
            "params": self.params.model_dump(mode="json"),
            "label": self.params.label,
            "inputs": {**inputs, "shapes": data.shapes},
            "normalize": {
                "mean": list(result.config.mean or []),
                "std": list(result.config.std or []),
            },
            "classes": data.class_names,
            # the epoch whose upstream output the model takes (the last of a resize schedule)
            "input_epoch": self.params.epochs - 1 if self.epoch_dependent else 0,
            **(extra or {}),
        }
        write_json(out / "model.json", spec)
        for fmt in self.params.export if weights else []:
            from datapipe.train.export import export_model

            export_model(model, data.shapes, out, fmt)

    def make_report(
        self, out: Path, result: TrainResult, data: TrainingData, model_file: str = "model.pt"
    ) -> dict[str, Any]:
        """The report of ``result`` (``report.json``'s keys; ``model_bytes``: the size of
        ``out/model_file``) and its pictures in ``out``."""
        from datapipe.train import plot_confusion, plot_curves

        if result.history:
            plot_curves(result.history, out / "curves.png")
        plot_confusion(result.final["confusion"], data.class_names, out / "confusion.png")
        skipped = Counter(result.skipped)
        skipped.update(result.final.get("skipped", {}))
        skipped["unreadable"] += len(data.train.skipped) + len(data.val.skipped)  # the stream's
        report = result.to_dict()
        report.update(
            trainer=self.name,
            val_accuracy=result.final["val_accuracy"],
            val_loss=result.final["val_loss"],
            per_class_accuracy=result.final["per_class_accuracy"],
            confusion=result.final["confusion"],
            classes=data.class_names,
            epochs_run=len(result.history),
            model_bytes=(out / model_file).stat().st_size,
            seed=self.params.seed,
            train_samples=data.train_samples,
            val_samples=result.final["val_samples"],
            skipped={k: v for k, v in sorted(skipped.items()) if v},
        )
        return report


@dataclass
class TrainingData:
    """What a training reads: the split streams, the per-input sample shapes, the class
    names by index and the number of training keys."""

    train: Any
    val: Any
    shapes: list[list[int]]
    class_names: list[str]
    train_samples: int
    #: class index of every training key
    train_labels: dict[str, int] = field(default_factory=dict)


def reused_report(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The report in ``folder``, marked ``reused``, when it was written for ``fingerprint``
    and the model file ``model.json`` names is there; else None (train or compress anew)."""
    report_path, spec_path = folder / "report.json", folder / "model.json"
    if not report_path.exists() or not spec_path.exists():
        return None
    report = json.loads(report_path.read_text())
    model_file = json.loads(spec_path.read_text()).get("file", "model.pt")
    if report.get("fingerprint") != fingerprint or not (folder / model_file).exists():
        return None
    report["reused"] = True
    write_json(report_path, report)
    return report


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON, written atomically."""
    from datapipe.train import write_atomic

    text = json.dumps(data, indent=1, sort_keys=True).encode()
    write_atomic(path, lambda f: f.write(text))


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a trainer's report the run report and the manifest carry (with a
    ``reselect`` block, also ``subset``: ``50% re-selected by el2n every 2 epochs``)."""
    out = {k: report.get(k) for k in SUMMARY_KEYS}
    r = report.get("reselect")
    if r:
        out["subset"] = f"{r['fraction']:.0%} re-selected by {r['score']} every {r['every']} epochs"
    return out
