"""Check ``assumption-4.2``: non-degeneracy of stage A (THEORY.md §5), from Algorithm 1 and from simulation.

(a) u0_i != +-v0_i: margin min_i min(|u0_i + v0_i|, |u0_i - v0_i|) of the run's theta0 must exceed
    INIT_MARGIN_TOL. A margin m delays coordinate i's activation by about log(1/m) / (|G_i| log(1/alpha))
    (THEORY.md §3: log|a(0)| = log m - log(1/alpha)); at m = 1e-8 that is 18 / (|G_i| L), as large as the whole
    transition-time error of the ladder, so a smaller margin is reported as a failure.
(b) At every stage a unique argmin of Delta_k: margin (second smallest - smallest) / smallest must be at
    least MARGIN_TOL. Transition times converge only at rate O(1/log(1/alpha)) (THEORY.md §5); at the default
    ladder's smallest alpha (L = 589) the measured errors are a few 1e-3 relative, so two activations
    whose Delta differ by less than 1% cannot be told apart from a tie: they fail, naming both.
(c) A coordinate that left the support at stage k has G_i = g_i(beta^k) pointing b_i inward
    (b_i = +1 needs G_i > 0, b_i = -1 needs G_i < 0), by more than Algorithm 1's zero threshold.
Simulation: along ctx.ladder the first activations (b_i crossing +-1, ``Trajectory.crossing_tau``) must,
at the smallest alpha, come in Algorithm 1's order with its signs, one coordinate per transition, each gap
between consecutive activations at least SEPARATION_FRACTION of the gap Algorithm 1 predicts.
"""

from __future__ import annotations

import math

import torch

from .. import seeds
from ..config import format_alpha
from ..limit import symmetry
from ..figures import Figure, Mark, Series
from ..results import CheckResult, Metric, Verdict
from .registry import register

ID = "assumption-4.2"
CLAIM = ("Assumption 4.2 (non-degeneracy): u0 != +-v0; at every stage a unique coordinate activates next; "
         "a coordinate that left the support has its gradient pointing inward")
INIT_MARGIN_TOL = 1e-8
MARGIN_TOL = 1e-2
SEPARATION_FRACTION = 0.5


def init_margin(theta0: torch.Tensor, p: int) -> tuple[float, int]:
    """(a): min_i min(|u0_i + v0_i|, |u0_i - v0_i|) and the coordinate attaining it."""
    u0, v0 = theta0[:p], theta0[p:]
    m = torch.minimum((u0 + v0).abs(), (u0 - v0).abs())
    return float(m.min()), int(m.argmin())


def stage_margins(seq) -> list[dict]:
    """(b): per stage k >= 1, the chosen coordinate, the runner-up, both Deltas and the margin."""
    out = []
    for s in seq.stages[1:]:
        delta = seq.delta(s.k - 1)
        runner = seq.runner_up(s.k)
        out.append({"k": s.k, "coordinate": s.coordinate, "runner_up": runner,
                    "delta": float(delta[s.coordinate]),
                    "delta_runner_up": None if runner is None else float(delta[runner]), "margin": s.margin})
    return out


def leave_signs(seq) -> list[dict]:
    """(c): for every coordinate that left at stage k, b_i G_i (must be > gtol)."""
    return [{"k": s.k, "coordinate": i, "b": float(s.b[i]), "G": float(s.grad[i]),
             "inward": float(s.b[i] * s.grad[i])} for s in seq.stages for i in s.left]


def separation(traj, sample: int, predicted: list[tuple[float, int, int]], horizon: float, name) -> list[str]:
    """What keeps the simulated first activations of ``sample`` from matching ``predicted`` one by one:
    order, signs, missing or extra coordinates, gaps below SEPARATION_FRACTION of the predicted ones."""
    seen = [c for c in traj.first_crossings(sample) if c[0] <= horizon]
    issues = []
    got = [(i, s) for _, i, s in seen]
    want = [(i, s) for _, i, s in predicted]
    if got != want:
        fmt = lambda xs: ", ".join(f"{name(i)}{'+' if s > 0 else '-'}" for i, s in xs) or "none"  # noqa: E731
        issues.append(f"activation order {fmt(got)} differs from Algorithm 1's {fmt(want)}")
        return issues
    for j in range(1, len(seen)):
        gap, want_gap = seen[j][0] - seen[j - 1][0], predicted[j][0] - predicted[j - 1][0]
        pair = f"{name(seen[j - 1][1])} and {name(seen[j][1])} activate {gap:.3g} apart (Algorithm 1: {want_gap:.3g})"
        if gap < SEPARATION_FRACTION * want_gap:
            issues.append(f"{pair}: closer than {SEPARATION_FRACTION:g} of the predicted gap")
        elif want_gap <= MARGIN_TOL * predicted[j][0]:
            issues.append(f"{pair}: the predicted gap is below {MARGIN_TOL:g} of T = {predicted[j][0]:.3g}, which "
                          "transition times at this alpha cannot resolve (their error is O(T / log(1/alpha)))")
    return issues


@register(ID, CLAIM, order=20)
def check_assumption_42(ctx) -> CheckResult:
    model, seq = ctx.model, ctx.stages
    name = seq.name
    fails: list[str] = []
    undecided: list[str] = []

    m0, i0 = init_margin(ctx.theta0(1)[0], model.p)
    if not m0 > INIT_MARGIN_TOL:
        fails.append(f"(a) |u0 +- v0| = {m0:.3g} at {name(i0)} (threshold {INIT_MARGIN_TOL:g})")
    margins = stage_margins(seq)
    exact = {t.k: t for t in symmetry.ties(model, seq, MARGIN_TOL, ctx.config.seed + seeds.SYMMETRY)}
    for r in margins:
        if r["margin"] is None or not r["margin"] >= MARGIN_TOL:
            other = "no other candidate" if r["runner_up"] is None else (
                f"{name(r['runner_up'])} (Delta {r['delta_runner_up']:.6g})")
            tie = exact.get(r["k"])
            why = f": {symmetry.explain(tie.symmetry)}" if tie is not None and tie.symmetry is not None else ""
            fails.append(f"(b) stage {r['k']}: tie between {name(r['coordinate'])} (Delta {r['delta']:.6g}) and "
                         f"{other}, margin {r['margin']:.3g} < {MARGIN_TOL:g}{why}")
    leaves = leave_signs(seq)
    for r in leaves:
        if not r["inward"] > seq.gtol:
            why = ""
            if seq.stages[r["k"]].loss <= seq.gtol:
                why = (f" (the loss there is {seq.stages[r['k']].loss:.2g}: at a zero-loss minimum every gradient "
                       "vanishes, so a coordinate leaving at the last stage decays only algebraically, the "
                       "corner case 4.2c excludes)")
            fails.append(f"(c) stage {r['k']}: {name(r['coordinate'])} left with b = {r['b']:+.0f} but "
                         f"G = {r['G']:.3g} does not point inward{why}")
    if seq.status != "complete":
        undecided.append(f"Algorithm 1 stopped early ({seq.status}: {seq.message})")
    if not margins:
        undecided.append("Algorithm 1 has no stage: g(0) vanishes off every support, so nothing ever activates "
                         "(a zero teacher?) and there is no stage to be non-degenerate")

    Ls = [float(L) for L in ctx.log_inv_alphas]
    smallest = max(range(len(Ls)), key=lambda j: Ls[j])
    predicted = seq.first_activations()
    traj, sim = None, {}
    if m0 > 0:  # the reduced flow needs u0 != +-v0 (THEORY.md §3); without it there is nothing to simulate
        traj = ctx.ladder
        sim = {format_alpha(Ls[j]): separation(traj, j, predicted, ctx.horizon, name) for j in range(len(Ls))}
        if not traj.ok[smallest]:
            undecided.append(f"the flow at alpha={format_alpha(Ls[smallest])} did not finish: "
                             f"{traj.status[smallest].message}")
        else:
            fails += [f"simulation at alpha={format_alpha(Ls[smallest])}: {t}"
                      for t in sim[format_alpha(Ls[smallest])]]

    finite_margins = [r["margin"] for r in margins if r["margin"] is not None and math.isfinite(r["margin"])]
    min_margin = min(finite_margins) if finite_margins else (math.inf if margins else None)
    metrics = {
        "min_stage_margin": Metric.at_least(min_margin, MARGIN_TOL),
        "init_margin": Metric.at_least(m0, INIT_MARGIN_TOL),
        "stage_margins": Metric.info(margins),
        "leave_inward": Metric.info(leaves),
        "alphas": Metric.info([format_alpha(L) for L in Ls]),
        "simulation_issues": Metric.info(sim),
        "stages": Metric.info(len(seq.stages) - 1),
        "symmetries": Metric.info([{"k": t.k, "coordinates": [name(t.i), name(t.j)],
                                    "exchange": t.symmetry.description, "max_change": t.symmetry.max_change}
                                   for t in exact.values() if t.symmetry is not None]),
    }
    settings = {"leave_inward_min": seq.gtol, "separation_fraction": SEPARATION_FRACTION}
    evidence = {"figures": figures(seq, traj, predicted, Ls)}
    if fails:
        verdict, message = Verdict.FAIL, "; ".join(fails)
    elif undecided:
        verdict, message = Verdict.INCONCLUSIVE, "; ".join(undecided)
    else:
        verdict = Verdict.PASS
        message = (f"{len(margins)} stages, each with a unique next coordinate (smallest margin "
                   f"{min_margin:.3g} >= {MARGIN_TOL:g}); init margin {m0:.3g}; "
                   f"{len(leaves)} leave(s) with inward gradient; at alpha={format_alpha(Ls[smallest])} the "
                   "simulated activations come one at a time in Algorithm 1's order")
    return CheckResult(ID, CLAIM, verdict, message, metrics, "min_stage_margin", settings, evidence)


def figures(seq, traj, predicted, Ls) -> list[Figure]:
    """The argmin margins per stage and, when simulated, the activation times along the ladder."""
    margins = [s.margin for s in seq.stages[1:]]
    bars = Figure("argmin-margins", "Argmin margin of Delta_k per stage (Assumption 4.2b)", "bar", "stage k",
                  "(second - smallest) / smallest", yscale="log",
                  series=(Series("margin", range(1, len(margins) + 1),
                                 [m if m is not None and math.isfinite(m) else math.nan for m in margins]),),
                  hlines=(Mark(MARGIN_TOL, "tie threshold"),),
                  caption="Infinite margins (a single candidate) are not drawn.")
    if traj is None:
        return [bars]
    x = [1.0 / L for L in Ls]
    series = tuple(Series(f"{seq.name(i)} (T={T:.4g})", x, traj.crossing_tau[:, i], "o-") for T, i, _ in predicted[:12])
    times = Figure("activation-times", "Simulated activation times against 1/log(1/alpha)", "line",
                   "1 / log(1/alpha)", "tau at which |b_i| reaches 1", series=series,
                   hlines=tuple(Mark(T, f"T_{k + 1}") for k, (T, _, _) in enumerate(predicted[:12])),
                   caption="As alpha -> 0 (left) each activation time should reach Algorithm 1's T_k (lines), "
                           "one coordinate per stage.")
    return [bars, times]
