"""Dynamic images: hand-computed weights, the direct formula as oracle for arrays, iterators,
generators of unknown length and windows, constant memory, bad input, and the stage through
the engine on decoded H.264 clips and motion-vector fields."""

from __future__ import annotations

import pickle
import tracemalloc
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from datapipe import registry
from datapipe.errors import ConfigError, ItemError, ParamError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context, Map, Record
from datapipe.stages.common.video_synth import disc_clip
from datapipe.stages.represent import rank_pool, rank_weights
from datapipe.stages.represent.dynamic_image import DynamicImage, dynamic_image
from datapipe.stages.represent.rank_pool import RankPooler
from datapipe.stages.represent.rank_weights import rank_pool_weights
from datapipe.stream import from_shards


# -- the oracle: the formula of the paper, in float64, on the whole clip --------------------------
def direct(frames: np.ndarray, psi: str = "frame") -> np.ndarray:
    """d = sum_t alpha_t psi_t, psi_t the frame or the mean of frames 1..t (float64)."""
    x = np.asarray(frames, np.float64)
    T = len(x)
    if T == 1:
        return x[0]
    H = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, T + 1))])  # H_0 .. H_T
    t = np.arange(1, T + 1)
    alpha = 2.0 * (T - t + 1) - (T + 1) * (H[T] - H[t - 1])
    if psi == "mean":
        x = np.cumsum(x, axis=0) / np.arange(1, T + 1).reshape(-1, *[1] * (x.ndim - 1))
    return np.tensordot(alpha, x, 1)


def close(got: np.ndarray, want: np.ndarray, rel: float = 1e-4) -> bool:
    """Equal to ``rel`` of the largest magnitude of ``want`` (float32 output)."""
    scale = max(float(np.abs(want).max()), 1e-6)
    return got.shape == want.shape and float(np.abs(got - want).max()) <= rel * scale


def clip(T: int, shape: tuple[int, ...] = (6, 5, 3), seed: int = 0, dtype: Any = np.uint8):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 50, (T, *shape)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -300), min(info.max, 300), (T, *shape), dtype=dtype)


def slow_clip(T: int, shape: tuple[int, ...] = (12, 10, 3), seed: int = 1) -> np.ndarray:
    """A still background with a slow drift and sensor noise: the pooled image is small
    against the pixel values, the hard case for float32 sums."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (1, *shape)).astype(np.float64)
    drift = np.linspace(0, 3, T).reshape(-1, 1, 1, 1) * rng.standard_normal((1, *shape))
    noise = rng.standard_normal((T, *shape)) * 0.7
    return np.clip(np.round(base + drift + noise), 0, 255).astype(np.uint8)


# -- weights -------------------------------------------------------------------------------------
def test_weights_computed_by_hand() -> None:
    assert rank_pool_weights(1).tolist() == [1.0]
    assert rank_pool_weights(1, psi="mean").tolist() == [1.0]
    # T = 2: alpha_1 = 2*2 - 3*(H_2 - H_0) = 4 - 4.5, alpha_2 = 2*1 - 3*(H_2 - H_1) = 2 - 1.5
    assert rank_pool_weights(2).tolist() == [-0.5, 0.5]
    # running means: beta_1 = alpha_1 + alpha_2 / 2, beta_2 = alpha_2 / 2
    assert rank_pool_weights(2, psi="mean").tolist() == [-0.25, 0.25]
    # T = 3, H_3 = 11/6: alpha = (6 - 4*11/6, 4 - 4*(11/6 - 1), 2 - 4*(11/6 - 3/2))
    np.testing.assert_allclose(rank_pool_weights(3), [-4 / 3, 2 / 3, 2 / 3], rtol=1e-14)
    # beta_3 = (2/3)/3, beta_2 = (2/3)/2 + beta_3, beta_1 = -4/3 + beta_2
    np.testing.assert_allclose(rank_pool_weights(3, psi="mean"), [-7 / 9, 5 / 9, 2 / 9], rtol=1e-14)


@pytest.mark.parametrize("T", [2, 3, 4, 7, 10, 31, 100])
def test_weights_equal_the_reference_code_and_sum_to_zero(T: int) -> None:
    # vl_nnarpooltemporal.m: w_i = sum_{t=i..N} (2t - N - 1) / t, in exact arithmetic
    ref = [sum(Fraction(2 * t - T - 1, t) for t in range(i, T + 1)) for i in range(1, T + 1)]
    np.testing.assert_allclose(rank_pool_weights(T), [float(w) for w in ref], rtol=1e-12)
    assert sum(ref) == 0
    for psi in ("frame", "mean"):
        assert abs(rank_pool_weights(T, psi=psi).sum()) < 1e-10 * T * T
    # the running-sum form (three or four index functions, coefficients of T) is the same
    for psi in ("frame", "mean"):
        i = np.arange(1, T + 1)
        basis = rank_weights._coefficients(T, psi) @ rank_weights._basis(i, psi)
        np.testing.assert_allclose(basis, rank_pool_weights(T, psi=psi), rtol=1e-9, atol=1e-9 * T)


def test_frame_weights_are_linear_weights_on_running_means() -> None:
    """The paper's derivation: sum_t alpha_t x_t == sum_t (2t - T - 1) m_t."""
    x = clip(23).astype(np.float64)
    T = len(x)
    means = np.cumsum(x, axis=0) / np.arange(1, T + 1)[:, None, None, None]
    linear = np.tensordot(2.0 * np.arange(1, T + 1) - T - 1, means, 1)
    assert close(dynamic_image(x), linear, 1e-6)


def test_a_brightening_pixel_is_positive_and_a_darkening_one_negative() -> None:
    ramp = np.arange(12, dtype=np.float64)[:, None, None, None] * np.array([1.0, -1.0, 0.0])
    d = dynamic_image(ramp + 100)[0, 0]
    assert d[0] > 0 and d[1] < 0 and abs(d[2]) < 1e-3 * d[0]


# -- arrays, iterators, generators ---------------------------------------------------------------
@pytest.mark.parametrize("psi", ["frame", "mean"])
@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.int8, np.int16, np.int32, np.float32, np.float64]
)
@pytest.mark.parametrize("T", [1, 2, 3, 17, 150])
def test_array_iterator_and_generator_equal_the_formula(psi: str, dtype: Any, T: int) -> None:
    x = clip(T, dtype=dtype, seed=T)
    want = direct(x, psi)
    got_array = dynamic_image(x, psi=psi)
    got_list = dynamic_image(list(x), psi=psi)
    got_gen = dynamic_image((f for f in x), psi=psi)  # T unknown until the end
    assert got_array.dtype == np.float32 and got_array.shape == x.shape[1:]
    for got in (got_array, got_list, got_gen):
        assert close(got, want)


@pytest.mark.parametrize("psi", ["frame", "mean"])
def test_long_slowly_changing_clip_stays_accurate(psi: str) -> None:
    x = slow_clip(2000)
    want = direct(x, psi)
    assert close(dynamic_image(x, psi=psi), want)
    assert close(dynamic_image(iter(x), psi=psi), want)
    assert close(dynamic_image(x.astype(np.float32), psi=psi), want)


def test_long_still_uint16_clip_stays_accurate() -> None:
    """The integer kernel sums in float32 only a group of frames at a time (summing a whole
    256-frame chunk in float32 gives 1e-5 to 2e-5 here)."""
    x = slow_clip(6000, shape=(16, 16, 3)).astype(np.uint16) * np.uint16(257)
    for psi in ("frame", "mean"):
        assert close(dynamic_image(x, psi=psi), direct(x, psi), rel=1e-5)


@pytest.mark.parametrize("chunk_bytes", [1, 7 * 6 * 5 * 3 * 4, 1 << 20])
def test_chunk_boundaries_do_not_matter(monkeypatch: pytest.MonkeyPatch, chunk_bytes: int):
    monkeypatch.setattr(rank_pool, "CHUNK_BYTES", chunk_bytes)  # 1, 7 or 64 frames a chunk
    x = clip(45)
    for psi in ("frame", "mean"):
        assert close(dynamic_image(x, psi=psi), direct(x, psi))
        assert close(dynamic_image(iter(x), psi=psi), direct(x, psi))
        want = np.stack([direct(x[s : s + 10], psi) for s in range(0, 36, 3)])
        assert close(dynamic_image(iter(x), psi=psi, window=10, stride=3), want)


def test_pooler_takes_frames_and_arrays_mixed() -> None:
    x = clip(40, dtype=np.float32)
    pooler = RankPooler(psi="mean")
    pooler.extend(x[:5])
    for frame in x[5:9]:
        pooler.push(frame)
    pooler.extend(x[9:].astype(np.uint8))  # another dtype, converted
    pooler.extend(iter(x[:0]))
    want = direct(np.concatenate([x[:9], x[9:].astype(np.uint8)]), "mean")
    assert pooler.frames == 40 and close(pooler.result(), want)


@pytest.mark.parametrize("length", [None, 60])
def test_integer_frames_then_other_dtypes(length: int | None) -> None:
    """Integer frames are buffered as they are; a frame of another dtype switches to float."""
    x8, x16, xf = clip(20, seed=1), clip(20, seed=2, dtype=np.uint16), clip(20, dtype=np.float32)
    for psi in ("frame", "mean"):
        pooler = RankPooler(psi=psi, length=length)
        for part in (x8, x16, xf):
            for frame in part:
                pooler.push(frame)
        want = direct(np.concatenate([x8, x16, xf]).astype(np.float64), psi)
        assert pooler.frames == 60 and close(pooler.result(), want)


def test_tensors_and_other_frame_shapes() -> None:
    import torch

    x = clip(9, shape=(4, 6))  # grayscale (T, H, W)
    assert close(dynamic_image(torch.from_numpy(x)), direct(x))
    assert close(dynamic_image(x.reshape(9, -1)), direct(x).reshape(-1))


# -- windows --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("T", "W", "S"), [(40, 8, None), (40, 8, 3), (40, 8, 11), (16, 8, 8), (37, 16, 4), (5, 8, 2)]
)
@pytest.mark.parametrize("psi", ["frame", "mean"])
def test_windows_equal_the_formula_per_window(T: int, W: int, S: int | None, psi: str) -> None:
    x = clip(T, seed=W)
    step = S or W
    starts = list(range(0, T - W + 1, step)) if T >= W else [0]
    want = np.stack([direct(x[s : s + W], psi) for s in starts])
    for frames in (x, iter(x), x.astype(np.float32)):
        got = dynamic_image(frames, psi=psi, window=W, stride=S)
        assert got.shape == (len(starts), *x.shape[1:])
        assert close(got, want)


def test_window_longer_than_the_clip_pools_all_frames() -> None:
    x = clip(3)
    assert close(dynamic_image(iter(x), window=8)[0], direct(x))
    assert close(dynamic_image(x[:1], window=8, stride=2)[0], x[0].astype(np.float64))


# -- memory ----------------------------------------------------------------------------------------
def _peak(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_generator_memory_does_not_grow_with_the_clip() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    def frames(n: int) -> Iterator[np.ndarray]:
        for t in range(n):
            yield frame + np.uint8(t % 7)  # a new array each time, dropped after use

    dynamic_image(frames(100), psi="mean")  # warm: lazy imports and kernel caches not counted
    peaks = {n: _peak(lambda n=n: dynamic_image(frames(n), psi="mean")) for n in (200, 4000)}
    float_frame = frame.size * 4
    assert peaks[4000] < 64 * float_frame  # the clip as float32 would be 4000 frames
    # keeping frames would cost >= a uint8 frame (3 KB) per extra frame; a few per-frame
    # scalars (tens of bytes) are allowed
    per_frame = (peaks[4000] - peaks[200]) / 3800
    assert per_frame < frame.size / 16


def test_uint8_array_is_never_converted_whole() -> None:
    x = clip(600, shape=(64, 64, 3))
    whole_as_float = x.size * 4
    assert _peak(lambda: dynamic_image(x)) < whole_as_float / 4
    assert _peak(lambda: dynamic_image(x, window=30, stride=15)) < whole_as_float / 2


# -- bad input -------------------------------------------------------------------------------------
def _error(frames: Any, **kw: Any) -> ItemError:
    with pytest.raises(ItemError) as info:
        dynamic_image(frames, **kw)
    return info.value


def test_no_frames_is_a_clear_error() -> None:
    for frames in (np.zeros((0, 4, 4, 3), np.uint8), iter([]), []):
        err = _error(frames)
        assert err.error_class == "empty" and "T = 0" in err.message


def test_frames_of_different_sizes_are_an_error() -> None:
    frames = [np.zeros((4, 4, 3), np.uint8)] * 3 + [np.zeros((4, 5, 3), np.uint8)]
    err = _error(iter(frames))
    assert err.error_class == "invalid" and "frame 3 has shape (4, 5, 3)" in err.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_frames_are_an_error_naming_the_frame(bad: float) -> None:
    x = clip(30, dtype=np.float32)
    x[21, 1, 2, 0] = bad
    for frames, kw in ((x, {}), (iter(x), {}), (x, {"window": 8, "stride": 4})):
        err = _error(frames, **kw)
        assert err.error_class == "nonfinite" and "frame 21" in err.message
    x[0, 0, 0, 0] = np.nan
    assert "frame 0" in _error(iter(x)).message


def test_wrong_kinds_of_frames_and_parameters() -> None:
    assert _error(np.array(["a", "b"], dtype=object).reshape(2, 1)).error_class == "invalid"
    assert _error(np.zeros(5)).error_class == "invalid"  # no frame axis
    assert _error([1.0, 2.0]).error_class == "invalid"  # scalars are not frames
    for kw in ({"psi": "max"}, {"window": 0}, {"stride": 2}, {"rescale": "clip"}):
        with pytest.raises(ValueError, match="parameter of"):
            dynamic_image(clip(4), **kw)


# -- rescaling -------------------------------------------------------------------------------------
def test_minmax_rescale_per_image() -> None:
    x = clip(24)
    raw = dynamic_image(x, window=8)
    img = dynamic_image(x, window=8, rescale="minmax")
    assert img.dtype == np.uint8 and img.shape == raw.shape
    for r, u in zip(raw, img, strict=True):
        assert u.min() == 0 and u.max() == 255
        expected = np.rint((r - r.min()) * 255.0 / (r.max() - r.min()))
        assert np.abs(u.astype(int) - expected).max() <= 1
    for T in (2, 5, 300):  # a still clip pools to 0 up to rounding: no picture of the noise
        still = np.repeat(clip(1, seed=T), T, axis=0)
        for frames in (still, list(still), still.astype(np.float32) / 255):
            assert not dynamic_image(frames, rescale="minmax").any()
            assert not dynamic_image(frames, window=2, rescale="minmax").any()
    one = dynamic_image(clip(1), rescale="minmax")  # a single frame is its own image
    assert one.min() == 0 and one.max() == 255


# -- the stage through the engine ------------------------------------------------------------------
def decode_frames(path: str) -> Iterator[np.ndarray]:
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise ItemError("corrupt", f"cannot decode video: {exc}") from None


@registry.register
class VideoFrames(Map):
    """Stand-in for the video readers of stages/compressed: every frame, RGB uint8."""

    name = "test.video_frames"
    description = "Decode every frame of a video with PyAV."
    CONSUMES = (Field("path", "str", ""),)
    PRODUCES = (Field("frames", "uint8", "T H W 3"),)

    def process(self, record: Record, ctx: Context) -> Record:
        frames = list(decode_frames(record["path"]))
        if not frames:
            raise ItemError("empty", "no video frames")
        return {"frames": np.stack(frames)}


@registry.register
class MotionField(Map):
    """Synthetic motion-vector fields (T R C 2) int16: a block moving by (index + 1) px."""

    name = "test.motion_field"
    description = "Synthetic motion vectors."
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (Field("mv", "int16", "T R C 2"),)

    def process(self, record: Record, ctx: Context) -> Record:
        mv = np.zeros((10, 6, 8, 2), np.int16)
        for t in range(10):
            mv[t, 2:4, t % 8, 0] = record["index"] + 1
        return {"mv": mv}


registry.register(DynamicImage)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for label, n in (("move_right", 20), ("move_down", 13)):
        path = root / label / f"{label}_000.mp4"
        disc_clip(path, rng, direction=label.removeprefix("move_"), size=(64, 48), frames=n)
    (root / "broken").mkdir()
    (root / "broken" / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50)
    return root


def _pipeline(root: Path, **params: Any) -> Pipeline:
    return Pipeline.from_dict(
        {
            "name": "di",
            "nodes": {
                "src": {"stage": "files", "params": {"root": str(root), "kinds": ["video"]}},
                "dec": {"stage": "test.video_frames", "inputs": "src"},
                "di": {"stage": "represent.dynamic_image", "inputs": "dec", "params": params},
            },
            "output": {"fields": ["dynamic_image", "label"]},
        }
    )


def test_decoded_video_generator_equals_the_array(videos: Path) -> None:
    path = str(videos / "move_right" / "move_right_000.mp4")
    frames = np.stack(list(decode_frames(path)))
    assert frames.shape == (20, 48, 64, 3)
    for psi in ("frame", "mean"):
        assert close(dynamic_image(decode_frames(path), psi=psi), direct(frames, psi))
        assert close(dynamic_image(frames, psi=psi), direct(frames, psi))


@pytest.mark.parametrize(
    ("params", "shape", "dtype"),
    [
        ({}, (48, 64, 3), np.float32),
        ({"psi": "mean", "rescale": "minmax"}, (48, 64, 3), np.uint8),
        ({"window": 8, "stride": 4}, (None, 48, 64, 3), np.float32),
    ],
)
def test_stage_through_run_local(videos: Path, tmp_path: Path, params, shape, dtype) -> None:
    report = run_local(_pipeline(videos, **params), tmp_path / "out")
    assert report.counts["ok"] == 2 and report.counts["error"] == 1
    samples = {s["key"]: s for s in from_shards(tmp_path / "out", shuffle=False)}
    assert set(samples) == {"move_right/move_right_000", "move_down/move_down_000"}
    for key, sample in samples.items():
        got = sample["dynamic_image"].numpy()
        assert got.dtype == dtype and got.shape[-3:] == shape[-3:]
        frames = np.stack(list(decode_frames(str(videos / f"{key}.mp4"))))
        want = dynamic_image(frames, **params)
        assert np.array_equal(got, want)
        if "window" in params:
            n = (len(frames) - 8) // 4 + 1
            assert got.shape[0] == n
            assert close(got[-1], direct(frames[(n - 1) * 4 : (n - 1) * 4 + 8]))
        elif dtype == np.float32:
            assert close(got, direct(frames, params.get("psi", "frame")))


def test_motion_vector_fields_through_the_engine(tmp_path: Path) -> None:
    p = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "test.counter", "params": {"n": 3}},
                "mv": {"stage": "test.motion_field", "inputs": "src"},
                "di": {
                    "stage": "represent.dynamic_image",
                    "inputs": "mv",
                    "params": {"field": "mv", "output": "motion_di"},
                },
            }
        }
    )
    produced = p.fields_at("di")["motion_di"]
    assert (produced.dtype, produced.shape) == ("float32", "H W C")
    run_local(p, tmp_path / "out")
    samples = {s["key"]: s for s in from_shards(tmp_path / "out", shuffle=False)}
    for i in range(3):
        mv = MotionField().process({"index": i}, Context())["mv"]
        got = samples[f"item_{i:03d}"]["motion_di"].numpy()
        assert got.shape == (6, 8, 2) and close(got, direct(mv))
        assert got[2, 7, 0] > 0 > got[2, 0, 0]  # late columns of the motion score positive


def test_key_frames_and_motion_vectors_of_the_video_readers(videos: Path, tmp_path: Path):
    """represent.dynamic_image on what video.iframes and video.motion_vectors produce."""
    p = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "files", "params": {"root": str(videos), "kinds": ["video"]}},
                "mv": {"stage": "video.motion_vectors", "inputs": "src"},
                "kf": {"stage": "video.iframes", "inputs": "mv"},
                "di": {
                    "stage": "represent.dynamic_image",
                    "inputs": "kf",
                    "params": {"field": "iframes", "rescale": "minmax"},
                },
                "mdi": {
                    "stage": "represent.dynamic_image",
                    "inputs": "di",
                    "params": {"field": "mv", "output": "motion_di", "psi": "mean"},
                },
            },
            "output": {"fields": ["dynamic_image", "motion_di", "iframes", "mv"]},
        }
    )
    report = run_local(p, tmp_path / "out")
    assert report.counts["ok"] == 2 and report.counts["error"] == 1
    for sample in from_shards(tmp_path / "out", shuffle=False):
        iframes, mv = sample["iframes"].numpy(), sample["mv"].numpy()
        assert len(iframes) >= 2 and mv.ndim == 4 and mv.shape[-1] == 2
        di, motion = sample["dynamic_image"].numpy(), sample["motion_di"].numpy()
        assert di.dtype == np.uint8 and di.shape == iframes.shape[1:]
        assert np.array_equal(di, dynamic_image(iframes, rescale="minmax"))
        assert motion.shape == mv.shape[1:] and close(motion, direct(mv, "mean"))
        assert np.abs(motion).max() > 0  # the disc moves


def test_validate_catches_a_missing_frames_field(videos: Path) -> None:
    with pytest.raises(ConfigError, match="consumes field 'iframes'"):
        _pipeline(videos, field="iframes")


def test_stage_contract_and_params() -> None:
    stage = DynamicImage(**DynamicImage.EXAMPLE_PARAMS)
    again = DynamicImage(**stage.get_params())
    assert again == stage and again.token() == stage.token()
    clone = pickle.loads(pickle.dumps(stage))
    assert clone == stage and vars(clone).keys() == {"params"}
    assert stage.produces() == (Field("dynamic_image", "uint8", "N H W C", "dynamic image(s)"),)
    with pytest.raises(ParamError, match=r"params\.not_a_param: unknown parameter of"):
        DynamicImage(not_a_param=1)
    for bad in ({"stride": 3}, {"window": 0}, {"field": "Frames"}, {"psi": "max"}):
        with pytest.raises(ParamError):
            DynamicImage(**bad)
    with pytest.raises(ItemError, match="T, H, W, C"):
        DynamicImage().process({"frames": np.zeros((3, 4, 4))}, Context())
