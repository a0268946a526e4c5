"""Training for the learned samplers (:mod:`~datapipe.stages.points.snet`), as in the papers:
first a PointNet task network on full clouds, then a sampler against it, frozen.

Both run for a budget of optimiser steps (Adam) with a cosine learning-rate decay; each step
draws a batch of clouds (one pass over the shuffled set, then another) and resamples each to
``n_points`` (with replacement only for a cloud that has fewer: padding by repetition).
The task network sees the standard augmentation (rotation about z, scale, jitter); the
sampler sees the clouds as they are. Everything is seeded: the same inputs and config give
the same weights (``torch.use_deterministic_algorithms`` holds on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from datapipe.models import PointNet, pointnet
from datapipe.stages.points.snet import SNet, simplification_loss, soft_project

Method = Literal["snet", "samplenet"]


@dataclass
class TrainConfig:
    """Budgets and weights of the two trainings (defaults: the papers' ratios, CPU sizes)."""

    n_points: int = 1024  # points per cloud fed to both networks
    task_steps: int = 2000
    sampler_steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    alpha: float = 30.0  # weight of the simplification loss
    method: Method = "snet"
    proj_weight: float = 1.0  # SampleNet: weight of the projection loss t^2
    k: int = 7  # SampleNet: neighbours of the soft projection
    task_width: int = 32  # the task PointNet's width (64 is the paper's)
    sampler_width: int = 64  # the sampler's width (64 is the paper's)
    tnet: bool = False
    seed: int = 0


def steps_for_epochs(n_clouds: int, epochs: int, batch: int) -> int:
    """Optimiser steps for ``epochs`` passes over ``n_clouds`` in batches of ``batch``."""
    return max(1, epochs * max(1, n_clouds // batch))


def _resample(cloud: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return cloud[rng.choice(len(cloud), size=n, replace=len(cloud) < n)]


def _batches(
    clouds: Sequence[np.ndarray], steps: int, cfg: TrainConfig, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """``steps`` batches: indices and ``(B, n_points, 3)`` clouds, epoch after epoch."""
    batch = min(cfg.batch, len(clouds))
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch:
            order += rng.permutation(len(clouds)).tolist()
        idx, order = np.array(order[:batch]), order[batch:]
        x = np.stack([_resample(clouds[i], cfg.n_points, rng) for i in idx])
        yield idx, torch.from_numpy(x)


def _optimiser(params: Sequence[Tensor], steps: int, lr: float) -> tuple[torch.optim.Adam, Any]:
    opt = torch.optim.Adam(params, lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Per cloud: a random rotation about z, a scale in [0.8, 1.25], jitter of 0.01."""
    b = x.shape[0]
    a = torch.rand(b, generator=gen) * 2 * math.pi
    c, s, zero, one = a.cos(), a.sin(), torch.zeros(b), torch.ones(b)
    r = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], 1).view(b, 3, 3)
    scale = 0.8 + 0.45 * torch.rand(b, 1, 1, generator=gen)
    return (x @ r.transpose(1, 2)) * scale + 0.01 * torch.randn(x.shape, generator=gen)


def train_task_net(
    clouds: Sequence[np.ndarray], labels: np.ndarray, n_classes: int, cfg: TrainConfig
) -> PointNet:
    """A PointNet classifier on (normalised) clouds, with augmentation; returned in eval mode."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = pointnet(num_classes=n_classes, width=cfg.task_width, tnet=cfg.tnet)
    opt, sched = _optimiser(list(net.parameters()), cfg.task_steps, cfg.lr)
    y = torch.as_tensor(labels, dtype=torch.long)
    net.train()
    for idx, x in _batches(clouds, cfg.task_steps, cfg, rng):
        loss = nn.functional.cross_entropy(net(_augment(x, gen).transpose(1, 2)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def sampler_loss(sampler: SNet, task: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig) -> Tensor:
    """The training loss of a sampler on a batch of clouds ``x`` ``(B, N, 3)``."""
    gen = sampler(x)
    loss = cfg.alpha * simplification_loss(gen, x)
    if cfg.method == "samplenet":
        t2 = sampler.temperature**2
        gen = soft_project(gen, x, t2, cfg.k)
        loss = loss + cfg.proj_weight * t2
    return loss + nn.functional.cross_entropy(task(gen.transpose(1, 2)), y)


def train_sampler(
    clouds: Sequence[np.ndarray], labels: np.ndarray, task: nn.Module, m: int, cfg: TrainConfig
) -> SNet:
    """A sampler of ``m`` points for a frozen task network (``cfg.method``); eval mode."""
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    sampler = SNet(m, cfg.sampler_width)
    params = [
        p for n, p in sampler.named_parameters() if cfg.method == "samplenet" or n != "temperature"
    ]
    opt, sched = _optimiser(params, cfg.sampler_steps, cfg.lr)
    task.eval()
    for p in task.parameters():
        p.requires_grad_(False)
    y = torch.as_tensor(labels, dtype=torch.long)
    sampler.train()
    for idx, x in _batches(clouds, cfg.sampler_steps, cfg, rng):
        if len(idx) < 2:  # batch norm needs two clouds
            continue
        loss = sampler_loss(sampler, task, x, y[idx], cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return sampler.eval()
