"""Check ``theorem-4.5``: gradient flow from alpha * theta0 tracks Algorithm 1 as alpha -> 0 (THEORY.md §5).

Along the alpha ladder (ctx.ladder: one batched exact flow to ctx.horizon) and for each alpha we measure
* ``beta_error``: sup of |beta_alpha(tau) - beta^k|_inf over the plateau windows [T_k + d_k, T_{k+1} - d_k],
  d_k = WINDOW_MARGIN x (T_{k+1} - T_k) (the last window ends at the horizon);
* ``b_error``: sup over [0, horizon] of |b_alpha(tau) - b(tau)|_inf, b the piecewise-linear limit;
* ``transition_time_error``: max over stages of |tau_k(alpha) - T_k|, tau_k(alpha) from
  ``Trajectory.crossing_tau`` for a coordinate's first activation (b_i reaching +-1, first-order unbiased,
  flow.py) and, for a re-entry, from the sampled b by the same rule (:func:`reentry_time`). A
  predicted activation the run misses, or one the run makes that Algorithm 1 does not, counts as
  |horizon - T| (a lower bound of its error);
* ``nfev``: gradient evaluations of the run.
Each error series is fitted as C (1/log(1/alpha))^rate; the theorem gives rate 1 for b and the transition
times (THEORY.md §5) and faster for beta on windows. Verdict per series: pass when it is at most its tolerance at
the smallest alpha and does not grow along the ladder; fail when it stalls above the tolerance (no decrease
from the largest to the smallest alpha, or a rate below RATE_MIN both over the ladder and between its two
smallest alphas); when it shrinks but is still above the tolerance the ladder extends itself (_ladder.py:
alpha = exp(-2000), exp(-5000), ... up to exp(-1e5)), and the verdict is inconclusive only when the cap is
reached (``ladder-exhausted``) or a run did not reach the horizon (``solver-failed``).
Tolerances: transitions within TRANSITION_FRACTION of the shortest stage (so every stage is resolved and
its window is non-empty); b within B_TOL (b lives in [-1, 1]); beta within BETA_TOL x max(1, max|beta^k|).
Shape: :func:`measure` (the ladder refined by the error budget and extended: a :class:`Measurement` holding its
:class:`LadderErrors`) -> :func:`judge` -> :func:`declare` -> :func:`figures`; :func:`measure_errors` and
:func:`judge_errors` are the same two steps for one ladder, which the refinement and the extension call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np
import torch

from .. import seeds
from ..config import format_alpha
from ..dynamics.flow import CROSSING_MARGIN
from ..figures import Figure, Mark, Series
from ..limit import StageStatus, symmetry
from ..results import CheckResult, CommonReason, Judgement, Metric, Verdict
from . import _ladder
from ._ladder import fit_rate
from .assumption42 import MARGIN_TOL
from .registry import register

ID = "theorem-4.5"
CLAIM = ("Theorem 4.5: as alpha -> 0, beta on each plateau tends to Algorithm 1's beta^k, b to its "
         "piecewise-linear b, and transitions happen at its times T_k")
WINDOW_MARGIN = 0.1
TRANSITION_FRACTION = 0.25
B_TOL = 0.05
BETA_TOL = 1e-2
RATE_MIN = 0.5


class Reason(str, Enum):
    """theorem-4.5's failure kinds (docs/THEORY.md §5.0)."""

    ERRORS_NOT_SHRINKING = "errors-not-shrinking"  # fail: an error stalls above its tolerance along the ladder
    TIE = "tie"  # fail: an exact tie makes Algorithm 1 undefined after a stage (no limit path)
    LADDER_EXHAUSTED = "ladder-exhausted"  # inconclusive: still shrinking above tolerance at the ladder's cap
    SOLVER_FAILED = CommonReason.SOLVER_FAILED.value  # inconclusive: a run did not reach the horizon
    ALGORITHM1_STOPPED = CommonReason.ALGORITHM1_STOPPED.value  # inconclusive: Algorithm 1 stopped early
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # inconclusive: Algorithm 1 has no stage


def windows(seq, horizon: float) -> list[tuple[int, float, float]]:
    """(k, start, end) of each plateau window [T_k + d_k, T_{k+1} - d_k]; the last ends at the horizon."""
    T = [s.T for s in seq.stages] + [horizon]
    out = []
    for k in range(len(seq.stages)):
        if T[k] >= horizon:
            break
        d = WINDOW_MARGIN * (min(T[k + 1], horizon) - T[k])
        out.append((k, T[k] + d, min(T[k + 1], horizon) - (d if T[k + 1] < horizon else 0.0)))
    return out


def reentry_time(tau: torch.Tensor, b: torch.Tensor, sign: int, after: float, L: float) -> float:
    """When a coordinate that left at ``after`` re-enters: the first later tau where sign * b reaches
    1 - CROSSING_MARGIN / L on the sampled grid (linear interpolation), plus the CROSSING_MARGIN / (L slope)
    its linear path needs to reach 1 (the same unbiased rule as ``flow._crossings``). NaN if never."""
    level = 1.0 - CROSSING_MARGIN / L
    x = sign * b
    hit = ((x[1:] >= level) & (x[:-1] < level) & (tau[1:] > after)).nonzero()
    if not len(hit):
        return math.nan
    k = int(hit[0])
    slope = float((x[k + 1] - x[k]) / (tau[k + 1] - tau[k]))
    return float(tau[k]) + (level - float(x[k])) / slope + CROSSING_MARGIN / (L * slope)


def transitions(seq) -> list[tuple[float, int, int, float | None]]:
    """Every activation of Algorithm 1: (T_k, i_k, sign, None) for a first one, (..., T_leave) for a
    re-entry of a coordinate that left at stage time T_leave."""
    left_at: dict[int, float] = {}
    out = []
    for s in seq.stages[1:]:
        out.append((s.T, s.coordinate, s.sign, left_at.get(s.coordinate)))
        left_at.update({i: s.T for i in s.left})
    return out


@dataclass(frozen=True)
class LadderErrors:
    """What one ladder measures against the stages ``seq`` (module docstring): per alpha (in the ladder's
    order) the three error series, the per-stage transition errors and the solver's work and tolerances; the
    tolerance of each series (``tolerances``), Algorithm 1's status, and the runs that did not reach the
    horizon (``failed``: "alpha=...: message")."""

    log_inv_alphas: list[float]
    transition_time_error: list[float]
    b_error: list[float]
    beta_error: list[float]
    per_stage_error: list[list[float]]
    windows_measured: int
    nfev: list[int]
    njev: list[int]
    solver_rtol: list[float] | None
    solver_atol: list[float] | None
    stage_times: list[float]
    horizon: float
    tolerances: dict[str, float]
    algorithm1: tuple[StageStatus, str]
    failed: list[str]

    @property
    def alphas(self) -> list[str]:
        return [format_alpha(L) for L in self.log_inv_alphas]

    @property
    def series(self) -> dict[str, list[float]]:
        """The three judged error series by name, in the order they are judged."""
        return {key: getattr(self, key) for key in self.tolerances}

    @property
    def rates(self) -> dict[str, float | None]:
        """Each series' fitted rate against 1/log(1/alpha) (:func:`fit_rate`)."""
        return {key: fit_rate(self.log_inv_alphas, err) for key, err in self.series.items()}

    @property
    def smallest(self) -> int:
        """The index of the smallest alpha."""
        return int(np.argmax(self.log_inv_alphas))


def measure_errors(seq, traj, horizon: float) -> LadderErrors:
    """Errors of every run of ``traj`` against the stages ``seq`` (see the module docstring), with their
    tolerances: transitions within TRANSITION_FRACTION of the shortest stage, b within B_TOL, beta within
    BETA_TOL x max(1, max|beta^k|)."""
    tau = traj.tau
    inside = tau <= horizon * (1 + 1e-12)
    b_limit = seq.b_at(tau)
    events = transitions(seq)
    win = windows(seq, horizon)
    beta_error, b_error, transition_error, per_stage_error, measured = [], [], [], [], 0
    for j in range(traj.beta.shape[0]):
        berr = 0.0
        measured = 0
        for k, lo, hi in win:
            rows = (tau >= lo) & (tau <= hi) & inside
            if bool(rows.any()):
                measured += 1
                berr = max(berr, float((traj.beta[j, rows] - seq.stages[k].beta).abs().max()))
        beta_error.append(berr)
        b_error.append(float((traj.b[j, inside] - b_limit[inside]).abs().max()))
        crossing, sign = traj.crossing_tau[j], traj.crossing_sign[j]
        per_stage = []
        for T, i, s, after in events:
            if after is None:
                tc = float(crossing[i]) if int(sign[i]) == s else math.nan
            else:
                tc = reentry_time(tau, traj.b[j, :, i], s, after, float(traj.log_inv_alpha[j]))
            ok = math.isfinite(tc) and tc <= horizon
            per_stage.append(abs(tc - T) if ok else abs(horizon - T))
        known = {i for _, i, _, _ in events}
        extra = [abs(horizon - float(crossing[i])) for i in range(len(crossing))
                 if i not in known and math.isfinite(float(crossing[i])) and float(crossing[i]) <= horizon]
        per_stage_error.append(per_stage)
        transition_error.append(max(per_stage + extra, default=0.0))
    L = [float(x) for x in traj.log_inv_alpha]
    T = [s.T for s in seq.stages]
    gaps = [b - a for a, b in zip(T, T[1:])]
    tolerances = {
        "transition_time_error": TRANSITION_FRACTION * min(gaps) if gaps else math.inf,
        "b_error": B_TOL,
        "beta_error": BETA_TOL * max(1.0, max(float(s.beta.abs().max()) for s in seq.stages)),
    }
    return LadderErrors(
        L, transition_error, b_error, beta_error, per_stage_error, measured, [int(x) for x in traj.nfev],
        [int(x) for x in traj.njev], None if traj.rtol is None else traj.rtol.tolist(),
        None if traj.atol is None else traj.atol.tolist(), T[1:], horizon, tolerances, (seq.status, seq.message),
        [f"alpha={format_alpha(l)}: {s.message}" for l, s, ok in zip(L, traj.status, traj.ok) if not ok])


def unresolved(seq, traj, errors: dict[str, list[float]]) -> dict[int, float]:
    """The ladder's samples with a measured error (``errors``: the series by name, :attr:`LadderErrors.series`)
    below 1 / RESOLUTION times what the solver may have put there (THEORY.md §3, error budget), each with the
    solver error in S it may have instead (RESOLUTION times its smallest measured error, in S):
    Trajectory.solver_error() e in S is at most 2 e max(1, |beta^k|) in beta, e / L in b, and e / (L |G|) in a
    transition time (|G| the slowest activation's rate)."""
    from ..context import RESOLUTION

    e, L = traj.solver_error().tolist(), traj.log_inv_alpha.tolist()
    scale = max(1.0, max(float(s.beta.abs().max()) for s in seq.stages))
    rates = [abs(float(seq.stages[k - 1].grad[s.coordinate])) for k, s in enumerate(seq.stages) if k >= 1]
    rate = max(min(rates, default=1.0), 1e-12)
    per_unit = {"beta_error": lambda j: 2 * scale, "b_error": lambda j: 1 / L[j],  # error of the value per e
                "transition_time_error": lambda j: 1 / (L[j] * rate)}
    allowed = {j: RESOLUTION * min(errors[key][j] / unit(j) for key, unit in per_unit.items())
               for j in range(len(L))}
    return {j: a for j, a in allowed.items() if e[j] > a}


def trend_verdict(L: list[float], err: list[float], tol: float) -> Verdict:
    """One error series along the ladder. pass: smallest-alpha error <= tol and not above the largest-alpha
    one; fail: it stalls above tol; inconclusive: still above tol but shrinking, at rate >= RATE_MIN over the
    whole ladder or between its two smallest alphas (the beta error converges like e^{-c L} only once L is
    large, so a short ladder can show a slow start and a fast end: THEORY.md §5.6)."""
    rate = fit_rate(L, err)
    order = np.argsort(L)
    first, last = err[order[0]], err[order[-1]]
    if last <= tol and last <= max(first, tol):
        return Verdict.PASS
    tail = fit_rate([L[j] for j in order[-2:]], [err[j] for j in order[-2:]])
    shrinking = last < first and max(r for r in (rate, tail, -math.inf) if r is not None) >= RATE_MIN
    return Verdict.INCONCLUSIVE if shrinking else Verdict.FAIL


def judge_errors(e: LadderErrors) -> Judgement:
    """The ladder's errors against Algorithm 1: inconclusive when Algorithm 1 stopped early
    (``algorithm1-stopped``) or a run did not reach the horizon (``solver-failed``); per series
    (:func:`trend_verdict`) fail when it stalls (``errors-not-shrinking``), inconclusive while it still shrinks
    above its tolerance (``ladder-exhausted``); pass otherwise, with the errors at the smallest alpha and the
    fitted rates."""
    parts = []
    status, message = e.algorithm1
    if status is not StageStatus.COMPLETE:
        parts.append(Judgement.inconclusive(Reason.ALGORITHM1_STOPPED,
                                            f"Algorithm 1 stopped early ({status.value}: {message})"))
    if e.failed:
        parts.append(Judgement.inconclusive(Reason.SOLVER_FAILED,
                                            "the flow did not reach the horizon at " + "; ".join(e.failed)))
    for key, err in e.series.items():
        tol = e.tolerances[key]
        verdict = trend_verdict(e.log_inv_alphas, err, tol)
        if verdict is Verdict.PASS:
            continue
        trend = ", ".join(f"{x:.3g}" for _, x in sorted(zip(e.log_inv_alphas, err)))
        if verdict is Verdict.FAIL:
            parts.append(Judgement.failed(Reason.ERRORS_NOT_SHRINKING, f"{key} stalls above {tol:.3g} (largest to "
                                                                      f"smallest alpha: {trend})"))
        else:
            parts.append(Judgement.inconclusive(Reason.LADDER_EXHAUSTED, f"{key} shrinks but is still above "
                                                                        f"{tol:.3g} (largest to smallest alpha: {trend})"))
    if parts:
        return Judgement.compose(parts, "; ")
    j = e.smallest
    return Judgement.passed(
        f"at alpha={format_alpha(e.log_inv_alphas[j])}: transition-time error {e.transition_time_error[j]:.3g}, "
        f"b error {e.b_error[j]:.3g}, beta error {e.beta_error[j]:.3g} on {e.windows_measured} plateau windows; "
        "fitted rates " + ", ".join(f"{k} {r:.2f}" for k, r in e.rates.items() if r is not None))


@dataclass(frozen=True)
class Measurement:
    """Theorem 4.5 on a context: Algorithm 1's stages ``seq``; the first exact tie (None if none), after which
    only the stages before it (``measured``) are compared, up to the window margin before it; the ladder
    ``traj`` (refined by the error budget, extended while an error still shrinks above its tolerance), its
    errors, and the rungs it added. ``errors`` is None when Algorithm 1 has no stage (nothing to converge to)."""

    seq: object
    tie: object = None
    measured: object = None
    traj: object = None
    errors: LadderErrors | None = None
    rungs_added: list = ()


def exact_tie(ctx):
    """The first stage whose argmin is an exact tie (margin 0, or two coordinates a symmetry of the loss
    exchanges; limit/symmetry.py): after it Algorithm 1's next stage is an arbitrary choice. None if none."""
    candidates = symmetry.ties(ctx.model, ctx.stages, MARGIN_TOL, ctx.config.seed + seeds.SYMMETRY)
    return next((t for t in candidates if t.exact), None)


def measure(ctx) -> Measurement:
    """The errors along ``ctx.ladder``: samples the error budget cannot resolve are re-solved tighter
    (:func:`unresolved`, ``Context.refine_ladder``), then the ladder is extended (_ladder.py) while only an error
    still shrinking above its tolerance keeps the verdict open. With an exact tie the errors are measured up
    to the tie only."""
    seq = ctx.stages
    if len(seq.stages) < 2:  # errors of 0 against a limit that never moves would be a vacuous pass
        return Measurement(seq)
    tie = exact_tie(ctx)
    horizon = ctx.horizon
    if tie is not None:  # up to the tie, less the window margin of the last well-defined plateau
        T0, T1 = seq.stages[tie.k - 1].T, seq.stages[tie.k].T
        horizon = min(horizon, T1 - WINDOW_MARGIN * (T1 - T0))
    measured = seq if tie is None else replace(seq, stages=seq.stages[: tie.k])
    traj = ctx.ladder
    while ctx.refine_ladder(unresolved(measured, traj, measure_errors(measured, traj, horizon).series)):
        traj = ctx.ladder  # the error budget (THEORY.md §3)

    def undecided(t):  # only an error still shrinking above its tolerance asks for more rungs
        j = judge_errors(measure_errors(measured, t, horizon))
        return j.message if j.reason == Reason.LADDER_EXHAUSTED else None

    traj, added = _ladder.extend(ctx, undecided)
    return Measurement(seq, tie, measured, traj, measure_errors(measured, traj, horizon), added)


def judge(m: Measurement) -> Judgement:
    """:func:`judge_errors`, with the rungs the ladder added and, at its cap, that it reached it; inconclusive
    (``nothing-to-test``) without a stage; with an exact tie a fail (``tie``) saying that Algorithm 1 is undefined
    after it, and the errors before it."""
    if m.errors is None:
        return Judgement.inconclusive(Reason.NOTHING_TO_TEST, (
            "Algorithm 1 has no stage: g(0) vanishes off every support (a constant loss, or a zero teacher?), so "
            "there is no transition for the flow to converge to"))
    j = judge_errors(m.errors)
    message = j.message + (f"; {_ladder.describe(m.rungs_added)}" if m.rungs_added else "")
    if j.reason == Reason.LADDER_EXHAUSTED:
        message += f"; the ladder reached its cap alpha={format_alpha(_ladder.CAP_LOG_INV_ALPHA)}"
    if m.tie is None:
        return replace(j, message=message)
    tie, seq = m.tie, m.seq
    T = seq.stages[tie.k].T
    why = f": {symmetry.explain(tie.symmetry)}" if tie.symmetry is not None else ""
    return Judgement.failed(Reason.TIE, (
        f"Algorithm 1 is undefined after stage {tie.k - 1}: at T_{tie.k} = {T:.4g} {seq.name(tie.i)} and "
        f"{seq.name(tie.j)} tie exactly (argmin margin {tie.margin:.3g}){why}. The alpha -> 0 limit has no unique "
        "next stage, so there is no limit path to converge to (Assumption 4.2 fails and Theorem 4.5 does not "
        f"apply); before the tie (tau < {T:.4g}): {message}"))


def error_table(e: LadderErrors) -> str:
    """The errors by alpha as a plain-text table."""
    rows = [f"{'alpha':>10} {'transition':>11} {'b':>10} {'beta':>10} {'nfev':>6}"]
    for a, t, b, be, n in zip(e.alphas, e.transition_time_error, e.b_error, e.beta_error, e.nfev):
        rows.append(f"{a:>10} {t:>11.4g} {b:>10.4g} {be:>10.4g} {n:>6}")
    return "\n".join(rows)


def declare(m: Measurement) -> dict[str, Metric]:
    """The measured values as metrics: each error series along the ladder (gated entry by entry) and its
    value at the smallest alpha, which is what the tolerance judges (the trend decides the rest); the rungs
    added and, with a tie, the last stage measured (info)."""
    e = m.errors
    j = e.smallest
    metrics = {}
    for key, tol in e.tolerances.items():
        metrics[f"{key}_at_smallest_alpha"] = Metric.at_most(e.series[key][j], tol)
        metrics[key] = Metric.lower(e.series[key])
    metrics["nfev"] = Metric.lower(e.nfev)
    info = {"alphas": e.alphas, "log_inv_alphas": e.log_inv_alphas, "rate": e.rates, "njev": e.njev,
            "solver_rtol": e.solver_rtol, "solver_atol": e.solver_atol, "per_stage_transition_error": e.per_stage_error,
            "stage_times": e.stage_times, "windows_measured": e.windows_measured, "horizon": e.horizon,
            "rungs_added": m.rungs_added}
    metrics.update({key: Metric.info(value) for key, value in info.items()})
    if m.tie is not None:
        metrics["undefined_after_stage"] = Metric.info(m.tie.k - 1)
    return metrics


@register(ID, CLAIM, reasons=Reason, order=50, reads=("stages", "ladder"), options=("alphas", "horizon", "rtol", "atol"))
def check_theorem_45(ctx) -> CheckResult:
    """Theorem 4.5 along the ladder: measure -> judge -> declare -> figures."""
    m = measure(ctx)
    judgement = judge(m)
    if m.errors is None:  # nothing measured to declare
        return CheckResult.judged(ID, CLAIM, judgement)
    return CheckResult.judged(ID, CLAIM, judgement, metrics=declare(m),
                              key_metric="transition_time_error_at_smallest_alpha",
                              settings={"rate_min": RATE_MIN, "window_margin": WINDOW_MARGIN},
                              evidence={"figures": figures(m), "table": error_table(m.errors)})


def figures(m: Measurement) -> list[Figure]:
    """The loss against rescaled time (Fig. 2a), beta's entries with Algorithm 1's (Fig. 2b), the errors
    against log(1/alpha) with their fitted rates."""
    seq, traj, e = m.measured, m.traj, m.errors
    L, alphas, rates = e.log_inv_alphas, e.alphas, e.rates
    vlines = tuple(Mark(t, f"T_{k + 1}") for k, t in enumerate(e.stage_times))
    tau = traj.tau
    pick = sorted(range(len(L)), key=lambda j: L[j])
    pick = sorted({pick[0], pick[len(pick) // 2], pick[-1]})
    loss = Figure("loss-vs-tau", "Loss against rescaled time (paper Fig. 2a)", "line", "tau = t / log(1/alpha)",
                  "loss", yscale="log", vlines=vlines,
                  series=tuple(Series(f"alpha={alphas[j]}", tau, traj.loss[j], "-") for j in pick),
                  caption="Plateaus separated by fast drops at Algorithm 1's times T_k (vertical lines).")
    j = pick[-1]
    coords = sorted({i for s in seq.stages for i in s.support} | {s.coordinate for s in seq.stages[1:]})[:12]
    limit = torch.stack([seq.stages[int(k)].beta for k in seq.stage_at(traj.tau)])
    series = []
    for i in coords:
        series.append(Series(seq.name(i), tau, traj.beta[j, :, i], "-"))
        series.append(Series(f"{seq.name(i)} limit", tau, limit[:, i], "k:"))
    betas = Figure("beta-vs-tau", f"Entries of beta at alpha={alphas[j]} with Algorithm 1 (paper Fig. 2b)",
                   "line", "tau = t / log(1/alpha)", "beta_i", series=tuple(series), vlines=vlines,
                   caption="Solid: the flow; dotted: the piecewise-constant beta^k of Algorithm 1.")
    x = [float(l) for l in L]
    err_series = []
    for key, style in (("transition_time_error", "o-"), ("b_error", "s-"), ("beta_error", "^-")):
        err_series.append(Series(key, x, e.series[key], style))
        rate = rates.get(key)
        jj = int(np.argmax(x))
        # no fit line where the rate or C is not a float (errors of 0 on a constant loss fit any rate): the
        # verdict's message, not an OverflowError from this figure, is what the check reports
        if rate is not None and math.isfinite(rate) and rate * math.log(x[jj]) < 700:
            C = e.series[key][jj] * x[jj] ** rate
            err_series.append(Series(f"fit ~ L^-{rate:.2f}", x, [C * l ** -rate for l in x], "k--"))
    errors = Figure("errors-vs-alpha", "Theorem 4.5 errors against log(1/alpha)", "line", "log(1/alpha)", "error",
                    xscale="log", yscale="log", series=tuple(err_series),
                    caption="Dashed: least-squares fits C (1/log(1/alpha))^rate; the theorem gives rate 1 for b and "
                            "transition times.")
    return [loss, betas, errors]
