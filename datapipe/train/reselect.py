"""Re-selection during training: every few epochs the training subset is chosen again from
the signals of the model being trained (per-sample loss, EL2N, forgetting events, or a
k-center core-set of last-layer gradient embeddings).

:class:`Reselection` is the policy. Given the training keys and their classes it fixes a
budget of ``round(fraction * N)`` samples, split over the classes in proportion (largest
remainder, at least one per class: a budget that would drop a class is a ValueError). The
first ``every`` epochs train on a class-balanced random subset (scores from an untrained
model say nothing); then at each epoch ``e`` with ``e % every == 0`` it rescores every
training sample (or a random probe of ``probe`` of them) with the current model and draws
each class's quota without replacement, with probability proportional to the score (so
hard samples are likely and every class keeps its share: pure top-k by score is unstable).
``grad_kcenter`` instead keeps, per class, a greedy k-center core-set of the gradient
embeddings ``(softmax - onehot) x penultimate features`` (the last ``nn.Linear``'s input).

Scores, for sample ``i`` with logits ``z`` and label ``y``:

- ``loss``: the cross-entropy ``-log softmax(z)_y``;
- ``el2n``: ``||softmax(z) - onehot(y)||_2`` (Paul et al. 2021), bounded in [0, sqrt 2];
- ``forgetting``: the forgetting events (correct at one rescoring, wrong at the next; Toneva
  et al. 2019), observed at the rescoring passes rather than at every step; a sample never
  classified correctly counts as the most forgotten.

A score that is not finite (a diverged loss) counts as the highest finite score of its class
(the sample is treated as hard), and the number of such scores is logged and kept in
:attr:`Reselection.log`. A sample outside the probe keeps its last score (or its class's
mean, never scored). All draws are seeded by ``(seed, epoch)``; :meth:`state` and
:meth:`load_state` carry everything (tensors and plain lists, for ``torch.load(...,
weights_only=True)``), so a resumed run chooses the same subsets.

With :func:`~datapipe.train.fit` pass ``reselect=``; in one's own loop call
:meth:`Reselection.begin_epoch` before each epoch and give its keys to the stream's
``select``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from datapipe.strata import stratum_budgets

logger = logging.getLogger(__name__)

SCORES = ("loss", "el2n", "forgetting", "grad_kcenter")
#: a batch of samples -> (model inputs, labels) without augmentation; samples that cannot be
#: used are left out of both (see :class:`~datapipe.train.inputs.Inputs`)
Prepare = Callable[[list[Any]], tuple[tuple[Tensor, ...], Tensor]]


@dataclass(frozen=True)
class ReselectConfig:
    """``every`` epochs between rescorings, the ``fraction`` of the training samples each
    epoch reads, the ``score``, and ``probe`` (samples rescored, None: all)."""

    every: int = 2
    fraction: float = 0.5
    score: str = "el2n"
    probe: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            problems.append(f"'every' must be an int >= 1, got {self.every!r}")
        if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1):
            problems.append(f"'fraction' must be in (0, 1], got {self.fraction!r}")
        if self.score not in SCORES:
            problems.append(f"'score' must be one of {SCORES}, got {self.score!r}")
        if self.probe is not None and (
            isinstance(self.probe, bool) or not isinstance(self.probe, int) or self.probe < 1
        ):
            problems.append(f"'probe' must be None or an int >= 1, got {self.probe!r}")
        if problems:
            raise ValueError("reselect: " + "; ".join(problems))


def class_quotas(labels: np.ndarray, budget: int) -> dict[int, int]:
    """``budget`` split over the classes of ``labels`` in proportion to their counts
    (:func:`~datapipe.strata.stratum_budgets`, at least one each); ValueError when the budget
    cannot keep every class."""
    classes, counts = np.unique(labels, return_counts=True)
    if budget < len(classes):
        raise ValueError(
            f"reselect: a budget of {budget} of {len(labels)} samples would drop a whole class "
            f"({len(classes)} classes); raise 'fraction'"
        )
    return stratum_budgets(dict(zip(classes.tolist(), counts.tolist(), strict=True)), budget)


def sample_scores(logits: Tensor, labels: Tensor, score: str) -> np.ndarray:
    """Per-sample ``loss`` or ``el2n`` (float64, may hold NaN or inf)."""
    logits = logits.double()
    if score == "loss":
        return nn.functional.cross_entropy(logits, labels, reduction="none").numpy()
    onehot = nn.functional.one_hot(labels, logits.shape[1]).double()
    return torch.linalg.vector_norm(logits.softmax(1) - onehot, dim=1).numpy()


def gradient_embeddings(logits: Tensor, labels: Tensor, features: Tensor) -> np.ndarray:
    """The last linear layer's per-sample loss gradient, flattened: ``(softmax - onehot)``
    outer the layer's input (BADGE's embedding), float64 (N, C * D)."""
    err = logits.double().softmax(1) - nn.functional.one_hot(labels, logits.shape[1]).double()
    return torch.einsum("nc,nd->ncd", err, features.double()).flatten(1).numpy()


def greedy_kcenter(x: np.ndarray, k: int, first: int) -> np.ndarray:
    """Rows of ``x`` picked by greedy k-center (farthest first from row ``first``), in pick
    order; rows with non-finite values are never picked (nor kept as distances)."""
    finite = np.isfinite(x).all(axis=1)
    dist = np.where(finite, np.inf, -np.inf)
    picked = []
    c = first if finite[first] else int(np.argmax(finite))
    for _ in range(min(k, int(finite.sum()))):
        picked.append(c)
        d = np.sqrt(((x - x[c]) ** 2).sum(axis=1))
        dist = np.where(finite, np.minimum(dist, d), -np.inf)
        dist[picked] = -np.inf
        c = int(np.argmax(dist))
    return np.asarray(picked, dtype=np.int64)


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` (its input is the penultimate embedding)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("reselect score 'grad_kcenter' needs a model with an nn.Linear head")
    return linears[-1]


class Reselection:
    """The subset policy of the module docstring, over ``keys`` with class ``labels``.

    ``score_data``: the training samples as a stream with ``select(keys)`` (read in order,
    without augmentation) for the rescoring passes; ``workers``: DataLoader workers for them.
    """

    def __init__(
        self,
        config: ReselectConfig,
        keys: Sequence[str],
        labels: Sequence[int],
        score_data: Any,
        *,
        seed: int = 0,
        workers: int = 0,
        batch_size: int = 256,
    ) -> None:
        if len(keys) != len(labels) or not len(keys):
            raise ValueError("reselect needs one label per key, and some keys")
        order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
        self.keys = [keys[i] for i in order]
        self.labels = np.asarray(labels, dtype=np.int64)[order]
        self.config = config
        self.seed = seed
        self.score_data = score_data
        self.workers = workers
        self.batch_size = batch_size
        self.budget = max(1, round(config.fraction * len(self.keys)))
        self.quotas = class_quotas(self.labels, self.budget)
        self.budget = sum(self.quotas.values())
        n = len(self.keys)
        self.scores = np.full(n, np.nan)
        self.scored = np.zeros(n, dtype=bool)
        self.correct = np.zeros(n, dtype=bool)
        self.ever_correct = np.zeros(n, dtype=bool)
        self.forgets = np.zeros(n, dtype=np.int64)
        self.current = self._balanced_random(0)
        #: one entry per epoch begun: epoch, whether it rescored, the keys, non-finite scores
        self.log: list[dict[str, Any]] = []

    # -- the epoch's subset ---------------------------------------------------------------------
    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` starts with a rescoring."""
        return epoch > 0 and epoch % self.config.every == 0 and self.budget < len(self.keys)

    def begin_epoch(self, epoch: int, model: nn.Module, prepare: Prepare) -> list[str]:
        """The keys to train on in ``epoch`` (rescoring with ``model`` first when due),
        logged in :attr:`log`."""
        t0, nonfinite = time.perf_counter(), 0
        if self.due(epoch):
            nonfinite = self.rescore(model, epoch, prepare)
        keys = [self.keys[i] for i in self.current]
        self.log = [e for e in self.log if e["epoch"] < epoch]  # a resumed epoch is redone
        self.log.append(
            {"epoch": epoch, "rescored": self.due(epoch), "nonfinite": nonfinite,
             "seconds": round(time.perf_counter() - t0, 4), "keys": keys}
        )  # fmt: skip
        return keys

    def _balanced_random(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, epoch, 17))
        picks = [
            rng.choice(np.flatnonzero(self.labels == c), q, replace=False)
            for c, q in self.quotas.items()
        ]
        return np.sort(np.concatenate(picks)).astype(np.int64)

    # -- rescoring ------------------------------------------------------------------------------
    def rescore(self, model: nn.Module, epoch: int, prepare: Prepare) -> int:
        """Score the candidates (all, or a probe) with ``model`` and choose the subset;
        returns how many scores were not finite."""
        n = len(self.keys)
        rng = np.random.default_rng((self.seed, epoch, 29))
        probe = self.config.probe
        cand = np.arange(n) if probe is None or probe >= n else np.sort(rng.choice(n, probe, False))
        got, logits, labels, feats = self._outputs(model, cand, prepare, epoch)
        if not len(got):
            logger.warning("reselect: no usable sample to score in epoch %d; subset kept", epoch)
            return 0
        if self.config.score == "grad_kcenter":
            emb = gradient_embeddings(logits, labels, feats)
            nonfinite = int((~np.isfinite(emb).all(axis=1)).sum())
            self.current = self._kcenter(got, emb, rng)
            return nonfinite
        if self.config.score == "forgetting":
            now = (logits.argmax(1) == labels).numpy()
            self.forgets[got] += self.correct[got] & ~now
            self.correct[got] = now
            self.ever_correct[got] |= now
            never = self.forgets.max(initial=0) + 1
            self.scores = np.where(self.ever_correct, self.forgets, never).astype(np.float64)
            self.scored[got] = True
            nonfinite = 0
        else:
            raw = sample_scores(logits, labels, self.config.score)
            nonfinite = int((~np.isfinite(raw)).sum())
            self.scores[got] = raw
            self.scored[got] = True
        if nonfinite:
            logger.warning("reselect: %d non-finite scores in epoch %d", nonfinite, epoch)
        self.current = self._weighted(rng)
        return nonfinite

    def _outputs(
        self, model: nn.Module, cand: np.ndarray, prepare: Prepare, epoch: int
    ) -> tuple[np.ndarray, Tensor, Tensor, Tensor]:
        """(indices scored, logits, labels, last-layer inputs) of the candidates that the
        inputs accept, the model in eval mode, the inputs of ``epoch`` (a resize schedule)."""
        from torch.utils.data import DataLoader

        index = {k: i for i, k in enumerate(self.keys)}
        self.score_data.select([self.keys[i] for i in cand])
        if hasattr(self.score_data, "set_epoch"):
            self.score_data.set_epoch(epoch)
        loader = DataLoader(
            self.score_data,
            batch_size=self.batch_size,
            collate_fn=list,
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(0),  # not the training RNG
        )
        feats: list[Tensor] = []
        hook = None
        if self.config.score == "grad_kcenter":
            hook = last_linear(model).register_forward_hook(
                lambda _m, args, _out: feats.append(args[0].detach().flatten(1))
            )
        was_training = model.training
        model.eval()
        got: list[int] = []
        outs: list[Tensor] = []
        ys: list[Tensor] = []
        try:
            with torch.no_grad():
                for batch in loader:
                    rows, kept = [], []
                    for sample in batch:  # one at a time: which samples the inputs keep
                        xs, y = prepare([sample])
                        if len(y):
                            rows.append(xs)
                            kept.append(index[sample["key"]])
                            ys.append(y)
                    if rows:
                        inputs = tuple(torch.cat(parts) for parts in zip(*rows, strict=True))
                        outs.append(model(*inputs))
                        got += kept
        finally:
            model.train(was_training)
            if hook is not None:
                hook.remove()
        if not got:
            empty = torch.empty(0)
            return np.empty(0, np.int64), empty, empty.long(), empty
        features = torch.cat(feats) if feats else torch.empty(0)
        return np.asarray(got, np.int64), torch.cat(outs), torch.cat(ys), features

    def _weighted(self, rng: np.random.Generator) -> np.ndarray:
        """Each class's quota drawn without replacement, probability proportional to score."""
        picks = []
        for c, q in self.quotas.items():
            members = np.flatnonzero(self.labels == c)
            s, scored = self.scores[members], self.scored[members]
            finite = np.isfinite(s) & scored
            if not finite.any():
                weights = np.ones(len(s))
            else:  # never scored: the class mean; scored but not finite (diverged): the top
                s = np.where(scored, s, s[finite].mean())
                s = np.where(np.isfinite(s), s, s[finite].max())
                weights = np.clip(s, 0, None)
                weights = weights + max(weights.mean(), 1e-12) * 1e-3  # zero scores stay drawable
            picks.append(rng.choice(members, q, replace=False, p=weights / weights.sum()))
        return np.sort(np.concatenate(picks)).astype(np.int64)

    def _kcenter(self, got: np.ndarray, emb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Per class a greedy k-center core-set of the scored samples' gradient embeddings,
        filled at random from the class when too few were scored."""
        picks = []
        for c, q in self.quotas.items():
            rows = np.flatnonzero(self.labels[got] == c)
            chosen = np.empty(0, np.int64)
            if len(rows):
                first = int(rng.integers(len(rows)))
                chosen = got[rows[greedy_kcenter(emb[rows], q, first)]]
            rest = np.setdiff1d(np.flatnonzero(self.labels == c), chosen)
            fill = rng.choice(rest, q - len(chosen), replace=False)
            picks.append(np.concatenate([chosen, fill]))
        return np.sort(np.concatenate(picks)).astype(np.int64)

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs (tensors and plain values)."""
        return {
            "config": asdict(self.config),
            "keys_digest": _digest(self.keys),
            "scores": torch.from_numpy(self.scores.copy()),
            "scored": torch.from_numpy(self.scored.copy()),
            "correct": torch.from_numpy(self.correct.copy()),
            "ever_correct": torch.from_numpy(self.ever_correct.copy()),
            "forgets": torch.from_numpy(self.forgets.copy()),
            "current": torch.from_numpy(self.current.copy()),
            "log": [dict(e) for e in self.log],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; ValueError when it was written for other keys or settings."""
        if state["config"] != asdict(self.config) or state["keys_digest"] != _digest(self.keys):
            raise ValueError("the checkpoint's reselection was made for other keys or settings")
        self.scores = state["scores"].numpy().copy()
        self.scored = state["scored"].numpy().copy()
        self.correct = state["correct"].numpy().copy()
        self.ever_correct = state["ever_correct"].numpy().copy()
        self.forgets = state["forgets"].numpy().copy()
        self.current = state["current"].numpy().copy()
        self.log = [dict(e) for e in state["log"]]


def _digest(keys: Iterable[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode() + b"\0")
    return h.hexdigest()[:16]
