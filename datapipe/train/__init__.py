"""A small, readable CPU training loop over streamed samples (no engine imports).

- :func:`fit` / :func:`evaluate`: deterministic training with per-epoch, atomically written
  checkpoints (``torch.load(weights_only=True)``) that resume bit for bit;
- :func:`split_by_key` and :class:`KeyFilter`: a stable, stratified train/validation split of
  one ``from_shards`` output by sample key;
- :func:`plot_curves`, :func:`plot_confusion`: PNG reports (the ``plot`` extra).

Examples
--------
>>> from datapipe.train import TrainConfig
>>> TrainConfig(epochs=2, batch_size=32).optimizer
'sgd'
"""

from __future__ import annotations

from datapipe.train.checkpoint import load_checkpoint, save_checkpoint, write_atomic
from datapipe.train.config import TrainConfig, TrainResult
from datapipe.train.data import KeyFilter, key_labels, prepare_batch, split_by_key
from datapipe.train.loop import ResumeMismatch, evaluate, fit, train_one_epoch
from datapipe.train.report import cpu_latency_ms, plot_confusion, plot_curves, torch_threads

__all__ = [
    "KeyFilter",
    "ResumeMismatch",
    "TrainConfig",
    "TrainResult",
    "cpu_latency_ms",
    "evaluate",
    "fit",
    "key_labels",
    "load_checkpoint",
    "plot_confusion",
    "plot_curves",
    "prepare_batch",
    "save_checkpoint",
    "split_by_key",
    "torch_threads",
    "train_one_epoch",
    "write_atomic",
]
