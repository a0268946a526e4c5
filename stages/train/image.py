"""``train.image``: a small ResNet on a pixel field of the committed samples."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field as PField

from datapipe.errors import ConfigError, Problem
from datapipe.fields import Field
from datapipe.stage import Context, Params, Record, Sink

#: bump when the training code changes what a run of the same params produces
CODE_VERSION = "1"


class TrainImageParams(Params):
    field: str = PField("image", description="Pixel field (uint8 H W C) to train on.")
    label: str = PField("label_id", description="Integer class field (-1: unlabelled, left out).")
    depth: Literal[8, 14, 18, 20] = PField(8, description="ResNet depth.")
    width: int = PField(16, ge=4, le=128, description="Channels of the first stage.")
    epochs: int = PField(10, ge=1, le=10_000, description="Passes over the training split.")
    batch_size: int = PField(64, ge=1, le=8192, description="Samples per step.")
    lr: float = PField(0.1, gt=0, description="Peak learning rate (cosine decay).")
    optimizer: Literal["sgd", "adamw"] = PField("sgd", description="SGD momentum 0.9, or AdamW.")
    seed: int = PField(0, ge=0, description="Seed of the split, the order and the weights.")
    val_fraction: float = PField(
        0.2, gt=0, lt=1, description="Share of keys held out (by key hash)."
    )
    threads: int = PField(2, ge=1, le=256, description="torch threads.")


class TrainImage(Sink):
    """Train a ResNet (CPU-sized) on a pixel field: a deterministic key-hash validation split,
    a checkpoint per epoch (``checkpoints/FINGERPRINT/``: a killed run resumes), and reuse when
    nothing it depends on (samples, params, code version) changed."""

    name = "train.image"
    description = "Train a small ResNet on a pixel field of the committed samples."
    Params = TrainImageParams
    folder: ClassVar[str] = "train"
    EXAMPLE_PARAMS = {"epochs": 2, "width": 8}

    def consumes(self) -> tuple[Field, ...]:
        return (
            Field(self.params.field, "uint8", "H W C", "pixels"),
            Field(self.params.label, "int", "", "class index"),
        )

    def fingerprint(self, ctx: Context) -> str:
        """What the trained model depends on: the committed samples, the params, the code."""
        blob = json.dumps([ctx.samples_digest, self.token(), CODE_VERSION])
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def consume(self, records: Iterator[Record], ctx: Context) -> dict[str, Any]:
        assert ctx.out_dir is not None and ctx.run_dir is not None
        out, fp = ctx.out_dir, self.fingerprint(ctx)
        report_path = out / "report.json"
        if (out / "model.pt").exists() and report_path.exists():
            report = json.loads(report_path.read_text())
            if report.get("fingerprint") == fp:
                report["reused"] = True
                _write_json(report_path, report)
                return _summary(report)
        # a checkpoint per training setup: a killed run resumes its own, never another's
        checkpoints = out / "checkpoints"
        for old in checkpoints.glob("*"):
            if old.name != fp:
                shutil.rmtree(old, ignore_errors=True)
        report = self._train(ctx, out, checkpoints / fp)
        report.update(fingerprint=fp, reused=False)
        _write_json(report_path, report)
        return _summary(report)

    def _train(self, ctx: Context, out: Path, checkpoint_dir: Path) -> dict[str, Any]:
        import torch
        from torch.utils.data import DataLoader

        from datapipe.models import count_params, model_spec, resnet
        from datapipe.stream import from_shards
        from datapipe.train import (
            KeyFilter,
            TrainConfig,
            fit,
            key_labels,
            plot_confusion,
            plot_curves,
            split_by_key,
        )

        p = self.params
        labels = key_labels(from_shards(ctx.run_dir, shuffle=False, fields=[p.label]), p.label)
        labelled = {k: int(v) for k, v in labels.items() if isinstance(v, int) and v >= 0}
        classes = sorted(set(labelled.values()))
        if len(classes) < 2:
            raise ConfigError(
                [
                    Problem(
                        f"nodes.{ctx.node}",
                        f"training needs 2 classes in {p.label!r}; "
                        f"the committed samples have {len(classes)}",
                    )
                ]
            )
        val_keys = split_by_key(labelled, labelled.values(), p.val_fraction, p.seed)
        train_keys = set(labelled) - val_keys
        if not train_keys or not val_keys:
            raise ConfigError(
                [
                    Problem(
                        f"nodes.{ctx.node}.params.val_fraction",
                        f"an empty split: {len(train_keys)} training, "
                        f"{len(val_keys)} validation keys",
                    )
                ]
            )
        fields = [p.field, p.label]
        train = KeyFilter(from_shards(ctx.run_dir, seed=p.seed, fields=fields), train_keys)
        val = KeyFilter(from_shards(ctx.run_dir, shuffle=False, fields=fields), val_keys)
        first = next(iter(val))[p.field]
        config = TrainConfig(
            epochs=p.epochs,
            batch_size=p.batch_size,
            lr=p.lr,
            optimizer=p.optimizer,
            seed=p.seed,
            threads=p.threads,
            label=p.label,
            field=p.field,
        )
        torch.manual_seed(p.seed)
        model = resnet(
            depth=p.depth,
            width=p.width,
            num_classes=max(classes) + 1,
            in_channels=int(first.shape[-1]),
        )
        result = fit(
            model,
            DataLoader(train, batch_size=p.batch_size, collate_fn=train.collate),
            DataLoader(val, batch_size=max(p.batch_size, 256), collate_fn=val.collate),
            config,
            checkpoint_dir=checkpoint_dir,
        )
        _save_model(out / "model.pt", model.state_dict())
        spec = {
            "model": model_spec(model),
            "field": p.field,
            "label": p.label,
            "input_shape": result.input_shape,
            "normalize": {
                "mean": list(result.config.mean or []),
                "std": list(result.config.std or []),
            },
            "classes": classes,
        }
        _write_json(out / "model.json", spec)
        plot_curves(result.history, out / "curves.png")
        plot_confusion(
            result.final["confusion"],
            [str(c) for c in range(max(classes) + 1)],
            out / "confusion.png",
        )
        report = result.to_dict()
        report.update(
            val_accuracy=result.final["val_accuracy"],
            val_loss=result.final["val_loss"],
            epochs_run=len(result.history),
            params=count_params(model),
            model_bytes=(out / "model.pt").stat().st_size,
            seed=p.seed,
            train_samples=len(train_keys),
            val_samples=len(val_keys),
        )
        return report


def _save_model(path: Path, state: dict[str, Any]) -> None:
    import torch

    from datapipe.train import write_atomic

    write_atomic(path, lambda f: torch.save(state, f))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from datapipe.train import write_atomic

    text = json.dumps(data, indent=1, sort_keys=True).encode()
    write_atomic(path, lambda f: f.write(text))


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("val_accuracy", "reused", "epochs_run", "params", "model_bytes")
    return {k: report.get(k) for k in keys}
