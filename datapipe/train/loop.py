"""The training loop: :func:`fit` (one ``train_one_epoch`` and one :func:`evaluate` per epoch,
a checkpoint after each) in the manner of torchvision's reference ``train.py``."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from datapipe.models.measure import count_macs, count_params
from datapipe.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from datapipe.train.config import RESUME_KEYS, TrainConfig, TrainResult
from datapipe.train.data import channel_stats, normalize
from datapipe.train.distributed import (
    barrier,
    broadcast_object,
    rank,
    sum_over_ranks,
    sync_buffers,
    unwrap,
    wrap,
)
from datapipe.train.inputs import Inputs, PixelInputs
from datapipe.train.report import cpu_latency_ms
from datapipe.train.reselect import Prepare, Reselection

logger = logging.getLogger(__name__)


class ResumeMismatch(ValueError):
    """The checkpoint was written with settings that define a different schedule."""


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _timed(loader: Iterable[Any]) -> Iterator[tuple[Any, float]]:
    """Each batch with the seconds spent waiting for it."""
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch, time.perf_counter() - t0


def _set_epoch(loader: Iterable[Any], epoch: int) -> None:
    dataset = getattr(loader, "dataset", loader)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


class Batches:
    """Turns loader batches into (normalised inputs, labels), counting skipped samples.

    ``config.mean`` / ``config.std`` hold the channels of every input one after the other
    (the channels of input i follow those of inputs 0..i-1)."""

    def __init__(self, config: TrainConfig, inputs: Inputs) -> None:
        self.config = config
        self.inputs = inputs
        self.skipped: Counter = Counter()

    def __call__(
        self, batch: Any, *, train: bool, norm: bool = True
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        xs, y = self.inputs(batch, train=train, skipped=self.skipped)
        if norm and len(y):
            mean, std, at, out = self.config.mean or (), self.config.std or (), 0, []
            for x in xs:
                c = x.shape[-3]
                out.append(normalize(x, mean[at : at + c], std[at : at + c]))
                at += c
            xs = tuple(out)
        return xs, y


def input_stats(
    batches: list[tuple[Tensor, ...]], std_floor: float = 1e-3
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of each input over ``batches``, concatenated in input order
    (a spread under ``std_floor`` counts as ``std_floor``)."""
    mean: list[float] = []
    std: list[float] = []
    for i in range(len(batches[0]) if batches else 0):
        m, s = channel_stats((xs[i] for xs in batches), std_floor)
        mean += m
        std += s
    if not mean:
        raise ValueError("no good training samples to compute the normalisation from")
    return mean, std


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    total_steps: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns loss, accuracy, samples, steps and timings.
    ``loss_fn(logits, labels)``: the training loss (default: cross-entropy).

    Distributed, loss, accuracy and samples are those of every rank's share together."""
    model.train()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    loss_sum, correct, samples, steps, data_s = 0.0, 0, 0, 0, 0.0
    t0 = time.perf_counter()
    for batch, wait in _timed(loader):
        data_s += wait
        xs, y = batches(batch, train=True)
        if not len(y):
            continue
        logits = model(*xs)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler.last_epoch < total_steps:
            scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        samples += len(y)
        steps += 1
    loss_sum, correct, samples = sum_over_ranks(loss_sum, correct, samples)
    return {
        "train_loss": loss_sum / max(samples, 1),
        "train_accuracy": correct / max(samples, 1),
        "samples": samples,
        "steps": steps,
        "train_s": time.perf_counter() - t0,
        "data_s": data_s,
    }


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    config: TrainConfig,
    *,
    num_classes: int | None = None,
    inputs: Inputs | None = None,
) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy (None for a class with no sample) and the confusion
    matrix (rows: true class, columns: predicted) over ``loader``, with ``config``'s
    normalisation (``TrainResult.config`` after :func:`fit`) and ``inputs`` (default:
    :class:`~datapipe.train.inputs.PixelInputs` of ``config.field``; no augmentation).

    Under ``torch.distributed`` (a process group of more than one process) every rank must
    call it (fit does): each evaluates its share of ``loader`` and the figures are summed over
    ranks, so every rank returns the same report."""
    if config.mean is None:
        raise ValueError("evaluate needs config.mean and config.std: pass TrainResult.config")
    batches = Batches(config, inputs or PixelInputs(config.field, config.label))
    was_training = model.training
    model.eval()
    loss_sum, n = 0.0, 0
    confusion: Tensor | None = None
    with torch.no_grad():
        for batch in loader:
            xs, y = batches(batch, train=False)
            if not len(y):
                continue
            logits = model(*xs)
            k = num_classes or logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(k, k, dtype=torch.int64)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
            idx = y * k + logits.argmax(1)
            confusion += torch.bincount(idx, minlength=k * k).view(k, k)
    model.train(was_training)
    confusion, loss_sum, n, skipped = sum_over_ranks(confusion, loss_sum, n, dict(batches.skipped))
    if confusion is None:
        return {"val_loss": None, "val_accuracy": None, "per_class_accuracy": [], "confusion": [],
                "val_samples": 0, "skipped": skipped}  # fmt: skip
    per_class = confusion.diag() / confusion.sum(1).clamp_min(1)
    return {
        "val_loss": loss_sum / n,
        "val_accuracy": int(confusion.diag().sum()) / n,
        "per_class_accuracy": [
            float(a) if int(c) else None for a, c in zip(per_class, confusion.sum(1), strict=True)
        ],
        "confusion": confusion.tolist(),
        "val_samples": n,
        "skipped": skipped,
    }


class _Subset:
    """What :func:`fit` does with a :class:`Reselection` (nothing without one): the first
    subset selected before the schedule's length is taken, one per epoch after, and the
    dataset's own selection given back at the end."""

    def __init__(self, reselect: Reselection | None, loader: Any, saved: dict | None) -> None:
        self.reselect = reselect
        self.dataset = getattr(loader, "dataset", loader)
        self.before: list[str] | None = None
        if reselect is None:
            return
        if not hasattr(self.dataset, "select"):
            raise TypeError(
                "fit(reselect=...) needs a training dataset with select(keys), such as "
                f"datapipe.stream's; got {type(self.dataset).__name__}"
            )
        if saved is not None:
            if saved.get("reselect") is None:
                raise ResumeMismatch("the checkpoint was written without reselect")
            try:
                reselect.load_state(saved["reselect"])
            except ValueError as exc:
                raise ResumeMismatch(str(exc)) from None
        self.before = getattr(self.dataset, "selected", None)  # None: all (or cannot say)
        self.dataset.select([reselect.keys[i] for i in reselect.current])

    def begin(self, epoch: int, model: nn.Module, prepare: Prepare) -> dict[str, Any]:
        if self.reselect is None:
            return {}
        t0 = time.perf_counter()
        keys = self.reselect.begin_epoch(epoch, model, prepare)
        self.dataset.select(keys)
        entry = self.reselect.log[-1]
        return {
            "active_samples": len(keys),
            "rescored": entry["rescored"],
            "rescore_s": time.perf_counter() - t0,
        }

    def state(self) -> dict[str, Any] | None:
        return self.reselect.state() if self.reselect is not None else None

    def restore(self) -> None:
        """The dataset's selection as fit found it (what reads it next sees every sample)."""
        if self.reselect is not None:
            self.dataset.select(self.before)


def _check_resume(saved: dict[str, Any], config: TrainConfig, steps_per_epoch: int) -> None:
    old = saved["config"]
    diffs = [f"{k}: {old.get(k)!r} -> {getattr(config, k)!r}" for k in RESUME_KEYS
             if old.get(k) != getattr(config, k)]  # fmt: skip
    if saved["steps_per_epoch"] != steps_per_epoch:
        diffs.append(f"steps per epoch: {saved['steps_per_epoch']} -> {steps_per_epoch}")
    if diffs:
        raise ResumeMismatch(
            "the checkpoint was written with other settings (" + "; ".join(diffs) + "); "
            "resume with the same ones, or pass resume=False (or another checkpoint_dir) to "
            "start again"
        )


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
    inputs: Inputs | None = None,
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    reselect: Reselection | None = None,
) -> TrainResult:
    """Train ``model`` on CPU, deterministically; returns a :class:`TrainResult`.

    ``inputs`` turns each batch into the model's arguments (default:
    :class:`~datapipe.train.inputs.PixelInputs` of ``config.field`` and ``config.label``);
    its augmentation draws from torch's RNG, which the checkpoints carry. ``loss(logits,
    labels)`` is the training loss (default: cross-entropy; a distillation loss, for one).

    Seeds torch, numpy and ``random`` with ``config.seed``, sets ``config.threads`` and
    ``torch.use_deterministic_algorithms(True)`` (both restored on return), and calls
    ``set_epoch(epoch)`` on the loader's dataset when it has one. The initial weights are
    the model's: seed before building it. After every epoch ``checkpoint_dir/checkpoint.pt``
    is replaced and ``log`` receives the epoch's record. With an existing checkpoint (and
    ``resume``), training goes on from it and ends with the same weights, bit for bit, as an
    uninterrupted run; one written with other settings is a :class:`ResumeMismatch`.
    ``len(train_loader)`` sets the length of the cosine schedule.

    ``reselect`` (a :class:`~datapipe.train.reselect.Reselection`) re-chooses the training
    subset before each epoch: the loader's dataset must have ``select(keys)`` (the streams of
    :mod:`datapipe.stream` do); each epoch's record gains ``active_samples``, ``rescored``
    and ``rescore_s``, the checkpoint carries the policy's state, and ``reselect.log`` lists
    every epoch's keys (a resumed run chooses the same ones); at the end the dataset's own
    selection is back.

    Distributed (under ``torchrun``, once ``torch.distributed.init_process_group`` ran with
    more than one process), pass the plain model (or one already in
    ``DistributedDataParallel``): fit wraps it in DDP for training, which starts every rank
    from rank 0's weights and averages the gradients, and keeps ``model`` (its ``.module``)
    for everything else. Each rank passes its own share of the data (``from_shards`` splits
    it by rank) and every rank must yield the same number of training batches (a filtered
    stream such as :class:`~datapipe.train.KeyFilter` does not promise that: train on an
    output of its own). The normalisation is rank 0's, broadcast; after each epoch the
    buffers are rank 0's on every rank; training and validation figures are summed over
    ranks, so every rank returns the same result and the same weights. Only rank 0 writes
    the checkpoint (the others wait for it); ``checkpoint_dir`` must be on storage every
    rank reads, and a resume restores rank 0's RNG state on every rank.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        inputs = inputs or PixelInputs(config.field, config.label)
        return _fit(
            model,
            train_loader,
            val_loader,
            config,
            inputs,
            checkpoint_dir,
            log,
            resume,
            loss,
            reselect,
        )
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    config: TrainConfig,
    inputs: Inputs,
    checkpoint_dir: str | Path | None,
    log: Callable[[dict[str, Any]], None] | None,
    resume: bool,
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    reselect: Reselection | None = None,
) -> TrainResult:
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    model = unwrap(model)  # the module itself: saved, loaded, measured and evaluated
    saved = load_checkpoint(checkpoint_dir) if checkpoint_dir is not None and resume else None
    subset = _Subset(reselect, train_loader, saved)  # before len(): the epochs' subset size
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total_steps = config.epochs * steps_per_epoch
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    start, history, skipped = 0, [], Counter()
    if saved is not None:
        _check_resume(saved, config, steps_per_epoch)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        config = TrainConfig.from_dict(saved["config"])
        start, history = saved["epoch"], list(saved["history"])
        skipped.update(saved["skipped"])
        inputs.load_state(saved["inputs"])
        logger.info("resuming from %s after epoch %d", checkpoint_dir, start)
    elif config.mean is None:
        _set_epoch(train_loader, 0)
        stats = Batches(config, inputs)
        seen = []
        for batch in islice(train_loader, config.stats_batches):
            xs, y = stats(batch, train=False, norm=False)
            if len(y):
                seen.append(xs)
        mean, std = broadcast_object(input_stats(seen, getattr(inputs, "std_floor", 1e-3)))
        config = TrainConfig.from_dict({**config.to_dict(), "mean": mean, "std": std})
    batches = Batches(config, inputs)
    net = wrap(model)  # DistributedDataParallel when distributed
    for epoch in range(start, config.epochs):
        _set_epoch(train_loader, epoch)
        lr = optimizer.param_groups[0]["lr"]
        record: dict[str, Any] = {"epoch": epoch, "lr": lr}
        record.update(subset.begin(epoch, model, lambda b: batches(b, train=False)))
        batches.skipped = Counter()
        record.update(
            train_one_epoch(net, train_loader, batches, optimizer, scheduler, total_steps, loss)
        )
        record["input_shapes"] = inputs.describe()["shapes"]  # sizes can change by epoch
        skipped.update(sum_over_ranks(dict(batches.skipped))[0])
        sync_buffers(model)
        t0 = time.perf_counter()
        _set_epoch(val_loader, 0)
        val = evaluate(model, val_loader, config, inputs=inputs)
        record.update(val_loss=val["val_loss"], val_accuracy=val["val_accuracy"])
        record["val_s"] = time.perf_counter() - t0
        history.append(record)
        if checkpoint_dir is not None and rank() == 0:
            save_checkpoint(checkpoint_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                "history": history, "config": config.to_dict(), "skipped": dict(skipped),
                "steps_per_epoch": steps_per_epoch, "inputs": inputs.state(),
                "spec": dict(getattr(model, "spec", {})), "reselect": subset.state(),
            })  # fmt: skip
        barrier()  # a resume on any rank finds the complete checkpoint
        logger.info("epoch %d: %s", epoch, {k: record[k] for k in ("train_loss", "val_accuracy")})
        if log is not None:
            log(record)
    subset.restore()
    final = evaluate(model, val_loader, config, inputs=inputs)
    shapes = inputs.describe()["shapes"]
    input_shape: list[Any] = shapes[0] if len(shapes) == 1 else shapes
    train_s = sum(r["train_s"] for r in history)
    return TrainResult(
        config=config,
        history=history,
        final=final,
        steps=sum(r["steps"] for r in history),
        wall_s=sum(r["train_s"] + r["val_s"] for r in history),
        train_samples_per_s=sum(r["samples"] for r in history) / max(train_s, 1e-9),
        data_wait_fraction=sum(r["data_s"] for r in history) / max(train_s, 1e-9),
        params=count_params(model),
        macs=count_macs(model, input_shape) if input_shape else 0,
        cpu_latency_ms=cpu_latency_ms(model, input_shape) if input_shape else {},
        input_shape=input_shape,
        skipped=dict(skipped),
        resumed_from_epoch=start,
    )
