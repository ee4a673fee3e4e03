"""Check ``assumption-4.3``: the stationary points beta^k of Algorithm 1 are strict local minima (THEORY.md §5).

Assumption 4.3: on its support A_k (balanced weights keep signs, so near beta^k only the entries in A_k
move), Lb(beta) >= Lb(beta^k) + c |beta - beta^k|^2. We measure it three ways:

1. Analytic, at every stage: the Hessian of Lb restricted to A_k at beta^k; its smallest eigenvalue must
   exceed REL_EIG (1e-6) times the spectrum's scale max|lambda| (see ``_perturb.REL_EIG``). Reported:
   lambda_min, lambda_max, condition number per stage.
2. Existence: beta^k must be a *located* stationary point, |H_A^-1 g_A| <= NEWTON_TOL max(1, |beta^k|). A
   stage that is not (or a stage B that Algorithm 1 could not finish) is probed: the flow on the support
   from there runs for plain times t0 10^d, d = 0..5 (t0 = |beta| / |beta'| the local time scale, or the
   growth time of the new coordinate), all in one batch. Loss falling at every decade while |beta| grows
   by a steady amount per decade (|beta| ~ log t; the gradient only decays like 1/t) means no finite
   minimiser exists: the weights diverge (e.g. logistic loss on separable data, where the tiny gradient
   and Hessian can pass for a stationary point), and the check fails saying so.
3. Dynamic, the paper's Figure 9: on the reference run (smallest alpha) pick ``n_perturb`` random plateau
   epochs that last PLATEAU_ROOM x the perturbed run's time (no transition in that window; where none does,
   any plateau epochs, whose Hessians are judged but not the runs' return: inconclusive at best), perturb
   every non-negligible coordinate (``_perturb`` conventions), train on for
   ``perturb_epochs`` epochs (flow time perturb_epochs * lr) and measure the relative distance to the
   unperturbed point. Pass: it falls to RETURN_RATIO of its initial value. Fail: it stalls above that
   (the distance at the end is more than half of that at mid-time). Otherwise inconclusive (still
   returning: more epochs needed). The Hessian restricted to the run's own non-negligible set at each
   epoch is checked like (1): it catches flat valleys the run sits in even when Algorithm 1 (which breaks
   ties) does not visit them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from . import _perturb as P
from .. import seeds
from ..figures import Figure, Mark, Series
from ..limit import StageStatus, symmetry
from ..results import CheckResult, CommonReason, Judgement, Metric
from .registry import Hunt, register

ID = "assumption-4.3"
CLAIM = "Assumption 4.3: the stationary points beta^k are strict local minima of Lb on their supports"
PROBE_DECADES = (0, 1, 2, 3, 4, 5)  # existence probe: flow times t0 10^d (t0 the local time scale)
# Initial size of the activating coordinate in the existence probe: below Algorithm 1's stage-B eps
# (limit.incremental.STAGE_B_EPS = 1e-6) so the probe starts closer to the alpha -> 0 limit than stage B did.
PROBE_EPS = 1e-10
NEWTON_TOL = 1e-6  # beta^k is a located stationary point when |H_A^-1 g_A| <= NEWTON_TOL max(1, |beta^k|)
# Figure 9 perturbs only at plateau epochs that last PLATEAU_ROOM x the perturbed run's time: a run started
# just before the next transition takes part in it and cannot return (docs/SURVEYS.md: 3 of 16 diag-linear
# draws failed that way before this rule).
PLATEAU_ROOM = 2.0
LOG_GROWTH = 0.25  # diverging: |beta| grows in the last decade by >= this fraction of the first decade's


class Reason(str, Enum):
    """assumption-4.3's failure kinds (docs/THEORY.md §5.0)."""

    NOT_STRICT_MINIMUM = "not-strict-minimum"  # fail: a flat or negative direction of a restricted Hessian
    WEIGHTS_DIVERGE = "weights-diverge"  # fail: no finite minimiser (|beta| ~ log t, loss falling)
    PERTURBED_RUN_LEFT = "perturbed-run-left"  # fail: a Figure 9 run stalls away from its plateau point
    NOT_LOCATED = "not-located"  # inconclusive: no located stationary point, no divergence either
    NO_LASTING_PLATEAU = "no-lasting-plateau"  # inconclusive: no plateau outlasts the perturbed runs
    STILL_RETURNING = "still-returning"  # inconclusive: Figure 9 runs return, not yet to RETURN_RATIO
    NO_PLATEAU = P.NO_PLATEAU  # inconclusive: the reference run has no plateau to perturb
    SOLVER_FAILED = CommonReason.SOLVER_FAILED.value
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # Algorithm 1 found no stage with a support


@dataclass(frozen=True)
class StageHessians:
    """Part 1 at every stage with a support: ``rows`` (k, support, lambda_min, lambda_max, condition, the largest
    |g_A| and the Newton step |H_A^-1 g_A|), the spectra for the figure, the stages whose Hessian is not strict
    (with the direction of the smallest eigenvalue, :func:`_direction`), and the (label, beta, time scale) of
    strict stages whose stationary point is not located (probed by part 2)."""

    rows: list[dict]
    spectra: list[tuple[str, int, torch.Tensor]]
    not_strict: list[dict]
    unlocated: list[tuple[str, torch.Tensor, float]]
    stages_message: str


@dataclass(frozen=True)
class Existence:
    """Part 2: per probe (stage label), the flow's end at times t0 10^d: ``rows`` (times, loss, |beta|, its growth
    per decade, |g| t), and the runs that did not finish."""

    labels: list[str]
    rows: list[dict]
    failed: list[str]
    stages_message: str


@dataclass(frozen=True)
class Figure9:
    """Part 3 on the reference run: ``unavailable`` is the sampling's inconclusive judgement when there is
    nothing to perturb or the reference run failed (then nothing else is measured); ``failed``: perturbed runs
    that did not finish (then nothing after them is). Per run: its row (the metric), the distance at mid-time,
    and the direction of a non-strict Hessian on the run's support (None when strict); ``lasting``: whether the
    epochs outlast the runs (else only the Hessians are judged)."""

    config: object
    unavailable: Judgement | None = None
    alpha: str = ""
    perturb_time: float = 0.0
    lasting: bool = False
    failed: list[str] = ()
    runs: list[dict] = ()
    d_mid: list[float] = ()
    directions: list[str | None] = ()
    curves: list[tuple[str, torch.Tensor, torch.Tensor]] = ()
    reference: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def ratios(self) -> list[float]:
        return [r["return_ratio"] for r in self.runs]


@dataclass(frozen=True)
class Measurement:
    stages: StageHessians
    existence: Existence | None
    figure9: Figure9


def _support_names(names, support) -> str:
    return "{" + ", ".join(names[i] for i in support) + "}"


def _direction(ctx, vec: torch.Tensor, support: list[int], said: set[str]) -> str:
    """Which coordinates the eigenvector ``vec`` (over ``support``) moves most, and, when a symmetry of the
    loss exchanges the two largest (limit/symmetry.py), that symmetry: it makes the direction flat. A symmetry
    already in ``said`` is named without its explanation."""
    names = ctx.model.coordinate_names()
    top = sorted(support[int(t)] for t in torch.argsort(vec.abs(), descending=True)[:2])
    text = " along " + " and ".join(names[i] for i in top)
    sym = symmetry.find_symmetry(ctx.model, *top, seed=ctx.config.seed + seeds.SYMMETRY) if len(top) == 2 else None
    if sym is None:
        return text
    if sym.description in said:
        return f"{text} ({sym.description})"
    said.add(sym.description)
    return f"{text}: {symmetry.explain(sym)}; with both active only a combination of them is determined"


def measure_stages(ctx, names) -> StageHessians:
    """Part 1: restricted Hessians at every beta^k of Algorithm 1, and the Newton step H_A^-1 g_A that says
    whether beta^k is a located stationary point."""
    model = ctx.model
    spectra, rows, not_strict, unlocated, said = [], [], [], [], set()
    for s in ctx.stages.stages:
        if not s.support:
            continue
        A = list(s.support)
        eigs, vecs = P.restricted_hessian(model, s.beta, A)
        lo, hi = float(eigs[0]), float(eigs[-1])
        cond = hi / lo if lo > 0 else math.inf
        gA = s.grad[A].to(eigs.dtype)
        newton = float((vecs @ ((vecs.T @ gA) / eigs)).norm()) if lo > 0 else math.inf
        located = newton <= NEWTON_TOL * max(1.0, float(s.beta[A].norm()))
        rows.append({"k": s.k, "support": [names[i] for i in A], "lambda_min": lo, "lambda_max": hi,
                     "condition": cond, "grad_support": float(gA.abs().max()), "newton_step": newton})
        spectra.append((f"k={s.k}", s.k, eigs))
        if not located and P.is_strict(eigs):
            flow_speed = float((2 * s.beta[A].abs() * gA).norm())
            unlocated.append((f"stage {s.k}", s.beta, float(s.beta[A].norm()) / max(flow_speed, 1e-300)))
        elif not P.is_strict(eigs):
            not_strict.append({"k": s.k, "support": _support_names(names, A), "lambda_min": lo, "lambda_max": hi,
                               "direction": _direction(ctx, vecs[:, 0], A, said)})
    return StageHessians(rows, spectra, not_strict, unlocated, ctx.stages.message)


def _failed_stage_start(ctx, names) -> tuple[str, torch.Tensor, float]:
    """The start of the stage B that Algorithm 1 could not finish: the argmin of Delta (THEORY.md §4 step 1)
    switched on at PROBE_EPS; its time scale is the growth time log(1/eps) / (2 |G_i|)."""
    last = ctx.stages.stages[-1]
    i = int(torch.argmin(ctx.stages.delta(last.k)))
    start = last.beta.clone()
    start[i] = (1.0 if float(last.grad[i]) < 0 else -1.0) * PROBE_EPS
    return (f"stage {last.k + 1} (activating {names[i]})", start,
            math.log(1 / PROBE_EPS) / (2 * abs(float(last.grad[i]))))


def measure_existence(ctx, probes) -> Existence:
    """Part 2: the flow on the support from each (label, beta, time scale t0) for plain times t0 10^d,
    d in PROBE_DECADES, all in one batch."""
    model = ctx.model
    starts, times = [], []
    for _, beta, t0 in probes:
        for d in PROBE_DECADES:
            starts.append(beta.to(model.device)), times.append(t0 * 10.0**d)
    B = torch.stack(starts)
    u = B.abs().sqrt()
    _, traj = P.run_batch(model, u, B.sign() * u, times, ctx.config.solver, n_out=2, progress=ctx.progress)
    beta, loss = traj.beta[:, -1], traj.loss[:, -1]
    gnorm = model.grad_b(beta.to(model.device)).norm(dim=1).cpu()
    n, rows = len(PROBE_DECADES), []
    for k, (label, _, _) in enumerate(probes):
        sl = slice(k * n, (k + 1) * n)
        norm, t = beta[sl].norm(dim=1), torch.tensor(times[sl])
        rows.append({"stage": label, "times": t.tolist(), "loss": loss[sl].tolist(), "beta_norm": norm.tolist(),
                     "growth_per_decade": (norm[1:] - norm[:-1]).tolist(),
                     "grad_norm_times_t": (gnorm[sl] * t).tolist()})
    return Existence([p[0] for p in probes], rows, P.failed_runs(traj), ctx.stages.message)


def measure_figure9(ctx, names) -> Figure9:
    """Part 3: the dynamic protocol of Figure 9 on the reference run."""
    cfg, model = ctx.config, ctx.model
    T = P.perturb_time(cfg)
    lasting: list[int] = []
    final = ctx.stages.stages[-1].T if ctx.stages.status is StageStatus.COMPLETE else math.inf

    def epochs(ref):  # plateaus that outlast the perturbed runs; else every plateau, for the Hessians alone
        every = P.plateau_epochs(ref, cfg.negligible)
        lasting.extend(P.lasting_epochs(ref, every, cfg.negligible, PLATEAU_ROOM * T, final))
        return lasting or every

    sample, unavailable = P.sample_reference(
        ctx, "Figure 9", epochs, f"the run at alpha={{alpha}} has no plateau with a coordinate above "
        f"{cfg.negligible:g} (raise --horizon or lower --negligible)", seed_offset=seeds.FIGURE_9)
    if unavailable:
        return Figure9(cfg, unavailable)
    ref, pick, gen = sample
    U, V, points, masks = [], [], [], []
    for j in pick:
        u, v = ref.state(j)
        mask = P.non_negligible(ref.traj.beta[0, j], cfg.negligible)
        up, vp = P.perturb(u, v, mask, cfg.noise, gen)
        U.append(up), V.append(vp), points.append(ref.traj.beta[0, j]), masks.append(mask)
    _, traj = P.run_batch(model, torch.stack(U), torch.stack(V), [T] * len(pick), cfg.solver, progress=ctx.progress)
    if failed := P.failed_runs(traj):
        return Figure9(cfg, None, ref.alpha, T, bool(lasting), failed)
    dist = P.rel_distance(traj.beta, torch.stack(points)[:, None])  # [n, n_out]
    mid = dist.shape[1] // 2
    ratio = (dist[:, -1] / dist[:, 0]).tolist()
    runs, curves, directions, said = [], [], [], set()
    for n, j in enumerate(pick):
        tau = float(ref.traj.tau[j])
        support = torch.nonzero(masks[n]).squeeze(1).tolist()
        eigs, vecs = P.restricted_hessian(model, points[n], support)
        runs.append({"tau": tau, "support": [names[i] for i in support], "d0": float(dist[n, 0]),
                     "d_end": float(dist[n, -1]), "return_ratio": ratio[n], "lambda_min": float(eigs[0]),
                     "lambda_max": float(eigs[-1])})
        curves.append((f"tau={tau:.3g}", traj.tau * T, dist[n]))
        directions.append(None if P.is_strict(eigs) else _direction(ctx, vecs[:, 0], support, said))
    return Figure9(cfg, None, ref.alpha, T, bool(lasting), [], runs, [float(d) for d in dist[:, mid]], directions,
                   curves, (ref.traj.tau, ref.traj.loss[0]))


def measure(ctx) -> Measurement:
    """Parts 1, 2 (for the unlocated stages and a stage B Algorithm 1 could not finish) and 3."""
    names = ctx.model.coordinate_names()
    stages = measure_stages(ctx, names)
    probes = list(stages.unlocated)
    if ctx.stages.status is StageStatus.STAGE_B_FAILED:
        probes.append(_failed_stage_start(ctx, names))
    existence = measure_existence(ctx, probes) if probes else None
    return Measurement(stages, existence, measure_figure9(ctx, names))


def judge_stages(m: StageHessians) -> Judgement:
    """Part 1: fail when a restricted Hessian is not strict (P.is_strict); inconclusive without a stage."""
    if m.not_strict:
        return Judgement.failed(Reason.NOT_STRICT_MINIMUM, "; ".join(
            f"stage {r['k']}: smallest eigenvalue {r['lambda_min']:.3g} of the Hessian on A_{r['k']} = "
            f"{r['support']} (largest {r['lambda_max']:.3g}): "
            + ("a flat direction" if abs(r["lambda_min"]) <= P.REL_EIG * abs(r["lambda_max"]) else "a negative curvature")
            + r["direction"] + ", not a strict minimum" for r in m.not_strict))
    if not m.rows:
        return Judgement.inconclusive(Reason.NOTHING_TO_TEST,
                                      f"Algorithm 1 found no stage with a support ({m.stages_message})")
    return Judgement.passed(f"{len(m.rows)} stages: restricted Hessians positive definite, lambda_min = "
                            f"{min(r['lambda_min'] for r in m.rows):.3g}, largest condition number "
                            f"{max(r['condition'] for r in m.rows):.3g}"
                            + (f"; {len(m.unlocated)} not located (Newton step > {NEWTON_TOL:g} |beta|)"
                               if m.unlocated else ""))


def judge_existence(m: Existence) -> Judgement:
    """Part 2: loss falling at every decade while |beta| grows by a steady amount per decade (log t) is a
    divergence (fail); otherwise inconclusive (a failed probe, or no located point and no divergence)."""
    diverged = []
    for r in m.rows:
        lk, norm, growth, t, gt = r["loss"], r["beta_norm"], r["growth_per_decade"], r["times"], r["grad_norm_times_t"]
        falling = all(b < a for a, b in zip(lk, lk[1:]))
        if falling and all(g > 0 for g in growth) and growth[-1] >= LOG_GROWTH * growth[0]:
            diverged.append(
                f"{r['stage']}: no finite minimiser exists (weights diverge): from t = {t[0]:.3g} to "
                f"{t[-1]:.3g} the loss falls {lk[0]:.3g} -> {lk[-1]:.3g} while |beta| "
                f"grows {norm[0]:.3g} -> {norm[-1]:.3g}, {growth[-1]:.3g} in the last decade "
                f"(|beta| ~ log t), and |g| t stays {gt[-1]:.3g}: the gradient never vanishes at a finite point")
    if diverged:
        return Judgement.failed(Reason.WEIGHTS_DIVERGE, "; ".join(diverged))
    if m.failed:
        return Judgement.inconclusive(Reason.SOLVER_FAILED, f"the existence probe did not finish ({m.failed[0]})")
    return Judgement.inconclusive(Reason.NOT_LOCATED, "; ".join(m.labels) + ": no located stationary point "
                                  f"({m.stages_message}), but no log-growth divergence either")


def judge_figure9(m: Figure9) -> Judgement:
    """Part 3: fail when a run's support has a non-strict Hessian or a run stalls (the distance at the end more
    than half of that at mid-time) above RETURN_RATIO; inconclusive without a lasting plateau or while still
    returning; pass when every run returns to RETURN_RATIO."""
    if m.unavailable:
        return m.unavailable
    if m.failed:
        return Judgement.inconclusive(Reason.SOLVER_FAILED, f"Figure 9: a perturbed run did not finish ({m.failed[0]})")
    cfg, T = m.config, m.perturb_time
    bad, slow, flat = [], [], False
    for r, d_mid, direction in zip(m.runs, m.d_mid, m.directions):
        where = f"epoch tau={r['tau']:.3g} (non-negligible {{{', '.join(r['support'])}}})"
        if direction is not None:
            flat = True
            bad.append(f"{where}: smallest eigenvalue {r['lambda_min']:.3g} of the Hessian on the run's support "
                       f"(largest {r['lambda_max']:.3g}): a flat direction the run sits in" + direction)
        if m.lasting and r["return_ratio"] > P.RETURN_RATIO:
            stalled = r["d_end"] > 0.5 * d_mid
            (bad if stalled else slow).append(
                f"{where}: distance {r['d0']:.3g} -> {r['d_end']:.3g} (ratio {r['return_ratio']:.3g})"
                + (", stalled: the run does not return" if stalled else ", still returning"))
    if bad:
        return Judgement.failed(Reason.NOT_STRICT_MINIMUM if flat else Reason.PERTURBED_RUN_LEFT,
                                "Figure 9: " + "; ".join(bad))
    if not m.lasting:
        return Judgement.inconclusive(Reason.NO_LASTING_PLATEAU, (
            f"Figure 9: no plateau of the run at alpha={m.alpha} lasts {PLATEAU_ROOM:g} x the perturbed runs' "
            f"time {T:g} before the next transition, so their return was not judged (the Hessians on the runs' "
            "supports were: strict); raise --horizon, lower --perturb-epochs or the smallest alpha"))
    if slow:
        return Judgement.inconclusive(Reason.STILL_RETURNING, "Figure 9: " + "; ".join(slow)
                                      + f" after {cfg.perturb_epochs} epochs (raise --perturb-epochs)")
    return Judgement.passed(f"Figure 9 at alpha={m.alpha}: {len(m.runs)} perturbed plateau runs return, distance "
                            f"ratio <= {max(m.ratios):.3g} after {cfg.perturb_epochs} epochs")


def judge(m: Measurement) -> Judgement:
    """The three parts' judgements composed (Judgement.compose)."""
    parts = [judge_stages(m.stages)]
    if m.existence is not None:
        parts.append(judge_existence(m.existence))
    parts.append(judge_figure9(m.figure9))
    return Judgement.compose(parts)


def declare_stages(m: StageHessians) -> dict[str, Metric]:
    metrics = {"stages": Metric.info(m.rows)}
    if m.rows:
        metrics["min_rel_eig"] = Metric.at_least(
            min(r["lambda_min"] / max(abs(r["lambda_max"]), 1e-300) for r in m.rows), P.REL_EIG)
        metrics["lambda_min"] = Metric.higher(min(r["lambda_min"] for r in m.rows))
        metrics["max_condition"] = Metric.lower(max(r["condition"] for r in m.rows))
    return metrics


def declare(m: Measurement) -> dict[str, Metric]:
    """Part 1's spectra (min_rel_eig judged), part 2's probes, part 3's runs (max_return_ratio judged)."""
    metrics = declare_stages(m.stages)
    if m.existence is not None:
        metrics["existence"] = Metric.info(m.existence.rows)
    f9 = m.figure9
    if f9.runs:
        metrics["figure9"] = Metric.info({"alpha": f9.alpha, "perturb_time": f9.perturb_time, "runs": f9.runs})
        metrics["max_return_ratio"] = Metric.at_most(max(f9.ratios), P.RETURN_RATIO)
    return metrics


def figures(m: Measurement) -> list[Figure]:
    """Part 1's spectra, part 2's probes over decades of time, Figure 9's distances and perturbed epochs."""
    out = []
    if m.stages.spectra:
        out.append(P.spectra_figure(
            m.stages.spectra, "Hessian spectra on the supports (Assumption 4.3)",
            f"Eigenvalues of the Hessian of Lb restricted to A_k at beta^k, per stage; pass needs "
            f"lambda_min > {P.REL_EIG:g} max|lambda|."))
    for k, r in enumerate(m.existence.rows if m.existence is not None else []):
        t = r["times"]
        out.append(Figure(
            f"existence-{k}", f"Flow from {r['stage']} over decades of time", "line", "time t", "value",
            xscale="log", yscale="log",
            series=(Series("loss", t, r["loss"], "o-"), Series("|beta|", t, r["beta_norm"], "s-"),
                    Series("|g| t", t, r["grad_norm_times_t"], "^-")),
            caption="A finite minimiser makes |beta| settle; |beta| growing by a steady amount per decade (log t) "
                    "with falling loss means the weights diverge."))
    f9 = m.figure9
    if f9.runs:
        cfg, T = f9.config, f9.perturb_time
        out.append(P.distance_figure(
            "figure9-return", f"Figure 9: perturbed runs at plateau epochs (alpha={f9.alpha})", f9.curves,
            "|beta(t) - beta_unperturbed| / |beta_unperturbed|",
            f"Relative noise {cfg.noise:g} on every coordinate above {cfg.negligible:g}, then {cfg.perturb_epochs} "
            f"epochs (flow time {T:g}); pass needs the distance to fall below {P.RETURN_RATIO:g} of its start."))
        tau, loss = f9.reference
        out.append(Figure("figure9-epochs", f"Reference run (alpha={f9.alpha}) and the perturbed epochs", "line",
                          "tau = t / log(1/alpha)", "loss", yscale="log",
                          series=(Series("loss", P.subsample(tau), P.subsample(loss), "-"),),
                          vlines=tuple(Mark(r["tau"], "perturbed") for r in f9.runs)))
    return out


def hunt_hessians(ctx) -> CheckResult:
    """What a hunt measures (verifier.survey.hunt): part 1 alone, the restricted Hessians at Algorithm 1's
    stationary points (judged by :func:`judge_stages`; ``min_rel_eig`` below REL_EIG fails the whole check)."""
    stages = measure_stages(ctx, ctx.model.coordinate_names())
    metrics = declare_stages(stages)
    return CheckResult.judged(ID, CLAIM, judge_stages(stages), metrics=metrics,
                              key_metric="min_rel_eig" if "min_rel_eig" in metrics else None)


@register(ID, CLAIM, reasons=Reason, order=30, reads=("stages", "reference-run"), options=P.PROTOCOL_OPTIONS,
          hunt=Hunt("min_rel_eig", hunt_hessians))
def check_assumption_43(ctx) -> CheckResult:
    m = measure(ctx)
    metrics = declare(m)
    settings = {"negligible": ctx.config.negligible, "noise": ctx.config.noise,
                "perturb_time": P.perturb_time(ctx.config), "newton_tol": NEWTON_TOL, "log_growth": LOG_GROWTH}
    key = next((k for k in ("min_rel_eig", "max_return_ratio") if k in metrics), None)
    return CheckResult.judged(ID, CLAIM, judge(m), metrics=metrics, key_metric=key, settings=settings,
                              evidence={"figures": figures(m)})
