"""``datapipe.ops``: every stage's algorithm as a plain function on arrays, bytes or paths,
usable without the engine.

Names resolve lazily, so ``import datapipe.ops`` stays cheap and pulls in a heavy dependency
(PyAV, Open3D, torch) only when its function is first used.

The names follow one convention (``tests/test_ops.py`` checks it, and the README's table):

- A function is a verb or ``verb_object``: ``read_*`` reads a file (a path, or encoded
  bytes) into arrays, ``decode_*`` makes pixels, ``select_*`` picks a subset (the
  ``select.*`` and ``keyframes.*`` stages), ``sample_*_points`` picks points (``points.*``),
  ``score_*`` scores rows, ``fit_*`` trains, ``pool_*`` pools. A class is a noun
  (``RankPooler``, ``ResizeSchedule``).
- The data comes first (a path or bytes, an array, keys), then the arguments without a
  default (a size, a budget, a trained model); every argument with a default is
  keyword-only, named and defaulted as the stage's parameter is where there is one.
- Each docstring says what it returns in a "Returns" section (an array, a number, or a named
  result: a dataclass or a ``NamedTuple``, never a bare tuple) and has an example that runs.

Old names that broke the convention still resolve for one release with a
``DeprecationWarning`` naming the new one (``_DEPRECATED``; CHANGELOG.md lists them).

>>> from datapipe import ops
>>> ops.sanitize_key("cats/tom_01.jpg")
'cats/tom_01'
>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     old = ops.dynamic_image
>>> old is ops.pool_dynamic_image, caught[0].category.__name__
(True, 'DeprecationWarning')
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import Any

#: family (stages/<family>/, or the core's key helpers) -> {public name: "module:attribute"};
#: the README's ops table lists the names in this order, grouped the same way
_FAMILIES: dict[str, dict[str, str]] = {
    "io": {
        "decode_resize": "datapipe.stages.io.image_resize:decode_resize",
    },
    "compressed": {
        "read_jpeg_dct": "datapipe.stages.compressed.jpeg_dct:read_jpeg_dct",
        "zigzag_channels": "datapipe.stages.compressed.jpeg_dct:zigzag_channels",
        "dequantize_dct": "datapipe.stages.compressed.jpeg_dct:dequantize",
        "align_chroma": "datapipe.stages.compressed.jpeg_dct:align_chroma",
        "read_video_packets": "datapipe.stages.compressed.video_packets:read_video_packets",
        "read_frame_types": "datapipe.stages.compressed.video_frames:frame_types",
        "read_iframes": "datapipe.stages.compressed.video_frames:read_iframes",
        # the motion-vector field is shared with keyframes.motion, so it lives in common/
        "read_motion_vectors": "datapipe.stages.common.motion_vectors:motion_vectors",
        "encode_mv": "datapipe.stages.compressed.video_mv:encode_mv",
        "decode_mv": "datapipe.stages.compressed.video_mv:decode_mv",
        "read_coviar": "datapipe.stages.compressed.video_coviar:coviar",
    },
    "subset": {
        "select_random_subset": "datapipe.stages.subset.random_subset:random_subset",
        "draw_key_uniform": "datapipe.stages.subset.random_subset:key_uniform",
        "select_stratified_subset": "datapipe.stages.subset.stratified:stratified_subset",
        "allocate_stratum_budgets": "datapipe.strata:stratum_budgets",
        "resolve_budget": "datapipe.stages.subset.budget:resolve_budget",
        "select_kcenter": "datapipe.stages.subset.kcenter:kcenter_cover",
        "select_semdedup": "datapipe.stages.subset.dedup:semdedup",
        "score_proxy_uncertainty": "datapipe.stages.subset.uncertainty:proxy_uncertainty",
        "score_uncertainty": "datapipe.stages.subset.uncertainty:uncertainty_of",
        "pool_pixels": "datapipe.stages.subset.embed:pool_pixels",
        "plot_selection": "datapipe.stages.subset.plot:plot_selection",
    },
    "keyframes": {
        "select_keyframes_uniform": "datapipe.stages.keyframes.methods:keyframes_uniform",
        "select_keyframes_tsn": "datapipe.stages.keyframes.methods:keyframes_tsn",
        "select_keyframes_iframes": "datapipe.stages.keyframes.methods:keyframes_iframes",
        "select_keyframes_motion": "datapipe.stages.keyframes.methods:keyframes_motion",
        "select_keyframes_scene": "datapipe.stages.keyframes.methods:keyframes_scene",
        "read_frame_cues": "datapipe.stages.keyframes.signals:frame_cues",
        "fit_keyframe_scorer": "datapipe.stages.keyframes.learned:fit_scorer",
        "score_keyframes": "datapipe.stages.keyframes.learned:score_frames",
    },
    "points": {
        "read_points": "datapipe.stages.points.read:read_points",
        "voxelize": "datapipe.stages.points.voxelize:voxelize",
        "group_voxels": "datapipe.stages.points.voxelize:voxel_groups",
        "sample_random_points": "datapipe.stages.points.sampling:random_point_sample",
        "sample_farthest_points": "datapipe.stages.points.sampling:farthest_point_sample",
        "sample_voxel_points": "datapipe.stages.points.sampling:voxel_point_sample",
        "sample_learned_points": "datapipe.stages.points.snet:sample_learned",
    },
    "represent": {
        "pool_dynamic_image": "datapipe.stages.represent.dynamic_image:dynamic_image",
        "compute_rank_pool_weights": "datapipe.stages.represent.rank_weights:rank_pool_weights",
        "RankPooler": "datapipe.stages.represent.rank_pool:RankPooler",
        "decode_jpeg_reduced": "datapipe.stages.represent.resize:decode_jpeg_reduced",
        "decode_dct_reduced": "datapipe.stages.represent.dct_decode:decode_dct_reduced",
        "decode_dct_scaled": "datapipe.stages.represent.dct_decode:decode_dct_scaled",
        "ResizeSchedule": "datapipe.stages.represent.schedule:ResizeSchedule",
    },
    "keys": {
        "sanitize_key": "datapipe.keys:sanitize_key",
        "check_key": "datapipe.keys:check_key",
    },
}

#: public name -> "module:attribute"
_EXPORTS: dict[str, str] = {n: t for names in _FAMILIES.values() for n, t in names.items()}

#: old name -> (its new name, "module:attribute" where the old name still gives the old
#: behaviour, else None: the new function). Kept for one release; each use warns.
_DEPRECATED: dict[str, tuple[str, str | None]] = {
    "frame_types": ("read_frame_types", None),
    # the old name returned the tuple (indices, frames); read_iframes returns KeyFrames
    "iframes": ("read_iframes", "datapipe.stages.compressed.video_frames:iframes"),
    "video_packets": ("read_video_packets", None),
    "motion_vectors": ("read_motion_vectors", None),
    "coviar": ("read_coviar", None),
    "random_subset": ("select_random_subset", None),
    "key_uniform": ("draw_key_uniform", None),
    "stratified_subset": ("select_stratified_subset", None),
    "stratum_budgets": ("allocate_stratum_budgets", None),
    "kcenter_cover": ("select_kcenter", None),
    # the old name returned the tuple (indices, radius); select_kcenter a KCenterResult
    "kcenter_greedy": ("select_kcenter", "datapipe.stages.subset.kcenter:kcenter_greedy"),
    "semdedup": ("select_semdedup", None),
    "proxy_uncertainty": ("score_proxy_uncertainty", None),
    "uncertainty_of": ("score_uncertainty", None),
    "keyframes_uniform": ("select_keyframes_uniform", None),
    "keyframes_tsn": ("select_keyframes_tsn", None),
    "keyframes_iframes": ("select_keyframes_iframes", None),
    "keyframes_motion": ("select_keyframes_motion", None),
    "keyframes_scene": ("select_keyframes_scene", None),
    "frame_cues": ("read_frame_cues", None),
    "voxel_groups": ("group_voxels", None),
    "farthest_point_sample": ("sample_farthest_points", None),
    "random_point_sample": ("sample_random_points", None),
    "voxel_point_sample": ("sample_voxel_points", None),
    "dynamic_image": ("pool_dynamic_image", None),
    "rank_pool_weights": ("compute_rank_pool_weights", None),
}

__all__ = sorted(_EXPORTS)


def _resolve(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(import_module(module), attr)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is not None:
        value = _resolve(target)
        globals()[name] = value
        return value
    if name in _DEPRECATED:
        new, old_target = _DEPRECATED[name]
        warnings.warn(
            f"datapipe.ops.{name} is deprecated and will be removed in the next release; "
            f"use datapipe.ops.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return _resolve(old_target or _EXPORTS[new])
    raise AttributeError(f"module 'datapipe.ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
