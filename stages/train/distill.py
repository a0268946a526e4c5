"""``compress.distill``: the compressed variant is fine-tuned on another trainer node's soft
outputs as well as on the labels (Hinton et al. 2015; :mod:`datapipe.train.distill`).

The teacher is another ``train.*`` node of the same pipeline: the engine runs it first (a Sink
naming a Sink), and its fp32 model (``OUT/train/TEACHER/model.pt``) teaches, reading its own
fields of the same committed samples, so a pixel model can teach a DCT student. It must have
been trained on the same label field, to the same classes, from the committed samples (not
from an epoch-dependent upstream); otherwise the student's run stops with a ``compress_failed``
error naming the teacher node.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field as PField

from datapipe.errors import SinkError
from datapipe.stage import Context, NodeRef, Params, StageKind

if TYPE_CHECKING:
    from torch import Tensor

#: the stages whose models can teach
TRAINERS = ("train.image", "train.dct", "train.video", "train.points")
TeacherNode = Annotated[str, NodeRef(StageKind.SINK, TRAINERS)]
#: prepared samples per teacher forward pass
_CHUNK = 256


class DistillParams(Params):
    """Knowledge distillation from another trainer node during the variant's fine-tuning."""

    teacher: TeacherNode = PField(
        description="The trainer node whose fp32 model teaches (the engine trains it first)."
    )
    alpha: float = PField(
        0.5, ge=0, le=1, description="Weight of the teacher's soft targets (1 - alpha: labels)."
    )
    temperature: float = PField(
        4.0, gt=0, le=100, description="Softmax temperature of the soft targets (Hinton's T)."
    )
    finetune_epochs: int = PField(
        3, ge=1, le=10_000, description="Epochs of the fine-tuning (shared with decompose, prune)."
    )
    lr: float | None = PField(
        None, gt=0, description="Peak learning rate of it (None: the trainer's)."
    )


@dataclass
class Teacher:
    """A teacher node's trained fp32 model: its folder, ``model.json`` and fingerprint, and
    the run directory whose committed samples it reads."""

    node: str
    folder: Path
    spec: dict[str, Any]
    fingerprint: str
    val_accuracy: float | None
    run_dir: Path


def _failed(node: str, why: str) -> SinkError:
    return SinkError("compress_failed", f"compress.distill.teacher {node!r} {why}")


def find_teacher(ctx: Context, block: DistillParams, label: str) -> Teacher:
    """The teacher ``block`` names, as the run left it; a ``compress_failed``
    :class:`SinkError` naming the node when it did not train or cannot teach this node."""
    node = block.teacher
    folder = ctx.sink_dirs.get(node)
    if folder is None:
        result = ctx.sink_results.get(node) or {}
        why = result.get("message") if isinstance(result, dict) else None
        raise _failed(node, f"has no trained model: {why or 'it did not run'}")
    try:
        spec = json.loads((folder / "model.json").read_text())
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise _failed(node, f"has no readable model: {exc}") from None
    if spec.get("label") != label:
        raise _failed(node, f"learned label {spec.get('label')!r}; this node learns {label!r}")
    if spec.get("input_epoch"):
        raise _failed(node, "reads an epoch-dependent upstream (a resize schedule): it cannot "
                      "teach from the committed samples")  # fmt: skip
    assert ctx.run_dir is not None
    return Teacher(
        node, folder, spec, str(report.get("fingerprint")), report.get("val_accuracy"), ctx.run_dir
    )


def check_classes(teacher: Teacher, class_names: list[str]) -> None:
    """The teacher's classes are this node's, in the same order."""
    theirs = [str(c) for c in teacher.spec.get("classes", [])]
    if theirs != [str(c) for c in class_names]:
        raise _failed(teacher.node, f"has classes {theirs}; this node has {class_names}")


def teacher_logits(teacher: Teacher, keys: Iterable[str], threads: int) -> dict[str, Tensor]:
    """The teacher's logits of each sample of ``keys`` it can read (from the committed
    samples, its own fields and normalisation, no augmentation)."""
    from datapipe.stream import from_shards
    from datapipe.train import KeyFilter, torch_threads
    from datapipe.train.saved import LOAD_ERRORS, TrainedModel

    try:
        model = TrainedModel(teacher.folder, teacher.spec)
    except LOAD_ERRORS as exc:
        raise _failed(teacher.node, f"cannot be loaded: {exc}") from None
    stream = from_shards(teacher.run_dir, shuffle=False, fields=model.fields)
    out: dict[str, Tensor] = {}
    pending: list[tuple[str, tuple[Tensor, ...]]] = []

    def flush() -> None:
        logits = model.logits([xs for _, xs in pending])
        out.update((key, row) for (key, _), row in zip(pending, logits, strict=True))
        pending.clear()

    with torch_threads(threads):
        for sample in KeyFilter(stream, keys):
            prepared = model.prepare(sample)
            if not isinstance(prepared[0], str):
                pending.append((sample["key"], prepared))  # type: ignore[arg-type]
            if len(pending) >= _CHUNK:
                flush()
        if pending:
            flush()
    if not out:
        raise _failed(teacher.node, f"could read none of the training samples ({model.fields})")
    return out
