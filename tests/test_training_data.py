"""Tests for the training-size generators, checked with independent decoders and oracles."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import pytest
from av.video.frame import PictureType
from PIL import Image

from datapipe.demo.training_data import (
    IMAGE_CLASSES,
    PAN_DIRECTIONS,
    VIDEO_CLASSES,
    make_image_dataset,
    make_video_dataset,
)

SIZE = (64, 160)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class Images(NamedTuple):
    """Two seed-0 runs (one in two processes), one seed-1 run, and the seed-0 counts."""

    a: Path
    b: Path
    c: Path
    counts: dict[str, int]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    base = tmp_path_factory.mktemp("train_images")
    counts = make_image_dataset(base / "a", classes=10, per_class=6, size=SIZE, seed=0)
    make_image_dataset(base / "b", classes=10, per_class=6, size=SIZE, seed=0, workers=2)
    make_image_dataset(base / "c", classes=10, per_class=6, size=SIZE, seed=1)
    return Images(base / "a", base / "b", base / "c", counts)


@pytest.fixture(scope="module")
def full_images(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full-size set (10 x 100): per image its mean RGB, its 16x16 grayscale, its label."""
    root = tmp_path_factory.mktemp("train_images_full")
    counts = make_image_dataset(root, seed=0)
    assert counts == {name: 100 for name in IMAGE_CLASSES[:10]}
    means, pixels, labels = [], [], []
    for k, name in enumerate(counts):
        for path in sorted((root / name).glob("*.jpg")):
            with Image.open(path) as im:
                rgb = im.convert("RGB")
                means.append(np.asarray(rgb, np.float64).reshape(-1, 3).mean(axis=0))
                small = rgb.convert("L").resize((16, 16), Image.Resampling.BILINEAR)
            g = np.asarray(small, np.float64).ravel()
            pixels.append((g - g.mean()) / (g.std() + 1e-6))
            labels.append(k)
    return np.array(means), np.array(pixels), np.array(labels)


def test_image_counts_and_layout(images: Images) -> None:
    assert images.counts == {name: 6 for name in IMAGE_CLASSES[:10]}
    files = sorted(images.a.rglob("*"))
    jpgs = [p for p in files if p.is_file()]
    assert len(jpgs) == 60 and all(p.suffix == ".jpg" for p in jpgs)
    for p in jpgs:
        assert p.parent.parent == images.a and p.parent.name in images.counts
    for name in images.counts:
        assert len(list((images.a / name).glob("*.jpg"))) == 6


def test_images_decode_at_declared_sizes(images: Images) -> None:
    sizes = set()
    for p in images.a.rglob("*.jpg"):
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            im.load()
            assert SIZE[0] <= min(im.size) and max(im.size) <= SIZE[1]
            sizes.add(im.size)
    assert len(sizes) > 20  # sizes vary


def test_images_deterministic_per_seed(images: Images) -> None:
    a, b, c = _files(images.a), _files(images.b), _files(images.c)
    assert a == b  # same seed, serial or in processes
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_mean_colour_does_not_separate_classes(full_images: tuple) -> None:
    means, _, labels = full_images
    train = np.arange(len(labels)) % 2 == 0
    centres = np.stack([means[train & (labels == k)].mean(axis=0) for k in range(10)])
    dist = ((means[~train, None] - centres[None]) ** 2).sum(axis=-1)
    accuracy = (dist.argmin(axis=1) == labels[~train]).mean()
    assert accuracy < 2 / 10


def test_shape_separates_classes(full_images: tuple) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    _, pixels, labels = full_images
    train = np.arange(len(labels)) % 2 == 0
    knn = KNeighborsClassifier(n_neighbors=1).fit(pixels[train], labels[train])
    assert knn.score(pixels[~train], labels[~train]) > 3 / 10  # chance is 1/10


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="classes"):
        make_image_dataset("unused", classes=len(IMAGE_CLASSES) + 1)
    with pytest.raises(ValueError, match="size"):
        make_image_dataset("unused", size=(100, 50))
    with pytest.raises(ValueError, match="frames"):
        make_video_dataset("unused", frames=8)
    with pytest.raises(ValueError, match="classes"):
        make_video_dataset("unused", classes=len(VIDEO_CLASSES) + 1)


# --------------------------------------------------------------------------- videos

FRAMES = 24


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Images:
    base = tmp_path_factory.mktemp("train_videos")
    kwargs = {"classes": 6, "per_class": 2, "frames": FRAMES, "size": (96, 96)}
    counts = make_video_dataset(base / "a", seed=0, workers=1, **kwargs)
    make_video_dataset(base / "b", seed=0, workers=2, **kwargs)
    make_video_dataset(base / "c", seed=1, workers=1, **kwargs)
    return Images(base / "a", base / "b", base / "c", counts)


def test_video_counts_layout_and_determinism(videos: Images) -> None:
    assert videos.counts == {name: 2 for name in VIDEO_CLASSES[:6]}
    a, b, c = _files(videos.a), _files(videos.b), _files(videos.c)
    assert sorted(a) == sorted(f"{n}/{n}_{i:04d}.mp4" for n in videos.counts for i in range(2))
    assert a == b  # same seed, serial or in processes
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_clips_have_bframes_gop_and_frame_count(videos: Images) -> None:
    for path in sorted(videos.a.rglob("*.mp4")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert (stream.width, stream.height) == (96, 96)
            frames = list(container.decode(stream))
        assert len(frames) == FRAMES
        types = [PictureType(f.pict_type).name for f in frames]
        assert "B" in types
        keys = [i for i, f in enumerate(frames) if f.key_frame]
        assert keys[0] == 0 and all(b - a >= 12 for a, b in pairwise(keys))
        assert types.count("I") <= -(-FRAMES // 12)


def _relative_motion(path: Path) -> np.ndarray:
    """Mean codec motion (x, y) of the cells that move unlike the background (the per-frame
    median), in pixels per frame."""
    from datapipe.ops import read_motion_vectors

    field = read_motion_vectors(path, block=8, normalize="per_frame")
    mv = field.mv[field.has_vectors]
    background = np.median(mv.reshape(len(mv), -1, 2), axis=1)
    rel = mv - background[:, None, None]
    moving = np.linalg.norm(rel, axis=-1) > 0.5
    return rel[moving].mean(axis=0)


@pytest.mark.parametrize("label", sorted(PAN_DIRECTIONS))
def test_object_motion_relative_to_background_tells_pan_class(videos: Images, label: str) -> None:
    ux, uy = PAN_DIRECTIONS[label]
    for path in sorted((videos.a / label).glob("*.mp4")):
        dx, dy = _relative_motion(path)
        along, across = (dx * ux + dy * uy), abs(dx * uy + dy * ux)
        assert along > 0.25 and along > across, (path.name, dx, dy)


def test_camera_zero_keeps_the_background_still(tmp_path: Path) -> None:
    from datapipe.demo.training_data import render_motion_clip

    # camera=1 is the default: the same bytes as without the argument
    kwargs = {"classes": 1, "per_class": 2, "frames": 12, "size": (48, 48), "workers": 1}
    make_video_dataset(tmp_path / "default", **kwargs)
    make_video_dataset(tmp_path / "one", camera=1, **kwargs)
    assert _files(tmp_path / "default") == _files(tmp_path / "one")
    for label in ("pan_left", "zoom_in"):
        for i in range(3):
            rng = np.random.default_rng(i)
            clip = render_motion_clip(label, rng, (64, 64), 12, camera=0)
            # only the object (at most a third of each side) changes: the rest is the same photo
            same = (clip[0] == clip[-1]).all(axis=-1).mean()
            assert same > 0.6, (label, i, same)
    with pytest.raises(ValueError, match="camera"):
        make_video_dataset("unused", camera=-1)
