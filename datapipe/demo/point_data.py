"""Training-size point clouds of objects that differ by small parts, made without a download.

Each class is an object composed of Open3D primitives (boxes, cylinders, cones, a torus)
with random proportions, built z-up: a chair and a chair with arms, a table with four legs
and one with three, a mug and a mug with a handle, a stool with three legs and one with
four, a lamp with a shade and a bare pole, a bed and a bench. Pairs differ only by a part
that holds a small share of the surface, so *where* a sampler puts its points matters.
Every cloud is rotated about z by a random angle (never about another axis: the objects
stay upright, as in aligned ModelNet40), scaled, jittered and sampled uniformly by area
(numpy, seeded per file ``(seed, class, index)``: byte-identical for the same seed).

Written as binary little-endian PLY (x, y, z float32) to ``ROOT/CLASS/CLASS_NNNN.ply``::

    python -m datapipe.demo.point_data OUT [--per-class 200] [--points 1024] [--seed S]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from datapipe.demo.sample_data import _sample_surface

POINT_CLASSES = (
    "chair", "armchair", "table", "table3", "mug", "mug_handle",
    "stool3", "stool4", "lamp", "pole", "bed", "bench",
)  # fmt: skip
_STREAM_ID = 13
_NOISE = 0.005  # of the object's size (1)

Part = tuple[np.ndarray, np.ndarray]  # (vertices (V, 3), triangles (T, 3))


def _box(center: tuple[float, float, float], size: tuple[float, float, float]) -> Part:
    from open3d.geometry import TriangleMesh

    mesh = TriangleMesh.create_box(*size)
    v = np.asarray(mesh.vertices) - np.asarray(size) / 2 + np.asarray(center)
    return v, np.asarray(mesh.triangles)


def _cylinder(center: tuple[float, float, float], radius: float, height: float) -> Part:
    from open3d.geometry import TriangleMesh

    mesh = TriangleMesh.create_cylinder(radius=radius, height=height, resolution=24)
    return np.asarray(mesh.vertices) + np.asarray(center), np.asarray(mesh.triangles)


def _cone(center: tuple[float, float, float], radius: float, height: float) -> Part:
    from open3d.geometry import TriangleMesh

    mesh = TriangleMesh.create_cone(radius=radius, height=height, resolution=24)
    return np.asarray(mesh.vertices) + np.asarray(center), np.asarray(mesh.triangles)


def _handle(center: tuple[float, float, float], radius: float, tube: float) -> Part:
    """A torus standing in the xz plane (a mug's handle)."""
    from open3d.geometry import TriangleMesh

    mesh = TriangleMesh.create_torus(torus_radius=radius, tube_radius=tube)
    v = np.asarray(mesh.vertices)[:, [0, 2, 1]]  # the ring's plane xy -> xz
    return v + np.asarray(center), np.asarray(mesh.triangles)


def _legs(n: int, spread: float, height: float, radius: float) -> list[Part]:
    """``n`` cylinder legs on a circle (3) or at the corners of a square (4), from z=0 up."""
    if n == 4:
        spots = [(sx * spread, sy * spread) for sx in (-1, 1) for sy in (-1, 1)]
    else:
        angles = np.arange(n) * 2 * np.pi / n
        spots = [(spread * 1.3 * np.cos(a), spread * 1.3 * np.sin(a)) for a in angles]
    return [_cylinder((x, y, height / 2), radius, height) for x, y in spots]


def _seat_with_legs(u: Callable[[float, float], float], legs: int, round_top: bool) -> list[Part]:
    w, h, t = u(0.8, 1.1), u(0.7, 1.0), u(0.05, 0.1)
    top = (
        _cylinder((0, 0, h + t / 2), w / 2, t) if round_top else _box((0, 0, h + t / 2), (w, w, t))
    )
    return [top, *_legs(legs, w * 0.4, h, u(0.03, 0.05))]


def _parts(name: str, rng: np.random.Generator) -> list[Part]:
    """The primitives of one object of class ``name``, z-up, random proportions."""
    u = rng.uniform
    if name in ("chair", "armchair"):
        w, h, t = u(0.5, 0.7), u(0.4, 0.55), 0.06
        parts = [_box((0, 0, h), (w, w, t)), *_legs(4, w * 0.42, h, 0.03)]
        back = u(0.45, 0.7)
        parts.append(_box((0, -w / 2, h + back / 2), (w, 0.05, back)))
        if name == "armchair":
            for side in (-1, 1):
                parts.append(_box((side * w / 2, 0, h + 0.2), (0.05, w * 0.8, 0.04)))
                parts.append(_box((side * w / 2, w * 0.3, h + 0.1), (0.04, 0.04, 0.2)))
        return parts
    if name in ("table", "table3"):
        return _seat_with_legs(u, 4 if name == "table" else 3, round_top=name == "table3")
    if name in ("stool3", "stool4"):
        r, h = u(0.2, 0.3), u(0.5, 0.75)
        seat = _cylinder((0, 0, h), r, 0.06)
        return [seat, *_legs(3 if name == "stool3" else 4, r * 0.7, h, 0.025)]
    if name in ("mug", "mug_handle"):
        r, h = u(0.3, 0.45), u(0.7, 1.0)
        parts = [_cylinder((0, 0, h / 2), r, h)]
        if name == "mug_handle":
            parts.append(_handle((r + 0.12, 0, h / 2), u(0.15, 0.22), 0.04))
        return parts
    if name in ("lamp", "pole"):
        h = u(1.2, 1.6)
        parts = [_cylinder((0, 0, 0.03), u(0.25, 0.35), 0.06), _cylinder((0, 0, h / 2), 0.03, h)]
        if name == "lamp":
            parts.append(_cone((0, 0, h - 0.12), u(0.18, 0.24), u(0.18, 0.24)))
        return parts
    if name in ("bed", "bench"):
        length, width, h = u(1.6, 2.0), u(0.8, 1.1), u(0.3, 0.45)
        if name == "bench":
            width = u(0.3, 0.45)
        parts = [_box((0, 0, h), (width, length, 0.12))] + [
            _cylinder((sx * width * 0.42, sy * length * 0.45, h / 2), 0.04, h)
            for sx in (-1, 1)
            for sy in (-1, 1)
        ]
        if name == "bed":
            parts.append(_box((0, -length / 2, h + 0.35), (width, 0.06, 0.7)))
        return parts
    raise ValueError(f"unknown class {name!r}; known: {POINT_CLASSES}")


def make_cloud(name: str, rng: np.random.Generator, points: int = 1024) -> np.ndarray:
    """``points`` float32 (x, y, z) on the surface of one object of class ``name``: z-up,
    rotated about z at random, scaled to a size of about 1 (x 0.8-1.2), jittered."""
    parts = _parts(name, rng)
    vertices, triangles, offset = [], [], 0
    for v, t in parts:
        vertices.append(v)
        triangles.append(t + offset)
        offset += len(v)
    v = np.concatenate(vertices)
    v = (v - v.mean(axis=0)) / np.abs(v).max()
    cloud = _sample_surface(v, np.concatenate(triangles), points, rng)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    cloud = cloud @ rot.T * rng.uniform(0.8, 1.2) + rng.normal(0, _NOISE, cloud.shape)
    return cloud.astype(np.float32)


def write_ply(path: Path, points: np.ndarray) -> None:
    """Binary little-endian PLY of float32 x, y, z."""
    pts = np.ascontiguousarray(points, dtype="<f4")
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n"
    )
    path.write_bytes(header.encode() + pts.tobytes())


def make_point_dataset(
    root: str | Path,
    *,
    classes: int = len(POINT_CLASSES),
    per_class: int = 200,
    points: int = 1024,
    seed: int = 0,
) -> dict[str, int]:
    """Write ``classes`` x ``per_class`` clouds of ``points`` points to
    ``root/CLASS/CLASS_NNNN.ply``; returns the clouds written per class."""
    if not 1 <= classes <= len(POINT_CLASSES) or per_class < 1 or points < 1 or seed < 0:
        raise ValueError(
            f"need 1 <= classes <= {len(POINT_CLASSES)}, per_class >= 1, points >= 1 and "
            f"seed >= 0; got {classes}, {per_class}, {points}, {seed}"
        )
    for name, i, cloud in iter_point_clouds(classes, per_class, points, seed):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        write_ply(Path(root) / name / f"{name}_{i:04d}.ply", cloud)
    return {name: per_class for name in POINT_CLASSES[:classes]}


def iter_point_clouds(
    classes: int = len(POINT_CLASSES), per_class: int = 200, points: int = 1024, seed: int = 0
) -> Iterator[tuple[str, int, np.ndarray]]:
    """``(class, index, cloud)`` for the clouds :func:`make_point_dataset` writes, in memory."""
    for k, name in enumerate(POINT_CLASSES[:classes]):
        for i in range(per_class):
            rng = np.random.default_rng([seed, _STREAM_ID, k, i])
            yield name, i, make_cloud(name, rng, points)


def main(argv: list[str] | None = None) -> None:
    """``python -m datapipe.demo.point_data OUT [--per-class N] [--points P] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = make_point_dataset(
        args.out, per_class=args.per_class, points=args.points, seed=args.seed
    )
    print(f"point clouds: {sum(counts.values())} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
