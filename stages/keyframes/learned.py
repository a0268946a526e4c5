"""A learned key-frame scorer over cheap per-frame cues.

Three stages, wired ``files -> keyframes.cues -> keyframes.learned_fit -> keyframes.learned``:

- ``keyframes.cues`` (Map) reads each video once and gives ``frame_cues`` (float32, T x 7:
  packet size, picture type, motion energy, histogram change; see
  :func:`~datapipe.stages.keyframes.signals.frame_cues`) and ``frame_pts``.
- ``keyframes.learned_fit`` (Fit) sees the cues of every video and trains a logistic
  regression (scikit-learn, standardised cues, balanced classes) to tell key frames from the
  rest. Positives come from a file the user supplies (CSV or JSON of (video relpath, frame
  index); only the videos it names are used) or from a proxy signal: ``scene`` (the cuts
  :func:`~datapipe.stages.keyframes.index.scene_cuts` finds in the change cue at the
  ``keyframes.scene`` defaults) or ``motion`` (motion peaks 5 frames apart with more than
  twice the clip's median energy).
- ``keyframes.learned`` (Map) scores every frame and keeps the ``k`` best, no two closer
  than ``min_gap`` (:func:`~datapipe.stages.keyframes.index.top_k_with_gap`).

The model is a handful of numbers kept as JSON (:func:`save_weights`): nothing is pickled,
and a weights file is checked field by field when loaded (:func:`load_weights`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field as PField

from datapipe.errors import ConfigError, ItemError, Problem
from datapipe.fields import Field
from datapipe.keys import sanitize_key
from datapipe.stage import Context, FilePath, Fit, Map, NodeRef, Params, Record, StageKind
from datapipe.stages.keyframes import index as kix
from datapipe.stages.keyframes.decode import decode_selected, scan_frames
from datapipe.stages.keyframes.signals import (
    CUE_NAMES,
    MIN_SCENE_LEN,
    SCENE_THRESHOLD,
    frame_cues,
)
from datapipe.stages.keyframes.stages import (
    KEYFRAME_IDX,
    KEYFRAME_PTS,
    KEYFRAMES,
    VIDEO_DAMAGE,
    KeyFrameParams,
    VideoParams,
)

logger = logging.getLogger(__name__)

WEIGHTS_FORMAT = "datapipe.keyframes.scorer/1"
FRAME_CUES = Field("frame_cues", "float32", f"T {len(CUE_NAMES)}", "per-frame cues")
FRAME_PTS = Field("frame_pts", "float64", "T", "presentation time of every frame (s)")
KEYFRAME_SCORE = Field("keyframe_score", "float32", "K", "model score of each selected frame")


# -- the model ------------------------------------------------------------------------------------
def fit_scorer(
    cues: Sequence[np.ndarray],
    positives: Sequence[np.ndarray],
    *,
    regularization: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the scorer (a logistic regression) on per-clip cue arrays (T, 7), such as
    :func:`~datapipe.stages.keyframes.signals.frame_cues` gives, and bool (T) masks of the
    key frames.

    Raises ValueError when the frames hold no positive or no negative.

    Returns
    -------
    dict
        The JSON-able weights (``format``, the cue names, the standardisation ``mean`` and
        ``scale``, ``coef``, ``intercept``, what it was trained on), for
        :func:`score_frames` or :func:`save_weights`.

    Examples
    --------
    >>> from datapipe import ops
    >>> rng = np.random.default_rng(0)
    >>> cues = [rng.normal(size=(40, 7)).astype(np.float32)]  # one clip of 40 frames
    >>> positives = [cues[0][:, 3] > 0.5]  # key frames: the frames with the most motion
    >>> weights = ops.fit_keyframe_scorer(cues, positives)
    >>> weights["format"], len(weights["coef"]), weights["trained_on"]["frames"]
    ('datapipe.keyframes.scorer/1', 7, 40)
    """
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([np.asarray(c, dtype=np.float64) for c in cues])
    y = np.concatenate([np.asarray(p, dtype=bool) for p in positives])
    if x.ndim != 2 or x.shape[1] != len(CUE_NAMES) or len(x) != len(y):
        raise ValueError(f"cues must be (T, {len(CUE_NAMES)}) arrays matching the labels")
    if not np.isfinite(x).all():
        raise ValueError("the cues hold NaN or infinite values")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(
            f"training needs positive and negative frames; got {n_pos} positive of {len(y)}"
        )
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(
        C=regularization, class_weight="balanced", max_iter=1000, random_state=seed
    )
    model.fit((x - mean) / scale, y)
    return {
        "format": WEIGHTS_FORMAT,
        "cues": list(CUE_NAMES),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": model.coef_[0].astype(np.float64).tolist(),
        "intercept": float(model.intercept_[0]),
        "trained_on": {"clips": len(cues), "frames": len(y), "positives": n_pos},
    }


def check_weights(state: Mapping[str, Any]) -> dict[str, Any]:
    """Validate scorer weights (from a file or a Fit); returns them, or raises ValueError."""
    if not isinstance(state, Mapping) or state.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"not a key-frame scorer (expected format {WEIGHTS_FORMAT!r})")
    if list(state.get("cues", [])) != list(CUE_NAMES):
        raise ValueError(f"trained on other cues {state.get('cues')!r}; expected {CUE_NAMES}")
    for name in ("mean", "scale", "coef"):
        value = state.get(name)
        if not isinstance(value, list) or len(value) != len(CUE_NAMES):
            raise ValueError(f"{name!r} must be a list of {len(CUE_NAMES)} numbers")
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in value):
            raise ValueError(f"{name!r} holds a non-number or a non-finite value")
    if any(v == 0 for v in state["scale"]):
        raise ValueError("'scale' holds a zero")
    icpt = state.get("intercept")
    if not isinstance(icpt, (int, float)) or not np.isfinite(icpt):
        raise ValueError("'intercept' must be a finite number")
    return dict(state)


def score_frames(cues: np.ndarray, weights: Mapping[str, Any]) -> np.ndarray:
    """The probability that each frame is a key frame, from its cues (T, 7) and the weights
    of :func:`fit_scorer`.

    Returns
    -------
    numpy.ndarray
        float64 (T,), in [0, 1].

    Examples
    --------
    >>> from datapipe import ops
    >>> rng = np.random.default_rng(0)
    >>> cues = [rng.normal(size=(40, 7)).astype(np.float32)]  # one clip of 40 frames
    >>> positives = [cues[0][:, 3] > 0.5]  # key frames: the frames with the most motion
    >>> weights = ops.fit_keyframe_scorer(cues, positives)
    >>> scores = ops.score_keyframes(cues[0], weights)
    >>> scores.shape, bool(scores[positives[0]].mean() > scores[~positives[0]].mean())
    ((40,), True)
    """
    x = np.asarray(cues, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(CUE_NAMES):
        raise ItemError("invalid", f"frame_cues must be (T, {len(CUE_NAMES)}); got {x.shape}")
    if not np.isfinite(x).all():
        raise ItemError("nonfinite", "frame_cues hold NaN or infinite values")
    z = ((x - np.asarray(weights["mean"])) / np.asarray(weights["scale"])) @ np.asarray(
        weights["coef"]
    )
    return 1.0 / (1.0 + np.exp(-(z + float(weights["intercept"]))))


def save_weights(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write scorer weights as JSON (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(check_weights(state), indent=1))
    os.replace(tmp, path)


def load_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read scorer weights written by :func:`save_weights` (plain JSON, checked)."""
    with open(path, encoding="utf-8") as fh:
        return check_weights(json.load(fh))


# -- labels ---------------------------------------------------------------------------------------
def read_labels(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Positive frames per video from a CSV (``video,frame`` rows; a header row is skipped)
    or a JSON file (``{"video": [frames]}``, ``[["video", frame], ...]`` or
    ``[{"video": ..., "frame": ...}, ...]``). Videos are paths relative to the ``files`` root
    (or keys); frames are indices among all frames, presentation order."""
    text = Path(path).read_text(encoding="utf-8")
    rows: list[tuple[str, Any]] = []
    if str(path).lower().endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict):
            rows = [(v, f) for v, frames in data.items() for f in (frames or [None])]
        elif isinstance(data, list):
            for r in data:
                if isinstance(r, dict):
                    r = [r.get("video"), r.get("frame")]
                if not isinstance(r, list) or len(r) != 2:
                    raise ValueError(f"expected [video, frame]; got {r!r}")
                rows.append((r[0], r[1]))
        else:
            raise ValueError("JSON labels must be an object or a list of [video, frame]")
    else:
        for i, row in enumerate(csv.reader(text.splitlines())):
            if not row or (i == 0 and not row[-1].strip().lstrip("-").isdigit()):
                continue
            if len(row) != 2:
                raise ValueError(f"line {i + 1}: expected video,frame; got {row!r}")
            rows.append((row[0].strip(), row[1].strip()))
    out: dict[str, list[int]] = {}
    for video, frame in rows:
        frames = out.setdefault(sanitize_key(str(video)), [])
        if frame is None:  # a JSON video with no positive frame
            continue
        try:
            frames.append(int(frame))
        except (TypeError, ValueError):
            raise ValueError(f"frame {frame!r} of {video!r} is not an integer") from None
    return out


def pseudo_labels(cues: np.ndarray, source: Literal["scene", "motion"]) -> np.ndarray:
    """bool (T): the frames a proxy signal marks as key frames (see the module docstring)."""
    x = np.asarray(cues, dtype=np.float64)
    y = np.zeros(len(x), dtype=bool)
    if source == "scene":
        y[kix.scene_cuts(x[:, CUE_NAMES.index("change")], SCENE_THRESHOLD, MIN_SCENE_LEN)] = True
    else:
        energy = np.expm1(x[:, CUE_NAMES.index("motion")])
        peaks = kix.motion_peaks(energy, min_gap=5)
        y[peaks[energy[peaks] > 2 * np.median(energy)]] = True
    return y


# -- stages ---------------------------------------------------------------------------------------
class FrameCues(Map):
    """Per-frame cues for the learned scorer, in one decoding pass of the video."""

    name = "keyframes.cues"
    description = "Per-frame cues (packet size, frame type, motion energy, histogram change)."
    Params = VideoParams
    CONSUMES = (Field("path", "str", ""),)
    PRODUCES = (FRAME_CUES, FRAME_PTS, VIDEO_DAMAGE)
    isolate = True

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        cues = frame_cues(ctx.resolve(record["path"]), strict=p.strict, max_pixels=p.max_pixels)
        return {
            "frame_cues": cues.values,
            "frame_pts": cues.seconds,
            "video_damage": int(cues.damaged),
        }


class LearnedFitParams(Params):
    labels: str = PField(
        "scene",
        description="'scene' or 'motion' (proxy labels), or a CSV/JSON file of "
        "(video relpath, frame) positives.",
    )
    regularization: float = PField(1.0, gt=0, description="Inverse L2 strength C.")
    weights: FilePath | None = PField(
        None, description="Load these JSON weights instead of training."
    )
    save: str | None = PField(None, description="Write the trained weights here (JSON).")


class LearnedFit(Fit):
    """Train the key-frame scorer on the cues of every video (or load saved weights)."""

    name = "keyframes.learned_fit"
    description = "Train a logistic key-frame scorer on per-frame cues (labels or proxy)."
    Params = LearnedFitParams
    CONSUMES = (FRAME_CUES,)

    def _problem(self, ctx: Context, param: str, message: str) -> ConfigError:
        return ConfigError([Problem(f"nodes.{ctx.node}.params.{param}", message)])

    def fit(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> dict[str, Any]:
        p = self.params
        if p.weights:
            try:
                return load_weights(ctx.resolve(p.weights))
            except (OSError, ValueError) as exc:
                raise self._problem(ctx, "weights", f"cannot load {p.weights}: {exc}") from None
        cues = [np.asarray(c, dtype=np.float32) for c in view["frame_cues"]]
        if p.labels in ("scene", "motion"):
            used = list(range(len(cues)))
            positives = [pseudo_labels(c, p.labels) for c in cues]  # type: ignore[arg-type]
        else:
            used, positives = self._file_labels(keys, cues, ctx)
        try:
            state = fit_scorer(
                [cues[i] for i in used],
                positives,
                regularization=p.regularization,
                seed=ctx.seed,
            )
        except ValueError as exc:
            raise self._problem(ctx, "labels", f"{exc} ({len(used)} clips)") from None
        state["trained_on"]["labels"] = p.labels
        if p.save:
            save_weights(state, ctx.resolve(p.save))
        return state

    def _file_labels(
        self, keys: Sequence[str], cues: list[np.ndarray], ctx: Context
    ) -> tuple[list[int], list[np.ndarray]]:
        try:
            labels = read_labels(ctx.resolve(self.params.labels))
        except (OSError, ValueError) as exc:
            raise self._problem(ctx, "labels", f"cannot read {self.params.labels}: {exc}") from None
        index = {k: i for i, k in enumerate(keys)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            logger.warning("%s: %d labelled videos are not in the view", ctx.node, len(unknown))
        used, positives, problems = [], [], []
        for key in sorted(set(labels) & set(index)):
            i = index[key]
            y = np.zeros(len(cues[i]), dtype=bool)
            bad = [f for f in labels[key] if not 0 <= f < len(y)]
            if bad:
                problems.append(f"{key}: frame {bad[0]} outside its {len(y)} frames")
                continue
            y[labels[key]] = True
            used.append(i)
            positives.append(y)
        if problems:
            raise ConfigError([Problem(f"nodes.{ctx.node}.params.labels", m) for m in problems])
        if not used:
            raise self._problem(ctx, "labels", "no labelled video is among the inputs")
        return used, positives


#: a param naming the keyframes.learned_fit node whose state this stage reads (checked by validate)
ScorerNode = Annotated[str, NodeRef(StageKind.FIT, ("keyframes.learned_fit",))]


class LearnedParams(KeyFrameParams):
    fit_node: ScorerNode = PField("scorer", description="The keyframes.learned_fit node to use.")
    k: int = PField(3, ge=1, description="Frames to keep: the k best-scored.")
    min_gap: int = PField(5, ge=1, description="Frames between two kept frames, at least.")
    too_few: Literal["error", "clamp"] = PField(
        "error", description="Fewer than k frames fit the gap: 'error' or 'clamp'."
    )


class LearnedKeyFrames(Map):
    """Keep the ``k`` frames the trained scorer rates highest, ``min_gap`` apart."""

    name = "keyframes.learned"
    description = "Top-K frames of a trained key-frame scorer over cheap cues, with a min gap."
    Params = LearnedParams
    isolate = True  # with decode: true it decodes the video

    def consumes(self) -> tuple[Field, ...]:
        path = (Field("path", "str", ""),) if self.params.decode else ()
        return (FRAME_CUES, FRAME_PTS, *path)

    def produces(self) -> tuple[Field, ...]:
        frames = (KEYFRAMES,) if self.params.decode else ()
        return (KEYFRAME_IDX, KEYFRAME_PTS, KEYFRAME_SCORE, *frames)

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        state = ctx.fitted.get(p.fit_node)
        if state is None:
            raise ItemError("invalid", f"no fitted key-frame scorer from node {p.fit_node!r}")
        scores = score_frames(record["frame_cues"], state)
        kk = kix.budget(p.k, len(scores), p.too_few)
        picks = kix.top_k_with_gap(scores, kk, p.min_gap)
        if len(picks) < kk and p.too_few == "error":
            raise ItemError(
                "invalid",
                f"only {len(picks)} frames {p.min_gap} apart fit in {len(scores)}; k={p.k} "
                "(too_few: 'clamp' keeps them)",
            )
        seconds = np.asarray(record["frame_pts"], dtype=np.float64)
        out = {
            "keyframe_idx": picks,
            "keyframe_pts": seconds[picks],
            "keyframe_score": scores[picks].astype(np.float32),
        }
        if p.decode:
            path = ctx.resolve(record["path"])
            table = scan_frames(path, probe=False, strict=p.strict, max_pixels=p.max_pixels)
            if table.n != len(scores):
                raise ItemError(
                    "corrupt", f"the video lists {table.n} frames, its cues {len(scores)}"
                )
            out["keyframes"] = decode_selected(
                path, table, picks, strict=p.strict, max_pixels=p.max_pixels
            )
        return out
