"""Measurements the two tracking checks judge, from stored RankHistory only (THEORY.md §6).

Thresholds, and why (measured values: README "Track your own training run" and the closing notes):

- ``SIZE_FLOOR`` = 0.1: a record is judged only once the change has reached a tenth of the largest Frobenius
  norm it reaches in the run. Smaller changes are dominated by the first optimizer steps (Adam's first
  update is -lr * sign(gradient), a full-rank matrix of tiny norm) and their rank says nothing about what
  is learned.
- ``RANK_RATIO_MAX`` = 0.5, "well below the initial weights": the change's stable rank is at most half that
  of the product at initialisation, for the median matrix (the typical head, as the paper's figures show
  typical heads). Reference: a product of two random k-column factors has stable rank about 0.4 k, and an
  unstructured change of both factors, (dA) B^T + A (dB)^T, has 1.2 to 1.6 times that (measured for
  d x k = 64 x 16, 32 x 32, 16 x 16, 32 x 8), so 0.5 asks for a change at least twice as concentrated as
  the initial product and about three times as concentrated as noise.
- ``RANK_FRACTION_MAX`` = 0.2, "below a fraction of its dimension", for every matrix: an isotropic Gaussian
  n x m matrix has stable rank nm / (sqrt(n) + sqrt(m))^2 >= min(n, m) / 4 (Marchenko-Pastur), so a change
  whose stable rank stays below a fifth of the largest rank it could have, r = min(d1, d2, 2k), is more
  concentrated than an isotropic random one. This bound also judges products whose initial value is zero
  or says nothing (e.g. a fixed identity factor). Matrices with r < ``MIN_JUDGED_RANK`` = 5 cannot tell
  rank one from noise by this measure (1 > r / 5) and are not judged.
- Steps (gradual-rank-increase): the same two bounds applied to the largest increase of the stable rank
  between consecutive judged records (the first judged record counts from 0): no record adds more than
  half the initial product's stable rank (median matrix) or a fifth of r (every matrix) at once. A random
  full-rank change has all its rank at its first judged record and fails both.
- Matched training loss (two runs at a time, consecutive init scales): losses are smoothed by a trailing
  mean over ``LOSS_WINDOW`` = 1/20 of the records; the loss levels compared are the start minus
  ``MATCH_LEVELS`` = 1/4, 1/2, 3/4, 1 times the decrease that both runs achieved, so both reach every level; that common decrease must be at least
  ``MIN_LOSS_DECREASE`` = 10% of the starting loss, else the runs are not compared (levels within the
  minibatch noise of the start would compare noise). The bound is 1: the smaller init's mean stable rank
  is at most the larger's at every level (no tolerance: the claim is an ordering).
- A run whose training loss rose (``LOSS_RISE_MAX`` = 10%): the smoothed loss at its last record exceeds
  its first recorded loss (the start ``MATCH_LEVELS`` count from) by more than a tenth of the latter's size.
  Its change is what a failing optimizer did to the weights (SGD at lr 1e6 under gradient clipping keeps every
  value finite while the loss grows from 3.9 to 3e8), not what training learned: both checks are
  inconclusive (``loss-rose``). The same 10% as ``MIN_LOSS_DECREASE``: within it, a run counts as flat, not
  as rising (minibatch noise), and is judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .history import RankHistory

SIZE_FLOOR = 0.1
RANK_FRACTION_MAX = 0.2
RANK_RATIO_MAX = 0.5
MIN_JUDGED_RANK = 5
LOSS_WINDOW = 1 / 20
MATCH_LEVELS = (0.25, 0.5, 0.75, 1.0)
MIN_LOSS_DECREASE = 0.1
LOSS_RISE_MAX = 0.1


def judged(history: RankHistory) -> np.ndarray:
    """[T, P] the records whose change is large enough to have a meaningful rank (see ``SIZE_FLOOR``)."""
    norm = np.sqrt(np.sum(history.delta_spectra**2, axis=-1))
    top = norm.max(axis=0, keepdims=True)
    return (norm > 0) & (norm >= SIZE_FLOOR * top)


@dataclass(frozen=True)
class RankSummary:
    """Per tracked matrix (P of them): what the two checks judge.

    ``final``: stable rank of the change at the last record (the learned perturbation, the paper's Figure 5);
    ``initial``: stable rank of the product at the first record; ``largest_step``: the largest increase of the
    change's stable rank between consecutive judged records, the first judged record counted as an
    increase from 0 (how many directions appeared at once); ``max_rank``: r = min(d1, d2, 2k). Matrices
    with r < ``MIN_JUDGED_RANK`` are NaN throughout (too small to tell rank one from noise).
    """

    final: np.ndarray
    initial: np.ndarray
    largest_step: np.ndarray
    max_rank: np.ndarray


def summarize(history: RankHistory) -> RankSummary:
    sr = history.stable_rank()
    mask = judged(history)
    max_rank = np.asarray(history.max_rank, dtype=np.float64)
    keep = max_rank >= MIN_JUDGED_RANK
    step = np.full(sr.shape[1], np.nan)
    for i in np.flatnonzero(keep & mask.any(axis=0)):
        step[i] = np.max(np.diff(sr[mask[:, i], i], prepend=0.0))
    final = np.where(keep & mask[-1], sr[-1], np.nan)
    return RankSummary(final, np.where(keep, history.initial_stable_rank(), np.nan), step,
                       np.where(keep, max_rank, np.nan))


def smoothed_loss(history: RankHistory) -> np.ndarray:
    """Trailing mean of the recorded losses over ``LOSS_WINDOW`` of the records, ignoring NaN (no loss given)."""
    loss = history.losses
    w = max(1, int(round(LOSS_WINDOW * len(loss))))
    valid = np.isfinite(loss)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, loss, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    lo = np.maximum(0, np.arange(len(loss)) - w + 1)
    n = counts[1:] - counts[lo]
    return np.where(n > 0, (sums[1:] - sums[lo]) / np.maximum(n, 1), np.nan)


def loss_start_end(history: RankHistory) -> tuple[float, float] | None:
    """(start, end): the first recorded finite loss (the smoothed loss there: the loss of the initial weights when
    the callbacks record it) and the smoothed loss (:func:`smoothed_loss`) at the last record with one; None
    with fewer than two finite losses."""
    smooth = smoothed_loss(history)
    finite = smooth[np.isfinite(smooth) & np.isfinite(history.losses)]
    if finite.size < 2:
        return None
    return float(finite[0]), float(smooth[np.isfinite(smooth)][-1])


def loss_rose(history: RankHistory) -> tuple[float, float] | None:
    """(start, end) when the training loss rose by more than ``LOSS_RISE_MAX`` of its starting size, else None."""
    ends = loss_start_end(history)
    if ends is None:
        return None
    start, end = ends
    return ends if end - start > LOSS_RISE_MAX * abs(start) else None


@dataclass(frozen=True)
class MatchedRanks:
    """Mean stable rank of the change over all matrices, per run (rows, in the order given) at each matched
    loss level (columns); ``levels`` the loss values. Empty when no level is reached by every run."""

    levels: np.ndarray  # [J]
    mean_stable_rank: np.ndarray  # [runs, J]
    steps: np.ndarray  # [runs, J] the step at which each run first reaches each level


def matched_ranks(histories: list[RankHistory]) -> MatchedRanks:
    smooth = [smoothed_loss(h) for h in histories]
    finite = [s[np.isfinite(s)] for s in smooth]
    unmatched = MatchedRanks(np.empty(0), np.empty((len(histories), 0)), np.empty((len(histories), 0)))
    if any(len(f) == 0 for f in finite):
        return unmatched
    start = min(f[0] for f in finite)
    floor = max(f.min() for f in finite)
    if not start - floor >= MIN_LOSS_DECREASE * abs(start):
        return unmatched
    levels = np.array([start - q * (start - floor) for q in MATCH_LEVELS])
    ranks = np.empty((len(histories), len(levels)))
    steps = np.empty_like(ranks)
    for r, (h, s) in enumerate(zip(histories, smooth)):
        sr = h.stable_rank()
        for j, level in enumerate(levels):
            t = int(np.argmax(np.nan_to_num(s, nan=np.inf) <= level))
            measured = sr[t][np.isfinite(sr[t])]
            ranks[r, j], steps[r, j] = (measured.mean() if measured.size else np.nan), h.steps[t]
    return MatchedRanks(levels, ranks, steps)
