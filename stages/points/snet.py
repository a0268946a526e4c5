"""Learned, task-aware point samplers: S-NET (Dovrat et al., "Learning to Sample", CVPR 2019)
and SampleNet's soft projection (Lang et al., CVPR 2020).

A sampler network reads a cloud and *generates* ``m`` points. It is trained against a
frozen task network (a PointNet classifier, :mod:`~datapipe.stages.points.snet_train`):

- S-NET: task loss on the generated points plus the simplification loss (generated points
  close to the input, the input covered by them);
- SampleNet: the task loss is taken on the generated points *softly projected* onto the
  input (each one a softmax-weighted mean of its ``k`` nearest input points, with a learned
  temperature that a projection loss drives down), so training sees nearly the subset that
  inference will use.

At inference every generated point is matched to its nearest input point; duplicates are
dropped and the set is filled up to ``m`` by farthest point sampling from the points already
chosen (the reference's matching). The output is a subset of the input: indices, in order.

Every cloud is normalised (centred, unit max radius) before it enters a network; the
chosen points are returned as indices, so the caller keeps them in the cloud's own frame.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn

#: the sampler backbone's per-point widths and head widths, as in Dovrat et al. (x width/64)
BACKBONE = (64, 64, 64, 128, 128)
HEAD = (256, 256, 256)


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre a cloud and scale it to unit max radius (float32)."""
    p = np.asarray(points, dtype=np.float64)
    p = p - p.mean(0)
    r = np.sqrt((p**2).sum(1)).max()
    return (p / (r if r > 0 else 1.0)).astype(np.float32)


#: SampleNet's starting ``t``: ``t^2 = 0.01`` is on the scale of the squared distances to the
#: 7 nearest neighbours in a unit-radius cloud of 1024 points (0.001-0.007 here), so the soft
#: projection is selective, and its gradient informative, from the first step. From ``t = 1``
#: (the reference's start, for 150k+ steps) it stays a plain 7-neighbour mean for the few
#: thousand steps affordable here: the task then hardly steers the generated points.
INITIAL_TEMPERATURE = 0.1


class SNet(nn.Module):
    """Generates ``m`` points ``(B, m, 3)`` from a cloud ``(B, N, 3)``.

    A PointNet encoder (1x1 convolutions ``64, 64, 64, 128, 128`` with batch norm, max pool)
    and a fully connected head ``256, 256, 256`` with batch norm, then ``3 m`` outputs.
    ``width`` scales every layer (64 is the paper's). ``temperature`` holds SampleNet's
    ``t`` (used only when training with soft projection), from :data:`INITIAL_TEMPERATURE`.
    """

    def __init__(self, m: int, width: int = 64) -> None:
        super().__init__()
        if m < 1 or width < 1:
            raise ValueError(f"SNet needs m >= 1 and width >= 1; got m={m}, width={width}")
        self.m = m
        self.width = width
        convs = [3] + [c * width // 64 for c in BACKBONE]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(convs):
            layers += [nn.Conv1d(a, b, 1, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        fcs = [convs[-1]] + [c * width // 64 for c in HEAD]
        head: list[nn.Module] = []
        for a, b in itertools.pairwise(fcs):
            head += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*head, nn.Linear(fcs[-1], 3 * m))
        self.temperature = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))

    def forward(self, pts: Tensor) -> Tensor:
        f = self.features(pts.transpose(1, 2)).amax(dim=2)
        return self.head(f).view(-1, self.m, 3)


def simplification_loss(generated: Tensor, cloud: Tensor) -> Tensor:
    """S-NET's loss: mean and max nearest distance from generated to input, plus the mean
    nearest distance from input to generated (squared distances)."""
    d = torch.cdist(generated, cloud) ** 2  # (B, m, N)
    g2c = d.min(dim=2).values
    c2g = d.min(dim=1).values
    return g2c.mean() + g2c.max(dim=1).values.mean() + c2g.mean()


#: the smallest t^2 of the soft projection (it becomes a nearest-neighbour pick well before)
MIN_TEMPERATURE = 1e-4


def soft_project(generated: Tensor, cloud: Tensor, t2: Tensor, k: int = 7) -> Tensor:
    """SampleNet's soft projection: each generated point ``(B, m, 3)`` becomes the mean of its
    ``k`` nearest points of ``cloud`` ``(B, N, 3)`` weighted by ``softmax(-d^2 / t^2)``.

    As ``t^2`` falls the weights concentrate on the nearest point: a hard selection.
    """
    k = min(k, cloud.shape[1])
    d = torch.cdist(generated, cloud) ** 2  # (B, m, N)
    dk, idx = d.topk(k, dim=2, largest=False)  # (B, m, k)
    neighbours = torch.gather(
        cloud.unsqueeze(1).expand(-1, generated.shape[1], -1, -1),
        2,
        idx.unsqueeze(-1).expand(-1, -1, -1, 3),
    )  # (B, m, k, 3)
    w = torch.softmax(-dk / t2.clamp(min=MIN_TEMPERATURE), dim=2)
    return (w.unsqueeze(-1) * neighbours).sum(dim=2)


def fps_fill(cloud: np.ndarray, chosen: np.ndarray, m: int) -> np.ndarray:
    """``chosen`` (distinct indices) extended to ``m`` by farthest point sampling: each new
    point is the one farthest from all chosen so far (ties: the smallest index)."""
    out = list(chosen)
    if len(out) >= m:
        return np.asarray(out[:m], np.int64)
    pts = cloud.astype(np.float64, copy=False)
    d = cKDTree(pts[chosen]).query(pts)[0] ** 2 if len(out) else np.full(len(pts), np.inf)
    d[chosen] = -1.0
    while len(out) < m:
        j = int(np.argmax(d))
        out.append(j)
        d = np.minimum(d, ((pts - pts[j]) ** 2).sum(1))
        d[j] = -1.0
    return np.asarray(out, np.int64)


def match_to_input(generated: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Indices of ``len(generated)`` distinct input points: each generated point's nearest
    input point (first occurrence kept where two share one), then farthest point sampling
    from those to fill the places of the duplicates."""
    nearest = cKDTree(cloud.astype(np.float64)).query(generated.astype(np.float64))[1]
    _, first = np.unique(nearest, return_index=True)
    return fps_fill(cloud, nearest[np.sort(first)], len(generated))


def sample_learned(points: np.ndarray, snet: SNet) -> np.ndarray:
    """The ``snet.m`` input points a trained sampler chooses (see the module docstring).

    Returns
    -------
    numpy.ndarray
        int64 (snet.m,), distinct indices into ``points`` (N, 3).

    Examples
    --------
    >>> from datapipe import ops
    >>> _ = torch.manual_seed(0)
    >>> snet = SNet(m=4, width=8).eval()  # untrained here: snet_train.train_sampler trains one
    >>> pts = np.random.default_rng(0).normal(size=(32, 3))
    >>> idx = ops.sample_learned_points(pts, snet)
    >>> idx.shape, len(set(idx.tolist()))
    ((4,), 4)
    """
    if len(points) < snet.m:
        raise ValueError(f"cannot sample {snet.m} of {len(points)} points")
    cloud = normalize(points)
    with torch.no_grad():
        gen = snet.eval()(torch.from_numpy(cloud)[None])[0].numpy()
    return match_to_input(gen, cloud)
