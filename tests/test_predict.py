"""``datapipe predict OUT/train/NODE FILE...``: the pipeline's Map stages (isolated) and the
model on new files, one JSON line per file in input order; checked against the model applied
by hand to pixels decoded with Pillow (``train.image``) and to the stored coefficients
(``train.dct``). Also ``datapipe show``'s trainer section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from datapipe.demo.training_data import make_image_dataset
from datapipe.engine.runner import ItemRunner, ItemTask
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.models import build_model
from datapipe.stream import from_shards
from runs import cli

SIZE = 24  # image.resize side; the images' sides are 32..44, so no DCT-scaled decode
CROP = 20  # train.image's crop: prediction takes the centre


def _write_pipeline(path: Path, root: Path, chain: dict[str, Any]) -> Path:
    nodes = {"photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}}}
    nodes.update(chain)
    path.write_text(yaml.safe_dump({"name": path.stem, "nodes": nodes}))
    return path


def _train(path: Path, out: Path) -> Path:
    run_local(Pipeline.from_yaml(path), out, workers=1)
    return out / "train" / "classifier"


TRAIN = {"epochs": 2, "width": 4, "batch_size": 8, "lr": 0.05, "threads": 1}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict_images")
    make_image_dataset(root, classes=3, per_class=6, size=(32, 44), seed=3)
    return root


@pytest.fixture(scope="module")
def image_model(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(pipeline file, trainer folder) of a tiny train.image run."""
    tmp = tmp_path_factory.mktemp("predict_image_run")
    chain = {
        "resize": {"stage": "image.resize", "inputs": "photos", "params": {"size": SIZE}},
        "classifier": {
            "stage": "train.image",
            "inputs": "resize",
            "params": {**TRAIN, "crop": CROP},
        },
    }
    path = _write_pipeline(tmp / "image.yaml", images, chain)
    return path, _train(path, tmp / "out")


def _model(folder: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    spec = json.loads((folder / "model.json").read_text())
    model = build_model(spec["model"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return spec, model.eval()


def _normalised(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def _by_hand_image(folder: Path, path: Path) -> tuple[str, float]:
    """Pillow decode, image.resize as documented (bicubic, shorter side to SIZE, centre
    square), the centre CROP, model.json's normalisation, the model."""
    spec, model = _model(folder)
    im = Image.open(path).convert("RGB")
    w, h = im.size
    scale = SIZE / min(w, h)
    tw, th = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
    arr = np.asarray(im.resize((tw, th), Image.Resampling.BICUBIC))
    top, left = (th - SIZE) // 2, (tw - SIZE) // 2
    arr = arr[top : top + SIZE, left : left + SIZE]
    o = (SIZE - CROP) // 2
    arr = arr[o : o + CROP, o : o + CROP]
    x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)
    norm = spec["normalize"]
    with torch.no_grad():
        probs = torch.softmax(model(_normalised(x, norm["mean"], norm["std"])[None]), 1)[0]
    best = int(probs.argmax())
    return spec["classes"][best], float(probs[best])


def _bad_files(images: Path, tmp: Path) -> dict[str, Path]:
    good = sorted(images.glob("*/*.jpg"))[0].read_bytes()
    (tmp / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp / "text.jpg").write_text("not a picture\n" * 40)
    return {"cut": tmp / "cut.jpg", "text": tmp / "text.jpg", "missing": tmp / "gone.jpg"}


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_predict_image_matches_the_model_by_hand(
    images: Path, image_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pipeline, folder = image_model
    goods = [sorted(d.glob("*.jpg"))[0] for d in sorted(images.iterdir())]
    bad = _bad_files(images, tmp_path)
    files = [goods[0], bad["cut"], goods[1], bad["text"], bad["missing"], goods[2]]
    proc = cli("predict", folder, *files, "--pipeline", pipeline, "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    lines = _lines(proc.stdout)
    assert [line["path"] for line in lines] == [str(f) for f in files]  # input order
    errors = {i: line["error"] for i, line in enumerate(lines) if "error" in line}
    assert errors == {1: "truncated", 3: "unsupported", 4: "io"}
    assert all(lines[i]["message"] for i in errors)
    for i in (0, 2, 5):
        want_class, want_p = _by_hand_image(folder, files[i])
        assert set(lines[i]) == {"path", "class", "probability"}
        assert lines[i]["class"] == want_class
        assert lines[i]["probability"] == pytest.approx(want_p, abs=1e-4)


def test_predict_all_good_exits_0_with_the_pipeline_the_run_kept(
    images: Path, image_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pipeline, folder = image_model
    out = folder.parent.parent
    files = sorted(images.glob("*/*.jpg"))[::4]
    stored = out / "pipeline.json"  # the run keeps its pipeline, variables filled in
    assert json.loads(stored.read_text())["pipeline"]["nodes"]["classifier"]["stage"] == (
        "train.image"
    )
    proc = cli("predict", folder, *files, "--threads", "1", cwd=tmp_path)
    kept = stored.read_bytes()
    stored.unlink()
    try:
        missing = cli("predict", folder, *files, cwd=tmp_path)
        assert missing.returncode == 2 and "--pipeline" in missing.stderr
        assert missing.stdout == ""
        shutil.copy(pipeline, out / "pipeline.yaml")  # a copy put there by hand serves too
        by_hand = cli("predict", folder, *files, "--threads", "1", cwd=tmp_path)
        assert by_hand.returncode == 0 and by_hand.stdout == proc.stdout
    finally:
        stored.write_bytes(kept)
        (out / "pipeline.yaml").unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc.stdout)
    classes = json.loads((folder / "model.json").read_text())["classes"]
    assert [line["path"] for line in lines] == [str(f) for f in files]
    assert all(line["class"] in classes and 0 < line["probability"] <= 1 for line in lines)


def test_predict_refuses_a_folder_without_a_model(
    image_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pipeline, folder = image_model
    proc = cli("predict", folder.parent, "x.jpg", "--pipeline", pipeline, cwd=tmp_path)
    assert proc.returncode == 2 and "model.json" in proc.stderr and proc.stdout == ""
    other = _write_pipeline(tmp_path / "other.yaml", tmp_path, {})
    proc = cli("predict", folder, "x.jpg", "--pipeline", other, cwd=tmp_path)
    assert proc.returncode == 2 and "classifier" in proc.stderr


def test_show_prints_the_trainer_summary(image_model: tuple[Path, Path], tmp_path: Path) -> None:
    _, folder = image_model
    report = json.loads((folder / "report.json").read_text())
    proc = cli("show", folder.parent.parent, "--limit", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "trainers:"
    megabytes = (folder / "model.pt").stat().st_size / 1e6
    assert lines[1] == (
        f"  classifier: val_accuracy {report['val_accuracy']:.3f}, "
        f"{'reused' if report['reused'] else 'trained'}, {TRAIN['epochs']} epochs, "
        f"{report['params']:,} params, {megabytes:.2f} MB"
    )


def test_predict_dct_matches_the_model_on_the_stored_coefficients(
    images: Path, tmp_path: Path
) -> None:
    crop = 4  # luma blocks; 4:2:0 chroma on a 2x2 coarser grid
    chain = {
        "dct": {
            "stage": "jpeg.dct",
            "inputs": "photos",
            "params": {"layout": "channels", "keep": 8, "dequantize": True},
        },
        "classifier": {"stage": "train.dct", "inputs": "dct", "params": {**TRAIN, "crop": crop}},
    }
    pipeline = _write_pipeline(tmp_path / "dct.yaml", images, chain)
    out = tmp_path / "out"
    folder = _train(pipeline, out)
    goods = [sorted(d.glob("*.jpg"))[1] for d in sorted(images.iterdir())]
    bad = _bad_files(images, tmp_path)
    files = [bad["text"], goods[0], goods[1], bad["missing"], goods[2]]
    proc = cli("predict", folder, *files, "--pipeline", pipeline, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    lines = _lines(proc.stdout)
    assert [line["path"] for line in lines] == [str(f) for f in files]
    # a stage's error row as the engine makes it for the same record (the text file is safe
    # to decode here)
    text = {"key": "text", "path": str(bad["text"]), "size": bad["text"].stat().st_size}
    row = ItemRunner(Pipeline.from_yaml(pipeline)).run(ItemTask("text", "photos", text))
    assert row.status == "error" and row.error_class
    assert [line.get("error") for line in lines] == [row.error_class, None, None, "io", None]
    assert lines[0]["message"] == row.message
    # the oracle: the coefficients the run stored for the same files, cropped by hand
    spec, model = _model(folder)
    mean, std = spec["normalize"]["mean"], spec["normalize"]["std"]
    keys = {f"{f.parent.name}/{f.stem}": i for i, f in enumerate(files) if f in goods}
    stored = from_shards(out, shuffle=False, fields=["dct_y", "dct_cb", "dct_cr"])
    seen = 0
    for sample in stored:
        if sample["key"] not in keys:
            continue
        y, cb, cr = (torch.as_tensor(np.asarray(sample[f])) for f in ("dct_y", "dct_cb", "dct_cr"))
        oy, ox = ((y.shape[0] - crop) // 2) // 2 * 2, ((y.shape[1] - crop) // 2) // 2 * 2
        luma = y[oy : oy + crop, ox : ox + crop].permute(2, 0, 1).float()
        c = crop // 2
        chroma = torch.cat([cb, cr], -1)[oy // 2 : oy // 2 + c, ox // 2 : ox // 2 + c]
        chroma = chroma.permute(2, 0, 1).float()
        k = luma.shape[0]
        luma = _normalised(luma, mean[:k], std[:k])
        chroma = _normalised(chroma, mean[k:], std[k:])
        with torch.no_grad():
            probs = torch.softmax(model(luma[None], chroma[None]), 1)[0]
        line = lines[keys[sample["key"]]]
        assert line["class"] == spec["classes"][int(probs.argmax())]
        assert line["probability"] == pytest.approx(float(probs.max()), abs=1e-4)
        seen += 1
    assert seen == 3
