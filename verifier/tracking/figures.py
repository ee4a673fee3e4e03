"""What the tracking checks draw, from stored measurements (:class:`RankHistory`), as typed figures.

Per init scale:

* the paper's Figure 3: the singular values of the change of the chosen heads over training;
* Figure 4: the stable rank of the change against the step, one line per tracked product (a layer's qk or
  vo), the mean over its heads with a band of ± one standard deviation across heads; qk and vo apart;
* a layers x heads heatmap of the stable rank of the final change;
* Figure 5: the spectrum of the final change against that of the initial product, for the chosen heads.

Across init scales: the mean stable rank of the change against the (smoothed) training loss, one line per
scale, with the loss levels at which ``gradual-rank-increase`` compares them.

The heads shown in Figures 3 and 5 are chosen by label (``heads=["blocks.1.attn.qk[h2]", ...]``) or, by
default, per kind of product (qk, vo), the head whose final change has the largest Frobenius norm (the
head that learned most).
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..figures import Figure, Mark, Series
from .history import RankHistory
from .judge import smoothed_loss

TOP_VALUES = 8  # singular values drawn in Figure 3
MAX_POINTS = 300
KIND_TITLES = {"qk": "Wq Wk^T (qk)", "vo": "Wv Wo^T (vo)", "": "named products"}


def _thin(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_POINTS)).round().astype(int))


def _kind(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1]
    return suffix if suffix in ("qk", "vo") else ""


def _finite_stat(f, x: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice (the first record: a zero change)
        return f(x, axis=axis)


def shown_matrices(history: RankHistory, heads: Sequence[str] | None = None, flag: str = "heads") -> list[int]:
    """The matrices drawn in Figures 3 and 5: those labelled ``heads`` (InputError naming ``heads`` for a label
    that is not tracked; ``flag``: the option to name), else per kind of product the one whose final change is
    largest."""
    labels = history.labels
    if heads is not None:
        unknown = [h for h in heads if h not in labels]
        if unknown:
            raise InputError(flag, f"{unknown[0]!r} is not a tracked head",
                             "labels of tracked heads, e.g. " + ", ".join(labels[:3]))
        return [labels.index(h) for h in dict.fromkeys(heads)]
    norm = np.sqrt(np.sum(history.delta_spectra[-1] ** 2, axis=-1))
    norm = np.where(np.isfinite(norm), norm, -1.0)
    shown = []
    for kind in dict.fromkeys(_kind(n) for n in history.names):
        members = [i for i, n in enumerate(history.names) if _kind(n) == kind]
        shown.append(max(members, key=lambda i: (norm[i], -i)))
    return shown


def spectrum_over_training(history: RankHistory, scale: str, shown: list[int]) -> list[Figure]:
    keep = _thin(len(history.steps))
    steps = history.steps[keep]
    figures = []
    for i in shown:
        s = history.delta_spectra[keep, i, :TOP_VALUES]
        figures.append(Figure(
            f"change-spectrum-{history.labels[i]}-scale-{scale}",
            f"Singular values of the change of {history.labels[i]} (init scale {scale})", "line", "step",
            "singular value", tuple(Series(f"sigma_{j + 1}", steps, s[:, j], "-") for j in range(s.shape[1])),
            caption="Figure 3 analogue: incremental learning shows as singular values that leave zero one after "
                    "another."))
    return figures


def stable_rank_over_training(history: RankHistory, scale: str) -> list[Figure]:
    """Figure 4: per kind of product, one line per product, mean ± std of the change's stable rank over heads."""
    keep = _thin(len(history.steps))
    sr = history.stable_rank()[keep]
    figures = []
    for kind in dict.fromkeys(_kind(n) for n in history.names):
        series = []
        for name in dict.fromkeys(n for n in history.names if _kind(n) == kind):
            cols = [i for i, n in enumerate(history.names) if n == name]
            mean, std = _finite_stat(np.nanmean, sr[:, cols], 1), _finite_stat(np.nanstd, sr[:, cols], 1)
            series.append(Series(name, history.steps[keep], mean, "-", band=np.nan_to_num(std)))
        figures.append(Figure(
            f"stable-rank-{kind or 'named'}-scale-{scale}",
            f"Stable rank of the change of {KIND_TITLES[kind]}, mean ± std over heads (init scale {scale})",
            "line", "step", "stable rank", tuple(series),
            caption="Figure 4 analogue: ||Delta||_F^2 / ||Delta||_2^2 of each product's change, one line per "
                    "layer, the mean over its heads with a band of one standard deviation across heads (the first "
                    "record, a zero change, has none)."))
    return figures


def final_rank_heatmap(history: RankHistory, scale: str) -> Figure:
    """Layers x heads: the stable rank of the final change of every tracked matrix."""
    final = history.stable_rank()[-1]
    rows = []
    for name in dict.fromkeys(history.names):
        cols = [i for i, n in enumerate(history.names) if n == name]
        rows.append(Series(name, [history.heads[i] for i in cols], final[cols]))
    return Figure(f"final-stable-rank-scale-{scale}", f"Stable rank of the final change, per head (init scale {scale})",
                  "heatmap", "head", "product", tuple(rows), zlabel="stable rank of the change",
                  caption="Each cell: ||Delta||_F^2 / ||Delta||_2^2 of one head's change at the last record; a "
                          "blank cell has no rank (no change, or a non-finite one).")


def change_vs_initial(history: RankHistory, scale: str, shown: list[int]) -> Figure:
    series = []
    for i in shown:
        r, k = history.max_rank[i], history.product_rank[i]  # beyond k the initial product is rounding noise
        series += [Series(f"change {history.labels[i]}", range(1, r + 1), history.delta_spectra[-1, i, :r], "o-"),
                   Series(f"initial {history.labels[i]}", range(1, k + 1), history.initial_spectra[i, :k], "--")]
    return Figure(f"change-vs-initial-scale-{scale}",
                  f"Spectrum of the final change vs the initial product (init scale {scale})", "line", "index",
                  "singular value", tuple(series), yscale="log",
                  caption="Figure 5 analogue: a low-rank change has a few large singular values and then drops far "
                          "below the initial product's spectrum (drawn up to its rank k).")


def rank_vs_loss(runs: Mapping[str, RankHistory], levels: Sequence[float] = ()) -> Figure:
    """Across init scales (``runs`` keyed by the scale's label): the mean stable rank of the change over every
    tracked matrix against the smoothed training loss, with the compared loss ``levels`` marked."""
    series = []
    for scale, history in runs.items():
        keep = _thin(len(history.steps))
        mean = _finite_stat(np.nanmean, history.stable_rank()[keep], 1)
        series.append(Series(f"init scale {scale}", smoothed_loss(history)[keep], mean, "-"))
    losses = np.concatenate([np.asarray(s.x) for s in series])
    positive = losses[np.isfinite(losses)]
    log = positive.size > 0 and bool((positive > 0).all()) and positive.max() > 3 * positive.min()
    return Figure("stable-rank-vs-loss", "Mean stable rank of the change vs training loss, across init scales",
                  "line", "training loss (smoothed; training runs right to left)", "stable rank (mean over heads)",
                  tuple(series), xscale="log" if log else "linear",
                  vlines=tuple(Mark(v, "compared") for v in levels if np.isfinite(v)),
                  caption="The cross-scale part of gradual-rank-increase: at every dotted loss level both runs "
                          "reach, the smaller init's mean stable rank must be no higher. A run without recorded "
                          "losses draws nothing here.")
