"""The two tracking checks, judged from stored measurements (:class:`RankHistory`) of runs keyed by init scale.

``low-rank-perturbation`` (the paper's Figure 5): the learned change of every attention product, at the end
of training, is low-rank: the median over matrices of stable rank(change) / stable rank(initial product)
is at most ``RANK_RATIO_MAX`` and every matrix's stable rank(change) / r is at most ``RANK_FRACTION_MAX``.

``gradual-rank-increase`` (Figures 3 and 4): (i) the rank is acquired in steps, not all at once: the largest
increase of a change's stable rank between two judged records, as a fraction of the initial product's
stable rank (median over matrices) and of r (every matrix), stays below the same two bounds; (ii) with
several init scales, smaller init gives lower rank at matched training loss: for each pair of consecutive
scales, at every loss level both runs reach, the mean stable rank of the change is no larger for the smaller.

Thresholds and why: :mod:`verifier.tracking.judge`. Nothing here trains or touches a module. These checks are
not in the check registry (``verifier run``): they judge training runs, not a ``Context``.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Mapping

import numpy as np

from ..results import CheckResult, CommonReason, Judgement, Metric
from .figures import change_vs_initial, spectrum_over_training, stable_rank_over_training
from .judge import (LOSS_WINDOW, MATCH_LEVELS, MIN_JUDGED_RANK, MIN_LOSS_DECREASE, RANK_FRACTION_MAX,
                    RANK_RATIO_MAX, SIZE_FLOOR, RankSummary, matched_ranks, summarize)
from .history import RankHistory

LOW_RANK = "low-rank-perturbation"
GRADUAL = "gradual-rank-increase"
CLAIMS = {
    LOW_RANK: "Section 5, Figure 5: the learned change of Wq Wk^T and Wv Wo^T is low-rank compared with the "
              "initial weights",
    GRADUAL: "Section 5, Figures 3-4: the change's rank grows in steps, and more slowly from a smaller init",
}


class Reason(str, Enum):
    """The tracking checks' failure kinds (docs/THEORY.md §6)."""

    CHANGE_NOT_LOW_RANK = "change-not-low-rank"  # fail: the final change's stable rank exceeds a bound
    RANK_JUMP = "rank-jump"  # fail: one record raised the change's stable rank by more than a bound
    SMALLER_INIT_NOT_LOWER = "smaller-init-not-lower"  # fail: at matched loss the smaller init has the higher rank
    NO_COMMON_LOSS = "no-common-loss"  # inconclusive: two runs reach no common training-loss level
    NOT_MEASURABLE = "not-measurable"  # inconclusive: a bound's value is not finite
    DIVERGED = "diverged"  # inconclusive: a run's weights or loss became non-finite
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # inconclusive: every change too small to judge


SMALLER_INIT_MAX = 1.0  # mean stable rank at matched loss, smaller scale over the next larger: an ordering
SETTINGS = {"size_floor": SIZE_FLOOR, "min_judged_rank": MIN_JUDGED_RANK, "loss_window": LOSS_WINDOW,
            "match_levels": list(MATCH_LEVELS), "min_loss_decrease": MIN_LOSS_DECREASE,
            "rank_measure": "stable rank ||M||_F^2 / ||M||_2^2"}


def _scale(s: float) -> str:
    return f"{s:g}"


def _nan_stat(f, x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(f(x)) if len(x) else float("nan")


def _at_most(name: str, value: float, bound: float, reason: Reason) -> Judgement:
    if not np.isfinite(value):
        return Judgement.inconclusive(Reason.NOT_MEASURABLE, f"{name} could not be measured")
    if value > bound:
        return Judgement.failed(reason, f"{name} = {value:.3g} > {bound:g}")
    return Judgement.passed("")


def _summaries(runs: Mapping[float, RankHistory]) -> dict[float, RankSummary] | str:
    """Per run, largest init scale first; or the reason nothing can be judged."""
    summaries = {scale: summarize(h) for scale, h in sorted(runs.items(), reverse=True)}
    if all(np.isnan(s.max_rank).all() for s in summaries.values()):
        return (f"every tracked change has a largest possible rank below {MIN_JUDGED_RANK}: too small to tell a "
                f"rank-one change from an unstructured one by its stable rank")
    return summaries


def _bounded(summaries: dict[float, RankSummary], of: Callable[[RankSummary], np.ndarray], ratio_name: str,
             fraction_name: str, reason: Reason) -> tuple[dict[str, Metric], list[Judgement]]:
    """The two bounds on a per-matrix stable rank ``of(summary)``, worst over runs: its median over matrices
    relative to the initial product's (<= RANK_RATIO_MAX) and its max over matrices relative to r
    (<= RANK_FRACTION_MAX)."""
    ratio = {_scale(s): _nan_stat(np.median, of(m) / m.initial) for s, m in summaries.items()}
    fraction = {_scale(s): _nan_stat(np.max, of(m) / m.max_rank) for s, m in summaries.items()}
    worst_ratio, worst_fraction = max(ratio.values()), max(fraction.values())
    metrics = {ratio_name: Metric.at_most(worst_ratio, RANK_RATIO_MAX),
               fraction_name: Metric.at_most(worst_fraction, RANK_FRACTION_MAX),
               f"{ratio_name}_per_scale": Metric.info(ratio), f"{fraction_name}_per_scale": Metric.info(fraction)}
    return metrics, [_at_most(ratio_name, worst_ratio, RANK_RATIO_MAX, reason),
                     _at_most(fraction_name, worst_fraction, RANK_FRACTION_MAX, reason)]


def low_rank_perturbation(summaries: dict[float, RankSummary], runs: Mapping[float, RankHistory]) -> CheckResult:
    """Judge the final change of every run. See the module docstring."""
    metrics, parts = _bounded(summaries, lambda m: m.final, "median_rank_ratio", "max_rank_fraction",
                               Reason.CHANGE_NOT_LOW_RANK)
    final = {_scale(s): _nan_stat(np.median, m.final) for s, m in summaries.items()}
    initial = _nan_stat(np.median, np.concatenate([m.initial for m in summaries.values()]))
    metrics.update(median_final_stable_rank_per_scale=Metric.info(final),
                   median_initial_stable_rank=Metric.info(initial))
    judgement = Judgement.compose([*parts, Judgement.passed("median stable rank of the final change " + ", ".join(
        f"scale {s}: {v:.2f}" for s, v in final.items()) + f" (initial products: {initial:.2f})")])
    return CheckResult.judged(
        LOW_RANK, CLAIMS[LOW_RANK], judgement, metrics=metrics, key_metric="median_rank_ratio", settings=SETTINGS,
        evidence={"figures": [change_vs_initial(runs[s], _scale(s)) for s in summaries]},
    )


def _across_scales(runs: Mapping[float, RankHistory], scales: list[float], metrics: dict) -> Judgement:
    """Part (ii): each pair of consecutive scales (largest first) compared at the losses both runs reach."""
    if len(scales) < 2:
        return Judgement.passed("one init scale: the comparison across scales needs runs at two or more")
    ratios, table = [], {}
    for larger, smaller in zip(scales, scales[1:]):
        matched = matched_ranks([runs[larger], runs[smaller]])
        pair = f"{_scale(smaller)} vs {_scale(larger)}"
        if not matched.levels.size:
            ratios.append(float("nan"))
            table[pair] = "no common loss decrease"
            continue
        ranks = matched.mean_stable_rank
        ratios.append(float(np.max(ranks[1] / ranks[0])))
        table[pair] = {"losses": matched.levels, "stable_rank_smaller": ranks[1], "stable_rank_larger": ranks[0],
                       "step_smaller": matched.steps[1], "step_larger": matched.steps[0]}
    worst = float(np.max(ratios))  # NaN when any pair could not be matched
    metrics["max_rank_ratio_smaller_init"] = Metric.at_most(worst, SMALLER_INIT_MAX)
    metrics["matched_loss"] = Metric.info(table)
    if not np.isfinite(worst):
        return Judgement.inconclusive(Reason.NO_COMMON_LOSS, "a pair of runs reaches no common training loss level "
                                      f"(losses not recorded, or a run reduced its loss by less than "
                                      f"{MIN_LOSS_DECREASE:.0%})")
    return _at_most("max_rank_ratio_smaller_init", worst, SMALLER_INIT_MAX, Reason.SMALLER_INIT_NOT_LOWER)


def gradual_rank_increase(summaries: dict[float, RankSummary], runs: Mapping[float, RankHistory]) -> CheckResult:
    """Judge how each run's change acquired its rank, and compare runs at matched loss."""
    metrics, parts = _bounded(summaries, lambda m: m.largest_step, "median_step_ratio", "max_step_fraction",
                               Reason.RANK_JUMP)
    largest = {_scale(s): _nan_stat(np.max, m.largest_step) for s, m in summaries.items()}
    metrics["largest_step_per_scale"] = Metric.info(largest)
    judgement = Judgement.compose([
        *parts, _across_scales(runs, list(summaries), metrics),
        Judgement.passed("largest stable-rank step of a change " + ", ".join(
            f"scale {s}: {v:.2f}" for s, v in largest.items())),
    ])
    figures = [f for s in summaries for f in (*spectrum_over_training(runs[s], _scale(s)),
                                              stable_rank_over_training(runs[s], _scale(s)))]
    return CheckResult.judged(GRADUAL, CLAIMS[GRADUAL], judgement, metrics=metrics,
                              key_metric="max_rank_ratio_smaller_init" if "max_rank_ratio_smaller_init" in metrics
                              else "max_step_fraction", settings=SETTINGS, evidence={"figures": figures})


def _diverged(runs: Mapping[float, RankHistory]) -> str | None:
    """Why nothing can be judged when a run diverged (non-finite weights or loss), naming the step."""
    diverged = {s: h.diverged_step for s, h in sorted(runs.items(), reverse=True) if h.diverged_step is not None}
    if not diverged:
        return None
    where = ", ".join(f"init scale {_scale(s)} at step {step}" for s, step in diverged.items())
    return (f"training diverged ({where}): non-finite weights or loss, so the rank of the learned change is not "
            "defined; lower the step size or the init scale")


def rank_checks(runs: Mapping[float, RankHistory]) -> list[CheckResult]:
    """Both checks on runs keyed by init scale (the factor each run's init was multiplied by; 1.0 is the
    default init). One run is judged alone; several are also compared at matched training loss. A run that
    diverged makes both inconclusive (the message names the step)."""
    if not runs:
        raise ValueError("rank_checks needs at least one RankHistory")
    diverged = _diverged(runs)
    if diverged is not None:
        step = {_scale(s): h.diverged_step for s, h in runs.items()}
        return [CheckResult.judged(i, CLAIMS[i], Judgement.inconclusive(Reason.DIVERGED, diverged), settings=SETTINGS,
                                   metrics={"diverged_step_per_scale": Metric.info(step)}) for i in CLAIMS]
    summaries = _summaries(runs)
    if isinstance(summaries, str):
        return [CheckResult.judged(i, CLAIMS[i], Judgement.inconclusive(Reason.NOTHING_TO_TEST, summaries),
                                   settings=SETTINGS) for i in CLAIMS]
    return [low_rank_perturbation(summaries, runs), gradual_rank_increase(summaries, runs)]
