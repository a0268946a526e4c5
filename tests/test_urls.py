"""Inputs and outputs named by URL: ``file://`` is a local path; ``s3://``, ``gs://``,
``memory://`` and the like are refused when the pipeline is validated, naming the param,
before anything is read or written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datapipe
from datapipe.api import SettingsError
from datapipe.errors import ConfigError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.urls import local_path


def _pipeline(root: str, **files: object) -> Pipeline:
    return Pipeline.from_dict(
        {"nodes": {"src": {"stage": "files",
                           "params": {"root": root, "kinds": ["image"], **files}}}}
    )  # fmt: skip


def test_local_path_by_hand():
    assert local_path("file:///data/x.jpg") == "/data/x.jpg"
    assert local_path("FILE:///data") == "/data"
    assert local_path("relative/dir") == "relative/dir"
    assert local_path("/abs/with://inside") == "/abs/with://inside"
    for url in ("s3://b/k", "gs://b/k", "memory://x", "https://host/x", "az://c/p"):
        scheme = url.split(":")[0]
        with pytest.raises(ValueError, match=f"{scheme}:// URLs are not read or written"):
            local_path(url)


def test_a_file_url_root_is_listed_like_its_path(tmp_path: Path):
    photos = tmp_path / "photos" / "cat"
    photos.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "a.jpg")
    run = run_local(_pipeline(f"file://{tmp_path / 'photos'}"), tmp_path / "out", workers=0)
    assert run.counts["ok"] == 1


@pytest.mark.parametrize("url", ["s3://bucket/photos", "gs://bucket/photos", "memory://photos"])
def test_object_store_inputs_are_refused_at_validation(url: str, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nodes\.src\.params\.root.*mount the storage"):
        datapipe.validate(_pipeline(url))
    with pytest.raises(ConfigError, match=r"params\.labels.*s3:// URLs"):
        datapipe.validate(_pipeline(str(tmp_path), labels="s3://bucket/labels.csv"))
    # a param naming a file (model weights) is refused the same way
    embed = {"stage": "embed.torch", "inputs": "src",
             "params": {"module": "torch.nn:Identity", "weights": "gs://bucket/w.pt"}}  # fmt: skip
    p = {"nodes": {"src": {"stage": "files", "params": {"root": str(tmp_path)}}, "e": embed}}
    with pytest.raises(ConfigError, match=r"nodes\.e\.params\.weights.*gs:// URLs"):
        datapipe.validate(Pipeline.from_dict(p))


def test_an_object_store_output_is_refused_before_anything_is_written(tmp_path: Path):
    with pytest.raises(SettingsError, match=r"out.*s3:// URLs"):
        datapipe.run(_pipeline(str(tmp_path)), "s3://bucket/out")
    assert not Path("s3:").exists()
