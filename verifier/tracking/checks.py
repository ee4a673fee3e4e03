"""The two tracking checks, judged from stored measurements (:class:`RankHistory`) of runs keyed by init scale.

``low-rank-perturbation`` (the paper's Figure 5): the learned change of every attention product, at the end
of training, is low-rank: the median over matrices of stable rank(change) / stable rank(initial product)
is at most ``RANK_RATIO_MAX`` and every matrix's stable rank(change) / r is at most ``RANK_FRACTION_MAX``.

``gradual-rank-increase`` (Figures 3 and 4) tests two bounds, not a rising curve: (i) no record adds much
rank at once: the largest increase of a change's stable rank between two judged records, as a fraction of
the initial product's stable rank (median over matrices) and of r (every matrix), stays below the same two
bounds; (ii) with several init scales, smaller init gives lower rank at matched training loss: for each pair
of consecutive scales, at every loss level both runs reach, the mean stable rank of the change is no larger
for the smaller. A stable rank that falls over training passes (i); the message reports its trend. The id
keeps the paper's name so stored results and gates stay comparable; its claim says what it tests.

Neither is judged on a run that diverged (non-finite weights or loss) or whose training loss rose
(``judge.LOSS_RISE_MAX``): both are then inconclusive, naming the run (docs/THEORY.md §6).

Thresholds and why: :mod:`verifier.tracking.judge`. Nothing here trains or touches a module. These checks are
not in the check registry (``verifier run``): they judge training runs, not a ``Context``.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Mapping, Sequence

import numpy as np

from ..results import CheckResult, CommonReason, Judgement, Metric
from .figures import (change_vs_initial, final_rank_heatmap, rank_vs_loss, shown_matrices, spectrum_over_training,
                      stable_rank_over_training)
from .history import RankHistory
from .judge import (LOSS_RISE_MAX, LOSS_WINDOW, MATCH_LEVELS, MIN_JUDGED_RANK, MIN_LOSS_DECREASE,
                    RANK_FRACTION_MAX, RANK_RATIO_MAX, SIZE_FLOOR, RankSummary, judged, loss_rose, matched_ranks,
                    summarize)

LOW_RANK = "low-rank-perturbation"
GRADUAL = "gradual-rank-increase"
CLAIMS = {
    LOW_RANK: "Section 5, Figure 5: at the end of training the learned change of each head's Wq Wk^T and Wv Wo^T "
              "has a low stable rank: at most half the initial product's (median head) and at most a fifth of the "
              "largest rank it could have (every head)",
    GRADUAL: "Section 5, Figures 3-4, as bounds: no record raises a change's stable rank by more than half the "
             "initial product's (median head) or a fifth of its largest possible rank (every head); with several "
             "init scales, the smaller scale's mean stable rank is no higher at every training loss both runs "
             "reach (it does not ask the stable rank to rise)",
}


class Reason(str, Enum):
    """The tracking checks' failure kinds (docs/THEORY.md §6)."""

    CHANGE_NOT_LOW_RANK = "change-not-low-rank"  # fail: the final change's stable rank exceeds a bound
    RANK_JUMP = "rank-jump"  # fail: one record raised the change's stable rank by more than a bound
    SMALLER_INIT_NOT_LOWER = "smaller-init-not-lower"  # fail: at matched loss the smaller init has the higher rank
    NO_COMMON_LOSS = "no-common-loss"  # inconclusive: two runs reach no common training-loss level
    NOT_MEASURABLE = "not-measurable"  # inconclusive: a bound's value is not finite
    DIVERGED = "diverged"  # inconclusive: a run's weights or loss became non-finite
    LOSS_ROSE = "loss-rose"  # inconclusive: a run's training loss rose instead of falling (finite or not)
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # inconclusive: every change too small to judge


SMALLER_INIT_MAX = 1.0  # mean stable rank at matched loss, smaller scale over the next larger: an ordering
SETTINGS = {"size_floor": SIZE_FLOOR, "min_judged_rank": MIN_JUDGED_RANK, "loss_window": LOSS_WINDOW,
            "match_levels": list(MATCH_LEVELS), "min_loss_decrease": MIN_LOSS_DECREASE,
            "loss_rise_max": LOSS_RISE_MAX, "rank_measure": "stable rank ||M||_F^2 / ||M||_2^2"}


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


def _per_scale_figures(runs: Mapping[float, RankHistory], summaries, heads) -> dict[float, list[int]]:
    """The matrices drawn per run (``heads`` validated against every run)."""
    return {s: shown_matrices(runs[s], heads) for s in summaries}


def low_rank_perturbation(summaries: dict[float, RankSummary], runs: Mapping[float, RankHistory],
                          shown: Mapping[float, list[int]]) -> CheckResult:
    """Judge the final change of every run. See the module docstring."""
    metrics, parts = _bounded(summaries, lambda m: m.final, "median_rank_ratio", "max_rank_fraction",
                              Reason.CHANGE_NOT_LOW_RANK)
    final = {_scale(s): _nan_stat(np.median, m.final) for s, m in summaries.items()}
    initial = _nan_stat(np.median, np.concatenate([m.initial for m in summaries.values()]))
    metrics.update(median_final_stable_rank_per_scale=Metric.info(final),
                   median_initial_stable_rank=Metric.info(initial))
    judgement = Judgement.compose([*parts, Judgement.passed("median stable rank of the final change " + ", ".join(
        f"scale {s}: {v:.2f}" for s, v in final.items()) + f" (initial products: {initial:.2f})")])
    figures = [f for s in summaries for f in (final_rank_heatmap(runs[s], _scale(s)),
                                              change_vs_initial(runs[s], _scale(s), shown[s]))]
    return CheckResult.judged(LOW_RANK, CLAIMS[LOW_RANK], judgement, metrics=metrics, key_metric="median_rank_ratio",
                              settings=SETTINGS, evidence={"figures": figures})


def _across_scales(runs: Mapping[float, RankHistory], scales: list[float], metrics: dict) -> tuple[Judgement, list]:
    """Part (ii): each pair of consecutive scales (largest first) compared at the losses both runs reach; and
    the loss levels compared (for the figure)."""
    if len(scales) < 2:
        return Judgement.passed("one init scale: the comparison across scales needs runs at two or more"), []
    ratios, table, levels = [], {}, []
    for larger, smaller in zip(scales, scales[1:]):
        matched = matched_ranks([runs[larger], runs[smaller]])
        pair = f"{_scale(smaller)} vs {_scale(larger)}"
        if not matched.levels.size:
            ratios.append(float("nan"))
            table[pair] = "no common loss decrease"
            continue
        ranks = matched.mean_stable_rank
        levels += matched.levels.tolist()
        ratios.append(float(np.max(ranks[1] / ranks[0])))
        table[pair] = {"losses": matched.levels, "stable_rank_smaller": ranks[1], "stable_rank_larger": ranks[0],
                       "step_smaller": matched.steps[1], "step_larger": matched.steps[0]}
    worst = float(np.max(ratios))  # NaN when any pair could not be matched
    metrics["max_rank_ratio_smaller_init"] = Metric.at_most(worst, SMALLER_INIT_MAX)
    metrics["matched_loss"] = Metric.info(table)
    if not np.isfinite(worst):
        return Judgement.inconclusive(Reason.NO_COMMON_LOSS, "a pair of runs reaches no common training loss level "
                                      "(losses not recorded, or a run reduced its loss by less than "
                                      f"{MIN_LOSS_DECREASE:.0%})"), levels
    return _at_most("max_rank_ratio_smaller_init", worst, SMALLER_INIT_MAX, Reason.SMALLER_INIT_NOT_LOWER), levels


def _trend(history: RankHistory) -> tuple[float, float]:
    """Median stable rank of the change at the first judged record and at the last one."""
    sr, mask = history.stable_rank(), judged(history)
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return float("nan"), float("nan")
    return _nan_stat(np.median, sr[rows[0]]), _nan_stat(np.median, sr[-1])


def gradual_rank_increase(summaries: dict[float, RankSummary], runs: Mapping[float, RankHistory],
                          shown: Mapping[float, list[int]]) -> CheckResult:
    """Judge how each run's change acquired its rank, and compare runs at matched loss."""
    metrics, parts = _bounded(summaries, lambda m: m.largest_step, "median_step_ratio", "max_step_fraction",
                              Reason.RANK_JUMP)
    largest = {_scale(s): _nan_stat(np.max, m.largest_step) for s, m in summaries.items()}
    trend = {_scale(s): _trend(runs[s]) for s in summaries}
    metrics["largest_step_per_scale"] = Metric.info(largest)
    metrics["median_stable_rank_first_judged_and_final_per_scale"] = Metric.info(
        {s: list(v) for s, v in trend.items()})
    across, levels = _across_scales(runs, list(summaries), metrics)
    judgement = Judgement.compose([
        *parts, across,
        Judgement.passed("largest stable-rank step of a change " + ", ".join(
            f"scale {s}: {v:.2f}" for s, v in largest.items()) + "; median stable rank from the first judged record "
            "to the last " + ", ".join(f"scale {s}: {a:.2f} -> {b:.2f}" for s, (a, b) in trend.items())),
    ])
    figures = [rank_vs_loss({_scale(s): runs[s] for s in summaries}, levels)]
    figures += [f for s in summaries for f in (*spectrum_over_training(runs[s], _scale(s), shown[s]),
                                               *stable_rank_over_training(runs[s], _scale(s)))]
    return CheckResult.judged(GRADUAL, CLAIMS[GRADUAL], judgement, metrics=metrics,
                              key_metric="max_rank_ratio_smaller_init" if "max_rank_ratio_smaller_init" in metrics
                              else "max_step_fraction", settings=SETTINGS, evidence={"figures": figures})


def _not_judged(runs: Mapping[float, RankHistory]) -> tuple[Reason, str, dict[str, Metric]] | None:
    """Why no run can be judged: one diverged (non-finite weights or loss, naming the step), or a run's
    training loss rose (naming its start and end); None when every run can be judged."""
    ordered = sorted(runs.items(), reverse=True)
    diverged = {s: h.diverged_step for s, h in ordered if h.diverged_step is not None}
    if diverged:
        where = ", ".join(f"init scale {_scale(s)} at step {step}" for s, step in diverged.items())
        return (Reason.DIVERGED, f"training diverged ({where}): non-finite weights or loss, so the rank of the "
                "learned change is not defined; lower the step size or the init scale",
                {"diverged_step_per_scale": Metric.info({_scale(s): h.diverged_step for s, h in runs.items()})})
    rose = {s: ends for s, h in ordered if (ends := loss_rose(h)) is not None}
    if rose:
        where = ", ".join(f"init scale {_scale(s)}: {a:.3g} -> {b:.3g}" for s, (a, b) in rose.items())
        return (Reason.LOSS_ROSE, f"the training loss rose ({where}: the first recorded loss and the smoothed "
                "loss at the end): the change is what a failing optimizer did to the weights, not what training "
                "learned; lower the step size",
                {"loss_start_end_per_scale": Metric.info({_scale(s): list(v) for s, v in rose.items()})})
    return None


def rank_checks(runs: Mapping[float, RankHistory], heads: Sequence[str] | None = None) -> list[CheckResult]:
    """Both checks on runs keyed by init scale (the factor each run's init was multiplied by; 1.0 is the
    default init). One run is judged alone; several are also compared at matched training loss. A run that
    diverged or whose training loss rose makes both inconclusive (the message names it). ``heads``: labels of
    the heads whose spectra are drawn (e.g. ``["blocks.1.attn.qk[h2]"]``; default: per kind of product, the
    head with the largest final change)."""
    if not runs:
        raise ValueError("rank_checks needs at least one RankHistory")
    if heads is not None:
        for history in runs.values():
            shown_matrices(history, heads)  # an unknown label is an InputError naming ``heads``, before judging
    stopped = _not_judged(runs)
    if stopped is not None:
        reason, message, metrics = stopped
        return [CheckResult.judged(i, CLAIMS[i], Judgement.inconclusive(reason, message), settings=SETTINGS,
                                   metrics=metrics) for i in CLAIMS]
    summaries = _summaries(runs)
    if isinstance(summaries, str):
        return [CheckResult.judged(i, CLAIMS[i], Judgement.inconclusive(Reason.NOTHING_TO_TEST, summaries),
                                   settings=SETTINGS) for i in CLAIMS]
    shown = _per_scale_figures(runs, summaries, heads)
    return [low_rank_perturbation(summaries, runs, shown), gradual_rank_increase(summaries, runs, shown)]
