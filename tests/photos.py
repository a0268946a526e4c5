"""Photographic test images for the resize tests: scikit-learn's two sample photos, a
1280 x 854 mosaic of them, JPEG encodings in several kinds, the decode-then-resize reference
with its PSNR, Pillow's own draft decodes (the oracle of the pixels), and damaged or bad
JPEGs."""

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


def damaged(data: bytes, fill: int = 0x5A, n: int = 64) -> bytes:
    """``data`` with ``n`` bytes in the middle of its entropy-coded segment overwritten
    (libjpeg: "Corrupt JPEG data: premature end of data segment", decoded around)."""
    mid = (data.index(b"\xff\xda") + len(data)) // 2
    return data[:mid] + bytes([fill]) * n + data[mid + n :]


def draft_resize(data: bytes, size: int, mode: str = "crop") -> np.ndarray:
    """``image.resize`` as Pillow alone does it: draft (the DCT scale), RGB, bicubic, crop."""
    with Image.open(io.BytesIO(data)) as img:
        W, H = img.size
        s = size / min(W, H)
        target = (
            (max(size, round(W * s)), max(size, round(H * s))) if mode == "crop" else (size,) * 2
        )
        img.draft("RGB", target)
        arr = np.asarray(img.convert("RGB").resize(target, Image.Resampling.BICUBIC))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def draft_reduced(data: bytes, h: int, w: int, resample: int, ycc: bool = False) -> np.ndarray:
    """``represent.resize`` (crop) as Pillow alone does it: draft at the largest DCT scale
    that covers the target, one resize of the centre box. ``ycc``: in YCbCr, then RGB."""
    with Image.open(io.BytesIO(data)) as img:
        W, H = img.size
        s = max(w / W, h / H)
        _, box = img.draft("YCbCr" if ycc else "RGB", (int(np.ceil(W * s)), int(np.ceil(H * s))))
        k = W / box[2]  # the DCT scale denominator
        crop = ((W - w / s) / 2 / k, (H - h / s) / 2 / k, (W + w / s) / 2 / k, (H + h / s) / 2 / k)
        crop = (
            max(0, crop[0]),
            max(0, crop[1]),
            min(img.size[0], crop[2]),
            min(img.size[1], crop[3]),
        )
        return np.asarray(img.resize((w, h), resample, box=crop).convert("RGB"))


def cut_scan(data: bytes) -> bytes:
    """``data`` without the middle third of its entropy-coded segment: libjpeg runs out of
    data before the last block, whatever the photo ("premature end of data segment")."""
    start = data.index(b"\xff\xda")
    a, b = start + (len(data) - start) // 3, start + 2 * (len(data) - start) // 3
    while data[a - 1] == 0xFF:  # never make a marker of a stuffed 0xFF
        a -= 1
    return data[:a] + data[b:]


def with_sof_size(data: bytes, height: int, width: int) -> bytes:
    """The JPEG with the frame header (SOF0/SOF2) declaring another size."""
    out = bytearray(data)
    i = next(i for i in range(len(out) - 1) if out[i] == 0xFF and out[i + 1] in (0xC0, 0xC2))
    out[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


#: bad input (made from a good JPEG) and the error class of its row
BAD = {
    "zero bytes": (lambda good: b"", "empty"),
    "garbage": (lambda good: b"\x00garbage\xff" * 40, "unsupported"),
    "truncated": (lambda good: good[: len(good) // 3], "truncated"),
    "absurd SOF 65500x65500": (lambda good: with_sof_size(good, 65500, 65500), "decode_bomb"),
    "SOF above max_pixels": (lambda good: with_sof_size(good, 9000, 9000), "decode_bomb"),
    "header only": (lambda good: good[: good.index(b"\xff\xda") + 14], "truncated"),
    "cut in a table": (lambda good: good[: good.index(b"\xff\xc4") + 30], "truncated"),
    "text named jpg": (lambda good: b"not an image\n" * 9, "unsupported"),
    "SOF 4000x4000, 20 kB": (lambda good: with_sof_size(good, 4000, 4000), "decode_bomb"),
    "damaged, strict": (cut_scan, "corrupt"),
}

#: damaged scans libjpeg warns about (made from a good JPEG)
DAMAGED = {
    "bytes overwritten": lambda good: damaged(good),
    "bytes zeroed": lambda good: damaged(good, 0, 200),
    "cut, EOI kept": lambda good: good[: len(good) * 2 // 3] + b"\xff\xd9",
    "middle third cut out": cut_scan,
}
