"""``datapipe.ops``: every stage's algorithm as a plain function on arrays, bytes or paths,
usable without the engine.

Names resolve lazily, so ``import datapipe.ops`` stays cheap and pulls in a heavy dependency
(PyAV, Open3D, torch) only when its function is first used.

>>> from datapipe import ops
>>> ops.sanitize_key("cats/tom_01.jpg")
'cats/tom_01'
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: public name -> "module:attribute", grouped as the stage families are (stages/*/)
_EXPORTS: dict[str, str] = {
    # stages/io
    "decode_resize": "datapipe.stages.io.image_resize:decode_resize",
    # stages/compressed: JPEG DCT coefficients, codec motion vectors, frame types, packets, CoViAR
    "read_jpeg_dct": "datapipe.stages.compressed.jpeg_dct:read_jpeg_dct",
    "zigzag_channels": "datapipe.stages.compressed.jpeg_dct:zigzag_channels",
    "dequantize_dct": "datapipe.stages.compressed.jpeg_dct:dequantize",
    "align_chroma": "datapipe.stages.compressed.jpeg_dct:align_chroma",
    "encode_mv": "datapipe.stages.compressed.video_mv:encode_mv",
    "decode_mv": "datapipe.stages.compressed.video_mv:decode_mv",
    "frame_types": "datapipe.stages.compressed.video_frames:frame_types",
    "iframes": "datapipe.stages.compressed.video_frames:iframes",
    "video_packets": "datapipe.stages.compressed.video_packets:packets",
    "coviar": "datapipe.stages.compressed.video_coviar:coviar",
    # stages/common: the motion-vector field (video.motion_vectors, keyframes.motion)
    "motion_vectors": "datapipe.stages.common.motion_vectors:motion_vectors",
    # stages/subset: dataset subsampling
    "random_subset": "datapipe.stages.subset.random_subset:random_subset",
    "key_uniform": "datapipe.stages.subset.random_subset:key_uniform",
    "kcenter_greedy": "datapipe.stages.subset.kcenter:kcenter_greedy",
    "kcenter_cover": "datapipe.stages.subset.kcenter:kcenter_cover",
    "semdedup": "datapipe.stages.subset.dedup:semdedup",
    "proxy_uncertainty": "datapipe.stages.subset.uncertainty:proxy_uncertainty",
    "uncertainty_of": "datapipe.stages.subset.uncertainty:uncertainty_of",
    "stratified_subset": "datapipe.stages.subset.stratified:stratified_subset",
    "stratum_budgets": "datapipe.stages.subset.stratified:stratum_budgets",
    "resolve_budget": "datapipe.stages.subset.budget:resolve_budget",
    "pool_pixels": "datapipe.stages.subset.embed:pool_pixels",
    "plot_selection": "datapipe.stages.subset.plot:plot_selection",
    # stages/keyframes
    "keyframes_uniform": "datapipe.stages.keyframes.methods:keyframes_uniform",
    "keyframes_tsn": "datapipe.stages.keyframes.methods:keyframes_tsn",
    "keyframes_iframes": "datapipe.stages.keyframes.methods:keyframes_iframes",
    "keyframes_motion": "datapipe.stages.keyframes.methods:keyframes_motion",
    "keyframes_scene": "datapipe.stages.keyframes.methods:keyframes_scene",
    "frame_cues": "datapipe.stages.keyframes.signals:frame_cues",
    "fit_keyframe_scorer": "datapipe.stages.keyframes.learned:fit_scorer",
    "score_keyframes": "datapipe.stages.keyframes.learned:score_frames",
    # stages/points: reading, voxel grids, sampling
    "read_points": "datapipe.stages.points.read:read_points",
    "voxelize": "datapipe.stages.points.voxelize:voxelize",
    "voxel_groups": "datapipe.stages.points.voxelize:voxel_groups",
    "farthest_point_sample": "datapipe.stages.points.sampling:farthest_point_sample",
    "random_point_sample": "datapipe.stages.points.sampling:random_point_sample",
    "voxel_point_sample": "datapipe.stages.points.sampling:voxel_point_sample",
    "sample_learned": "datapipe.stages.points.snet:sample_learned",
    # stages/represent
    "dynamic_image": "datapipe.stages.represent.dynamic_image:dynamic_image",
    "rank_pool_weights": "datapipe.stages.represent.rank_weights:rank_pool_weights",
    "RankPooler": "datapipe.stages.represent.rank_pool:RankPooler",
    "decode_jpeg_reduced": "datapipe.stages.represent.resize:decode_jpeg_reduced",
    "decode_dct_reduced": "datapipe.stages.represent.dct_decode:decode_dct_reduced",
    "decode_dct_scaled": "datapipe.stages.represent.dct_decode:decode_dct_scaled",
    "ResizeSchedule": "datapipe.stages.represent.schedule:ResizeSchedule",
    # sample keys
    "sanitize_key": "datapipe.store.codec:sanitize_key",
    "check_key": "datapipe.store.codec:check_key",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'datapipe.ops' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
