"""The training settings and what a run reports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adamw")
#: the settings a checkpoint must share with the run that resumes it (they define the schedule)
RESUME_KEYS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "seed", "label", "field")


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`~datapipe.train.fit` trains.

    ``optimizer``: ``"sgd"`` (momentum 0.9, Nesterov off) or ``"adamw"``; both with a cosine
    decay of the learning rate over all ``epochs * len(train_loader)`` steps, to 0.
    ``mean`` / ``std``: per-channel normalisation of images scaled to [0, 1]; when None, fit
    computes them once from the first ``stats_batches`` training batches of epoch 0 and puts
    them in ``TrainResult.config`` (use that config for :func:`~datapipe.train.evaluate`).
    ``threads``: ``torch.set_num_threads`` while training (results depend on it).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int = 2
    label: str = "label_id"
    field: str = "image"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    stats_batches: int = 4

    def __post_init__(self) -> None:
        problems = []

        def bad(name: str, must: str) -> None:
            got = getattr(self, name)
            problems.append(
                f"The '{name}' parameter of TrainConfig must be {must}. Got {got!r} instead."
            )

        for name in ("epochs", "batch_size", "threads", "stats_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "an int >= 1")
        if not self.lr > 0:
            bad("lr", "a float > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "a float >= 0")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"one of {OPTIMIZERS}")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "an int >= 0")
        if (self.mean is None) != (self.std is None) or (
            self.mean is not None and len(self.mean) != len(self.std or ())
        ):
            bad("std", "given with mean, one value per channel")
        if problems:
            raise ValueError("\n".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        for k in ("mean", "std"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`."""
        d = dict(d)
        for k in ("mean", "std"):
            d[k] = tuple(d[k]) if d.get(k) is not None else None
        return cls(**d)


@dataclass
class TrainResult:
    """What :func:`~datapipe.train.fit` reports (``to_dict()`` is JSON-able).

    ``history``: one dict per epoch (``epoch``, ``train_loss``, ``train_accuracy``,
    ``val_loss``, ``val_accuracy``, ``lr``, ``samples``, ``steps``, ``train_s``, ``data_s``,
    ``val_s``). ``data_wait_fraction``: time spent waiting for the next batch over the time
    of the training steps, waits included. ``cpu_latency_ms``: median forward time at
    ``config.threads`` for ``batch_1`` and ``batch_64`` (reported, never a pass criterion).
    ``macs``: multiply-accumulates of convs and linears for one input
    (:func:`~datapipe.models.count_macs`). ``skipped``: samples left out, by reason.
    """

    config: TrainConfig
    history: list[dict[str, Any]]
    final: dict[str, Any]
    steps: int
    wall_s: float
    train_samples_per_s: float
    data_wait_fraction: float
    params: int
    macs: int
    cpu_latency_ms: dict[str, float]
    input_shape: list[Any]
    skipped: dict[str, int] = field(default_factory=dict)
    resumed_from_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d
