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
    (b_i = +1 needs G_i > 0, b_i = -1 needs G_i < 0), by more than Algorithm 1's zero threshold. A leaver
    whose G_i is outward fails as ``leaving-gradient-outward``, one whose G_i vanishes at a positive loss as
    ``leaving-gradient-zero``. The zero-loss last stage is its own kind, ``zero-loss-last-stage``: where the
    loss is zero (<= ZERO_LOSS_REL x Lb(0)) every gradient vanishes, so no G_i can point inward and 4.2(c)
    fails by its letter, while the flow still converges (THEORY.md §5.3). There the leaver does not decay
    exponentially like a leaver with G_i inward (beta_i' = -2 |beta_i| g_i, rate 2|G_i|) but algebraically:
    g_i ~ S beta_i with S the Schur complement of the Hessian on A_K + {i}, so beta_i ~ 1 / (2 S t) and
    g_i t -> 1/2. :func:`zero_loss_decay` measures that law on the model, and the check also reports
    theorem-4.5's verdict on the same run, the claim the assumption is there to protect.
Simulation: along ctx.ladder the first activations (b_i crossing +-1, ``Trajectory.crossing_tau``) must,
at the smallest alpha, come in Algorithm 1's order with its signs, one coordinate per transition
(``activation-order``). Each consecutive pair must be resolved by measurement: the transition-time errors of
the two activations along the ladder (the larger of the value at the smallest alpha and the fitted
O(1/log(1/alpha)) trend there) must sum to at most RESOLUTION_FRACTION of the predicted gap. A pair not yet
resolved extends the ladder (_ladder.py); at the cap it fails as ``activations-merge`` when the simulated gap
is below SEPARATION_FRACTION of the predicted one, and is inconclusive (``ladder-exhausted``) otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import torch

from .. import seeds
from ..config import SolverConfig, format_alpha
from ..dynamics.flow import ReducedFlow, integrate
from ..limit import StageStatus, symmetry
from ..figures import Figure, Mark, Series
from ..results import CheckResult, CommonReason, Judgement, Metric
from . import _ladder
from .registry import Hunt, ReportNote, register

ID = "assumption-4.2"
CLAIM = ("Assumption 4.2 (non-degeneracy): u0 != +-v0; at every stage a unique coordinate activates next; "
         "a coordinate that left the support has its gradient pointing inward")
INIT_MARGIN_TOL = 1e-8
MARGIN_TOL = 1e-2
SEPARATION_FRACTION = 0.5
# Two consecutive activations are resolved when their transition-time errors (epsilon: the larger of the error
# at the smallest alpha and the fitted C / L trend there) sum to at most this fraction of the predicted gap:
# then the simulated gap is within half the predicted gap of it (THEORY.md §5.3).
RESOLUTION_FRACTION = 0.5
# A stage's loss is zero when it is at most ZERO_LOSS_REL x Lb(0): Algorithm 1 locates stationary points to a
# gradient of GTOL_REL = 1e-8 of the loss scale, so a zero-loss minimum shows a loss ~ (1e-8)^2 = 1e-16 of
# Lb(0) or below (the toy draws: 1e-25 to 1e-31), a minimum with a positive loss one of order Lb(0).
ZERO_LOSS_REL = 1e-12
# zero_loss_decay: the leaver restarts at DECAY_START x max(1, |beta^K|) and the flow runs DECAY_SPAN x the
# algebraic time scale t0 = 1 / (2 S DECAY_START), where g_i t = t / (2 (t + t0)) is 1/2 to 0.1%.
DECAY_START = 1e-3
DECAY_SPAN = 1e3
DECAY_SOLVER = SolverConfig(rtol=1e-8, atol=1e-8)


class Reason(str, Enum):
    """assumption-4.2's failure kinds (docs/THEORY.md §5.0), in the order a result reports the first."""

    INIT_ON_DIAGONAL = "init-on-diagonal"  # fail (a): u0_i = +-v0_i up to INIT_MARGIN_TOL
    TIE = "tie"  # fail (b): two coordinates' Delta within MARGIN_TOL (or an exact, symmetric tie)
    LEAVING_GRADIENT_OUTWARD = "leaving-gradient-outward"  # fail (c): G_i points a leaver's b_i outward
    LEAVING_GRADIENT_ZERO = "leaving-gradient-zero"  # fail (c): G_i of a leaver vanishes at a loss > 0
    ZERO_LOSS_LAST_STAGE = "zero-loss-last-stage"  # fail (c): a coordinate leaves where the loss is zero
    ACTIVATION_ORDER = "activation-order"  # fail: the simulated activations differ from Algorithm 1's
    ACTIVATIONS_MERGE = "activations-merge"  # fail: two simulated activations closer than the rule allows
    LADDER_EXHAUSTED = "ladder-exhausted"  # inconclusive: the ladder's errors cannot resolve a predicted gap
    SOLVER_FAILED = CommonReason.SOLVER_FAILED.value  # inconclusive: the smallest-alpha run did not finish
    ALGORITHM1_STOPPED = CommonReason.ALGORITHM1_STOPPED.value  # inconclusive
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # inconclusive: Algorithm 1 has no stage


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


def leave_reason(seq, row: dict) -> "Reason | None":
    """(c) for one leaver (a row of :func:`leave_signs`): None when its gradient points inward, else which
    way it fails."""
    if row["inward"] > seq.gtol:
        return None
    stage = seq.stages[row["k"]]
    if row["k"] == len(seq.stages) - 1 and stage.loss <= ZERO_LOSS_REL * seq.stages[0].loss:
        return Reason.ZERO_LOSS_LAST_STAGE
    return Reason.LEAVING_GRADIENT_ZERO if abs(row["G"]) <= seq.gtol else Reason.LEAVING_GRADIENT_OUTWARD


def zero_loss_decay(model, seq, row: dict) -> dict:
    """How a coordinate that left at a zero-loss stage decays: from beta^K with beta_i = sign(b_i) x DECAY_START
    x max(1, |beta^K|), the balanced flow on A_K + {i} for DECAY_SPAN x t0, t0 = 1 / (2 S beta_i(0)), S =
    1 / (H^-1)_ii the Schur complement of the Hessian of Lb on A_K + {i} at beta^K. Returns the measured
    ``power`` p of |beta_i| ~ t^p over the last decade (-1 for the algebraic law; an exponential decay
    gives p << -1) and ``g_times_t`` = g_i(t) t at the end (1/2 for the algebraic law), with S, t_end."""
    stage = seq.stages[row["k"]]
    i, sign = row["coordinate"], 1.0 if row["b"] > 0 else -1.0
    idx = list(stage.support) + [i]
    beta = stage.beta.clone().to(model.device)
    beta[i] = sign * DECAY_START * max(1.0, float(beta.abs().max()))
    cols = torch.tensor(idx, device=model.device)
    H = model.hessian_columns(beta[None], cols)[0][cols].cpu()
    try:
        S = float(1.0 / torch.linalg.inv(H)[-1, -1])
    except RuntimeError:
        S = float(H[-1, -1])
    out = {"k": row["k"], "coordinate": i, "schur": S, "power": math.nan, "g_times_t": math.nan, "t_end": math.nan}
    if not S > 0:
        return out
    t_end = DECAY_SPAN / (2 * S * abs(float(beta[i])))
    u = beta.abs().sqrt()  # zero off A_K + {i}: balanced weights keep zeros zero
    flow = ReducedFlow.from_uv(model, u[None], (beta.sign() * u)[None], [1.0], DECAY_SOLVER.atol)
    traj = integrate(flow, t_end, DECAY_SOLVER, n_out=11)
    if not traj.ok[0]:
        return out
    end, before = traj.beta[0, -1].to(model.device), traj.beta[0, 1].to(model.device)  # t_end and t_end / 10
    g_end = float(model.grad_b(end)[i])
    out.update(t_end=t_end, g_times_t=sign * g_end * t_end,
               power=math.log(abs(float(end[i])) / abs(float(before[i]))) / math.log(10.0))
    return out


def theorem45_verdict(ctx) -> dict:
    """theorem-4.5 on the same context (its ladder and stages are shared): the verdict beside a zero-loss
    last stage, which the report shows next to 4.2's (looked up in the registry: 4.5's module imports this one)."""
    from .registry import REGISTRY

    r = REGISTRY["theorem-4.5"].func(ctx)
    return {"verdict": r.verdict.value, "reason": r.reason, "message": r.message}


def activation_errors(traj, predicted: list[tuple[float, int, int]], horizon: float) -> list[dict]:
    """Per predicted first activation (T_k, i_k, sign): its transition-time error e(L) = |tau_k(alpha) - T_k|
    on every finished rung where it happened with the predicted sign, the least-squares fit e = C / L (the
    O(1/log(1/alpha)) rate of THEORY.md §5.6) over those rungs, and ``epsilon`` = max(the error at the smallest
    alpha, the fitted trend C / L there): what the ladder says about how far that activation may still be
    from its limit (inf if it did not happen at the smallest alpha)."""
    L = [float(x) for x in traj.log_inv_alpha]
    j = max(range(len(L)), key=lambda k: L[k])
    rows = []
    for T, i, s in predicted:
        pts = []
        for b in range(len(L)):
            ct = float(traj.crossing_tau[b, i])
            if bool(traj.ok[b]) and int(traj.crossing_sign[b, i]) == s and math.isfinite(ct) and ct <= horizon:
                pts.append((L[b], abs(ct - T)))
        at = dict(pts).get(L[j], math.inf)
        C = sum(e / l for l, e in pts) / sum(1 / l**2 for l, _ in pts) if pts else math.inf
        rows.append({"coordinate": i, "T": T, "error_at_smallest_alpha": at, "trend_at_smallest_alpha": C / L[j],
                     "epsilon": max(at, C / L[j])})
    return rows


def resolution(traj, sample: int, predicted: list[tuple[float, int, int]], horizon: float,
               errors: list[dict]) -> list[dict]:
    """Per consecutive pair of predicted first activations: the predicted gap, the simulated gap at ``sample``
    and whether the ladder resolves the pair: epsilon_{k-1} + epsilon_k <= RESOLUTION_FRACTION x the predicted
    gap (then the simulated gap is within half the predicted one of it, so it cannot close). Assumes the
    simulated order matches."""
    seen = [c for c in traj.first_crossings(sample) if c[0] <= horizon]
    out = []
    for k in range(1, min(len(seen), len(predicted))):
        want = predicted[k][0] - predicted[k - 1][0]
        err = errors[k - 1]["epsilon"] + errors[k]["epsilon"]
        out.append({"first": predicted[k - 1][1], "second": predicted[k][1], "predicted_gap": want,
                    "simulated_gap": seen[k][0] - seen[k - 1][0], "error_sum": err,
                    "resolved": err <= RESOLUTION_FRACTION * want})
    return out


def order_issue(traj, sample: int, predicted: list[tuple[float, int, int]], horizon: float, name) -> str | None:
    """What keeps the simulated first activations of ``sample`` from matching ``predicted`` one by one in
    order and sign (missing or extra coordinates included); None if they match."""
    got = [(i, s) for t, i, s in traj.first_crossings(sample) if t <= horizon]
    want = [(i, s) for _, i, s in predicted]
    if got == want:
        return None
    fmt = lambda xs: ", ".join(f"{name(i)}{'+' if s > 0 else '-'}" for i, s in xs) or "none"  # noqa: E731
    return f"activation order {fmt(got)} differs from Algorithm 1's {fmt(want)}"


def describe_pair(r: dict, name) -> str:
    return (f"{name(r['first'])} and {name(r['second'])} activate {r['simulated_gap']:.3g} apart (Algorithm 1: "
            f"{r['predicted_gap']:.3g}; transition-time errors {r['error_sum']:.3g} together)")


@dataclass(frozen=True)
class Simulation:
    """The ladder (extended while a pair of activations is not yet resolved) and what it measured: the
    solver's message where the smallest-alpha run did not finish (else None), the order issue per alpha
    (:func:`order_issue`), the transition-time errors (:func:`activation_errors`) and the consecutive pairs
    at the smallest alpha (:func:`resolution`), and the rungs the ladder added."""

    traj: object
    log_inv_alphas: list[float]
    failed: str | None
    order_issues: dict[str, str | None]
    activation_errors: list[dict]
    pairs: list[dict]
    rungs_added: list

    @property
    def smallest(self) -> int:
        return max(range(len(self.log_inv_alphas)), key=lambda j: self.log_inv_alphas[j])


def simulate(ctx, predicted, name) -> Simulation:
    """Along ctx.ladder, extended (_ladder.py) while the smallest alpha's run has the predicted order and an
    unresolved pair."""
    horizon = ctx.horizon

    def smallest(t):
        return int(t.log_inv_alpha.argmax())

    def undecided(t):
        j = smallest(t)
        if not t.ok[j] or order_issue(t, j, predicted, horizon, name) is not None:
            return None
        open_pairs = [r for r in resolution(t, j, predicted, horizon, activation_errors(t, predicted, horizon))
                      if not r["resolved"]]
        return (f"{describe_pair(open_pairs[0], name)} were not resolved (errors above "
                f"{RESOLUTION_FRACTION:g} of the predicted gap)") if open_pairs else None

    traj, added = _ladder.extend(ctx, undecided)
    j = smallest(traj)
    errors = activation_errors(traj, predicted, horizon)
    order = {format_alpha(float(L)): order_issue(traj, b, predicted, horizon, name)
             for b, L in enumerate(traj.log_inv_alpha)}
    return Simulation(traj, [float(L) for L in traj.log_inv_alpha], None if traj.ok[j] else traj.status[j].message,
                      order, errors, resolution(traj, j, predicted, horizon, errors), added)


@dataclass(frozen=True)
class Measurement:
    """What (a), (b), (c) and the simulation measured: Algorithm 1's stages ``seq``, the init margin and its
    coordinate, the stage margins and exact ties by stage (limit/symmetry.py), each leaver (:func:`leave_signs`)
    with its failure kind (:func:`leave_reason`) and, at a zero-loss last stage, its decay law
    (:func:`zero_loss_decay`) and theorem-4.5's verdict on the same run; the simulation (None when u0 = +-v0
    exactly: the reduced flow needs u0 != +-v0, THEORY.md §3)."""

    seq: object
    init_margin: float
    init_coordinate: int
    margins: list[dict]
    ties: dict
    leaves: list[dict]
    leave_kinds: tuple
    decays: tuple
    predicted: list[tuple[float, int, int]]
    simulation: Simulation | None
    theorem45: dict | None
    run_log_inv_alphas: tuple[float, ...]

    @property
    def log_inv_alphas(self) -> list[float]:
        return self.simulation.log_inv_alphas if self.simulation is not None else [float(L) for L in self.run_log_inv_alphas]

    @property
    def min_margin(self) -> float | None:
        finite = [r["margin"] for r in self.margins if r["margin"] is not None and math.isfinite(r["margin"])]
        return min(finite) if finite else (math.inf if self.margins else None)


def measure(ctx) -> Measurement:
    model, seq = ctx.model, ctx.stages
    m0, i0 = init_margin(ctx.theta0(1)[0], model.p)
    ties = {t.k: t for t in symmetry.ties(model, seq, MARGIN_TOL, ctx.config.seed + seeds.SYMMETRY)}
    leaves = leave_signs(seq)
    kinds = tuple(leave_reason(seq, r) for r in leaves)
    decays = tuple(zero_loss_decay(model, seq, r) for r, k in zip(leaves, kinds) if k is Reason.ZERO_LOSS_LAST_STAGE)
    predicted = seq.first_activations()
    sim = simulate(ctx, predicted, seq.name) if m0 > 0 else None
    return Measurement(seq, m0, i0, stage_margins(seq), ties, leaves, kinds, decays, predicted, sim,
                       theorem45_verdict(ctx) if decays else None, tuple(ctx.log_inv_alphas))


def judge_simulation(sim: Simulation, name) -> list[Judgement]:
    """The simulation's failing or undecided parts: the smallest-alpha run did not finish (inconclusive), its
    activation order differs (fail), a pair unresolved at the cap merges (fail) or not (inconclusive)."""
    alpha = format_alpha(sim.log_inv_alphas[sim.smallest])
    if sim.failed is not None:
        return [Judgement.inconclusive(Reason.SOLVER_FAILED, f"the flow at alpha={alpha} did not finish: {sim.failed}")]
    at = f"simulation at alpha={alpha}"
    if sim.order_issues[alpha] is not None:
        return [Judgement.failed(Reason.ACTIVATION_ORDER, f"{at}: {sim.order_issues[alpha]}")]
    parts = []
    extended = f" ({_ladder.describe(sim.rungs_added)})" if sim.rungs_added else ""
    for r in sim.pairs:
        if r["resolved"]:
            continue
        if r["simulated_gap"] < SEPARATION_FRACTION * r["predicted_gap"]:
            parts.append(Judgement.failed(Reason.ACTIVATIONS_MERGE, f"{at}: {describe_pair(r, name)}: closer than "
                                          f"{SEPARATION_FRACTION:g} of the predicted gap at the ladder's cap{extended}"))
        else:
            parts.append(Judgement.inconclusive(
                Reason.LADDER_EXHAUSTED, f"{at}: {describe_pair(r, name)}: not resolved, the errors are above "
                f"{RESOLUTION_FRACTION:g} of the predicted gap at the ladder's cap{extended}"))
    return parts


def judge(m: Measurement) -> Judgement:
    """Every failing or undecided part of (a), (b), (c) and the simulation, in that order; the first gives the
    reason (Judgement.compose)."""
    seq = m.seq
    name = seq.name
    parts: list[Judgement] = []
    if not m.init_margin > INIT_MARGIN_TOL:
        parts.append(Judgement.failed(Reason.INIT_ON_DIAGONAL, f"(a) |u0 +- v0| = {m.init_margin:.3g} at "
                                      f"{name(m.init_coordinate)} (threshold {INIT_MARGIN_TOL:g})"))
    for r in m.margins:
        if r["margin"] is None or not r["margin"] >= MARGIN_TOL:
            other = "no other candidate" if r["runner_up"] is None else (
                f"{name(r['runner_up'])} (Delta {r['delta_runner_up']:.6g})")
            tie = m.ties.get(r["k"])
            why = f": {symmetry.explain(tie.symmetry)}" if tie is not None and tie.symmetry is not None else ""
            parts.append(Judgement.failed(Reason.TIE, f"(b) stage {r['k']}: tie between {name(r['coordinate'])} "
                                          f"(Delta {r['delta']:.6g}) and {other}, margin {r['margin']:.3g} < "
                                          f"{MARGIN_TOL:g}{why}"))
    decays = iter(m.decays)
    for r, kind in zip(m.leaves, m.leave_kinds):
        if kind is None:
            continue
        head = f"(c) stage {r['k']}: {name(r['coordinate'])} left with b = {r['b']:+.0f} but G = {r['G']:.3g}"
        if kind is Reason.ZERO_LOSS_LAST_STAGE:
            d = next(decays)
            parts.append(Judgement.failed(kind, (
                f"{head} cannot point inward: it leaves at the zero-loss last stage (loss "
                f"{seq.stages[r['k']].loss:.2g} <= {ZERO_LOSS_REL:g} x Lb(0)), where every gradient vanishes. "
                f"It decays algebraically, not exponentially: measured |beta_i| ~ t^{d['power']:.3f} and g_i t = "
                f"{d['g_times_t']:.4f} at t = {d['t_end']:.3g} (the 1/t law gives -1 and 1/2). Assumption 4.2(c) "
                "fails by its letter; whether the flow still follows Algorithm 1 is theorem-4.5's question")))
        else:
            parts.append(Judgement.failed(kind, f"{head} " + (
                f"vanishes (|G| <= the zero threshold {seq.gtol:.3g}) at a loss of {seq.stages[r['k']].loss:.3g}"
                if kind is Reason.LEAVING_GRADIENT_ZERO else "points outward") + ": it does not point inward"))
    if seq.status is not StageStatus.COMPLETE:
        parts.append(Judgement.inconclusive(Reason.ALGORITHM1_STOPPED,
                                            f"Algorithm 1 stopped early ({seq.status.value}: {seq.message})"))
    if not m.margins:
        parts.append(Judgement.inconclusive(Reason.NOTHING_TO_TEST, (
            "Algorithm 1 has no stage: g(0) vanishes off every support, so nothing ever activates (a zero "
            "teacher?) and there is no stage to be non-degenerate")))
    if m.simulation is not None:
        parts += judge_simulation(m.simulation, name)
    if parts:
        judgement = Judgement.compose(parts, "; ")
        if m.theorem45 is None:
            return judgement
        companion = m.theorem45
        return replace(judgement, message=judgement.message + (
            f". theorem-4.5 on this run: {companion['verdict'].upper()}"
            + (f" ({companion['reason']})" if companion["reason"] else "") + f": {companion['message']}"))
    added = m.simulation.rungs_added if m.simulation is not None else []
    return Judgement.passed(
        f"{len(m.margins)} stages, each with a unique next coordinate (smallest margin {m.min_margin:.3g} >= "
        f"{MARGIN_TOL:g}); init margin {m.init_margin:.3g}; {len(m.leaves)} leave(s) with inward gradient; at "
        f"alpha={format_alpha(max(m.log_inv_alphas))} the simulated activations come one at a time in Algorithm 1's "
        f"order, each consecutive pair resolved (transition-time errors <= {RESOLUTION_FRACTION:g} of the predicted "
        "gap)" + (f"; {_ladder.describe(added)}" if added else ""))


def declare(m: Measurement) -> dict[str, Metric]:
    """The margins (judged) and everything else measured (info)."""
    name, sim = m.seq.name, m.simulation
    metrics = {
        "min_stage_margin": Metric.at_least(m.min_margin, MARGIN_TOL),
        "init_margin": Metric.at_least(m.init_margin, INIT_MARGIN_TOL),
        "stage_margins": Metric.info(m.margins),
        "leave_inward": Metric.info(m.leaves),
        "alphas": Metric.info([format_alpha(L) for L in m.log_inv_alphas]),
        "simulation_issues": Metric.info(sim.order_issues if sim is not None else {}),
        "activation_errors": Metric.info(sim.activation_errors if sim is not None else []),
        "activation_pairs": Metric.info(sim.pairs if sim is not None else []),
        "rungs_added": Metric.info(sim.rungs_added if sim is not None else []),
        "stages": Metric.info(len(m.seq.stages) - 1),
        "symmetries": Metric.info([{"k": t.k, "coordinates": [name(t.i), name(t.j)],
                                    "exchange": t.symmetry.description, "max_change": t.symmetry.max_change}
                                   for t in m.ties.values() if t.symmetry is not None]),
    }
    if m.decays:
        metrics["zero_loss_decay"] = Metric.info(list(m.decays))
        metrics["theorem_45_on_this_run"] = Metric.info(m.theorem45)
    return metrics


def figures(m: Measurement) -> list[Figure]:
    """The argmin margins per stage and, when simulated, the activation times along the ladder."""
    seq, predicted = m.seq, m.predicted
    margins = [s.margin for s in seq.stages[1:]]
    bars = Figure("argmin-margins", "Argmin margin of Delta_k per stage (Assumption 4.2b)", "bar", "stage k",
                  "(second - smallest) / smallest", yscale="log",
                  series=(Series("margin", range(1, len(margins) + 1),
                                 [g if g is not None and math.isfinite(g) else math.nan for g in margins]),),
                  hlines=(Mark(MARGIN_TOL, "tie threshold"),),
                  caption="Infinite margins (a single candidate) are not drawn.")
    if m.simulation is None:
        return [bars]
    traj = m.simulation.traj
    x = [1.0 / L for L in m.log_inv_alphas]
    series = tuple(Series(f"{seq.name(i)} (T={T:.4g})", x, traj.crossing_tau[:, i], "o-") for T, i, _ in predicted[:12])
    times = Figure("activation-times", "Simulated activation times against 1/log(1/alpha)", "line",
                   "1 / log(1/alpha)", "tau at which |b_i| reaches 1", series=series,
                   hlines=tuple(Mark(T, f"T_{k + 1}") for k, (T, _, _) in enumerate(predicted[:12])),
                   caption="As alpha -> 0 (left) each activation time should reach Algorithm 1's T_k (lines), "
                           "one coordinate per stage.")
    return [bars, times]


def hunt_margins(ctx) -> CheckResult:
    """What a hunt measures (verifier.survey.hunt): (b) alone, the smallest argmin margin of Algorithm 1's stages,
    from Algorithm 1 only; a margin below MARGIN_TOL makes the whole check fail (``tie``)."""
    margins = [r["margin"] for r in stage_margins(ctx.stages) if r["margin"] is not None]
    value = float(min(margins, default=math.inf))
    text = f"smallest argmin margin of Algorithm 1's stages {value:.3g}"
    judgement = (Judgement.passed(f"{text} >= {MARGIN_TOL:g}") if value >= MARGIN_TOL else
                 Judgement.failed(Reason.TIE, f"{text} < {MARGIN_TOL:g} (a near tie)"))
    return CheckResult.judged(ID, CLAIM, judgement, metrics={"min_stage_margin": Metric.at_least(value, MARGIN_TOL)},
                              key_metric="min_stage_margin")


ZERO_LOSS_NOTE = ReportNote(
    "The zero-loss last stage (docs/THEORY.md §5.3): the teacher is realisable, the last stage reaches loss 0, and "
    "a coordinate that entered earlier is no longer needed and shrinks back to 0. At a zero-loss minimum every "
    "gradient vanishes, so its gradient cannot point inward and Assumption 4.2(c) fails as written. This is not a "
    "degenerate tie: the leaver decays like 1/t (its gradient times t tends to 1/2) instead of exponentially, so "
    "the flow approaches the limit only like 1/log(1/alpha). Whether the flow still follows Algorithm 1 is "
    "Theorem 4.5's question; its verdict on the same run:", companion="theorem-4.5",
    recorded_in="theorem_45_on_this_run")


@register(ID, CLAIM, reasons=Reason, order=20, reads=("stages", "ladder"), options=("alphas", "horizon", "rtol", "atol"),
          hunt=Hunt("min_stage_margin", hunt_margins), notes={Reason.ZERO_LOSS_LAST_STAGE.value: ZERO_LOSS_NOTE})
def check_assumption_42(ctx) -> CheckResult:
    m = measure(ctx)
    settings = {"leave_inward_min": m.seq.gtol, "separation_fraction": SEPARATION_FRACTION,
                "resolution_fraction": RESOLUTION_FRACTION, "zero_loss_rel": ZERO_LOSS_REL}
    return CheckResult.judged(ID, CLAIM, judge(m), metrics=declare(m), key_metric="min_stage_margin",
                              settings=settings, evidence={"figures": figures(m)})
