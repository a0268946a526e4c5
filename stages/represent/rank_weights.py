r"""Approximate rank pooling (Bilen et al., CVPR 2016): the weights, in closed form.

Notation: frames :math:`x_1 .. x_T`, harmonic numbers :math:`H_n = \sum_{s \le n} 1/s`
(:math:`H_0 = 0`) and :math:`G_n = \sum_{s \le n} H_{s-1}/s = (H_n^2 - \sum_{s \le n} s^{-2})/2`.

- ``psi="frame"``: :math:`d = \sum_t \alpha_t x_t`, with
  :math:`\alpha_t = 2(T - t + 1) - (T + 1)(H_T - H_{t-1})`.
- ``psi="mean"``: the same weights on the time-varying means of the paper,
  :math:`m_t = (x_1 + .. + x_t)/t`: :math:`d = \sum_t \alpha_t m_t = \sum_i \beta_i x_i`
  with :math:`\beta_i = \sum_{t \ge i} \alpha_t / t` (swap the two sums).

Both are affine in a few functions of the frame index, with coefficients that depend on T only::

    alpha_t = a0 + a1 t + a2 H_{t-1}                a = ((T+1)(2 - H_T), -2, T+1)
    beta_i  = b0 + b1 i + b2 H_{i-1} + b3 G_{i-1}   b = ((T+1)((2 - H_T) H_T - 2 + G_T),
                                                         2, -(T+1)(2 - H_T), -(T+1))

(:math:`\beta_i = a_0 (H_T - H_{i-1}) + a_1 (T - i + 1) + a_2 (G_T - G_{i-1})`). So one pass
keeps the running sums :math:`S_f = \sum_t f(t) x_t` for f in (1, t, H_{t-1} [, G_{t-1}]) and
returns :math:`d = \sum_f c_f(T) S_f` once T is known: memory independent of T.

Both weight vectors sum to 0 for T > 1 (:math:`\sum_t \alpha_t = T(T+1) - (T+1)\sum_s s/s`
and :math:`\sum_i \beta_i = \sum_t \alpha_t`), so a still clip pools to 0. For T = 1 the formula
gives 0; the pooled image is then the frame itself (weight 1), as in the reference MATLAB code
(``vl_nnarpooltemporal``: ``w = 1`` when ``N = 1``). The paper derives the frame weights the
other way round: :math:`\sum_t \alpha_t x_t = \sum_t (2t - T - 1) m_t`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Psi = Literal["frame", "mean"]
PSI_VALUES = ("frame", "mean")


class _Series:
    """H_n and G_n for n = 0, 1, ..., grown on demand (doubling)."""

    def __init__(self) -> None:
        self.h = np.zeros(1)
        self.g = np.zeros(1)

    def upto(self, n: int) -> _Series:
        if n >= len(self.h):
            s = np.arange(1, max(n + 1, 2 * len(self.h)), dtype=np.float64)
            h = np.concatenate(([0.0], np.cumsum(1.0 / s)))
            self.g = np.concatenate(([0.0], np.cumsum(h[:-1] / s)))
            self.h = h
        return self


_SERIES = _Series()


def _check_psi(psi: str, where: str) -> None:
    if psi not in PSI_VALUES:
        raise ValueError(f"The 'psi' parameter of {where} must be 'frame' or 'mean'. Got {psi!r}.")


def rank_pool_weights(length: int, *, psi: Psi = "frame") -> np.ndarray:
    """The weights of approximate rank pooling on the raw frames of a clip of ``length``.

    ``psi="frame"``: :math:`\\alpha_t`; ``psi="mean"``: :math:`\\beta_i`, the weights on the
    raw frames that equal :math:`\\alpha_t` applied to the running means. One frame: ``[1.0]``.

    Returns
    -------
    numpy.ndarray
        float64 (length,), summing to 0 (to 1 for one frame).

    Examples
    --------
    >>> from datapipe import ops
    >>> ops.compute_rank_pool_weights(2).tolist()
    [-0.5, 0.5]
    >>> ops.compute_rank_pool_weights(2, psi="mean").tolist()
    [-0.25, 0.25]
    """
    _check_psi(psi, "rank_pool_weights")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(
            f"The 'length' parameter of rank_pool_weights must be an int >= 1. Got {length!r}."
        )
    T = int(length)
    if T == 1:
        return np.ones(1)
    h = _SERIES.upto(T).h
    t = np.arange(1, T + 1, dtype=np.float64)
    alpha = 2.0 * (T - t + 1) - (T + 1) * (h[T] - h[:T])
    if psi == "frame":
        return alpha
    return np.cumsum((alpha / t)[::-1])[::-1]


def _basis(i: np.ndarray, psi: str) -> np.ndarray:
    """The index functions f(i) of the running sums, (3 or 4, len(i)), for 1-based i."""
    s = _SERIES.upto(int(i[-1]) if len(i) else 0)
    rows = [np.ones(len(i)), i.astype(np.float64), s.h[i - 1]]
    if psi == "mean":
        rows.append(s.g[i - 1])
    return np.stack(rows)


def _coefficients(T: int, psi: str) -> np.ndarray:
    """c_f(T): the pooled image is sum_f c_f(T) S_f."""
    m = 3 if psi == "frame" else 4
    if T == 1:
        return np.eye(1, m)[0]
    s = _SERIES.upto(T)
    h, g = s.h[T], s.g[T]
    if psi == "frame":
        return np.array([(T + 1) * (2 - h), -2.0, T + 1.0])
    return np.array([(T + 1) * ((2 - h) * h - 2 + g), 2.0, -(T + 1) * (2 - h), -(T + 1.0)])


_WEIGHTS: dict[tuple[int, str], np.ndarray] = {}


def _cached_weights(length: int, psi: str) -> np.ndarray:
    key = (length, psi)
    if key not in _WEIGHTS:
        if len(_WEIGHTS) > 64:
            _WEIGHTS.clear()
        _WEIGHTS[key] = rank_pool_weights(length, psi=psi)  # type: ignore[arg-type]
    return _WEIGHTS[key]
