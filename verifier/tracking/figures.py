"""Analogues of the paper's Figures 3-5 from stored measurements, one set per init scale.

* Figure 3: the singular values of the change of one head's qk and vo products over training;
* Figure 4: the stable rank of the change against the step, per tracked product (mean over its heads);
* Figure 5: the spectrum of the final change against that of the initial product, for the same head.

The head shown is head 0 of the first two tracked products (for a ViT: the first layer's qk and vo).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..figures import Figure, Series
from .history import RankHistory

TOP_VALUES = 8  # singular values drawn in Figure 3
MAX_POINTS = 300


def _thin(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).round().astype(int))


def shown_matrices(history: RankHistory) -> list[int]:
    """Head 0 of the first two tracked products."""
    firsts = [i for i, h in enumerate(history.heads) if h == 0]
    return firsts[:2]


def spectrum_over_training(history: RankHistory, scale: str) -> list[Figure]:
    keep = _thin(len(history.steps))
    steps = history.steps[keep]
    figures = []
    for i in shown_matrices(history):
        s = history.delta_spectra[keep, i, :TOP_VALUES]
        figures.append(Figure(
            f"change-spectrum-{history.labels[i]}-scale-{scale}",
            f"Singular values of the change of {history.labels[i]} (init scale {scale})", "line", "step",
            "singular value", tuple(Series(f"sigma_{j + 1}", steps, s[:, j], "-") for j in range(s.shape[1])),
            caption="Figure 3 analogue: incremental learning shows as singular values that leave zero one after "
                    "another."))
    return figures


def stable_rank_over_training(history: RankHistory, scale: str) -> Figure:
    keep = _thin(len(history.steps))
    sr = history.stable_rank()[keep]
    names = list(dict.fromkeys(history.names))
    series = []
    for name in names:
        cols = [i for i, n in enumerate(history.names) if n == name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the first record has no rank (zero change)
            mean = np.nanmean(sr[:, cols], axis=1)
        series.append(Series(name, history.steps[keep], mean, "-"))
    return Figure(f"stable-rank-scale-{scale}", f"Stable rank of the change per layer (init scale {scale})", "line",
                  "step", "stable rank (mean over heads)", tuple(series),
                  caption="Figure 4 analogue: ||Delta||_F^2 / ||Delta||_2^2 of each product's change, averaged over "
                          "heads (the first record, a zero change, has none).")


def change_vs_initial(history: RankHistory, scale: str) -> Figure:
    series = []
    for i in shown_matrices(history):
        r, k = history.max_rank[i], history.product_rank[i]  # beyond k the initial product is rounding noise
        series += [Series(f"change {history.labels[i]}", range(1, r + 1), history.delta_spectra[-1, i, :r], "o-"),
                   Series(f"initial {history.labels[i]}", range(1, k + 1), history.initial_spectra[i, :k], "--")]
    return Figure(f"change-vs-initial-scale-{scale}",
                  f"Spectrum of the final change vs the initial product (init scale {scale})", "line", "index",
                  "singular value", tuple(series), yscale="log",
                  caption="Figure 5 analogue: a low-rank change has a few large singular values and then drops far "
                          "below the initial product's spectrum (drawn up to its rank k).")
