"""Rank measures of a spectrum (THEORY.md §6), batched over leading axes; singular values sorted descending.

For singular values s_1 >= s_2 >= ... >= 0 of a matrix M:

- stable rank      ||M||_F^2 / ||M||_2^2 = sum_i s_i^2 / s_1^2  (the paper's smooth proxy for rank, App. B);
- effective rank   exp(H(p)), p_i = s_i / sum_j s_j, H the Shannon entropy (Roy and Vetterli, 2007);
- numerical rank   #{i : s_i > rtol * s_1}, with ``NUMERICAL_RANK_RTOL`` = 1e-2 by default: a direction
  carrying less than 1% of the largest singular value is not counted (float32 rounding of a product of
  O(1) weights is ~1e-6 relative, far below; Adam's per-step noise in a change is typically 1e-3 to 1e-2).

All three are 1 for a rank-one matrix and NaN for the zero matrix (a rank of "nothing" is undefined; the
checks treat NaN as not measured, never as low rank).
"""

from __future__ import annotations

import numpy as np

NUMERICAL_RANK_RTOL = 1e-2


def _top(s: np.ndarray) -> np.ndarray:
    top = s[..., :1]
    return np.where(top > 0, top, np.nan)


def stable_rank(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    return np.sum((s / _top(s)) ** 2, axis=-1)


def effective_rank(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    total = np.sum(s, axis=-1, keepdims=True)
    p = s / np.where(total > 0, total, np.nan)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return np.where(total[..., 0] > 0, np.exp(entropy), np.nan)


def numerical_rank(s: np.ndarray, rtol: float = NUMERICAL_RANK_RTOL) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    top = _top(s)
    return np.where(np.isnan(top[..., 0]), np.nan, np.sum(s > rtol * top, axis=-1))
