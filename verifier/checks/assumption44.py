"""Check ``assumption-4.4``: stage B is robust to noise (THEORY.md §5), at the limit level and by Figure 10.

Assumption 4.4: the flow from beta^k with the new coordinate i_k switched on at a small size, and any
small perturbation supported on A_k + {i_k}, converges to the same beta^{k+1}.

1. Limit level: for every stage k >= 1, stage B from beta^{k-1} with beta_{i_k} = sign * eps, once with
   eps = EPS[0] and relative noise ``config.noise`` on A_{k-1} + {i_k} (``_perturb`` conventions) and once
   unperturbed with eps = EPS[1]; Algorithm 1's own beta^k (its eps = STAGE_B_EPS = 1e-6) is the third eps. Every other
   coordinate stays exactly 0. Each run lasts 2 log(1/eps) / (2 |G_{i_k}|) (twice the growth time of
   balanced weights, beta_i' = -2 |beta_i| g_i) plus the time to settle at beta^k (``_settle_time``:
   transients e^-20 for exponential modes, an algebraic bound for a coordinate leaving with zero
   gradient): all stages in ONE batch.
   Pass: every endpoint within SPREAD_TOL (relative) of Algorithm 1's beta^k. An endpoint elsewhere with a
   vanishing support gradient fails; one that has not converged is inconclusive.
2. Figure 10: on the reference run (smallest alpha), the epochs where a coordinate has just become
   non-negligible (|beta_i| crosses ``config.negligible``), located to 1/ONSET_RES of a grid interval by
   one batched re-run of each interval; ``n_perturb`` of them chosen at random. There every non-negligible
   coordinate is perturbed and the perturbed runs train on, in ONE batch, to the first plateau of the
   reference run at least ``perturb_epochs`` epochs (one epoch = flow time lr) later; the unperturbed run
   from the onset state is the reference run itself. Pass: the endpoint's relative distance from the
   reference there is at most RETURN_RATIO of the distance the perturbation made.
"""

from __future__ import annotations

import math
from enum import Enum

import torch

from . import _perturb as P
from .. import seeds
from ..figures import Figure, Mark, Series
from ..limit.incremental import STAGE_B_EPS
from ..results import CheckResult, CommonReason, Gate, Metric, Verdict, decide
from .registry import register

ID = "assumption-4.4"
CLAIM = "Assumption 4.4: stage B ends at the same beta^{k+1} from any small eps and small perturbations"
EPS = (1e-4, 1e-8)
SPREAD_TOL = 1e-4  # endpoints within this relative distance of beta^k; distinct stationary points are O(1) apart
CONVERGED_GTOL = 1e-6  # a run has converged when max |g_A| <= this * max(1, max |g(0)|)
ONSET_RES = 400
# The spread is the protocol solver's accuracy (~1e-7 at its 1e-6 tolerances) when stage B is robust; it moves
# by a few x with rounding, so the gate allows a factor of 5.
SPREAD_GATE = Gate(factor=5.0, atol=1e-12)


class Reason(str, Enum):
    """assumption-4.4's failure kinds (docs/THEORY.md §5.0)."""

    NO_DECAY = "no-decay"  # fail: nothing decays towards beta^k (|G| = 0 or no settling time)
    STAGE_B_NOT_ROBUST = "stage-b-not-robust"  # fail: stage B from another eps / noise ends elsewhere
    PERTURBED_RUN_LEFT = "perturbed-run-left"  # fail: a Figure 10 run ends away from the unperturbed one
    NOT_CONVERGED = "not-converged"  # inconclusive: stage-B runs have not converged
    NO_PLATEAU = P.NO_PLATEAU  # inconclusive: no onset epoch (followed by a plateau) to perturb
    SOLVER_FAILED = CommonReason.SOLVER_FAILED.value
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # Algorithm 1 has no stage B


@register(ID, CLAIM, reasons=Reason, order=40)
def check(ctx) -> CheckResult:
    names = ctx.model.coordinate_names()
    metrics, figures = {}, []
    parts = [_limit_level(ctx, names, metrics, figures), _figure10(ctx, names, metrics, figures)]
    verdict, message, reason = decide(parts)
    settings = {"eps": [*EPS, STAGE_B_EPS], "negligible": ctx.config.negligible, "noise": ctx.config.noise,
                "perturb_time": P.perturb_time(ctx.config)}
    key = next((k for k in ("max_spread", "max_endpoint_ratio") if k in metrics), None)
    return CheckResult(ID, CLAIM, verdict, message, metrics, key, settings, {"figures": figures}, reason=reason)


def _settle_time(model, stage, gtol: float) -> float:
    """How long the balanced flow beta' = -2 |beta| g(beta) needs to settle at beta^k to within SPREAD_TOL.

    Support modes decay at the rates mu = eigenvalues of 2 |beta_A|^(1/2) H_A |beta_A|^(1/2) (rates below
    REL_EIG of the fastest are flat directions, left to the spread test; Assumption 4.3 fails there):
    20 / mu_min. A leaving coordinate j decays at rate 2 |g_j(beta^k)|: 20 / (2 |g_j|); if g_j(beta^k) = 0
    (|g_j| <= gtol, e.g. when the loss reaches 0; Assumption 4.2c is then degenerate) the decay is only
    algebraic, beta_j ~ 1 / (2 H_jj t), and reaching SPREAD_TOL |beta^k| / 10 takes
    10 / (2 H_jj SPREAD_TOL |beta^k|). NaN when nothing decays."""
    A, times = list(stage.support), []
    cols = A + list(stage.left)
    idx = torch.as_tensor(cols, device=model.device)
    H = model.hessian_columns(stage.beta.to(model.device)[None], idx)[0][idx].cpu()
    if A:
        s = stage.beta[A].abs().sqrt()
        HA = H[: len(A), : len(A)]
        rates = torch.linalg.eigvalsh(2 * s[:, None] * (HA + HA.T) / 2 * s[None, :])
        decaying = rates[rates > P.REL_EIG * rates.abs().max()]
        if len(decaying) == 0:
            return math.nan
        times.append(20 / float(decaying[0]))
    for n, j in enumerate(stage.left, start=len(A)):
        g, Hjj = abs(float(stage.grad[j])), float(H[n, n])
        if g > gtol:
            times.append(20 / (2 * g))
        elif Hjj > 0:
            times.append(10 / (2 * Hjj * SPREAD_TOL * float(stage.beta.norm())))
        else:
            return math.nan
    return max(times)


def _limit_level(ctx, names, metrics, figures) -> tuple[Verdict, str, Reason | None]:
    model, cfg, seq = ctx.model, ctx.config, ctx.stages.stages
    if len(seq) < 2:
        return (Verdict.INCONCLUSIVE, f"limit level: Algorithm 1 has no stage B to repeat ({ctx.stages.message})",
                Reason.NOTHING_TO_TEST)
    gen = torch.Generator().manual_seed(cfg.seed + seeds.STAGE_B_NOISE)
    starts, durations, owners, bad_rate = [], [], [], []
    for prev, stage in zip(seq[:-1], seq[1:]):
        new = sorted((set(stage.support) - set(prev.support)) | {stage.coordinate})
        G = min(abs(float(prev.grad[j])) for j in new)
        settle = _settle_time(model, stage, ctx.stages.gtol)
        if not (settle > 0 and G > 0):
            bad_rate.append(f"stage {stage.k}: nothing decays towards beta^{stage.k} (|G| = {G:.3g})")
            continue
        region = torch.zeros(model.p, dtype=torch.bool)
        region[list(prev.support) + new] = True
        for n, eps in enumerate(EPS):
            beta = prev.beta.clone()
            for j in new:  # i_k (and, for a hand-given tie, every coordinate that joins the support)
                beta[j] = (stage.sign if j == stage.coordinate else float(torch.sign(stage.beta[j]))) * eps
            u = beta.abs().sqrt()
            v = beta.sign() * u
            if n == 0:  # the perturbed run
                u, v = P.perturb(u, v, region, cfg.noise, gen)
            starts.append((u, v))
            durations.append(2 * math.log(1 / eps) / (2 * G) + settle)
            owners.append((stage, region, f"eps={eps:g}" + (", perturbed" if n == 0 else "")))
    if bad_rate:
        return Verdict.FAIL, "limit level: " + "; ".join(bad_rate), Reason.NO_DECAY
    U = torch.stack([s[0] for s in starts]).to(model.device)
    V = torch.stack([s[1] for s in starts]).to(model.device)
    _, traj = P.run_batch(model, U, V, durations, cfg.solver, n_out=2, progress=ctx.progress)
    if failed := P.failed_runs(traj):
        return Verdict.INCONCLUSIVE, f"limit level: a stage-B run did not finish ({failed[0]})", Reason.SOLVER_FAILED
    end = traj.beta[:, -1]
    scale = max(1.0, float(seq[0].grad.abs().max()))
    g_end = model.grad_b(end.to(model.device)).cpu()
    rows, far, unconverged = [], [], []
    for b, (stage, region, label) in enumerate(owners):
        target = stage.beta
        dist = float((end[b] - target).norm() / target.norm().clamp_min(1e-300))
        gmax = float(g_end[b, region].abs().max())
        rows.append({"k": stage.k, "run": label, "distance": dist, "grad_support": gmax})
        if dist > SPREAD_TOL:
            where = (f"stage {stage.k} ({label}): endpoint {dist:.3g} from beta^{stage.k} "
                     f"(|g_A| = {gmax:.3g})")
            (far if gmax <= CONVERGED_GTOL * scale else unconverged).append(where)
    spread = {}
    for r in rows:
        spread[r["k"]] = max(spread.get(r["k"], 0.0), r["distance"])
    metrics["limit_level"] = Metric.info({"runs": rows, "spread_per_stage": spread})
    metrics["max_spread"] = Metric.at_most(max(spread.values()), SPREAD_TOL, SPREAD_GATE)
    ks = sorted(spread)
    figures.append(Figure(
        "stage-b-spread", "Stage B from several eps and perturbations: spread of the endpoints", "bar", "stage k",
        "max |beta_end - beta^k| / |beta^k|", yscale="log",
        series=(Series("spread", ks, [max(spread[k], 1e-300) for k in ks]),),
        hlines=(Mark(SPREAD_TOL, "threshold"),),
        caption=f"eps {EPS[0]:g} with relative noise {cfg.noise:g}, and eps {EPS[1]:g}; pass needs every bar below "
                f"{SPREAD_TOL:g}."))
    if far:
        return (Verdict.FAIL, "limit level: stage B ends at another stationary point: " + "; ".join(far),
                Reason.STAGE_B_NOT_ROBUST)
    if unconverged:
        return (Verdict.INCONCLUSIVE, "limit level: stage B has not converged: " + "; ".join(unconverged),
                Reason.NOT_CONVERGED)
    return Verdict.PASS, (f"limit level: {len(spread)} stages x {len(EPS)} runs (eps {EPS[0]:g} perturbed, "
                          f"eps {EPS[1]:g}) end at Algorithm 1's beta^k (eps {STAGE_B_EPS:g}), spread <= "
                          f"{metrics['max_spread'].value:.3g}"), None


def _onsets(ctx, ref, events) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The states at which a coordinate has just become non-negligible, for events (grid j, coordinate i):
    each grid interval [j - 1, j] is re-run (one batch) with ONSET_RES outputs and the first output above
    the threshold is the epoch. Returns (j, i, tau of the epoch) and the states U, V, beta [E, p]."""
    thr, tau = ctx.config.negligible, ref.traj.tau
    states = [ref.state(j - 1) for j, _ in events]
    U0, V0 = torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states])
    spans = [float(tau[j] - tau[j - 1]) * ref.L for j, _ in events]
    flow, traj = P.run_batch(ctx.model, U0, V0, spans, ctx.config.solver, n_out=ONSET_RES + 1,
                             progress=ctx.progress)
    out, keep = [], []
    for e, (j, i) in enumerate(events):
        above = torch.nonzero(traj.beta[e, :, i].abs() > thr).squeeze(1)
        if len(above) == 0:
            continue
        k = int(above[0])
        keep.append((e, k))
        out.append((j, i, float(tau[j - 1]) + float(traj.tau[k]) * spans[e] / ref.L))
    if not keep:
        return [], None, None, None
    idx = torch.tensor([e for e, _ in keep], device=flow.L.device)
    S = torch.stack([traj.b[e, k] for e, k in keep]).to(flow.L.device) * flow.L[idx, None]
    U, V = flow.uv(S, idx)
    return out, U, V, torch.stack([traj.beta[e, k] for e, k in keep])


def _figure10(ctx, names, metrics, figures) -> tuple[Verdict, str, Reason | None]:
    """Part 2. The unperturbed run from an onset state is the reference run itself, so each perturbed run
    lasts until a plateau grid point of the reference at least ``perturb_epochs`` epochs later, and its
    endpoint is compared with the reference there (solver error ~1e-6, far below the thresholds)."""
    cfg, model = ctx.config, ctx.model
    sample, reason = P.sample_reference(
        ctx, "Figure 10", lambda ref: P.onset_events(ref, cfg.negligible),
        f"no coordinate crosses {cfg.negligible:g} on the run at alpha={{alpha}}", seed_offset=seeds.FIGURE_10)
    if reason:
        return reason
    ref, chosen, gen = sample
    onsets, U0, V0, beta0 = _onsets(ctx, ref, chosen)
    plateaus, tau, T_epochs = P.plateau_epochs(ref, cfg.negligible), ref.traj.tau, P.perturb_time(cfg)
    U, V, durations, kept = [], [], [], []
    for e, (j, i, t_on) in enumerate(onsets):
        later = [q for q in plateaus if q >= j and (float(tau[q]) - t_on) * ref.L >= T_epochs]
        if not later:
            continue
        up, vp = P.perturb(U0[e], V0[e], P.non_negligible(beta0[e], cfg.negligible), cfg.noise, gen)
        U.append(up), V.append(vp), kept.append((e, j, i, t_on, later[0]))
        durations.append((float(tau[later[0]]) - t_on) * ref.L)
    if not kept:
        return Verdict.INCONCLUSIVE, (f"Figure 10: no onset epoch is followed by a plateau of the run at "
                                      f"alpha={ref.alpha} (raise --horizon)"), Reason.NO_PLATEAU
    _, traj = P.run_batch(model, torch.stack(U), torch.stack(V), durations, cfg.solver, progress=ctx.progress)
    if failed := P.failed_runs(traj):
        return Verdict.INCONCLUSIVE, f"Figure 10: a run did not finish ({failed[0]})", Reason.SOLVER_FAILED
    runs, bad, series = [], [], []
    for n, (e, j, i, t_on, q) in enumerate(kept):
        target = ref.traj.beta[0, q]
        d0 = float(P.rel_distance(traj.beta[n, 0], beta0[e]))
        dist = P.rel_distance(traj.beta[n], target)
        ratio = float(dist[-1]) / d0
        runs.append({"tau": t_on, "coordinate": names[i], "beta_i": float(beta0[e, i]), "duration": durations[n],
                     "tau_end": float(tau[q]), "d0": d0, "d_end": float(dist[-1]), "return_ratio": ratio})
        series.append((f"{names[i]} at tau={t_on:.3g}", traj.tau * durations[n], dist))
        if ratio > P.RETURN_RATIO:
            bad.append(f"onset of {names[i]} at tau={t_on:.4g}: endpoint {float(dist[-1]):.3g} from the unperturbed "
                       f"run's after time {durations[n]:.3g} (perturbation {d0:.3g}, ratio {ratio:.3g})")
    metrics["figure10"] = Metric.info({"alpha": ref.alpha, "runs": runs})
    metrics["max_endpoint_ratio"] = Metric.at_most(max(r["return_ratio"] for r in runs), P.RETURN_RATIO)
    figures.append(P.distance_figure(
        "figure10-endpoints", f"Figure 10: perturbed runs from onset epochs (alpha={ref.alpha})", series,
        "|beta_perturbed(t) - beta_unperturbed(end)| / |beta_unperturbed(end)|",
        f"Relative noise {cfg.noise:g} on every coordinate above {cfg.negligible:g} right after a coordinate "
        f"crossed it, trained to the unperturbed run's next plateau; pass needs the endpoint distance below "
        f"{P.RETURN_RATIO:g} of the perturbation's size."))
    if bad:
        return Verdict.FAIL, "Figure 10: " + "; ".join(bad), Reason.PERTURBED_RUN_LEFT
    return Verdict.PASS, (f"Figure 10 at alpha={ref.alpha}: {len(runs)} onset epochs, perturbed and "
                          f"unperturbed endpoints agree, ratio <= {metrics['max_endpoint_ratio'].value:.3g}"), None
