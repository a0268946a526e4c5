"""Knowledge distillation (Hinton et al. 2015): a student learns from a teacher's softened
outputs as well as from the labels.

The teacher's logits are computed once per training sample before the student trains
("offline" distillation: the teacher runs once, not once per epoch), and looked up by sample
key while the student trains; :class:`DistillInputs` wraps the student's inputs so that the
loop's loss (:meth:`DistillInputs.loss`, passed to :func:`~datapipe.train.fit` as ``loss``)
sees the teacher's logits of exactly the samples the student's inputs kept::

    targets = {key: teacher_logits_of(key) for key in train_keys}
    inputs = DistillInputs(DctInputs(...), targets, alpha=0.5, temperature=4.0)
    loader = DataLoader(train, batch_size=64, collate_fn=list)  # sample dicts, keys kept
    fit(student, loader, val_loader, config, inputs=inputs, loss=inputs.loss)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from datapipe.train.inputs import Batch, Inputs


def distillation_loss(
    student: Tensor, teacher: Tensor, y: Tensor, alpha: float, temperature: float
) -> Tensor:
    """``(1 - alpha) * CE(student, y) + alpha * T² * KL(p_teacher^T || p_student^T)``, the
    batch mean; ``p^T`` is the softmax at temperature ``T``. The ``T²`` keeps the soft term's
    gradients on the scale of the hard term's as ``T`` changes (Hinton et al., section 2)."""
    hard = nn.functional.cross_entropy(student, y)
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student / temperature, dim=1),
        nn.functional.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * hard + alpha * temperature**2 * soft


class DistillInputs:
    """The student's :class:`~datapipe.train.inputs.Inputs`, plus the teacher's logits of the
    samples each training batch keeps (see the module docstring).

    Training batches must be lists of sample dicts carrying ``key`` (``collate_fn=list``): the
    samples go through the student's inputs one by one, so that a sample the student leaves
    out is left out of the teacher's side too. A training sample the teacher has no logits for
    (its inputs were unusable to the teacher) is left out and counted as ``no_teacher``.
    Evaluation batches (``train=False``) pass straight to the student's inputs."""

    def __init__(
        self,
        inputs: Inputs,
        targets: Mapping[str, Tensor],
        *,
        alpha: float = 0.5,
        temperature: float = 4.0,
    ) -> None:
        if not 0 <= alpha <= 1 or temperature <= 0:
            raise ValueError(f"alpha must be in [0, 1] and temperature > 0: {alpha}, {temperature}")
        self.inputs = inputs
        self.label = inputs.label
        self.targets = targets
        self.alpha = alpha
        self.temperature = temperature
        self.teacher_logits = torch.empty(0)

    def __call__(
        self, batch: Batch, *, train: bool, skipped: Counter
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        if not train:
            return self.inputs(batch, train=False, skipped=skipped)
        if isinstance(batch, Mapping):
            raise TypeError("distillation trains on lists of sample dicts: collate_fn=list")
        xs: list[tuple[Tensor, ...]] = []
        ys: list[Tensor] = []
        teacher: list[Tensor] = []
        for sample in batch:
            target = self.targets.get(sample.get("key"))  # type: ignore[arg-type]
            if target is None:
                skipped["no_teacher"] += 1
                continue
            x, y = self.inputs([sample], train=True, skipped=skipped)
            if len(y):
                xs.append(x)
                ys.append(y)
                teacher.append(target)
        if not ys:
            self.teacher_logits = torch.empty(0)
            return (), torch.empty(0, dtype=torch.int64)
        self.teacher_logits = torch.stack(teacher)
        return tuple(torch.cat(part) for part in zip(*xs, strict=True)), torch.cat(ys)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """:func:`distillation_loss` of the last training batch."""
        return distillation_loss(logits, self.teacher_logits, y, self.alpha, self.temperature)

    def state(self) -> dict[str, Any]:
        return self.inputs.state()

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.inputs.load_state(state)

    def describe(self) -> dict[str, Any]:
        return self.inputs.describe()
