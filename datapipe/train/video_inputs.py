"""Segments of a clip as model inputs: the streams of CoViAR (Wu et al., "Compressed Video
Action Recognition", CVPR 2018) and of its RGB baseline, sampled as TSN does (Wang et al.,
"Temporal Segment Networks", ECCV 2016).

:class:`SegmentInputs` implements the :class:`~datapipe.train.inputs.Inputs` protocol. A clip
of ``T`` frames is cut into ``S`` equal chunks (:func:`segment_bounds`); one frame is taken
per chunk (:func:`segment_indices`): a random one in training (torch's global RNG, so an
augmented run resumes bit for bit), the chunk's middle in evaluation. When ``T < S`` chunks
share frames (sampling with replacement). For each sampled (kept) frame ``t`` the streams are:

- ``iframe``: the I-frame of ``t``'s GOP, ``iframes[gop[t]]``, RGB / 255 (3 channels);
- ``mv``: the motion accumulated back to that I-frame, ``mv[t]`` / :data:`MV_SCALE` (2);
- ``residual``: the accumulated residual in levels (``video.coviar``'s int8 stores half of
  it: x2, as :func:`~datapipe.stages.compressed.video_coviar.decode_residual`; any other
  dtype is taken as levels), / 255 (3);
- ``rgb``: a decoded frame, ``rgb[t]`` / 255 (3), e.g. ``keyframes`` of a ``keyframes.*``
  stage with ``decode: true``; its frames are sampled on their own count with the same draw.

Each stream becomes one float ``(N, S, C, H, W)`` tensor (channels at dim -3, so the loop
normalises them per channel), optionally resized to ``size`` x ``size`` (area mode). The
scales only keep values near unit range; the loop's per-channel statistics do the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from datapipe.train.inputs import INPUT_KINDS, Batch, _check, batch_samples, label_value

#: the streams, in their canonical order, and their channels
STREAMS = ("iframe", "mv", "residual", "rgb")
CHANNELS = {"iframe": 3, "mv": 2, "residual": 3, "rgb": 3}
#: the field roles each stream reads
ROLES = {"iframe": ("iframes", "gop"), "mv": ("mv",), "residual": ("residual",), "rgb": ("rgb",)}
#: role -> the field name the producing stages give it (video.coviar, keyframes.* decode)
DEFAULT_FIELDS = {
    "iframes": "coviar_iframes",
    "gop": "coviar_gop",
    "mv": "coviar_mv",
    "residual": "coviar_residual",
    "rgb": "keyframes",
}
#: dims of each role's array and the size its last dim must have (None: any)
_DIMS = {"iframes": (4, 3), "gop": (1, None), "mv": (4, 2), "residual": (4, 3), "rgb": (4, 3)}
#: accumulated motion is in whole pixels: divided by this it stays near unit range
MV_SCALE = 16.0


def segment_bounds(frames: int, segments: int) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` frame range of each of ``segments`` equal chunks of ``frames`` frames:
    ``lo = floor(k T / S)``, ``hi = floor((k + 1) T / S)``, at least one frame wide (chunks
    share frames when ``T < S``)."""
    out = []
    for k in range(segments):
        lo = k * frames // segments
        out.append((lo, max((k + 1) * frames // segments, lo + 1)))
    return out


def segment_indices(frames: int, segments: int, draw: Tensor | None = None) -> list[int]:
    """One frame per chunk: ``lo + floor(u (hi - lo))`` for ``draw`` ``u`` in [0, 1) (training),
    else the middle ``lo + (hi - lo - 1) // 2`` (TSN's test offset)."""
    out = []
    for k, (lo, hi) in enumerate(segment_bounds(frames, segments)):
        if draw is None:
            out.append(lo + (hi - lo - 1) // 2)
        else:
            out.append(min(lo + int(float(draw[k]) * (hi - lo)), hi - 1))
    return out


class SegmentInputs:
    """Clips -> one ``(N, S, C, H, W)`` float tensor per stream (see the module docstring).

    ``streams``: a non-empty subset of :data:`STREAMS` in the model's argument order;
    ``fields``: role -> field name over :data:`DEFAULT_FIELDS`; ``size``: resize frames to a
    square side (None: keep them, and every clip's frames must match the first good one's).
    """

    def __init__(
        self,
        streams: Sequence[str] = ("iframe", "mv", "residual"),
        segments: int = 3,
        size: int | None = None,
        label: str = "label_id",
        fields: Mapping[str, str] | None = None,
    ) -> None:
        bad = [s for s in streams if s not in STREAMS]
        if not streams or bad or len(set(streams)) != len(streams):
            raise ValueError(f"streams must be distinct ones of {STREAMS}; got {list(streams)}")
        if segments < 1 or (size is not None and size < 1):
            raise ValueError(f"need segments >= 1 and size >= 1; got {segments}, {size}")
        self.streams, self.segments, self.size, self.label = list(streams), segments, size, label
        self.fields = {**DEFAULT_FIELDS, **(fields or {})}
        self.roles = [r for s in self.streams for r in ROLES[s]]
        #: stream -> (S, C, H, W) of the first good sample: the shape others must have
        self.shapes: dict[str, tuple[int, ...]] = {}

    def read_fields(self) -> list[str]:
        """The sample fields the chosen streams read."""
        return [self.fields[r] for r in self.roles]

    def __call__(
        self, batch: Batch, *, train: bool, skipped: Counter
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        columns: list[list[Tensor]] = [[] for _ in self.streams]
        labels: list[int] = []
        for *values, y in batch_samples(batch, self.read_fields(), self.label):
            frames = self._sample(dict(zip(self.roles, values, strict=True)), train, skipped)
            if frames is None:
                continue
            cls = label_value(y)
            if cls is None:
                skipped["missing_label"] += 1
                continue
            for column, x in zip(columns, frames, strict=True):
                column.append(x)
            labels.append(cls)
        if not labels:
            return tuple(torch.empty(0) for _ in self.streams), torch.empty(0, dtype=torch.int64)
        xs = tuple(torch.stack(c).contiguous() for c in columns)
        return xs, torch.tensor(labels, dtype=torch.int64)

    def _arrays(self, values: dict[str, Any], skipped: Counter) -> dict[str, Tensor] | None:
        """The role arrays as tensors of the right dims and sizes, or None (one reason)."""
        arrays: dict[str, Tensor] = {}
        for role in self.roles:
            dims, last = _DIMS[role]
            t = _check(values[role], (dims,), skipped)
            if t is None:
                return None
            if (last is not None and t.shape[-1] != last) or 0 in t.shape:
                skipped["wrong_shape"] += 1
                return None
            arrays[role] = t
        lengths = {len(arrays[r]) for r in ("gop", "mv", "residual") if r in arrays}
        gop = arrays.get("gop")
        if len(lengths) > 1 or (
            gop is not None
            and (
                gop.is_floating_point()
                or int(gop.min()) < 0
                or int(gop.max()) >= len(arrays["iframes"])
            )
        ):
            skipped["wrong_shape"] += 1
            return None
        return arrays

    def _sample(self, values: dict[str, Any], train: bool, skipped: Counter) -> list[Tensor] | None:
        """One clip's ``(S, C, H, W)`` tensor per stream, or None (counted in ``skipped``)."""
        arrays = self._arrays(values, skipped)
        if arrays is None:
            return None
        draw = torch.rand(self.segments) if train else None
        out: list[Tensor] = []
        for stream in self.streams:
            if stream == "rgb":
                x = arrays["rgb"][segment_indices(len(arrays["rgb"]), self.segments, draw)]
                x = x.float() / 255.0
            else:
                key = "gop" if stream == "iframe" else stream
                idx = segment_indices(len(arrays[key]), self.segments, draw)
                x = self._coviar(stream, arrays, idx)
            x = x.permute(0, 3, 1, 2)
            if self.size is not None:
                x = F.interpolate(x, size=(self.size, self.size), mode="area")
            out.append(x.contiguous())
        shapes = {s: tuple(x.shape) for s, x in zip(self.streams, out, strict=True)}
        if any(self.shapes.get(s, shape) != shape for s, shape in shapes.items()):
            skipped["wrong_shape"] += 1
            return None
        if any(x.isnan().any() or x.isinf().any() for x in out):
            skipped["not_finite"] += 1
            return None
        self.shapes = {**shapes, **self.shapes}
        return out

    @staticmethod
    def _coviar(stream: str, arrays: dict[str, Tensor], idx: list[int]) -> Tensor:
        """``(S, H, W, C)`` float frames of a CoViAR stream at kept-frame indices ``idx``."""
        if stream == "iframe":
            return arrays["iframes"][arrays["gop"][idx].long()].float() / 255.0
        if stream == "mv":
            return arrays["mv"][idx].float() / MV_SCALE
        residual = arrays["residual"][idx]
        scale = 2.0 if residual.dtype == torch.int8 else 1.0  # int8 holds half the levels
        return residual.float() * (scale / 255.0)

    def state(self) -> dict[str, Any]:
        return {"shapes": {s: list(v) for s, v in self.shapes.items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.shapes = {s: tuple(v) for s, v in state["shapes"].items()}

    def describe(self) -> dict[str, Any]:
        known = all(s in self.shapes for s in self.streams)
        return {
            "kind": "video",
            "streams": list(self.streams),
            "fields": self.read_fields(),
            "roles": {r: self.fields[r] for r in self.roles},
            "segments": self.segments,
            "size": self.size,
            "mv_scale": MV_SCALE,
            "shapes": [list(self.shapes[s]) for s in self.streams] if known else [],
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], label: str = "label_id") -> SegmentInputs:
        """Rebuilt from :meth:`describe` (with its shapes: new clips must match them)."""
        inputs = cls(spec["streams"], spec["segments"], spec.get("size"), label, spec["roles"])
        if spec.get("shapes"):
            inputs.shapes = {
                s: tuple(v) for s, v in zip(inputs.streams, spec["shapes"], strict=True)
            }
        return inputs


INPUT_KINDS["video"] = SegmentInputs
