"""The ``compress:`` block of every ``train.*`` stage: what it accepts and what it writes.

After the fp32 model is trained (or reused), the block makes a compressed variant of it and
writes ``OUT/train/NODE/compressed/``: ``model.pt`` (a plain ``state_dict``, loads with
``weights_only``) or ``model.onnx`` (int8, ONNX Runtime), ``model.json`` (the fp32 one plus
what rebuilds the variant: ``decomposed``, the factorised layers' ranks, ``resized``, the
pruned layers' new sizes, ``file``, and ``compress``: the block), ``report.json`` (the fp32
report's keys for the compressed model, plus ``baseline``: the fp32 figures measured beside
it in the same process and threads, and ``ratios``), ``curves.png`` / ``confusion.png`` of
the fine-tuning; and ``pareto.png`` (validation accuracy against batch-64 CPU latency, one
point per model: fp32 and every variant made from it, :func:`record_variant`) in the
trainer's folder. The variant has its own fingerprint (the block,
the fp32 model, a teacher's model): changing only the block reuses the fp32 model.

The steps (:mod:`datapipe.stages.train.compress_params`) run in the survey's order:
``decompose`` (:mod:`datapipe.train.decompose`) and ``prune`` (:mod:`datapipe.train.prune`),
one fine-tuning that also learns a ``distill`` teacher's soft outputs
(:mod:`datapipe.stages.train.distill`), then ``quantize`` (:mod:`datapipe.train.int8`),
after a quantization-aware fine-tuning with ``mode: qat`` (:mod:`datapipe.train.qat`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datapipe.stages.train.compress_params import CompressParams, QuantizeParams
from datapipe.stages.train.distill import DistillParams, Teacher

if TYPE_CHECKING:
    from torch import nn

#: the compressed variant's folder inside OUT/train/NODE
COMPRESSED = "compressed"
#: the int8 model's file in it (an ONNX Runtime model; a pruned fp32 one is ``model.pt``)
INT8_FILE = "model.onnx"


def compressed_fingerprint(
    fp32_fingerprint: str, block: CompressParams, teacher: Teacher | None = None
) -> str:
    """What the compressed variant depends on: the fp32 model, the block and the teacher's
    model (its fingerprint)."""
    parts = [fp32_fingerprint, block.model_dump(mode="json")]
    if teacher is not None:
        parts.append(teacher.fingerprint)
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def size_ratios(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """Compressed over fp32 for params, MACs, bytes and each latency (None where 0)."""
    pairs = {
        "params": (report["params"], baseline["params"]),
        "macs": (report["macs"], baseline["macs"]),
        "model_bytes": (report["model_bytes"], baseline["model_bytes"]),
    }
    for key, ms in report["cpu_latency_ms"].items():
        pairs[f"latency_{key}"] = (ms, baseline["cpu_latency_ms"].get(key, 0))
    return {k: round(a / b, 4) if b else None for k, (a, b) in pairs.items()}


def plot_pareto(path: Path, points: dict[str, tuple[float, float]]) -> None:
    """Validation accuracy against batch-64 CPU latency (ms), one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for name, (latency, accuracy) in points.items():
        ax.scatter([latency], [accuracy], s=40)
        ax.annotate(name, (latency, accuracy), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("CPU latency, batch 64 (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def measure_latencies(
    models: dict[str, nn.Module], input_shape: Any, threads: int, rounds: int = 3
) -> dict[str, dict[str, float]]:
    """``cpu_latency_ms`` of each model at ``threads``, interleaved over ``rounds`` (the
    median of each model's rounds): both sides see the same machine state."""
    import statistics

    from datapipe.train import cpu_latency_ms, torch_threads

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    with torch_threads(threads):
        for _ in range(rounds):
            for name, model in models.items():
                runs[name].append(cpu_latency_ms(model, input_shape))
    return {
        name: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
        for name, rs in runs.items()
    }


def compressed_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the run summary says of the compressed variant."""
    ratios = report.get("ratios") or {}
    return {
        "variant": report.get("variant"),
        "val_accuracy": report.get("val_accuracy"),
        "reused": report.get("reused"),
        "model_bytes": report.get("model_bytes"),
        "macs_ratio": ratios.get("macs"),
        "latency_ratio": ratios.get("latency_batch_64"),
    }


def compress_trained(
    trainer: Any,
    out: Path,
    fp32_report: dict[str, Any],
    fingerprint: str,
    data: Callable[[], Any],
    teacher: Teacher | None = None,
) -> dict[str, Any]:
    """Make (or reuse) the compressed variant of the trainer's model in ``out``; its report.

    ``trainer``: the :class:`~datapipe.stages.train.base.Trainer`; ``fp32_report``: the fp32
    model's report; ``data()``: the trainer's :class:`TrainingData` (built only when the
    variant is not reused); ``teacher``: the ``distill`` block's teacher."""
    from datapipe.stages.train.base import reused_report, write_json

    folder = out / COMPRESSED
    reused = reused_report(folder, fingerprint)
    if reused is not None:
        return reused
    shutil.rmtree(folder, ignore_errors=True)
    report = _compress(trainer, out, folder, fp32_report, fingerprint, data(), teacher)
    dataset = fp32_report.get("dataset_fingerprint")
    report.update(fingerprint=fingerprint, reused=False, dataset_fingerprint=dataset)
    write_json(folder / "report.json", report)
    return report


def _compress(
    trainer: Any,
    out: Path,
    folder: Path,
    fp32_report: dict[str, Any],
    fingerprint: str,
    data: Any,
    teacher: Teacher | None,
) -> dict[str, Any]:
    import copy

    from datapipe.train import TrainConfig, evaluate, fit
    from datapipe.train.saved import load_model

    block: CompressParams = trainer.params.compress
    spec = json.loads((out / "model.json").read_text())
    fp32 = load_model(out, spec)
    config = TrainConfig.from_dict(fp32_report["config"])  # the fp32 run's normalisation
    model = copy.deepcopy(fp32)
    extra: dict[str, Any] = {"compress": block.model_dump(mode="json")}
    extra.update(_restructure(model, block, spec, data.shapes))
    train, val = trainer.loaders(data)
    inputs = trainer.make_inputs()
    checkpoints = out / "checkpoints" / fingerprint
    epochs, lr = block.finetune()
    if epochs:
        tune = TrainConfig.from_dict({**config.to_dict(), "epochs": epochs, "lr": lr or config.lr})
        tuning, loss, loader = inputs, None, train
        if block.distill is not None and teacher is not None:
            tuning = _distilling(inputs, block.distill, teacher, data, config.threads)
            loss, loader = tuning.loss, trainer.loaders(data, samples=True)[0]
            extra["teacher"] = {"node": teacher.node, "val_accuracy": teacher.val_accuracy}
        result = fit(model, loader, val, tune, checkpoint_dir=checkpoints, inputs=tuning, loss=loss)
    else:
        result = evaluated(model, val, config, inputs, data.shapes)
    q = block.quantize
    if q is not None and q.mode == "qat":
        result = _qat(model, train, val, config, inputs, checkpoints / "qat", q, result)
    folder.mkdir(parents=True, exist_ok=True)
    runtime: nn.Module = model
    if block.quantize is None:
        trainer.write_model(folder, model, result, data, extra)
    else:
        runtime = _quantize(model, folder, train, config, inputs, data.shapes, block.quantize)
        result.final = evaluate(runtime, val, config, inputs=inputs)  # the int8 model's
        extra["file"] = INT8_FILE
        trainer.write_model(folder, model, result, data, extra, weights=False)
    report = trainer.make_report(folder, result, data, extra.get("file", "model.pt"))
    report["fp32_fingerprint"] = fp32_report.get("fingerprint")
    shape = data.shapes[0] if len(data.shapes) == 1 else data.shapes
    latency = measure_latencies({"fp32": fp32, "compressed": runtime}, shape, config.threads)
    report["cpu_latency_ms"] = latency["compressed"]
    baseline = {k: fp32_report[k] for k in ("val_accuracy", "params", "macs", "model_bytes")} | {
        "cpu_latency_ms": latency["fp32"]
    }
    if "teacher" in extra:
        report["teacher"] = extra["teacher"]
    report.update(
        variant=block.describe(),
        compress=extra["compress"],
        baseline=baseline,
        ratios=size_ratios(report, baseline),
        accuracy_change=round(report["val_accuracy"] - baseline["val_accuracy"], 4),
    )
    record_variant(out, report)
    return report


def record_variant(out: Path, report: dict[str, Any]) -> None:
    """Add the variant to ``out/pareto.json`` (every variant made for this fp32 model: its
    accuracy and batch-64 latency, beside the fp32 model's measured with it) and draw them
    all in ``out/pareto.png``; a new fp32 model starts the record anew."""
    from datapipe.stages.train.base import write_json

    path = out / "pareto.json"
    fp32 = report["baseline"]
    model = json.loads(path.read_text()) if path.exists() else {}
    if model.get("fp32_fingerprint") != report.get("fp32_fingerprint"):
        model = {"fp32_fingerprint": report.get("fp32_fingerprint"), "variants": {}}
    model["variants"]["fp32"] = [fp32["cpu_latency_ms"]["batch_64"], fp32["val_accuracy"]]
    model["variants"][report["variant"]] = [
        report["cpu_latency_ms"]["batch_64"],
        report["val_accuracy"],
    ]
    write_json(path, model)
    plot_pareto(out / "pareto.png", {k: (v[0], v[1]) for k, v in model["variants"].items()})


def _restructure(
    model: nn.Module, block: CompressParams, spec: dict[str, Any], shapes: list[Any]
) -> dict[str, Any]:
    """Factorise, then prune ``model`` in place as the block says; what ``model.json`` records
    to rebuild it (``decomposed``, ``resized``)."""
    from datapipe.errors import SinkError
    from datapipe.models import build_model
    from datapipe.models.measure import zero_inputs
    from datapipe.train.decompose import DecomposeError, decompose_convs, rebuild_decomposed
    from datapipe.train.prune import PruneError, prune_channels, resized_layers

    extra: dict[str, Any] = {}
    low_rank = block.decompose
    if low_rank is not None:
        try:
            extra["decomposed"] = decompose_convs(model, low_rank.method, low_rank.rank)
        except DecomposeError as exc:
            raise SinkError("compress_failed", f"compress.decompose: {exc}") from None
    if block.prune is not None:
        try:
            prune_channels(model, zero_inputs(shapes, 2), block.prune.amount, block.prune.method)
        except PruneError as exc:
            raise SinkError("compress_failed", f"compress.prune: {exc}") from None
        reference = build_model(spec["model"])
        if "decomposed" in extra:
            rebuild_decomposed(reference, extra["decomposed"])
        extra["resized"] = resized_layers(model, reference)
    return extra


def _qat(
    model: nn.Module,
    train: Any,
    val: Any,
    config: Any,
    inputs: Any,
    checkpoints: Path,
    q: QuantizeParams,
    before: Any,
) -> Any:
    """Quantization-aware fine-tuning of ``model`` in place (the int8 rounding of weights and
    layer inputs simulated, :mod:`datapipe.train.qat`); its result, whose history follows
    ``before``'s (the fine-tuning before it, if any)."""
    from datapipe.train import TrainConfig, fit
    from datapipe.train.qat import prepare_qat

    lr = q.lr or config.lr / 10
    tune = TrainConfig.from_dict({**config.to_dict(), "epochs": q.finetune_epochs, "lr": lr})
    handle = prepare_qat(model, per_channel=q.per_channel, reduce_range=q.reduce_range)
    try:
        result = fit(model, train, val, tune, checkpoint_dir=checkpoints, inputs=inputs)
    finally:
        handle.remove()
    result.history = [*before.history, *({**r, "qat": True} for r in result.history)]
    result.steps += before.steps
    result.wall_s += before.wall_s
    return result


def _distilling(
    inputs: Any, block: DistillParams, teacher: Teacher, data: Any, threads: int
) -> Any:
    """The student's inputs wrapped with the teacher's logits of the training samples."""
    from datapipe.stages.train.distill import check_classes, teacher_logits
    from datapipe.train.distill import DistillInputs

    check_classes(teacher, data.class_names)
    targets = teacher_logits(teacher, data.train.keys, threads)
    return DistillInputs(inputs, targets, alpha=block.alpha, temperature=block.temperature)


def _quantize(
    model: nn.Module,
    folder: Path,
    train: Any,
    config: Any,
    inputs: Any,
    shapes: list[Any],
    q: QuantizeParams,
) -> nn.Module:
    """Write ``folder/model.onnx``, the int8 version of ``model`` calibrated on the first
    ``q.calibration_batches`` training batches (normalised as in training); its runtime."""
    from datapipe.errors import SinkError

    try:
        from datapipe.train.export import export_model
        from datapipe.train.int8 import Int8Error, OnnxModule, quantize_onnx
        from datapipe.train.loop import Batches
    except ImportError as exc:  # pragma: no cover - the export extra is missing
        raise SinkError(
            "compress_failed",
            f"compress.quantize needs the export extra (pip install 'datapipe[export]'): {exc}",
        ) from None
    batches, calibration = Batches(config, inputs), []
    for batch in train:
        xs, y = batches(batch, train=False)
        if len(y):
            calibration.append(xs)
        if len(calibration) >= q.calibration_batches:
            break
    shape = shapes[0] if len(shapes) == 1 else shapes
    with tempfile.TemporaryDirectory() as tmp:
        fp32_onnx = export_model(model, shape, tmp, "onnx")
        try:
            quantize_onnx(
                fp32_onnx,
                folder / INT8_FILE,
                calibration,
                per_channel=q.per_channel,
                reduce_range=q.reduce_range,
            )
        except Int8Error as exc:
            raise SinkError("compress_failed", f"compress.quantize: {exc}") from None
    return OnnxModule(folder / INT8_FILE, config.threads).eval()


def evaluated(model: nn.Module, val: Any, config: Any, inputs: Any, shapes: list[Any]) -> Any:
    """A :class:`~datapipe.train.TrainResult` of ``model`` as it is: no training epochs."""
    from datapipe.models import count_macs, count_params
    from datapipe.train import TrainResult, evaluate

    shape = shapes[0] if len(shapes) == 1 else shapes
    return TrainResult(
        config=config,
        history=[],
        final=evaluate(model, val, config, inputs=inputs),
        steps=0,
        wall_s=0.0,
        train_samples_per_s=0.0,
        data_wait_fraction=0.0,
        params=count_params(model),
        macs=count_macs(model, shape),
        cpu_latency_ms={},
        input_shape=shape,
    )
