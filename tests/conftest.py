"""Shared fixtures: small generated datasets and the test-only stages."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import stage_inputs
from PIL import Image

import fault_stages


@pytest.fixture(autouse=True, scope="session")
def _test_stages() -> None:
    fault_stages.register_all()


def jpeg_bytes(seed: int, size: tuple[int, int] = (32, 24), quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(size[1] // 4 + 1, size[0] // 4 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_image_tree(
    root: Path, per_class: int = 4, classes: tuple[str, ...] = ("cat", "dog")
) -> list[Path]:
    paths = []
    for c, label in enumerate(classes):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = root / label / f"{label}_{i:03d}.jpg"
            p.write_bytes(jpeg_bytes(100 * c + i))
            paths.append(p)
    return paths


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    make_image_tree(root)
    return root


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> stage_inputs.SampleData:
    """Real JPEG photos, H.264 clips and PLY clouds (and bad files), written once."""
    return stage_inputs.make_sample_data(tmp_path_factory.mktemp("sample_data"))


@pytest.fixture(scope="session")
def dask_scheduler() -> Iterator[str]:
    """The address of one LocalCluster (2 single-threaded worker processes) for the session."""
    from distributed import LocalCluster

    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
