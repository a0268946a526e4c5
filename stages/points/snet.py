"""A learned, task-aware point sampler (S-NET, Dovrat et al., "Learning to Sample", CVPR 2019).

A small PointNet classifier is the task network. S-NET, a PointNet encoder with a fully
connected head, generates ``m`` points per cloud; it is trained with the frozen task
network's loss on the generated points plus the simplification loss (generated points close
to the input, the input covered by them). At inference every generated point is matched to
its nearest *unused* input point, so the output is a subset of the input without duplicates.

Clouds are normalised (centred, unit max radius) before entering either network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre a cloud and scale it to unit max radius (float32)."""
    p = np.asarray(points, dtype=np.float64)
    p = p - p.mean(0)
    r = np.sqrt((p**2).sum(1)).max()
    return (p / (r if r > 0 else 1.0)).astype(np.float32)


def resample(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points drawn from the cloud (without replacement when it has enough)."""
    idx = rng.choice(len(points), size=n, replace=len(points) < n)
    return points[idx]


class PointNet(nn.Module):
    """Shared per-point MLP, max pool, then a head: the PointNet classifier / encoder."""

    def __init__(self, out_dim: int, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(3, width, 1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width * 2, 1),
            nn.BatchNorm1d(width * 2),
            nn.ReLU(),
            nn.Conv1d(width * 2, width * 4, 1),
            nn.BatchNorm1d(width * 4),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Linear(width * 4, width * 2), nn.ReLU(), nn.Linear(width * 2, out_dim)
        )

    def forward(self, pts: torch.Tensor) -> torch.Tensor:  # (B, N, 3) -> (B, out_dim)
        return self.head(self.features(pts.transpose(1, 2)).max(dim=2).values)


class SNet(nn.Module):
    """Generates ``m`` points (B, m, 3) from a cloud (B, N, 3)."""

    def __init__(self, m: int, width: int = 64) -> None:
        super().__init__()
        self.m = m
        self.net = PointNet(3 * m, width)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.net(pts).view(-1, self.m, 3)


def simplification_loss(generated: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
    """S-NET's loss: mean and max nearest distance from generated to input, plus the mean
    nearest distance from input to generated (squared distances)."""
    d = torch.cdist(generated, cloud) ** 2  # (B, m, N)
    g2c = d.min(dim=2).values
    c2g = d.min(dim=1).values
    return g2c.mean() + g2c.max(dim=1).values.mean() + c2g.mean()


def match_to_input(generated: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Indices of input points, one per generated point, nearest first, never reused."""
    d = ((generated[:, None, :] - cloud[None, :, :]) ** 2).sum(-1)  # (m, N)
    order = np.argsort(d, axis=1)
    used = np.zeros(len(cloud), bool)
    out = np.empty(len(generated), np.int64)
    for g in np.argsort(d.min(1)):  # confident matches first
        for j in order[g]:
            if not used[j]:
                used[j], out[g] = True, j
                break
    return out


@dataclass
class TrainConfig:
    n_points: int = 512
    epochs: int = 40
    batch: int = 32
    lr: float = 1e-3
    alpha: float = 30.0  # weight of the simplification loss
    seed: int = 0


def _batches(n: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    return [perm[i : i + batch] for i in range(0, n, batch)]


def train_task_net(
    clouds: list[np.ndarray], labels: np.ndarray, n_classes: int, cfg: TrainConfig
) -> PointNet:
    """A PointNet classifier on normalised, resampled clouds."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = PointNet(n_classes)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    y = torch.as_tensor(labels, dtype=torch.long)
    for _ in range(cfg.epochs):
        net.train()
        for idx in _batches(len(clouds), cfg.batch, rng):
            if len(idx) < 2:
                continue
            x = torch.from_numpy(np.stack([resample(clouds[i], cfg.n_points, rng) for i in idx]))
            loss = nn.functional.cross_entropy(net(x), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def train_snet(
    clouds: list[np.ndarray], labels: np.ndarray, task: PointNet, m: int, cfg: TrainConfig
) -> SNet:
    """S-NET for a frozen task network: task loss + alpha * simplification loss."""
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    snet = SNet(m)
    opt = torch.optim.Adam(snet.parameters(), lr=cfg.lr)
    for p in task.parameters():
        p.requires_grad_(False)
    y = torch.as_tensor(labels, dtype=torch.long)
    for _ in range(cfg.epochs):
        snet.train()
        for idx in _batches(len(clouds), cfg.batch, rng):
            if len(idx) < 2:
                continue
            x = torch.from_numpy(np.stack([resample(clouds[i], cfg.n_points, rng) for i in idx]))
            gen = snet(x)
            loss = nn.functional.cross_entropy(task(gen), y[idx]) + cfg.alpha * (
                simplification_loss(gen, x)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return snet.eval()


def sample_learned(points: np.ndarray, snet: SNet) -> np.ndarray:
    """The ``snet.m`` input points a trained S-NET sampler chooses (:func:`train_snet`).

    Each generated point is matched to its nearest unused input point.

    Returns
    -------
    numpy.ndarray
        int64 (snet.m,), distinct indices into ``points`` (N, 3).

    Examples
    --------
    >>> from datapipe import ops
    >>> _ = torch.manual_seed(0)
    >>> snet = SNet(m=4, width=8).eval()  # untrained here: train_snet trains one
    >>> pts = np.random.default_rng(0).normal(size=(32, 3))
    >>> idx = ops.sample_learned_points(pts, snet)
    >>> idx.shape, len(set(idx.tolist()))
    ((4,), 4)
    """
    if len(points) < snet.m:
        raise ValueError(f"cannot sample {snet.m} of {len(points)} points")
    cloud = normalize(points)
    with torch.no_grad():
        gen = snet(torch.from_numpy(cloud)[None])[0].numpy()
    return match_to_input(gen, cloud)
