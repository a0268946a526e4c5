"""``points.learned_fit`` (Fit) trains a task-aware point sampler; ``points.learned`` (Map)
applies it.

The Fit stage sees the light view of every cloud that reaches it (``points`` and ``label``),
trains a PointNet task network on the full clouds and then a sampler of ``m`` points against
it, frozen: S-NET (``method: snet``, Dovrat et al. 2019) or SampleNet's soft projection
(``method: samplenet``, Lang et al. 2020); see :mod:`~datapipe.stages.points.snet`. It hands
the sampler's weights on: they are the node's fitted state, so a new sampler redoes the
samples after it. Pass ``weights:`` to load a saved sampler instead (``torch.load`` with
``weights_only=True``, so a weights file cannot run code); ``save:`` writes one, and
``plot:`` draws a training cloud with the points the sampler keeps beside FPS's.

Clouds with fewer points than ``n_points`` are padded by repeating points when training;
``points.learned`` turns away a cloud with fewer than ``m`` points (an error row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field as PField

from datapipe.errors import ConfigError, ItemError, Problem
from datapipe.fields import Field
from datapipe.stage import Context, FilePath, Fit, Map, NodeRef, Params, Record, StageKind
from datapipe.stages.points.sampling import check_cloud


class LearnedFitParams(Params):
    m: int = PField(32, ge=1, le=4096, description="Points the sampler keeps.")
    epochs: int = PField(
        40, ge=1, description="Epochs for the task net and for the sampler each (cosine decay)."
    )
    n_points: int = PField(1024, ge=8, description="Points per cloud fed to the networks.")
    method: Literal["snet", "samplenet"] = PField(
        "snet", description="snet, or samplenet: train through SampleNet's soft projection."
    )
    width: int = PField(32, ge=4, le=256, description="Sampler width (64: the paper's).")
    alpha: float = PField(30.0, ge=0, description="Weight of the simplification loss.")
    weights: FilePath | None = PField(
        None, description="Load this saved sampler (for this m and n_points) instead of training."
    )
    save: str | None = PField(None, description="Write the trained sampler here (torch file).")
    plot: str | None = PField(
        None, description="Draw a cloud with the sampler's points and FPS's here (PNG)."
    )


class LearnedSamplerFit(Fit):
    """Train a task-aware point sampler (S-NET or SampleNet) on the labelled clouds."""

    name = "points.learned_fit"
    description = "Train a task-aware point sampler (S-NET / SampleNet) on labelled clouds."
    Params = LearnedFitParams
    CONSUMES = (Field("points", "float32|float64", "N 3"), Field("label", "str", ""))

    def fit(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> dict[str, Any]:
        p = self.params
        if p.weights:
            where = f"nodes.{ctx.node}.params.weights"
            state = load_sampler(ctx.resolve(p.weights), p.m, p.n_points, where)
        else:
            state = self._train(view, ctx)
        if p.save:
            save_sampler(state, ctx.resolve(p.save))
        if p.plot:
            self._draw(state, view["points"], ctx.resolve(p.plot))
        return state

    def _train(self, view: Mapping[str, Sequence[Any]], ctx: Context) -> dict[str, Any]:
        from datapipe.stages.points import snet, snet_train

        p = self.params
        usable = [i for i, c in enumerate(view["points"]) if _usable(c)]
        clouds = [snet.normalize(np.asarray(view["points"][i], np.float32)) for i in usable]
        label_of = [view["label"][i] for i in usable]
        classes = sorted(set(label_of))
        if len(clouds) < 2 or len(classes) < 2:
            raise ConfigError(
                [
                    Problem(
                        f"nodes.{ctx.node}",
                        "training the sampler needs at least 2 usable clouds (N x 3, "
                        f"finite, not empty) of 2 classes; got {len(clouds)} of "
                        f"{len(classes)}",
                    )
                ]
            )
        labels = np.array([classes.index(label) for label in label_of])
        steps = snet_train.steps_for_epochs(len(clouds), p.epochs, snet_train.TrainConfig.batch)
        cfg = snet_train.TrainConfig(
            n_points=p.n_points,
            task_steps=steps,
            sampler_steps=steps,
            alpha=p.alpha,
            method=p.method,
            sampler_width=p.width,
            seed=ctx.seed,
        )
        task = snet_train.train_task_net(clouds, labels, len(classes), cfg)
        sampler = snet_train.train_sampler(clouds, labels, task, p.m, cfg)
        weights = {k: v.detach().numpy().copy() for k, v in sampler.state_dict().items()}
        return {"m": p.m, "n_points": p.n_points, "width": p.width, "weights": weights}

    def _draw(self, state: Mapping[str, Any], clouds: Sequence[Any], path: Path) -> None:
        """The first usable cloud of at least ``m`` points, with the sampler's and FPS's picks."""
        from datapipe.stages.points.picture import draw_samplers
        from datapipe.stages.points.sampling import farthest_point_sample
        from datapipe.stages.points.snet import sample_learned

        m = int(state["m"])
        cloud = next((np.asarray(c) for c in clouds if len(c) >= m and _usable(c)), None)
        if cloud is None:
            return
        picks = {
            self.params.method: sample_learned(cloud, build_sampler(state)),
            "fps": farthest_point_sample(cloud, m, start=0),
        }
        draw_samplers(path, cloud, picks)


def _usable(cloud: Any) -> bool:
    """A cloud the sampler can train on; the others fail at ``points.learned`` (error rows)."""
    try:
        check_cloud(cloud)
    except ItemError:
        return False
    return True


#: what a saved sampler holds besides its weights
SAVED_KEYS = ("m", "n_points", "width")


def save_sampler(state: Mapping[str, Any], path: Path) -> None:
    """A fitted state as a torch file of tensors (loads with ``weights_only=True``)."""
    import torch

    tensors = {k: torch.tensor(int(state[k])) for k in SAVED_KEYS}
    tensors.update({k: torch.from_numpy(np.asarray(v)) for k, v in state["weights"].items()})
    torch.save(tensors, path)


def load_sampler(path: Path, m: int, n_points: int, where: str) -> dict[str, Any]:
    """The fitted state of a saved sampler (``torch.load`` with ``weights_only``), checked:
    a file that is not a sampler, one saved for another budget than ``m`` or another input
    size than ``n_points``, or weights that do not fit its S-NET are a :class:`ConfigError`
    at ``where``."""
    import torch

    def refuse(why: str) -> ConfigError:
        return ConfigError([Problem(where, f"{path}: {why}")])

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and torch raise many kinds for a file of another kind
        raise refuse(f"cannot load it as a saved sampler ({type(exc).__name__})") from None
    missing = [k for k in SAVED_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise refuse(f"not a sampler saved by points.learned_fit (no {missing[0]!r} in it)")
    state: dict[str, Any] = {k: int(saved[k]) for k in SAVED_KEYS}
    for key, value, param in (("m", m, "m"), ("n_points", n_points, "n_points")):
        if state[key] != value:
            raise refuse(
                f"a sampler for {key}={state[key]}, but the node's {param} is {value}: set "
                f"{param}: {state[key]}, or train a sampler for this "
                + ("budget" if key == "m" else "input size")
            )
    state["weights"] = {k: v.numpy() for k, v in saved.items() if k not in SAVED_KEYS}
    try:
        build_sampler(state)
    except (RuntimeError, TypeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise refuse(
            f"its weights do not fit an S-NET of m={m}, width={state['width']}: {first}"
        ) from None
    return state


def build_sampler(state: Mapping[str, Any]) -> Any:
    """The sampler network of a fitted state, in eval mode."""
    import torch

    from datapipe.stages.points.snet import SNet

    net = SNet(int(state["m"]), int(state["width"]))
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state["weights"].items()})
    return net.eval()


#: a param naming the points.learned_fit node whose state this stage reads (checked by validate)
SamplerNode = Annotated[str, NodeRef(StageKind.FIT, ("points.learned_fit",))]


class LearnedParams(Params):
    fit_node: SamplerNode = PField("sampler", description="The points.learned_fit node to use.")
    field: str = PField("points", description="The (N, 3) field to sample.")


_models: dict[tuple[str, int], Any] = {}


def _sampler(state: Mapping[str, Any], node: str) -> Any:
    """The sampler built from a fitted state, once per process."""
    key = (node, id(state))
    if key not in _models:
        _models.clear()
        _models[key] = build_sampler(state)
    return _models[key]


class LearnedPoints(Map):
    """Keep the points a trained sampler picks (matched to distinct input points)."""

    name = "points.learned"
    description = "Keep the points a trained S-NET or SampleNet sampler picks (a subset)."
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
