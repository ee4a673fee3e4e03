"""The two tracking checks, judged from stored measurements (:class:`RankHistory`), one per init scale.

``low-rank-perturbation`` (the paper's Figure 5): the learned change of every attention product, at the end
of training, is low-rank: the median over matrices of stable rank(change) / stable rank(initial product)
is at most ``RANK_RATIO_MAX`` and every matrix's stable rank(change) / r is at most ``RANK_FRACTION_MAX``.

``gradual-rank-increase`` (Figures 3 and 4): (i) the rank is acquired in steps, not all at once: the largest
increase of a change's stable rank between two judged records, as a fraction of the initial product's
stable rank (median over matrices) and of r (every matrix), stays below the same two thresholds; (ii) with
several init scales, smaller init gives lower rank at matched training loss: at every matched loss level
the mean stable rank of the change is no larger for the smaller of two consecutive scales.

Thresholds and why: :mod:`verifier.tracking.judge`. Nothing here trains or touches a module.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..checks.result import CheckResult, Verdict
from .figures import change_vs_initial, spectrum_over_training, stable_rank_over_training
from .judge import (MIN_JUDGED_RANK, RANK_FRACTION_MAX, RANK_RATIO_MAX, RankSummary, matched_ranks,
                    summarize)
from .tracker import RankHistory

LOW_RANK = "low-rank-perturbation"
GRADUAL = "gradual-rank-increase"
CLAIMS = {
    LOW_RANK: "Section 5, Figure 5: the learned change of Wq Wk^T and Wv Wo^T is low-rank compared with the "
              "initial weights",
    GRADUAL: "Section 5, Figures 3-4: the change's rank grows in steps, and more slowly from a smaller init",
}


def _scale(s: float) -> str:
    return f"{s:g}"


def _nan_stat(f, x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(f(x)) if len(x) else float("nan")


def _judge(criteria: list[tuple[str, float, float]]) -> tuple[Verdict, list[str]]:
    """(name, value, upper bound) -> pass if all hold, fail if one is violated, inconclusive if one is NaN."""
    violated = [f"{n} = {v:.3g} > {t:g}" for n, v, t in criteria if np.isfinite(v) and v > t]
    missing = [n for n, v, _ in criteria if not np.isfinite(v)]
    if violated:
        return Verdict.FAIL, violated
    if missing:
        return Verdict.INCONCLUSIVE, [f"{n} could not be measured" for n in missing]
    return Verdict.PASS, []


def _summaries(runs: Mapping[float, RankHistory]) -> dict[float, RankSummary]:
    return {scale: summarize(h) for scale, h in sorted(runs.items(), reverse=True)}


def _not_judged(summaries: dict[float, RankSummary]) -> str | None:
    if all(np.isnan(s.max_rank).all() for s in summaries.values()):
        return (f"every tracked change has a largest possible rank below {MIN_JUDGED_RANK}: too small to tell a "
                f"rank-one change from an unstructured one by its stable rank")
    return None


def low_rank_perturbation(runs: Mapping[float, RankHistory]) -> CheckResult:
    """Judge the final change of every run (keys: init scales). See the module docstring."""
    summaries = _summaries(runs)
    reason = _not_judged(summaries)
    if reason:
        return CheckResult(LOW_RANK, CLAIMS[LOW_RANK], Verdict.INCONCLUSIVE, reason)
    ratio = {s: _nan_stat(np.median, m.final / m.initial) for s, m in summaries.items()}
    fraction = {s: _nan_stat(np.max, m.final / m.max_rank) for s, m in summaries.items()}
    worst_ratio, worst_fraction = max(ratio.values()), max(fraction.values())
    verdict, problems = _judge([("median_rank_ratio", worst_ratio, RANK_RATIO_MAX),
                                ("max_rank_fraction", worst_fraction, RANK_FRACTION_MAX)])
    per_scale = ", ".join(f"scale {_scale(s)}: {np.nanmedian(m.final):.2f}" for s, m in summaries.items())
    message = (f"median stable rank of the final change {per_scale} (initial products: "
               f"{_nan_stat(np.median, next(iter(summaries.values())).initial):.2f})")
    message = "; ".join(problems) + " -- " + message if problems else message
    return CheckResult(
        LOW_RANK, CLAIMS[LOW_RANK], verdict, message,
        metrics={"median_rank_ratio": worst_ratio, "max_rank_fraction": worst_fraction,
                 **{f"median_rank_ratio_scale_{_scale(s)}": v for s, v in ratio.items()},
                 **{f"median_stable_rank_scale_{_scale(s)}": _nan_stat(np.median, m.final)
                    for s, m in summaries.items()}},
        thresholds={"median_rank_ratio": RANK_RATIO_MAX, "max_rank_fraction": RANK_FRACTION_MAX},
        evidence={"key_metric": "median_rank_ratio",
                  "figures": [change_vs_initial(runs[s], _scale(s)) for s in summaries]},
    )


def gradual_rank_increase(runs: Mapping[float, RankHistory]) -> CheckResult:
    """Judge how each run's change acquired its rank, and compare runs at matched loss."""
    summaries = _summaries(runs)
    reason = _not_judged(summaries)
    if reason:
        return CheckResult(GRADUAL, CLAIMS[GRADUAL], Verdict.INCONCLUSIVE, reason)
    step_ratio = max(_nan_stat(np.median, m.largest_step / m.initial) for m in summaries.values())
    step_fraction = max(_nan_stat(np.max, m.largest_step / m.max_rank) for m in summaries.values())
    criteria = [("median_step_ratio", step_ratio, RANK_RATIO_MAX),
                ("max_step_fraction", step_fraction, RANK_FRACTION_MAX)]
    metrics: dict = {"median_step_ratio": step_ratio, "max_step_fraction": step_fraction}
    notes = []
    if len(summaries) > 1:
        ordered = [runs[s] for s in summaries]
        matched = matched_ranks(ordered)
        if matched.levels.size:
            ranks = matched.mean_stable_rank
            ratio = float(np.max(ranks[1:] / ranks[:-1]))  # smaller scale over the next larger one
            criteria.append(("max_rank_ratio_smaller_init", ratio, 1.0))
            metrics.update(max_rank_ratio_smaller_init=ratio, matched_losses=matched.levels,
                           **{f"matched_stable_rank_scale_{_scale(s)}": r for s, r in zip(summaries, ranks)},
                           **{f"matched_steps_scale_{_scale(s)}": t for s, t in zip(summaries, matched.steps)})
        else:
            criteria.append(("max_rank_ratio_smaller_init", float("nan"), 1.0))
            notes.append("no training loss level is reached by every run (losses not recorded, or a run "
                         "did not reduce its loss)")
    else:
        notes.append("one init scale: the comparison across scales needs runs at two or more")
    verdict, problems = _judge(criteria)
    largest = ", ".join(f"scale {_scale(s)}: {np.nanmax(m.largest_step):.2f}" for s, m in summaries.items())
    message = "; ".join(problems + notes + [f"largest stable-rank step of a change {largest}"])
    return CheckResult(GRADUAL, CLAIMS[GRADUAL], verdict, message, metrics=metrics,
                       thresholds={"median_step_ratio": RANK_RATIO_MAX, "max_step_fraction": RANK_FRACTION_MAX,
                                   "max_rank_ratio_smaller_init": 1.0},
                       evidence={"key_metric": "max_step_fraction", "figures": [
                           f for s in summaries for f in (*spectrum_over_training(runs[s], _scale(s)),
                                                          stable_rank_over_training(runs[s], _scale(s)))]})


def rank_checks(runs: Mapping[float, RankHistory]) -> list[CheckResult]:
    """Both checks on runs keyed by init scale (the factor each run's init was multiplied by; 1.0 is the
    default init). One run is judged alone; several are also compared at matched training loss."""
    if not runs:
        raise ValueError("rank_checks needs at least one RankHistory")
    return [low_rank_perturbation(runs), gradual_rank_increase(runs)]
