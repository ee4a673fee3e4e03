"""Analogues of the paper's Figures 3-5 from stored measurements, one set per init scale.

* Figure 3: the singular values of the change of one head's qk and vo products over training;
* Figure 4: the stable rank of the change against the step, per tracked product (mean over its heads);
* Figure 5: the spectrum of the final change against that of the initial product, for the same head.

The head shown is head 0 of the first two tracked products (for a ViT: the first layer's qk and vo).
"""

from __future__ import annotations

import warnings

import numpy as np

from .tracker import RankHistory

TOP_VALUES = 8  # singular values drawn in Figure 3
MAX_POINTS = 300


def _thin(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).round().astype(int))


def shown_matrices(history: RankHistory) -> list[int]:
    """Head 0 of the first two tracked products."""
    firsts = [i for i, h in enumerate(history.heads) if h == 0]
    return firsts[:2]


def spectrum_over_training(history: RankHistory, scale: str) -> list[dict]:
    keep = _thin(len(history.steps))
    steps = history.steps[keep].tolist()
    figures = []
    for i in shown_matrices(history):
        s = history.delta_spectra[keep, i, :TOP_VALUES]
        figures.append({
            "id": f"change-spectrum-{history.labels[i]}-scale-{scale}",
            "title": f"Singular values of the change of {history.labels[i]} (init scale {scale})",
            "kind": "line", "xlabel": "step", "ylabel": "singular value", "xscale": "linear", "yscale": "linear",
            "series": [{"label": f"sigma_{j + 1}", "x": steps, "y": s[:, j].tolist(), "style": "-"}
                       for j in range(s.shape[1])],
            "caption": "Figure 3 analogue: incremental learning shows as singular values that leave zero one after "
                       "another.",
        })
    return figures


def stable_rank_over_training(history: RankHistory, scale: str) -> dict:
    keep = _thin(len(history.steps))
    sr = history.stable_rank()[keep]
    names = list(dict.fromkeys(history.names))
    series = []
    for name in names:
        cols = [i for i, n in enumerate(history.names) if n == name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the first record has no rank (zero change)
            mean = np.nanmean(sr[:, cols], axis=1)
        series.append({"label": name, "x": history.steps[keep].tolist(), "y": mean.tolist(), "style": "-"})
    return {
        "id": f"stable-rank-scale-{scale}", "title": f"Stable rank of the change per layer (init scale {scale})",
        "kind": "line", "xlabel": "step", "ylabel": "stable rank (mean over heads)", "xscale": "linear",
        "yscale": "linear", "series": series,
        "caption": "Figure 4 analogue: ||Delta||_F^2 / ||Delta||_2^2 of each product's change, averaged over heads.",
    }


def change_vs_initial(history: RankHistory, scale: str) -> dict:
    series = []
    for i in shown_matrices(history):
        r, k = history.max_rank[i], history.product_rank[i]  # beyond k the initial product is rounding noise
        series += [{"label": f"change {history.labels[i]}", "x": list(range(1, r + 1)),
                    "y": history.delta_spectra[-1, i, :r].tolist(), "style": "o-"},
                   {"label": f"initial {history.labels[i]}", "x": list(range(1, k + 1)),
                    "y": history.initial_spectra[i, :k].tolist(), "style": "--"}]
    return {
        "id": f"change-vs-initial-scale-{scale}",
        "title": f"Spectrum of the final change vs the initial product (init scale {scale})",
        "kind": "line", "xlabel": "index", "ylabel": "singular value", "xscale": "linear", "yscale": "log",
        "series": series,
        "caption": "Figure 5 analogue: a low-rank change has a few large singular values and then drops far below "
                   "the initial product's spectrum.",
    }
