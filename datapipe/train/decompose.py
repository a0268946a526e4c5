"""Low-rank factorisation of convolutions (Tucker-2, CP), and a saved form of the factorised
model that loads without pickle.

:func:`decompose_convs` replaces every ``nn.Conv2d`` with a kernel larger than 1x1 and
``groups == 1`` by an ``nn.Sequential`` of smaller convolutions that approximates it:

- ``tucker`` (Tucker-2, Kim et al. 2016): a truncated HOSVD of the input and output channel
  modes of the kernel (the leading left singular vectors of each mode's unfolding), giving a
  1x1 conv ``c_in -> r_in``, the core ``kh x kw`` conv ``r_in -> r_out`` (the layer's stride,
  padding and dilation) and a 1x1 conv ``r_out -> c_out`` (the layer's bias);
- ``cp`` (Lebedev et al. 2015): a rank-``R`` CP decomposition of the 4-D kernel (ALS,
  ``tensorly.decomposition.parafac``, seeded: the same weights give the same factors), giving
  a 1x1 conv ``c_in -> R``, a depthwise ``kh x 1`` and a depthwise ``1 x kw`` conv (each with
  its axis' stride, padding and dilation) and a 1x1 conv ``R -> c_out`` (the bias).

Both are plain convolutions, so MAC counts, ONNX export and Torch-Pruning work on the result.
1x1 and grouped (depthwise) convolutions, ``Conv1d``/``Conv3d`` and linear layers are left as
they are: there is no spatial kernel to separate, or the layer is already cheap.

Rank rule, for a ``rank`` fraction in (0, 1] (round half up; a 0 is a :class:`DecomposeError`):
Tucker keeps ``r_in = round(rank * c_in)`` and ``r_out = round(rank * c_out)`` (capped at the
rank of the mode's unfolding, which loses nothing); CP takes ``R`` so that its weights,
``R * (c_in + c_out + kh + kw)``, match the Tucker layers' at the same ``rank``:
``R = round((c_in*r_in + r_in*r_out*kh*kw + r_out*c_out) / (c_in + c_out + kh + kw))``.
So ``rank`` means about the same parameter budget for both; ``rank=1`` gives an exact (and
larger) Tucker layer, and a CP rank about the kernel's generic rank, where 200 ALS sweeps
leave a few per cent of error. Savings are smaller at stride 2: the first 1x1 conv runs at
the input's resolution. Calling it again on a factorised model factorises the Tucker cores.

A factorised model is saved as its plain ``state_dict`` plus the descriptions
:func:`decompose_convs` returns (``model.json``); :func:`rebuild_decomposed` makes the same
structure in a fresh model of the spec, so ``load_state_dict`` of a ``weights_only`` load works.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

DecomposeMethod = Literal["tucker", "cp"]
#: the factorisations :func:`decompose_convs` takes
DECOMPOSE_METHODS: tuple[str, ...] = ("tucker", "cp")
#: seed and iterations of the CP alternating least squares
CP_SEED = 0
CP_ITERATIONS = 200


class DecomposeError(ValueError):
    """A factorisation cannot be done as asked (names the layer and the reason)."""


def decomposable(module: nn.Module) -> bool:
    """Whether :func:`decompose_convs` factorises ``module``: a ``Conv2d`` with a kernel
    larger than 1x1 and ``groups == 1``."""
    return (
        isinstance(module, nn.Conv2d) and math.prod(module.kernel_size) > 1 and module.groups == 1
    )


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def layer_ranks(conv: nn.Conv2d, method: DecomposeMethod, rank: float) -> dict[str, Any]:
    """The description of ``conv`` factorised at ``rank`` (:class:`DecomposeError` when the
    rank rule leaves it no channel): ``{"method": "tucker", "ranks": [r_in, r_out]}`` or
    ``{"method": "cp", "rank": R}``."""
    c_out, c_in, kh, kw = conv.weight.shape
    r_in = min(_round(rank * c_in), c_out * kh * kw)
    r_out = min(_round(rank * c_out), c_in * kh * kw)
    if r_in < 1 or r_out < 1:
        raise DecomposeError(
            f"rank {rank:g} keeps {r_in} of {c_in} input and {r_out} of {c_out} output "
            "channels, leaving nothing; raise the rank"
        )
    if method == "tucker":
        return {"method": "tucker", "ranks": [r_in, r_out]}
    tucker_weights = c_in * r_in + r_in * r_out * kh * kw + r_out * c_out
    return {"method": "cp", "rank": max(1, _round(tucker_weights / (c_in + c_out + kh + kw)))}


def decompose_convs(
    model: nn.Module, method: DecomposeMethod, rank: float
) -> dict[str, dict[str, Any]]:
    """Factorise every decomposable conv of ``model`` (see :func:`decomposable`; 1x1,
    depthwise and grouped convs, Conv1d/Conv3d and Linear layers stay), in place.

    Returns ``{layer name: description}``, plain JSON (what ``model.json`` records and
    :func:`rebuild_decomposed` reads), each with ``"error"``: the relative Frobenius error of
    the factorised kernel. :class:`DecomposeError` when ``rank`` is not in (0, 1], when the
    model has no decomposable conv, or when the rank rule leaves a layer no channel."""
    if method not in DECOMPOSE_METHODS:
        raise DecomposeError(f"decompose method must be one of {DECOMPOSE_METHODS}; got {method!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not 0 < rank <= 1:
        raise DecomposeError(f"decompose rank must be a fraction in (0, 1]; got {rank!r}")
    targets = [(name, m) for name, m in model.named_modules() if decomposable(m)]
    if not targets:
        raise DecomposeError(
            "the model has no Conv2d with a kernel larger than 1x1 and groups=1: nothing to "
            "decompose"
        )
    plans = {}
    for name, conv in targets:  # every layer checked before any is replaced
        if not name:
            raise DecomposeError("the model is itself a conv: wrap it (nn.Sequential) first")
        try:
            plans[name] = layer_ranks(conv, method, rank)
        except DecomposeError as exc:
            raise DecomposeError(f"layer {name!r}: {exc}") from None
    out: dict[str, dict[str, Any]] = {}
    for name, conv in targets:
        desc = plans[name]
        factors = _tucker2(conv, *desc["ranks"]) if method == "tucker" else _cp(conv, desc["rank"])
        seq = factorised_layers(conv, desc)
        with torch.no_grad():
            for layer, weight in zip(seq, factors, strict=True):
                layer.weight.copy_(weight.reshape(layer.weight.shape))
            if conv.bias is not None:
                seq[-1].bias.copy_(conv.bias)
        _replace(model, name, seq)
        kernel = conv.weight.detach().double().cpu()
        error = (_kernel(seq) - kernel).norm() / kernel.norm().clamp_min(1e-30)
        out[name] = {**desc, "error": round(float(error), 6)}
    return out


def rebuild_decomposed(model: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """``model`` (a fresh model of the spec) with the convs ``layers`` names replaced by the
    structure of their descriptions, weights uninitialised (``load_state_dict`` fills them);
    returns it. Layers are replaced in the order given."""
    for name, desc in layers.items():
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            raise DecomposeError(f"the decomposed model names a layer it lacks: {name!r}") from None
        if not decomposable(conv):
            raise DecomposeError(
                f"layer {name!r} is {type(conv).__name__}, not a decomposable conv"
            )
        try:
            seq = factorised_layers(conv, desc)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecomposeError(f"layer {name!r}: bad description {dict(desc)!r}: {exc}") from None
        _replace(model, name, seq)
    return model


def factorised_layers(conv: nn.Conv2d, desc: Mapping[str, Any]) -> nn.Sequential:
    """The convolutions that stand for ``conv`` under ``desc`` (new weights, same dtype and
    device): Tucker 1x1 -> kxk -> 1x1; CP 1x1 -> depthwise kx1 -> depthwise 1xk -> 1x1."""
    c_out, c_in = conv.out_channels, conv.in_channels
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    bias, mode = conv.bias is not None, conv.padding_mode
    if desc["method"] == "tucker":
        r_in, r_out = (_positive(r) for r in desc["ranks"])
        layers = [
            nn.Conv2d(c_in, r_in, 1, bias=False),
            nn.Conv2d(
                r_in,
                r_out,
                (kh, kw),
                conv.stride,
                conv.padding,
                conv.dilation,
                bias=False,
                padding_mode=mode,
            ),
            nn.Conv2d(r_out, c_out, 1, bias=bias),
        ]
    elif desc["method"] == "cp":
        r = _positive(desc["rank"])
        pad = conv.padding  # a string ("same", "valid") applies to each axis as it is
        ph, pw = (pad, pad) if isinstance(pad, str) else ((pad[0], 0), (0, pad[1]))
        layers = [
            nn.Conv2d(c_in, r, 1, bias=False),
            nn.Conv2d(r, r, (kh, 1), (sh, 1), ph, (dh, 1), groups=r, bias=False, padding_mode=mode),
            nn.Conv2d(r, r, (1, kw), (1, sw), pw, (1, dw), groups=r, bias=False, padding_mode=mode),
            nn.Conv2d(r, c_out, 1, bias=bias),
        ]
    else:
        raise ValueError(f"method must be one of {DECOMPOSE_METHODS}")
    seq = nn.Sequential(*layers).to(device=conv.weight.device, dtype=conv.weight.dtype)
    return seq.train(conv.training)


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"a rank must be an int >= 1; got {value!r}")
    return value


def _tucker2(conv: nn.Conv2d, r_in: int, r_out: int) -> list[Tensor]:
    """Truncated HOSVD on the channel modes: ``[U_in^T, core, U_out]`` (float64), the
    weights of the three Tucker convolutions."""
    w = conv.weight.detach().double().cpu()
    c_out, c_in = w.shape[:2]
    u_out = torch.linalg.svd(w.reshape(c_out, -1), full_matrices=False)[0][:, :r_out]
    u_in = torch.linalg.svd(w.transpose(0, 1).reshape(c_in, -1), full_matrices=False)[0][:, :r_in]
    core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)
    return [u_in.T.contiguous(), core, u_out]


def _cp(conv: nn.Conv2d, rank: int) -> list[Tensor]:
    """Rank-``rank`` CP of the kernel by seeded ALS: ``[B^T, C^T, D^T, A]`` (float64) for a
    kernel ``sum_r A[o,r] B[i,r] C[h,r] D[w,r]``, each component's norm shared evenly by its
    four factors (so none is tiny or huge in float32)."""
    from tensorly.backend import BackendManager
    from tensorly.decomposition import parafac

    w = conv.weight.detach().double().cpu().numpy()
    with BackendManager.backend_context("numpy", local_threadsafe=True), warnings.catch_warnings():
        # the SVD start of a mode smaller than the rank is padded with seeded random columns
        warnings.filterwarnings("ignore", "Trying to compute SVD", UserWarning)
        weights, factors = parafac(
            w, rank, n_iter_max=CP_ITERATIONS, init="svd", random_state=CP_SEED
        )
    a, b, c, d = (torch.from_numpy(f.copy()) for f in factors)
    a = a * torch.from_numpy(weights.copy())
    norms = torch.stack([f.norm(dim=0) for f in (a, b, c, d)])  # (4, R)
    share = norms.prod(0).pow(0.25) / norms.clamp_min(1e-30)
    a, b, c, d = (f * s for f, s in zip((a, b, c, d), share, strict=True))
    return [b.T.contiguous(), c.T.contiguous(), d.T.contiguous(), a]


def _kernel(seq: nn.Sequential) -> Tensor:
    """The kxk kernel (float64) the factorised ``seq`` computes (the oracle of ``"error"``)."""
    ws = [layer.weight.detach().double().cpu() for layer in seq]
    if len(ws) == 3:
        return torch.einsum("si,rshw,or->oihw", ws[0][:, :, 0, 0], ws[1], ws[2][:, :, 0, 0])
    b, c, d, a = ws[0][:, :, 0, 0], ws[1][:, 0, :, 0], ws[2][:, 0, 0, :], ws[3][:, :, 0, 0]
    return torch.einsum("ri,rh,rw,or->oihw", b, c, d, a)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise DecomposeError("the model is itself a conv: wrap it (nn.Sequential) first")
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
