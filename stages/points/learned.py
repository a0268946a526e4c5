"""``points.learned_fit`` (Fit) trains an S-NET sampler; ``points.learned`` (Map) applies it.

The Fit stage sees the light view of every cloud that reaches it (``points`` and ``label``),
trains a PointNet task network and then S-NET for ``m`` points, and hands the sampler's
weights on. Pass ``weights:`` to load a saved sampler instead (``torch.load`` with
``weights_only=True``, so a weights file cannot run code); ``save:`` writes one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field as PField

from datapipe.errors import ConfigError, ItemError, Problem
from datapipe.fields import Field
from datapipe.stage import Context, FilePath, Fit, Map, NodeRef, Params, Record, StageKind
from datapipe.stages.points.sampling import check_cloud


class LearnedFitParams(Params):
    m: int = PField(32, ge=1, le=4096, description="Points the sampler keeps.")
    epochs: int = PField(40, ge=1, description="Epochs for the task net and for S-NET each.")
    n_points: int = PField(512, ge=8, description="Points per cloud fed to the networks.")
    alpha: float = PField(30.0, ge=0, description="Weight of the simplification loss.")
    weights: FilePath | None = PField(
        None, description="Load this saved sampler (saved for this m) instead of training."
    )
    save: str | None = PField(None, description="Write the trained sampler here (torch file).")


class LearnedSamplerFit(Fit):
    """Train S-NET (task-aware point sampler) on the labelled clouds of the dataset."""

    name = "points.learned_fit"
    description = "Train a task-aware S-NET point sampler on labelled clouds."
    Params = LearnedFitParams
    CONSUMES = (Field("points", "float32|float64", "N 3"), Field("label", "str", ""))

    def fit(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> dict[str, Any]:
        import torch

        from datapipe.stages.points import snet

        p = self.params
        if p.weights:
            return load_sampler(ctx.resolve(p.weights), p.m, f"nodes.{ctx.node}.params.weights")
        clouds = [snet.normalize(np.asarray(c, dtype=np.float32)) for c in view["points"]]
        classes = sorted(set(view["label"]))
        if len(clouds) < 2 or len(classes) < 2:
            raise ConfigError(
                [
                    Problem(
                        f"nodes.{ctx.node}",
                        "training the sampler needs at least "
                        f"2 clouds of 2 classes; got {len(clouds)} of "
                        f"{len(classes)}",
                    )
                ]
            )
        labels = np.array([classes.index(label) for label in view["label"]])
        cfg = snet.TrainConfig(n_points=p.n_points, epochs=p.epochs, alpha=p.alpha, seed=ctx.seed)
        task = snet.train_task_net(clouds, labels, len(classes), cfg)
        sampler = snet.train_snet(clouds, labels, task, p.m, cfg)
        weights = {k: v.detach().numpy().copy() for k, v in sampler.state_dict().items()}
        if p.save:
            torch.save(
                {"m": torch.tensor(p.m), **{k: torch.from_numpy(v) for k, v in weights.items()}},
                ctx.resolve(p.save),
            )
        return {"m": p.m, "weights": weights}


def load_sampler(path: Path, m: int, where: str) -> dict[str, Any]:
    """The fitted state of a saved sampler (``torch.load`` with ``weights_only``), checked:
    a file that is not a sampler, one saved for another budget than ``m``, or weights that
    do not fit an S-NET of ``m`` points are a :class:`ConfigError` at ``where``."""
    import torch

    from datapipe.stages.points.snet import SNet

    def refuse(why: str) -> ConfigError:
        return ConfigError([Problem(where, f"{path}: {why}")])

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and torch raise many kinds for a file of another kind
        raise refuse(f"cannot load it as a saved sampler ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "m" not in state:
        raise refuse("not a sampler saved by points.learned_fit (no 'm' in it)")
    saved_m = int(state["m"])
    if saved_m != m:
        raise refuse(
            f"a sampler for m={saved_m} points, but the node's m is {m}: set m: {saved_m}, "
            "or train a sampler for this budget"
        )
    weights = {k: v for k, v in state.items() if k != "m"}
    try:
        SNet(m).load_state_dict(weights)
    except (RuntimeError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise refuse(f"its weights do not fit an S-NET of m={m}: {first}") from None
    return {"m": m, "weights": {k: v.numpy() for k, v in weights.items()}}


#: a param naming the points.learned_fit node whose state this stage reads (checked by validate)
SamplerNode = Annotated[str, NodeRef(StageKind.FIT, ("points.learned_fit",))]


class LearnedParams(Params):
    fit_node: SamplerNode = PField("sampler", description="The points.learned_fit node to use.")
    field: str = PField("points", description="The (N, 3) field to sample.")


_models: dict[tuple[str, int], Any] = {}


def _sampler(state: Mapping[str, Any], node: str) -> Any:
    """The S-NET built from a fitted state, once per process."""
    import torch

    from datapipe.stages.points.snet import SNet

    key = (node, id(state))
    if key not in _models:
        net = SNet(int(state["m"]))
        net.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in state["weights"].items()}
        )
        _models.clear()
        _models[key] = net.eval()
    return _models[key]


class LearnedPoints(Map):
    """Keep the points a trained S-NET picks (matched to distinct input points)."""

    name = "points.learned"
    description = "Keep the points chosen by a trained S-NET sampler (a subset of the input)."
    Params = LearnedParams

    def consumes(self) -> tuple[Field, ...]:
        return (Field(self.params.field, "float32|float64", "N 3"),)

    def produces(self) -> tuple[Field, ...]:
        return (
            Field(self.params.field, "float32|float64", "M 3"),
            Field("point_idx", "int64", "M"),
        )

    def process(self, record: Record, ctx: Context) -> Record:
        from datapipe.stages.points.snet import sample_learned

        state = ctx.fitted.get(self.params.fit_node)
        if state is None:
            raise ItemError("invalid", f"no fitted sampler from node {self.params.fit_node!r}")
        pts = check_cloud(record[self.params.field], int(state["m"]))
        idx = sample_learned(pts, _sampler(state, self.params.fit_node))
        return {self.params.field: pts[idx], "point_idx": idx}
