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
from enum import Enum

import torch

from . import _perturb as P
from .. import seeds
from ..figures import Figure, Mark, Series
from ..limit import StageStatus, symmetry
from ..results import CheckResult, CommonReason, Metric, Verdict, decide
from .registry import register

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


@register(ID, CLAIM, reasons=Reason, order=30)
def check(ctx) -> CheckResult:
    names = ctx.model.coordinate_names()
    parts, metrics, figures = [], {}, []

    verdict, msg, reason, stage_rows, probes = _stages(ctx, names, metrics)
    parts.append((verdict, msg, reason))
    if stage_rows:
        figures.append(P.spectra_figure(
            stage_rows, "Hessian spectra on the supports (Assumption 4.3)",
            f"Eigenvalues of the Hessian of Lb restricted to A_k at beta^k, per stage; pass needs "
            f"lambda_min > {P.REL_EIG:g} max|lambda|."))
    if ctx.stages.status is StageStatus.STAGE_B_FAILED:
        probes.append(_failed_stage_start(ctx, names))
    if probes:
        parts.append(_existence(ctx, probes, metrics, figures))

    parts.append(_figure9(ctx, names, metrics, figures))
    verdict, message, reason = decide(parts)
    settings = {"negligible": ctx.config.negligible, "noise": ctx.config.noise,
                "perturb_time": P.perturb_time(ctx.config), "newton_tol": NEWTON_TOL, "log_growth": LOG_GROWTH}
    key = next((k for k in ("min_rel_eig", "max_return_ratio") if k in metrics), None)
    return CheckResult(ID, CLAIM, verdict, message, metrics, key, settings, {"figures": figures}, reason=reason)


def _support_names(names, support) -> str:
    return "{" + ", ".join(names[i] for i in support) + "}"


def _stages(ctx, names, metrics) -> tuple[Verdict, str, Reason | None, list, list]:
    """Part 1: restricted Hessians at every beta^k of Algorithm 1, and the Newton step H_A^-1 g_A that says
    whether beta^k is a located stationary point. Returns the verdict, message, reason, spectra rows, and the
    (stage label, start beta, time scale) of stages whose stationary point is not located."""
    model = ctx.model
    rows, per_stage, bad, unlocated, said = [], [], [], [], set()
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
        per_stage.append({"k": s.k, "support": [names[i] for i in A], "lambda_min": lo, "lambda_max": hi,
                          "condition": cond, "grad_support": float(gA.abs().max()), "newton_step": newton})
        rows.append((f"k={s.k}", s.k, eigs))
        if not located and P.is_strict(eigs):
            flow_speed = float((2 * s.beta[A].abs() * gA).norm())
            unlocated.append((f"stage {s.k}", s.beta, float(s.beta[A].norm()) / max(flow_speed, 1e-300)))
        elif not P.is_strict(eigs):
            bad.append(f"stage {s.k}: smallest eigenvalue {lo:.3g} of the Hessian on A_{s.k} = "
                       f"{_support_names(names, A)} (largest {hi:.3g}): "
                       + ("a flat direction" if abs(lo) <= P.REL_EIG * abs(hi) else "a negative curvature")
                       + _direction(ctx, vecs[:, 0], A, said) + ", not a strict minimum")
    metrics["stages"] = Metric.info(per_stage)
    if per_stage:
        metrics["min_rel_eig"] = Metric.at_least(
            min(r["lambda_min"] / max(abs(r["lambda_max"]), 1e-300) for r in per_stage), P.REL_EIG)
        metrics["lambda_min"] = Metric.higher(min(r["lambda_min"] for r in per_stage))
        metrics["max_condition"] = Metric.lower(max(r["condition"] for r in per_stage))
    if bad:
        return Verdict.FAIL, "; ".join(bad), Reason.NOT_STRICT_MINIMUM, rows, unlocated
    if not per_stage:
        return (Verdict.INCONCLUSIVE, f"Algorithm 1 found no stage with a support ({ctx.stages.message})",
                Reason.NOTHING_TO_TEST, rows, unlocated)
    return Verdict.PASS, (f"{len(per_stage)} stages: restricted Hessians positive definite, lambda_min = "
                          f"{metrics['lambda_min'].value:.3g}, largest condition number "
                          f"{metrics['max_condition'].value:.3g}"
                          + (f"; {len(unlocated)} not located (Newton step > {NEWTON_TOL:g} |beta|)" if unlocated else "")
                          ), None, rows, unlocated


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


def _failed_stage_start(ctx, names) -> tuple[str, torch.Tensor, float]:
    """The start of the stage B that Algorithm 1 could not finish: the argmin of Delta (THEORY.md §4 step 1)
    switched on at PROBE_EPS; its time scale is the growth time log(1/eps) / (2 |G_i|)."""
    last = ctx.stages.stages[-1]
    i = int(torch.argmin(ctx.stages.delta(last.k)))
    start = last.beta.clone()
    start[i] = (1.0 if float(last.grad[i]) < 0 else -1.0) * PROBE_EPS
    return (f"stage {last.k + 1} (activating {names[i]})", start,
            math.log(1 / PROBE_EPS) / (2 * abs(float(last.grad[i]))))


def _existence(ctx, probes, metrics, figures) -> tuple[Verdict, str, Reason]:
    """Part 2: the flow on the support from each (label, beta, time scale t0) for plain times t0 10^d,
    d in PROBE_DECADES, all in one batch: does beta settle (a finite minimiser) or grow like log t?"""
    model = ctx.model
    starts, times, labels = [], [], []
    for label, beta, t0 in probes:
        for d in PROBE_DECADES:
            starts.append(beta.to(model.device)), times.append(t0 * 10.0**d), labels.append(label)
    B = torch.stack(starts)
    u = B.abs().sqrt()
    _, traj = P.run_batch(model, u, B.sign() * u, times, ctx.config.solver, n_out=2, progress=ctx.progress)
    failed = P.failed_runs(traj)
    beta, loss = traj.beta[:, -1], traj.loss[:, -1]
    gnorm = model.grad_b(beta.to(model.device)).norm(dim=1).cpu()
    n, out, diverged = len(PROBE_DECADES), [], []
    for k, (label, _, t0) in enumerate(probes):
        sl = slice(k * n, (k + 1) * n)
        norm, lk, t = beta[sl].norm(dim=1), loss[sl], torch.tensor(times[sl])
        growth = (norm[1:] - norm[:-1]).tolist()
        out.append({"stage": label, "times": t.tolist(), "loss": lk.tolist(), "beta_norm": norm.tolist(),
                    "growth_per_decade": growth, "grad_norm_times_t": (gnorm[sl] * t).tolist()})
        figures.append(Figure(
            f"existence-{k}", f"Flow from {label} over decades of time", "line", "time t", "value",
            xscale="log", yscale="log",
            series=(Series("loss", t, lk, "o-"), Series("|beta|", t, norm, "s-"),
                    Series("|g| t", t, out[-1]["grad_norm_times_t"], "^-")),
            caption="A finite minimiser makes |beta| settle; |beta| growing by a steady amount per decade (log t) "
                    "with falling loss means the weights diverge."))
        falling = bool((lk[1:] < lk[:-1]).all())
        if falling and all(g > 0 for g in growth) and growth[-1] >= LOG_GROWTH * growth[0]:
            diverged.append(
                f"{label}: no finite minimiser exists (weights diverge): from t = {float(t[0]):.3g} to "
                f"{float(t[-1]):.3g} the loss falls {float(lk[0]):.3g} -> {float(lk[-1]):.3g} while |beta| "
                f"grows {float(norm[0]):.3g} -> {float(norm[-1]):.3g}, {growth[-1]:.3g} in the last decade "
                f"(|beta| ~ log t), and |g| t stays {float(gnorm[sl][-1] * t[-1]):.3g}: the gradient never "
                f"vanishes at a finite point")
    metrics["existence"] = Metric.info(out)
    if diverged:
        return Verdict.FAIL, "; ".join(diverged), Reason.WEIGHTS_DIVERGE
    if failed:
        return Verdict.INCONCLUSIVE, f"the existence probe did not finish ({failed[0]})", Reason.SOLVER_FAILED
    return Verdict.INCONCLUSIVE, ("; ".join(p[0] for p in probes) + ": no located stationary point "
                                  f"({ctx.stages.message}), but no log-growth divergence either"), Reason.NOT_LOCATED


def _figure9(ctx, names, metrics, figures) -> tuple[Verdict, str, Reason | None]:
    """Part 3: the dynamic protocol of Figure 9 on the reference run."""
    cfg, model = ctx.config, ctx.model
    T = P.perturb_time(cfg)
    lasting: list[int] = []
    final = ctx.stages.stages[-1].T if ctx.stages.status is StageStatus.COMPLETE else math.inf

    def epochs(ref):  # plateaus that outlast the perturbed runs; else every plateau, for the Hessians alone
        every = P.plateau_epochs(ref, cfg.negligible)
        lasting.extend(P.lasting_epochs(ref, every, cfg.negligible, PLATEAU_ROOM * T, final))
        return lasting or every

    sample, reason = P.sample_reference(
        ctx, "Figure 9", epochs, f"the run at alpha={{alpha}} has no plateau with a coordinate above "
        f"{cfg.negligible:g} (raise --horizon or lower --negligible)", seed_offset=seeds.FIGURE_9)
    if reason:
        return reason
    ref, pick, gen = sample
    U, V, points, masks = [], [], [], []
    for j in pick:
        u, v = ref.state(j)
        mask = P.non_negligible(ref.traj.beta[0, j], cfg.negligible)
        up, vp = P.perturb(u, v, mask, cfg.noise, gen)
        U.append(up), V.append(vp), points.append(ref.traj.beta[0, j]), masks.append(mask)
    _, traj = P.run_batch(model, torch.stack(U), torch.stack(V), [T] * len(pick), cfg.solver, progress=ctx.progress)
    if failed := P.failed_runs(traj):
        return Verdict.INCONCLUSIVE, f"Figure 9: a perturbed run did not finish ({failed[0]})", Reason.SOLVER_FAILED
    dist = P.rel_distance(traj.beta, torch.stack(points)[:, None])  # [n, n_out]
    mid = dist.shape[1] // 2
    ratio = (dist[:, -1] / dist[:, 0]).tolist()
    runs, bad, slow, series, said, flat = [], [], [], [], set(), False
    for n, j in enumerate(pick):
        tau = float(ref.traj.tau[j])
        support = torch.nonzero(masks[n]).squeeze(1).tolist()
        eigs, vecs = P.restricted_hessian(model, points[n], support)
        runs.append({"tau": tau, "support": [names[i] for i in support], "d0": float(dist[n, 0]),
                     "d_end": float(dist[n, -1]), "return_ratio": ratio[n], "lambda_min": float(eigs[0]),
                     "lambda_max": float(eigs[-1])})
        series.append((f"tau={tau:.3g}", traj.tau * T, dist[n]))
        where = f"epoch tau={tau:.3g} (non-negligible {_support_names(names, support)})"
        if not P.is_strict(eigs):
            flat = True
            bad.append(f"{where}: smallest eigenvalue {float(eigs[0]):.3g} of the Hessian on the run's support "
                       f"(largest {float(eigs[-1]):.3g}): a flat direction the run sits in"
                       + _direction(ctx, vecs[:, 0], support, said))
        if lasting and ratio[n] > P.RETURN_RATIO:
            stalled = float(dist[n, -1]) > 0.5 * float(dist[n, mid])
            (bad if stalled else slow).append(
                f"{where}: distance {float(dist[n, 0]):.3g} -> {float(dist[n, -1]):.3g} (ratio {ratio[n]:.3g})"
                + (", stalled: the run does not return" if stalled else ", still returning"))
    metrics["figure9"] = Metric.info({"alpha": ref.alpha, "perturb_time": T, "runs": runs})
    metrics["max_return_ratio"] = Metric.at_most(max(ratio), P.RETURN_RATIO)
    figures.append(P.distance_figure(
        "figure9-return", f"Figure 9: perturbed runs at plateau epochs (alpha={ref.alpha})", series,
        "|beta(t) - beta_unperturbed| / |beta_unperturbed|",
        f"Relative noise {cfg.noise:g} on every coordinate above {cfg.negligible:g}, then {cfg.perturb_epochs} "
        f"epochs (flow time {T:g}); pass needs the distance to fall below {P.RETURN_RATIO:g} of its start."))
    figures.append(Figure("figure9-epochs", f"Reference run (alpha={ref.alpha}) and the perturbed epochs", "line",
                          "tau = t / log(1/alpha)", "loss", yscale="log",
                          series=(Series("loss", P.subsample(ref.traj.tau), P.subsample(ref.traj.loss[0]), "-"),),
                          vlines=tuple(Mark(r["tau"], "perturbed") for r in runs)))
    if bad:
        return (Verdict.FAIL, "Figure 9: " + "; ".join(bad),
                Reason.NOT_STRICT_MINIMUM if flat else Reason.PERTURBED_RUN_LEFT)
    if not lasting:
        return (Verdict.INCONCLUSIVE, (
            f"Figure 9: no plateau of the run at alpha={ref.alpha} lasts {PLATEAU_ROOM:g} x the perturbed runs' "
            f"time {T:g} before the next transition, so their return was not judged (the Hessians on the runs' "
            "supports were: strict); raise --horizon, lower --perturb-epochs or the smallest alpha"),
            Reason.NO_LASTING_PLATEAU)
    if slow:
        return Verdict.INCONCLUSIVE, ("Figure 9: " + "; ".join(slow) + f" after {cfg.perturb_epochs} epochs "
                                      "(raise --perturb-epochs)"), Reason.STILL_RETURNING
    return Verdict.PASS, (f"Figure 9 at alpha={ref.alpha}: {len(pick)} perturbed plateau runs return, distance "
                          f"ratio <= {max(ratio):.3g} after {cfg.perturb_epochs} epochs"), None
