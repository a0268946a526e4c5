"""Generate a small, deterministic, labelled sample dataset without any download.

The data exercises the decoders that real pipelines meet: baseline and progressive
JPEGs with different chroma subsampling, H.264 clips with several key frames and a
scene cut, and binary PLY point clouds. Labels are given by folder names and repeated
in ``labels.csv``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from open3d.geometry import TriangleMesh

logger = logging.getLogger(__name__)

DIGIT_LABELS = [f"digit_{d}" for d in range(5)]
PHOTO_LABELS = ["china", "flower"]

SAMPLE_LABELS: dict[str, list[str]] = {
    "images": [*DIGIT_LABELS, *PHOTO_LABELS],
    "videos": ["move_right", "move_down", "static"],
    "pointclouds": ["sphere", "box", "cylinder", "torus", "cone"],
}

_IMAGES_PER_CLASS = 6
_VIDEOS_PER_CLASS = 3
_POINTCLOUDS_PER_CLASS = 3

_DIGIT_SIZES = (32, 64, 96)
_PHOTO_SIZES = ((227, 173), (160, 120), (320, 240))
_VIDEO_SIZES = ((96, 64), (128, 96))
_VIDEO_FRAMES = (16, 24, 32)
_VIDEO_FPS = 12
_VIDEO_GOP = 8
_POINT_RANGE = (500, 2000)

# One independent random stream per modality, so changing one leaves the others alone.
_STREAM_IDS = {"images": 1, "videos": 2, "pointclouds": 3}


def generate_sample_data(
    root: str | Path,
    *,
    seed: int = 0,
    scale: int = 1,
    modalities: tuple[str, ...] = ("images", "videos", "pointclouds"),
) -> dict[str, int]:
    """Write a small labelled image/video/point-cloud dataset under ``root``.

    Parameters
    ----------
    root : str or Path
        Output directory; created if missing. Existing files with the same names
        are overwritten, other files are left alone.
    seed : int
        Non-negative seed; the same seed gives byte-identical files.
    scale : int
        Multiplies the number of items per class (scale 1 is a few dozen files).
    modalities : tuple of str
        Which of ``images``, ``videos``, ``pointclouds`` to write (each has its own random
        stream, so leaving one out does not change the others).

    Returns
    -------
    dict[str, int]
        Number of files written per modality: ``images``, ``videos``, ``pointclouds``.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[Path, np.random.Generator, int], list[tuple[Path, str]]]] = {
        "images": _write_images,
        "videos": _write_videos,
        "pointclouds": _write_pointclouds,
    }
    rows: list[tuple[Path, str]] = []
    counts: dict[str, int] = {}
    unknown = set(modalities) - set(writers)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected {sorted(writers)}")
    for modality, writer in writers.items():
        if modality not in modalities:
            continue
        start = time.perf_counter()
        rng = np.random.default_rng([seed, _STREAM_IDS[modality]])
        written = writer(root / modality, rng, scale)
        rows.extend(written)
        counts[modality] = len(written)
        logger.debug("wrote %d %s in %.2fs", len(written), modality, time.perf_counter() - start)
    _write_labels_csv(root, rows)
    return counts


def _write_labels_csv(root: Path, rows: list[tuple[Path, str]]) -> None:
    """Write ``labels.csv`` (``path,label``, POSIX paths relative to ``root``), sorted."""
    lines = sorted((path.relative_to(root).as_posix(), label) for path, label in rows)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(lines)


# --------------------------------------------------------------------------- images


def _jpeg_options(index: int, rng: np.random.Generator) -> dict[str, object]:
    """Vary the JPEG encoding by index so each class mixes progressive/baseline and 4:2:0/4:4:4."""
    return {
        "quality": int(rng.choice([70, 85, 95])),
        "progressive": index % 2 == 1,
        "subsampling": 2 if (index // 2) % 2 == 0 else 0,  # 2 = 4:2:0, 0 = 4:4:4
        "optimize": False,
    }


def _write_images(out: Path, rng: np.random.Generator, scale: int) -> list[tuple[Path, str]]:
    """Write tinted, upscaled sklearn digits and random crops of sklearn's sample photos."""
    from sklearn.datasets import load_digits, load_sample_images

    n = _IMAGES_PER_CLASS * scale
    rows: list[tuple[Path, str]] = []
    digits = load_digits()
    for label in DIGIT_LABELS:
        pool = np.flatnonzero(digits.target == int(label.split("_")[1]))
        picks = rng.choice(pool, size=n, replace=n > len(pool))
        for i, idx in enumerate(picks):
            size = _DIGIT_SIZES[i % len(_DIGIT_SIZES)]
            img = _render_digit(digits.images[idx], size, rng)
            if i % 6 == 5:
                img = img.convert("L")
            rows.append(_save_jpeg(img, out / label / f"{label}_{i:03d}.jpg", label, i, rng))

    photos = load_sample_images()
    for label in PHOTO_LABELS:
        k = next(j for j, f in enumerate(photos.filenames) if Path(f).stem == label)
        photo = photos.images[k]
        for i in range(n):
            w, h = _PHOTO_SIZES[i % len(_PHOTO_SIZES)]
            y = int(rng.integers(0, photo.shape[0] - h + 1))
            x = int(rng.integers(0, photo.shape[1] - w + 1))
            img = Image.fromarray(np.ascontiguousarray(photo[y : y + h, x : x + w]))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if i % 6 == 4:
                img = img.convert("L")
            rows.append(_save_jpeg(img, out / label / f"{label}_{i:03d}.jpg", label, i, rng))
    return rows


def _render_digit(pixels: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """Upscale an 8x8 digit (0..16) smoothly and paint it in a random ink on light paper."""
    gray = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    alpha = np.asarray(gray.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0
    ink = rng.uniform(0, 160, size=3).astype(np.float32)
    paper = rng.uniform(200, 255, size=3).astype(np.float32)
    rgb = paper * (1.0 - alpha[..., None]) + ink * alpha[..., None]
    rgb += rng.normal(0.0, 4.0, size=rgb.shape).astype(np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def _save_jpeg(
    img: Image.Image, path: Path, label: str, index: int, rng: np.random.Generator
) -> tuple[Path, str]:
    """Save ``img`` as JPEG with index-dependent options; return the labels.csv row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", **_jpeg_options(index, rng))
    return path, label


# --------------------------------------------------------------------------- videos


def _write_videos(out: Path, rng: np.random.Generator, scale: int) -> list[tuple[Path, str]]:
    """Write H.264 clips of a disc moving over noise (the clip generator of
    ``datapipe.stages.common.video_synth``); every third clip has a scene cut."""
    from datapipe.stages.common.video_synth import disc_clip

    directions: dict[str, Literal["right", "down"] | None] = {
        "move_right": "right",
        "move_down": "down",
        "static": None,
    }
    rows: list[tuple[Path, str]] = []
    for label in SAMPLE_LABELS["videos"]:
        for i in range(_VIDEOS_PER_CLASS * scale):
            cut = i % 3 == 2
            path = out / label / f"{label}_{i:03d}{'_cut' if cut else ''}.mp4"
            disc_clip(
                path,
                rng,
                direction=directions[label],
                size=_VIDEO_SIZES[i % len(_VIDEO_SIZES)],
                frames=_VIDEO_FRAMES[i % len(_VIDEO_FRAMES)],
                cut=cut,
                fps=_VIDEO_FPS,
                gop=_VIDEO_GOP,
            )
            rows.append((path, label))
    return rows


# --------------------------------------------------------------------------- point clouds


def _write_pointclouds(out: Path, rng: np.random.Generator, scale: int) -> list[tuple[Path, str]]:
    """Write noisy, randomly posed surface samples of Open3D primitive meshes as binary PLY."""
    import open3d as o3d

    rows: list[tuple[Path, str]] = []
    for label in SAMPLE_LABELS["pointclouds"]:
        for i in range(_POINTCLOUDS_PER_CLASS * scale):
            mesh = _primitive_mesh(label, rng)
            vertices = np.asarray(mesh.vertices, dtype=np.float64)
            triangles = np.asarray(mesh.triangles, dtype=np.int64)
            n_points = int(rng.integers(_POINT_RANGE[0], _POINT_RANGE[1] + 1))
            points = _sample_surface(vertices - vertices.mean(axis=0), triangles, n_points, rng)
            points = points @ _random_rotation(rng).T + rng.uniform(-2.0, 2.0, size=3)
            points += rng.normal(0.0, 0.01, size=points.shape)
            path = out / label / f"{label}_{i:03d}.ply"
            path.parent.mkdir(parents=True, exist_ok=True)
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
            if not o3d.io.write_point_cloud(str(path), cloud, write_ascii=False):
                raise OSError(f"Open3D could not write {path}")
            rows.append((path, label))
    return rows


def _primitive_mesh(label: str, rng: np.random.Generator) -> TriangleMesh:
    """Build the Open3D primitive for ``label`` with randomised dimensions."""
    from open3d.geometry import TriangleMesh

    u = rng.uniform
    if label == "sphere":
        return TriangleMesh.create_sphere(radius=u(0.5, 1.0))
    if label == "box":
        return TriangleMesh.create_box(width=u(0.5, 1.5), height=u(0.5, 1.5), depth=u(0.5, 1.5))
    if label == "cylinder":
        return TriangleMesh.create_cylinder(radius=u(0.3, 0.6), height=u(1.0, 2.0))
    if label == "torus":
        return TriangleMesh.create_torus(torus_radius=u(0.8, 1.2), tube_radius=u(0.2, 0.4))
    if label == "cone":
        return TriangleMesh.create_cone(radius=u(0.4, 0.8), height=u(1.0, 1.8))
    raise ValueError(f"unknown primitive {label!r}")


def _sample_surface(
    vertices: np.ndarray, triangles: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Sample ``n`` points uniformly by area with numpy, independent of Open3D's global RNG."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    chosen = rng.choice(len(areas), size=n, p=areas / areas.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    a, b, c = a[chosen], b[chosen], c[chosen]
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3x3 rotation from the QR decomposition of a Gaussian matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
