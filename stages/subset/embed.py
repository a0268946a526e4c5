"""Embedding stages for the selectors: ``embed.pixels`` (built in, no download) and
``embed.torch`` (a model or function the user supplies).

``embed.pixels`` area-pools an image to ``grid x grid x C``, L2-normalises it and, optionally,
projects it to ``dim`` values with a seeded Gaussian random projection (Johnson-Lindenstrauss:
distances are kept up to a small factor). It is a cheap stand-in for a learned feature: good
enough to find near-duplicates and to spread a core-set over appearance.

``embed.torch`` runs a user model on each image: a TorchScript file (``torch.jit.load``, no
Python pickle), a ``module:attr`` that builds an ``nn.Module`` (optionally filled from a
state_dict read with ``torch.load(..., weights_only=True)``), or a ``module:attr`` function
applied to the pixel array. Importing ``module`` runs its code: name only your own modules.
A TorchScript file is a program for the TorchScript interpreter; load only files you trust.
torch 2.13 deprecates TorchScript (it still loads). Its successor, a ``torch.export`` ``.pt2``
archive, is not offered: ``torch.export.load`` unpickles weights with ``weights_only=False``.
For new models the safe route is ``module`` + ``weights``.
"""

from __future__ import annotations

import functools
import re
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field as PField
from pydantic import model_validator

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, FilePath, Map, Params, Record

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@functools.lru_cache(maxsize=64)
def _area_weights(length: int, grid: int) -> np.ndarray:
    """(grid, length) matrix averaging pixels over ``grid`` equal cells (fractional overlap)."""
    edges = np.arange(grid + 1) * (length / grid)
    pix = np.arange(length)
    lo = np.maximum(pix[None, :], edges[:-1, None])
    hi = np.minimum(pix[None, :] + 1, edges[1:, None])
    w = np.clip(hi - lo, 0.0, None) * (grid / length)
    w.setflags(write=False)
    return w


@functools.lru_cache(maxsize=16)
def _projection(d_in: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = (rng.standard_normal((d_in, dim)) / np.sqrt(dim)).astype(np.float32)
    m.setflags(write=False)
    return m


def _l2(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def pool_pixels(
    image: np.ndarray,
    *,
    grid: int = 8,
    dim: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> np.ndarray:
    """A (grid * grid * C) or (dim,) float32 descriptor of ``image`` (H, W[, C]).

    Area-pools to grid x grid (exact, also for sizes that do not divide), scales to [0, 1] for
    integer input, L2-normalises, then optionally applies a seeded random projection to
    ``dim`` values (normalised again). NaN/inf pixels raise ValueError.

    Returns
    -------
    numpy.ndarray
        float32 ``(grid * grid * C,)``, or ``(dim,)`` with a projection.

    Examples
    --------
    >>> img = np.zeros((6, 6, 3), np.uint8); img[:3] = 255
    >>> v = pool_pixels(img, grid=2, normalize=False)
    >>> v.reshape(2, 2, 3)[:, :, 0].tolist()
    [[1.0, 1.0], [0.0, 0.0]]
    >>> pool_pixels(img, grid=2, dim=5).shape
    (5,)
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
        raise ValueError(f"expected an (H, W[, C]) image; got shape {a.shape}")
    scale = 1.0 / 255 if a.dtype == np.uint8 else 1.0 / 65535 if a.dtype == np.uint16 else 1.0
    a = a.astype(np.float32) * np.float32(scale)
    if not np.isfinite(a).all():
        raise ValueError("the image has NaN or inf values")
    wh = _area_weights(a.shape[0], grid).astype(np.float32)
    ww = _area_weights(a.shape[1], grid).astype(np.float32)
    v = np.einsum("ih,hwc,jw->ijc", wh, a, ww, optimize=True).reshape(-1)
    if normalize:
        v = _l2(v)
    if dim is not None:
        v = v @ _projection(v.size, dim, seed)
        if normalize:
            v = _l2(v)
    return np.ascontiguousarray(v, dtype=np.float32)


class PixelEmbedParams(Params):
    field: str = PField("image", description="Image field to embed (H W C pixels).")
    out: str = PField("embedding", description="Name of the produced embedding field.")
    grid: int = PField(8, ge=1, le=64, description="Pool to grid x grid cells.")
    channels: int = PField(3, ge=1, le=4, description="Channels of the input image.")
    dim: int | None = PField(None, ge=1, le=4096, description="Random projection to dim.")
    seed: int = PField(0, ge=0, description="Seed of the random projection.")
    normalize: bool = PField(True, description="L2-normalise the descriptor.")


class PixelEmbed(Map):
    """A cheap built-in embedding: area-pooled low-res pixels, L2-normalised, optionally
    randomly projected. Needs no download; feeds ``select.kcenter`` / ``select.dedup``."""

    name = "embed.pixels"
    description = "Embed an image as area-pooled low-res pixels (optional random projection)."
    Params = PixelEmbedParams

    def consumes(self) -> tuple[Field, ...]:
        p = self.params
        return (Field(p.field, "uint8|uint16|float32", f"H W {p.channels}", "pixels"),)

    def produces(self) -> tuple[Field, ...]:
        p = self.params
        d = p.dim if p.dim is not None else p.grid * p.grid * p.channels
        return (Field(p.out, "float32", str(d), "pooled-pixel embedding"),)

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        img = np.asarray(record[p.field])
        if img.size == 0:
            raise ItemError("empty", f"{p.field!r} has no pixels")
        if img.ndim != 3 or img.shape[2] != p.channels:
            raise ItemError(
                "invalid", f"{p.field!r} has shape {img.shape}, not (H, W, {p.channels})"
            )
        try:
            v = pool_pixels(img, grid=p.grid, dim=p.dim, seed=p.seed, normalize=p.normalize)
        except ValueError as exc:
            raise ItemError("nonfinite", f"{p.field!r}: {exc}") from None
        return {p.out: v}


# -- user-supplied models -----------------------------------------------------------------
class TorchEmbedParams(Params):
    script: FilePath | None = PField(None, description="TorchScript file (torch.jit.save).")
    module: str | None = PField(
        None, description="'pkg.mod:attr' called with no arguments to build an nn.Module."
    )
    weights: FilePath | None = PField(
        None, description="state_dict for 'module', read with torch.load(weights_only=True)."
    )
    function: str | None = PField(
        None, description="'pkg.mod:attr' applied to the pixel array, returning a vector."
    )
    field: str = PField("image", description="Image field (H W C).")
    out: str = PField("embedding", description="Name of the produced embedding field.")
    dim: int | None = PField(None, ge=1, description="Declared output size (checked).")
    scale: float = PField(1 / 255, gt=0, description="Pixels are multiplied by this first.")
    mean: list[float] | None = PField(None, description="Per-channel mean subtracted.")
    std: list[float] | None = PField(None, description="Per-channel std divided by.")

    @model_validator(mode="after")
    def _one_source(self) -> TorchEmbedParams:
        given = [n for n in ("script", "module", "function") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'script', 'module' or 'function'")
        for name in ("module", "function"):
            value = getattr(self, name)
            if value is not None and not _TARGET.match(value):
                raise ValueError(f"{name!r} must look like 'package.module:attribute'")
        if self.weights is not None and self.module is None:
            raise ValueError("'weights' needs 'module' (the architecture to load them into)")
        return self


def _import(target: str) -> Any:
    mod, attr = target.split(":")
    obj: Any = import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


#: loaded models, per process: (kind, target, path, mtime) -> callable
_MODELS: dict[tuple[Any, ...], Any] = {}


def load_embedder(params: TorchEmbedParams, ctx: Context) -> Any:
    """The callable behind ``params``, loaded once per process (safely; see module doc)."""
    import torch

    p = params
    path = ctx.resolve(p.script) if p.script else ctx.resolve(p.weights) if p.weights else None
    stamp = path.stat().st_mtime_ns if path is not None and path.exists() else None
    key = (p.script, p.module, p.weights, p.function, str(path), stamp)
    if key in _MODELS:
        return _MODELS[key]
    if p.function is not None:
        model = _import(p.function)
    elif p.script is not None:
        model = torch.jit.load(str(_existing(path)), map_location="cpu").eval()
    else:
        model = _import(p.module)()  # type: ignore[arg-type]
        if p.weights is not None:
            state = torch.load(str(_existing(path)), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        if hasattr(model, "eval"):
            model.eval()
    _MODELS[key] = model
    return model


def _existing(path: Path | None) -> Path:
    if path is None or not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


class TorchEmbed(Map):
    """Embed each image with a user-supplied torch model or function.

    Torch models get a float32 (1, C, H, W) tensor (pixels x ``scale``, then ``mean``/``std``)
    and their output is flattened; a ``function`` gets the (H, W, C) array. The result must
    be finite (else a ``nonfinite`` error row) and, when ``dim`` is set, of that size.
    """

    name = "embed.torch"
    description = "Embed images with a user TorchScript file, nn.Module or function."
    Params = TorchEmbedParams
    EXAMPLE_PARAMS = {"function": "numpy:ravel"}

    def consumes(self) -> tuple[Field, ...]:
        return (Field(self.params.field, "uint8|uint16|float32", "H W C", "pixels"),)

    def produces(self) -> tuple[Field, ...]:
        d = str(self.params.dim) if self.params.dim is not None else "D"
        return (Field(self.params.out, "float32", d, "model embedding"),)

    def process(self, record: Record, ctx: Context) -> Record:
        import torch

        p = self.params
        model = load_embedder(p, ctx)
        img = np.asarray(record[p.field])
        if img.ndim == 2:
            img = img[:, :, None]
        if p.function is not None:
            out = model(img)
        else:
            t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32) * p.scale)
            t = t.permute(2, 0, 1)
            if p.mean is not None:
                t = t - torch.tensor(p.mean, dtype=torch.float32)[:, None, None]
            if p.std is not None:
                t = t / torch.tensor(p.std, dtype=torch.float32)[:, None, None]
            with torch.inference_mode():
                out = model(t[None])
            if isinstance(out, (tuple, list)):
                out = out[0]
            out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out
        v = np.asarray(out, dtype=np.float32).reshape(-1)
        if not np.isfinite(v).all():
            raise ItemError(
                "nonfinite", f"the model returned {int((~np.isfinite(v)).sum())} NaN/inf values"
            )
        if p.dim is not None and v.size != p.dim:
            raise ItemError("invalid", f"the model returned {v.size} values; 'dim' says {p.dim}")
        return {p.out: np.ascontiguousarray(v)}
