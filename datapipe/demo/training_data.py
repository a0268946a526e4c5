"""Training-size synthetic datasets, made in seconds without any download.

- **Images** (:func:`make_image_dataset`): one class per shape (circle, square, star, ...),
  a shape cut from one real-photo texture (random crops of scikit-learn's sample photos)
  pasted over another, at a random position, scale, rotation, size and JPEG quality. Every
  shape covers the same distribution of area and every image's mean colour is moved to a
  random target, so neither the colour nor its mean tells the class: the outline does.
- **Videos** (:func:`make_video_dataset`): one class per motion of a textured object
  *relative to* a background that pans in a random direction (pan left/right/up/down, zoom
  in/out, rotation, a static object under flicker), so no single frame tells the class.
  H.264 with B-frames and a fixed GOP, encoded by :mod:`datapipe.stages.common.video_synth`.

Both are folder-labelled (``ROOT/CLASS/NAME.jpg``, ``ROOT/CLASS/NAME.mp4``) and byte-identical
for the same seed: every file has its own random stream ``(seed, modality, class, index)``,
so files can be made in parallel in any order. Command line::

    python -m datapipe.demo.training_data OUT [--images] [--videos] [--scale N] [--seed S]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

Polygon = tuple[np.ndarray, int]  # (N, 2) unit-radius points, 1 to draw or 0 to erase

IMAGE_CLASSES = (
    "circle", "square", "triangle", "star", "cross",
    "ring", "hexagon", "crescent", "arrow", "ell", "diamond", "heart",
)  # fmt: skip
VIDEO_CLASSES = (
    "pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out",
    "rotate_cw", "rotate_ccw", "flicker",
)  # fmt: skip
#: relative motion of the object in the pan classes, (x, y) unit direction
PAN_DIRECTIONS = {"pan_left": (-1, 0), "pan_right": (1, 0), "pan_up": (0, -1), "pan_down": (0, 1)}

_STREAM_IDS = {"images": 11, "videos": 12}
_JPEG_QUALITY = (60, 95)
_AREA_FRACTION = (0.12, 0.3)  # of the image, the same for every class
_MEAN_RANGE = (70.0, 185.0)  # per-channel target of each image's mean colour
_VIDEO_GOP = 12
_VIDEO_BFRAMES = 2
_VIDEO_FPS = 12


# --------------------------------------------------------------------------- shapes


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    a = phase + np.arange(n) * 2 * np.pi / n
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _shape(name: str) -> list[Polygon]:
    """The polygons of a shape in unit coordinates (about radius 1, centred at 0)."""
    circle = _regular(48)
    if name == "circle":
        return [(circle, 1)]
    if name == "square":
        return [(_regular(4, phase=np.pi / 4), 1)]
    if name == "triangle":
        return [(_regular(3, phase=-np.pi / 2), 1)]
    if name == "hexagon":
        return [(_regular(6), 1)]
    if name == "diamond":
        return [(np.array([[0, -1], [0.55, 0], [0, 1], [-0.55, 0]], float), 1)]
    if name == "star":
        outer, inner = _regular(5, 1.0, -np.pi / 2), _regular(5, 0.4, -np.pi / 2 + np.pi / 5)
        return [(np.stack([outer, inner], axis=1).reshape(-1, 2), 1)]
    if name == "cross":
        w = 0.33
        return [
            (np.array([[-1, -w], [1, -w], [1, w], [-1, w]]), 1),
            (np.array([[-w, -1], [w, -1], [w, 1], [-w, 1]]), 1),
        ]
    if name == "ring":
        return [(circle, 1), (circle * 0.6, 0)]
    if name == "crescent":
        return [(circle, 1), (circle * 0.85 + [0.45, 0.0], 0)]
    if name == "arrow":
        xy = [-1, -0.25, 0.2, -0.25, 0.2, -0.7, 1, 0, 0.2, 0.7, 0.2, 0.25, -1, 0.25]
        return [(np.reshape(xy, (-1, 2)), 1)]
    if name == "ell":
        xy = [-0.8, -1, -0.2, -1, -0.2, 0.4, 0.8, 0.4, 0.8, 1, -0.8, 1]
        return [(np.reshape(xy, (-1, 2)), 1)]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t)
        return [(np.stack([x, -y - 2.5], axis=1) / 16.0, 1)]
    raise ValueError(f"unknown shape {name!r}; expected one of {IMAGE_CLASSES}")


def shape_mask(
    name: str, size: tuple[int, int], centre: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    """float32 (H, W) coverage in [0, 1] of shape ``name`` (2x supersampled)."""
    width, height = size
    ss = 2
    img = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(img)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    for points, fill in _shape(name):
        xy = (points @ rot.T * radius + centre) * ss
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255 * fill)
    small = img.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255.0


@cache
def _unit_area(name: str) -> float:
    """Area of shape ``name`` at radius 1 (measured once on a raster)."""
    return float(shape_mask(name, (200, 200), (100.0, 100.0), 80.0, 0.0).sum()) / 80.0**2


# --------------------------------------------------------------------------- textures


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's sample photos (china.jpg, flower.jpg), uint8 (427, 640, 3) each."""
    from sklearn.datasets import load_sample_images

    return tuple(np.asarray(p, np.uint8) for p in load_sample_images().images)


def photo_texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (height, width, 3): a random crop of a sample photo at a random scale, flipped or
    turned by a random multiple of 90 degrees."""
    photo = _photos()[int(rng.integers(len(_photos())))]
    turns = int(rng.integers(4))
    w, h = (height, width) if turns % 2 else (width, height)
    scale = rng.uniform(0.5, 2.0)
    cw = int(min(photo.shape[1], max(8, w * scale)))
    ch = int(min(photo.shape[0], max(8, h * scale)))
    y, x = int(rng.integers(photo.shape[0] - ch + 1)), int(rng.integers(photo.shape[1] - cw + 1))
    crop = Image.fromarray(np.ascontiguousarray(photo[y : y + ch, x : x + cw]))
    out = np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.rot90(out, turns))


def _normalise_mean(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each channel so that the image's mean colour is a random target."""
    target = rng.uniform(*_MEAN_RANGE, size=3)
    shifted = img - img.reshape(-1, 3).mean(axis=0) + target
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- images


def render_shape_image(name: str, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3): shape ``name`` in one photo texture over another, mean colour
    normalised; ``size`` = (min, max) side."""
    width, height = (int(v) for v in rng.integers(size[0], size[1] + 1, size=2))
    area = rng.uniform(*_AREA_FRACTION) * width * height
    radius = math.sqrt(area / _unit_area(name))
    jitter = 0.15 * np.array([width, height])
    centre = np.array([width, height]) / 2 + rng.uniform(-1, 1, size=2) * jitter
    mask = shape_mask(name, (width, height), tuple(centre), radius, rng.uniform(-0.5, 0.5))
    # a brighter object on a darker ground, each a different photo crop
    ground = photo_texture(width, height, rng).astype(np.float32) * rng.uniform(0.35, 0.6)
    fg = photo_texture(width, height, rng).astype(np.float32) * rng.uniform(0.35, 0.6)
    fg += 255 * rng.uniform(0.35, 0.5)
    img = ground * (1 - mask[..., None]) + fg * mask[..., None]
    return _normalise_mean(img, rng)


def _write_image(task: tuple[Path, str, int, int, int, tuple[int, int]]) -> None:
    path, name, seed, label_index, index, size = task
    rng = np.random.default_rng([seed, _STREAM_IDS["images"], label_index, index])
    pixels = render_shape_image(name, rng, size)
    quality = int(rng.integers(_JPEG_QUALITY[0], _JPEG_QUALITY[1] + 1))
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality, optimize=False)


def make_image_dataset(
    root: str | Path,
    *,
    classes: int = 10,
    per_class: int = 100,
    size: tuple[int, int] = (64, 160),
    seed: int = 0,
    workers: int | None = 1,
) -> dict[str, int]:
    """Write ``classes`` x ``per_class`` shape JPEGs to ``root/CLASS/CLASS_NNNN.jpg``.

    ``size`` is the (min, max) of each side in pixels; ``workers`` processes (None: one per
    CPU). Returns the number of files written per class.
    """
    labels = _check(classes, per_class, seed, IMAGE_CLASSES)
    if not 8 <= size[0] <= size[1]:
        raise ValueError(f"size must be (min, max) with 8 <= min <= max, got {size}")
    tasks = []
    for k, name in enumerate(labels):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tasks.append((Path(root) / name / f"{name}_{i:04d}.jpg", name, seed, k, i, size))
    _run(_write_image, tasks, workers)
    return {name: per_class for name in labels}


# --------------------------------------------------------------------------- videos


def render_motion_clip(
    label: str, rng: np.random.Generator, size: tuple[int, int], frames: int, camera: int = 1
) -> np.ndarray:
    """uint8 (frames, H, W, 3): a textured object moving as ``label`` says relative to a
    photo background that pans by a random integer (-camera..camera, -camera..camera) pixels
    per frame (``camera=0``: a still background, the object's own motion on screen)."""
    width, height = size
    bg_v = rng.integers(-camera, camera + 1, size=2)
    span = np.abs(bg_v) * (frames - 1)
    big = photo_texture(width + int(span[0]), height + int(span[1]), rng).astype(np.float32)
    big = 0.7 * big + 0.3 * _noise(big.shape[1], big.shape[0], rng)  # detail for the codec
    side = int(rng.integers(height // 5, height // 3 + 1))
    patch = photo_texture(side * 2, side * 2, rng).astype(np.float32) * 0.6 + 90
    shape = IMAGE_CLASSES[int(rng.integers(3))]  # circle, square or triangle
    angle0 = rng.uniform(0, 2 * np.pi)
    rel = np.zeros(2)
    if label in PAN_DIRECTIONS:
        rel = np.array(PAN_DIRECTIONS[label], float) * rng.uniform(0.8, 1.6)
    total = bg_v + rel  # object velocity on screen
    lo = side * 0.8 - np.minimum(total, 0) * (frames - 1)
    hi = np.array([width, height]) - side * 0.8 - np.maximum(total, 0) * (frames - 1)
    start = lo + rng.random(2) * np.maximum(hi - lo, 0)
    spin = rng.uniform(0.04, 0.1) * {"rotate_cw": 1, "rotate_ccw": -1}.get(label, 0)
    growth = {"zoom_in": 1, "zoom_out": -1}.get(label, 0) * rng.uniform(0.015, 0.025)
    flicker = rng.uniform(0.1, 0.2) if label == "flicker" else 0.0
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(3, 6)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        # the window slides against the background's velocity
        x = int(span[0]) - bg_v[0] * t if bg_v[0] > 0 else -bg_v[0] * t
        y = int(span[1]) - bg_v[1] * t if bg_v[1] > 0 else -bg_v[1] * t
        frame = big[y : y + height, x : x + width].copy()
        scale = math.exp(growth * (t - (frames - 1) / 2))
        centre = start + total * t
        mask = shape_mask(
            shape, (width, height), tuple(centre), side / 2 * scale, angle0 + spin * t
        )
        obj = _place(patch, centre, scale, (angle0 + spin * t) * 180 / np.pi, (width, height))
        frame = frame * (1 - mask[..., None]) + obj * mask[..., None]
        frame *= 1 + flicker * math.sin(phase + 2 * np.pi * t / period)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def _noise(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    from datapipe.stages.common.video_synth import texture

    return texture(width, height, rng, cell=3).astype(np.float32)


def _place(
    patch: np.ndarray, centre: np.ndarray, scale: float, degrees: float, size: tuple[int, int]
) -> np.ndarray:
    """float32 (H, W, 3): ``patch`` scaled and rotated about its centre, centred at ``centre``."""
    pw = patch.shape[1]
    img = Image.fromarray(patch.astype(np.uint8))
    s = max(4, round(pw * scale))
    img = img.resize((s, s), Image.Resampling.BILINEAR).rotate(
        degrees, resample=Image.Resampling.BILINEAR
    )
    canvas = Image.new("RGB", size)
    canvas.paste(img, (round(centre[0] - s / 2), round(centre[1] - s / 2)))
    return np.asarray(canvas, np.float32)


def _write_video(task: tuple[Path, str, int, int, int, tuple[int, int], int, int]) -> None:
    from datapipe.stages.common.video_synth import REPRODUCIBLE_X264, write_clip

    path, label, seed, label_index, index, size, frames, camera = task
    rng = np.random.default_rng([seed, _STREAM_IDS["videos"], label_index, index])
    pixels = render_motion_clip(label, rng, size, frames, camera)
    params = f"asm=0:bframes={_VIDEO_BFRAMES}:b-adapt=0:b-pyramid=none:ref=1:scenecut=0"
    options = {**REPRODUCIBLE_X264, "x264-params": f"{params}:keyint={_VIDEO_GOP}"}
    write_clip(
        path,
        pixels,
        fps=_VIDEO_FPS,
        gop=_VIDEO_GOP,
        bframes=_VIDEO_BFRAMES,
        container="mp4",
        options=options,
        bitexact=True,
    )


def make_video_dataset(
    root: str | Path,
    *,
    classes: int = 6,
    per_class: int = 30,
    size: tuple[int, int] = (96, 96),
    frames: int = 24,
    seed: int = 0,
    workers: int | None = None,
    camera: int = 1,
) -> dict[str, int]:
    """Write ``classes`` x ``per_class`` H.264 clips to ``root/CLASS/CLASS_NNNN.mp4``.

    ``size`` = (width, height) (multiples of 16 keep the codec's blocks whole), ``frames``
    per clip (>= 12); B-frames and a key frame every 12 frames. ``workers`` processes (None:
    one per CPU). ``camera``: the background pans by a random whole number of pixels per
    frame in ``-camera..camera`` on each axis (1, the default: the class is the object's
    motion *relative to* a moving background; 0: a still background, so the object's motion
    on screen is the class; any value leaves a single frame uninformative). Returns the
    number of clips written per class.
    """
    labels = _check(classes, per_class, seed, VIDEO_CLASSES)
    if frames < _VIDEO_GOP or min(size) < 32:
        raise ValueError(f"need frames >= {_VIDEO_GOP} and sides >= 32, got {frames}, {size}")
    if not 0 <= camera <= 4:
        raise ValueError(f"camera must be 0..4 pixels per frame, got {camera}")
    tasks = []
    for k, name in enumerate(labels):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = Path(root) / name / f"{name}_{i:04d}.mp4"
            tasks.append((path, name, seed, k, i, size, frames, camera))
    _run(_write_video, tasks, workers)
    return {name: per_class for name in labels}


# --------------------------------------------------------------------------- shared


def _check(classes: int, per_class: int, seed: int, names: tuple[str, ...]) -> tuple[str, ...]:
    if not 1 <= classes <= len(names):
        raise ValueError(f"classes must be 1..{len(names)}, got {classes}")
    if per_class < 1 or seed < 0:
        raise ValueError(f"need per_class >= 1 and seed >= 0, got {per_class}, {seed}")
    return names[:classes]


def _run(fn, tasks: list, workers: int | None) -> None:  # type: ignore[no-untyped-def]
    """Run ``fn`` on every task, in ``workers`` processes (None: one per CPU)."""
    n = min(len(tasks), workers or os.cpu_count() or 1)
    if n <= 1:
        for task in tasks:
            fn(task)
        return
    import multiprocessing

    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(fn, tasks, chunksize=max(1, len(tasks) // (4 * n))))


def main(argv: list[str] | None = None) -> None:
    """``python -m datapipe.demo.training_data OUT [--images] [--videos] [--scale N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", action="store_true", help="images (default: both)")
    parser.add_argument("--videos", action="store_true", help="videos (default: both)")
    parser.add_argument("--scale", type=int, default=1, help="multiply the items per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    args = parser.parse_args(argv)
    both = not (args.images or args.videos)
    if args.images or both:
        start = time.perf_counter()
        counts = make_image_dataset(
            args.out / "images", per_class=100 * args.scale, seed=args.seed, workers=args.workers
        )
        print(f"images: {sum(counts.values())} in {time.perf_counter() - start:.1f} s")
    if args.videos or both:
        start = time.perf_counter()
        counts = make_video_dataset(
            args.out / "videos", per_class=30 * args.scale, seed=args.seed, workers=args.workers
        )
        print(f"videos: {sum(counts.values())} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
