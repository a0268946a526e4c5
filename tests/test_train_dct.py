"""``train.dct`` and its inputs: DCT-domain flips and crops checked against doing the same to
the pixels and re-encoding, per-frequency normalisation, a real run that learns, and an
augmented run that resumes bit for bit."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datapipe.demo.training_data import make_image_dataset, photo_texture
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.models import build_model, dct_resnet
from datapipe.stages.common.jpeg_header import ZIGZAG
from datapipe.stages.compressed.jpeg_dct import read_jpeg_dct, zigzag_channels
from datapipe.stream import from_shards
from datapipe.train import KeyFilter, TrainConfig, fit, split_by_key
from datapipe.train.inputs import (
    DctInputs,
    PixelInputs,
    flip_dct,
    inputs_from_spec,
    odd_horizontal,
    zigzag_columns,
)

CLASSES = 4


def _jpeg(pixels: np.ndarray, **options: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **options)
    return buf.getvalue()


def _channels(data: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dct = read_jpeg_dct(data)
    return tuple(
        torch.from_numpy(zigzag_channels(a).astype(np.int32)) for a in (dct.y, dct.cb, dct.cr)
    )  # type: ignore[return-value]


def _reencoded(data: bytes, edit: Any) -> bytes:
    """Decode to pixels, apply ``edit``, encode again with the same tables and subsampling."""
    im = Image.open(io.BytesIO(data))
    pixels = edit(np.asarray(im.convert("RGB")))
    return _jpeg(np.ascontiguousarray(pixels), qtables=im.quantization, subsampling=2)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of equal coefficients among those not zero in both (most are zero)."""
    live = (a != 0) | (b != 0)
    return float((a == b)[live].float().mean())


def test_zigzag_columns_match_the_jpeg_table() -> None:
    assert zigzag_columns() == [int(z) % 8 for z in ZIGZAG]
    # channels 1 (0,1) and 5 (0,2): odd and even horizontal frequency
    assert odd_horizontal(6).tolist() == [False, True, False, False, True, False]


@pytest.mark.parametrize("quality", [75, 90])
def test_flip_in_the_dct_domain_equals_flipping_the_pixels(quality: int) -> None:
    rng = np.random.default_rng(quality)
    pixels = photo_texture(96, 64, rng)  # width and height multiples of 16: whole MCUs
    original = _jpeg(pixels, quality=quality, subsampling=2)
    ours = [flip_dct(c) for c in _channels(original)]
    oracle = _channels(_reencoded(original, lambda p: p[:, ::-1]))
    control = _channels(_reencoded(original, lambda p: p))  # the re-encoding's own noise
    for mine, theirs, same, before in zip(ours, oracle, control, _channels(original), strict=True):
        # re-encoding alone changes a few percent of the coefficients by a level or so; the
        # flip agrees with the flipped re-encoding as well as that
        noise = _agreement(same, before)
        assert noise >= 0.75
        assert _agreement(mine, theirs) >= noise - 0.03, "the flipped coefficients differ"
        assert (mine - theirs).abs().max() <= (same - before).abs().max() + 1
    # without the sign change of the odd horizontal frequencies it is not a flip
    unsigned = _channels(original)[0].flip(-2)
    odd = odd_horizontal(64)
    moved = oracle[0][..., odd] != 0
    assert _agreement(unsigned[..., odd][moved], oracle[0][..., odd][moved]) < 0.2


def test_block_aligned_crop_equals_cropping_the_pixels() -> None:
    rng = np.random.default_rng(5)
    original = _jpeg(photo_texture(128, 96, rng), quality=85, subsampling=2)
    y, cb, cr = _channels(original)
    inputs = DctInputs(crop=6)  # 6 luma blocks = 48 px; chroma 3 blocks
    torch.manual_seed(3)
    sample = {"dct_y": y, "dct_cb": cb, "dct_cr": cr, "label_id": 1}
    corners = set()
    for _ in range(12):
        (luma, chroma), labels = inputs([sample], train=True, skipped=Counter())
        assert luma.shape == (1, 64, 6, 6) and chroma.shape == (1, 128, 3, 3)
        assert labels.tolist() == [1]
        # find the crop's corner and check it against a pixel crop re-encoded
        for oy in range(0, 12 - 6 + 1, 2):
            for ox in range(0, 16 - 6 + 1, 2):
                if torch.equal(luma[0].permute(1, 2, 0), y[oy : oy + 6, ox : ox + 6].float()):
                    corners.add((oy, ox))
                    px = _channels(
                        _reencoded(
                            original,
                            lambda p, oy=oy, ox=ox: p[oy * 8 : oy * 8 + 48, ox * 8 : ox * 8 + 48],
                        )
                    )
                    ours = chroma[0].permute(1, 2, 0)
                    theirs = torch.cat([px[1], px[2]], -1).float()
                    assert _agreement(ours, theirs) >= 0.75
                    # chroma one block off (misregistered) would not agree
                    shifted = torch.cat([cb, cr], -1)[
                        oy // 2 : oy // 2 + 3, ox // 2 + 1 : ox // 2 + 4
                    ]
                    if shifted.shape == ours.shape:
                        assert _agreement(shifted.float(), theirs) < 0.4
    assert len(corners) >= 4  # random corners, all on the even (chroma-aligned) grid
    (centre, _), _ = inputs([sample], train=False, skipped=Counter())
    # centred: rooms of 6 x 10 blocks halved, rounded down to the chroma step of 2
    assert torch.equal(centre[0].permute(1, 2, 0), y[2:8, 4:10].float())


def test_dct_inputs_skip_bad_samples_and_count_them() -> None:
    y = torch.zeros(4, 4, 8)
    good = {"dct_y": y, "dct_cb": torch.zeros(2, 2, 8), "dct_cr": torch.zeros(2, 2, 8)}
    nan = {**good, "dct_y": torch.full((4, 4, 8), float("nan"))}
    blocks = {**good, "dct_y": torch.zeros(4, 4, 8, 8)}  # layout 'blocks', not 'channels'
    batch = [
        {**good, "label_id": 0},
        {**nan, "label_id": 1},
        {**blocks, "label_id": 1},
        {"dct_y": y, "label_id": 0},
        {**good, "label_id": -1},
        {**good, "dct_y": torch.zeros(5, 4, 8), "label_id": 0},
    ]
    skipped: Counter = Counter()
    (luma, chroma), labels = DctInputs()(batch, train=False, skipped=skipped)
    assert labels.tolist() == [0] and luma.shape == (1, 8, 4, 4) and chroma.shape == (1, 16, 2, 2)
    assert skipped == Counter(not_finite=1, wrong_shape=2, missing_field=1, missing_label=1)


def _pipeline(root: Path, keep: int = 16, **train: Any) -> Pipeline:
    params = {"epochs": 8, "width": 16, "batch_size": 16, "lr": 0.05, "crop": 8, "flip": True}
    return Pipeline.from_dict(
        {
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
                "dct": {
                    "stage": "jpeg.dct",
                    "inputs": "photos",
                    "params": {"layout": "channels", "keep": keep, "dequantize": True},
                },
                "classifier": {
                    "stage": "train.dct",
                    "inputs": "dct",
                    "params": {**params, **train},
                },
            }
        }
    )


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dct_images")
    make_image_dataset(root, classes=CLASSES, per_class=24, size=(64, 96), seed=1)
    return root


def test_train_dct_learns_and_writes_a_rebuildable_model(jpegs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_local(_pipeline(jpegs), out, workers=0)
    summary = report.sinks["classifier"]
    assert summary["reused"] is False and summary["epochs_run"] == 8
    folder = out / "train" / "classifier"
    spec = json.loads((folder / "model.json").read_text())
    assert spec["model"]["arch"] == "dct_resnet"
    assert spec["inputs"]["shapes"] == [[16, 8, 8], [32, 4, 4]]  # crop 8 blocks, 4:2:0
    # one normalisation per frequency channel: luma 16, Cb and Cr 16 each
    std = spec["normalize"]["std"]
    assert len(std) == 16 + 32 and std[0] > 5 * np.median(std[1:16])  # DC dwarfs the rest
    assert min(std) >= 1.0  # a frequency that is almost always 0 is not blown up
    model = build_model(spec["model"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    full = json.loads((folder / "report.json").read_text())
    # it learns what it is shown (96 small images are too few to judge validation accuracy:
    # scripts/evidence/evidence_train_dct.py measures that on the full dataset)
    history = full["history"]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["train_accuracy"] > 2 / CLASSES
    assert full["trainer"] == "train.dct" and full["macs"] > 0
    assert full["dataset_fingerprint"] and full["skipped"] == {}


def test_an_augmented_dct_run_resumes_bit_for_bit(jpegs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_local(_pipeline(jpegs, keep=8, epochs=1), out, workers=0)
    labels = {
        s["key"]: int(s["label_id"]) for s in from_shards(out, shuffle=False, fields=["label_id"])
    }
    val_keys = split_by_key(labels, labels.values(), 0.25, seed=0)
    fields = ["dct_y", "dct_cb", "dct_cr", "label_id"]
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, threads=2, field="dct_y")

    def run(ckpt: Path, log: Any = None) -> torch.nn.Module:
        train = KeyFilter(from_shards(out, seed=0, fields=fields), val_keys, exclude=True)
        val = KeyFilter(from_shards(out, shuffle=False, fields=fields), val_keys)
        torch.manual_seed(0)
        net = dct_resnet(
            depth=10, width=4, num_classes=CLASSES, luma_channels=8, chroma_channels=16
        )
        fit(
            net,
            DataLoader(train, batch_size=16, collate_fn=train.collate),
            DataLoader(val, batch_size=64, collate_fn=val.collate),
            config,
            checkpoint_dir=ckpt,
            log=log,
            inputs=DctInputs(crop=6, flip=True),
        )
        return net

    class Killed(Exception):
        pass

    def kill(record: dict[str, Any]) -> None:
        if record["epoch"] == 0:
            raise Killed

    whole = run(tmp_path / "a")
    with pytest.raises(Killed):
        run(tmp_path / "b", kill)
    resumed = run(tmp_path / "b")
    sa, sb = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_inputs_rebuild_from_their_description() -> None:
    y, cb, cr = torch.ones(8, 10, 4), torch.ones(4, 5, 4), torch.ones(4, 5, 4)
    trained = DctInputs(crop=4)
    trained(
        [{"dct_y": y, "dct_cb": cb, "dct_cr": cr, "label_id": 0}], train=True, skipped=Counter()
    )
    rebuilt = inputs_from_spec(json.loads(json.dumps(trained.describe())))
    assert isinstance(rebuilt, DctInputs) and rebuilt.shape == trained.shape == (4, 4, 4, 2, 2, 8)
    pixels = PixelInputs("image", crop=None)
    pixels(
        [{"image": torch.zeros(6, 7, 3, dtype=torch.uint8), "label_id": 1}],
        train=False,
        skipped=Counter(),
    )
    again = inputs_from_spec(pixels.describe())
    skipped: Counter = Counter()
    # the rebuilt inputs refuse an image of another shape, as the trained ones would
    again(
        [{"image": torch.zeros(7, 7, 3, dtype=torch.uint8), "label_id": 1}],
        train=False,
        skipped=skipped,
    )
    assert skipped == Counter(wrong_shape=1)
    with pytest.raises(ValueError, match="unknown inputs kind"):
        inputs_from_spec({"kind": "audio"})


def test_pixel_inputs_take_the_frame_of_a_one_frame_clip() -> None:
    frame = torch.arange(4 * 5 * 3, dtype=torch.uint8).reshape(4, 5, 3)
    skipped: Counter = Counter()
    (x,), y = PixelInputs("keyframes")(
        [
            {"keyframes": frame[None], "label_id": 2},  # 1 H W C: its frame
            {"keyframes": torch.stack([frame, frame]), "label_id": 1},  # 2 frames: which?
        ],
        train=False,
        skipped=skipped,
    )
    assert y.tolist() == [2] and skipped == Counter(wrong_shape=1)
    assert torch.equal(x[0], frame.permute(2, 0, 1).float() / 255)
