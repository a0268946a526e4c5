"""Photographic test images for the resize tests: scikit-learn's two sample photos, a
1280 x 854 mosaic of them, JPEG encodings in several kinds, and the decode-then-resize
reference with its PSNR."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

PHOTOS = [np.asarray(im) for im in load_sample_images().images]  # china, flower: 427 x 640


def mosaic() -> np.ndarray:
    """A 1280 x 854 photo: the two sample photos and their mirror images, native detail."""
    china, flower = PHOTOS
    top = np.concatenate([china, flower], axis=1)
    return np.concatenate([top, top[:, ::-1][:, :, ::-1]], axis=0)


def encode(pixels: np.ndarray, fmt: str = "JPEG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


def full_then_resize(data: bytes, h: int, w: int, resample: int, mode: str = "crop"):
    """The reference: Pillow decodes every pixel, then resizes (the same box and filter)."""
    with Image.open(io.BytesIO(data)) as img:
        W, H = img.size
        box = None
        if mode == "crop":
            s = max(w / W, h / H)
            box = ((W - w / s) / 2, (H - h / s) / 2, (W + w / s) / 2, (H + h / s) / 2)
        return np.asarray(img.convert("RGB").resize((w, h), resample, box=box))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


CASES = {
    "mosaic 1280x854 q90": lambda: encode(mosaic(), quality=90),
    "mosaic progressive 4:4:4": lambda: encode(
        mosaic(), quality=85, progressive=True, subsampling=0
    ),
    "china crop 620x420": lambda: encode(PHOTOS[0][3:423, 10:630], quality=95),
    "flower gray 640x427": lambda: encode(PHOTOS[1].mean(axis=2).astype(np.uint8), quality=90),
    "china 2x 1200x800": lambda: encode(
        np.asarray(Image.fromarray(PHOTOS[0][20:420, 20:620]).resize((1200, 800))), quality=90
    ),
}
