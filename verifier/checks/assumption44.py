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
from dataclasses import dataclass
from enum import Enum

import torch

from . import _perturb as P
from .. import seeds
from ..figures import Figure, Mark, Series
from ..limit.incremental import STAGE_B_EPS
from ..results import CheckResult, CommonReason, Gate, Metric, Verdict, decide
from .registry import Hunt, register

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


@dataclass(frozen=True)
class LimitLevel:
    """Part 1: ``n_stages`` of Algorithm 1; the stages where nothing decays towards beta^k, as (k, |G|) (then
    nothing is run); the runs that did not finish; per run its row (k, run, relative distance of the endpoint
    from beta^k, max |g_A| there); ``scale`` = max(1, max |g(0)|), the gradient scale CONVERGED_GTOL is
    relative to."""

    config: object
    n_stages: int
    stages_message: str
    no_decay: list[tuple[int, float]] = ()
    failed: list[str] = ()
    rows: list[dict] = ()
    scale: float = 1.0

    @property
    def spread(self) -> dict[int, float]:
        """The largest endpoint distance per stage."""
        out = {}
        for r in self.rows:
            out[r["k"]] = max(out.get(r["k"], 0.0), r["distance"])
        return out


@dataclass(frozen=True)
class Figure10:
    """Part 2 on the reference run: ``unavailable`` is the sampling's (verdict, message, reason) when there is
    no onset epoch or the reference run failed; ``no_plateau``: no onset epoch is followed by a plateau late
    enough; ``failed``: perturbed runs that did not finish; per run its row (the metric) and distance curve."""

    config: object
    unavailable: tuple | None = None
    alpha: str = ""
    no_plateau: bool = False
    failed: list[str] = ()
    runs: list[dict] = ()
    curves: list[tuple[str, torch.Tensor, torch.Tensor]] = ()


@dataclass(frozen=True)
class Measurement:
    limit_level: LimitLevel
    figure10: Figure10


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


def measure_limit_level(ctx) -> LimitLevel:
    """Part 1: every stage B re-run from two eps (one perturbed) in one batch (module docstring)."""
    model, cfg, seq = ctx.model, ctx.config, ctx.stages.stages
    if len(seq) < 2:
        return LimitLevel(cfg, len(seq), ctx.stages.message)
    gen = torch.Generator().manual_seed(cfg.seed + seeds.STAGE_B_NOISE)
    starts, durations, owners, no_decay = [], [], [], []
    for prev, stage in zip(seq[:-1], seq[1:]):
        new = sorted((set(stage.support) - set(prev.support)) | {stage.coordinate})
        G = min(abs(float(prev.grad[j])) for j in new)
        settle = _settle_time(model, stage, ctx.stages.gtol)
        if not (settle > 0 and G > 0):
            no_decay.append((stage.k, G))
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
    if no_decay:
        return LimitLevel(cfg, len(seq), ctx.stages.message, no_decay)
    U = torch.stack([s[0] for s in starts]).to(model.device)
    V = torch.stack([s[1] for s in starts]).to(model.device)
    _, traj = P.run_batch(model, U, V, durations, cfg.solver, n_out=2, progress=ctx.progress)
    if failed := P.failed_runs(traj):
        return LimitLevel(cfg, len(seq), ctx.stages.message, failed=failed)
    end = traj.beta[:, -1]
    g_end = model.grad_b(end.to(model.device)).cpu()
    rows = []
    for b, (stage, region, label) in enumerate(owners):
        target = stage.beta
        rows.append({"k": stage.k, "run": label,
                     "distance": float((end[b] - target).norm() / target.norm().clamp_min(1e-300)),
                     "grad_support": float(g_end[b, region].abs().max())})
    return LimitLevel(cfg, len(seq), ctx.stages.message, rows=rows, scale=max(1.0, float(seq[0].grad.abs().max())))


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


def measure_figure10(ctx) -> Figure10:
    """Part 2. The unperturbed run from an onset state is the reference run itself, so each perturbed run
    lasts until a plateau grid point of the reference at least ``perturb_epochs`` epochs later, and its
    endpoint is compared with the reference there (solver error ~1e-6, far below the thresholds)."""
    cfg, model = ctx.config, ctx.model
    names = model.coordinate_names()
    sample, unavailable = P.sample_reference(
        ctx, "Figure 10", lambda ref: P.onset_events(ref, cfg.negligible),
        f"no coordinate crosses {cfg.negligible:g} on the run at alpha={{alpha}}", seed_offset=seeds.FIGURE_10)
    if unavailable:
        return Figure10(cfg, unavailable)
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
        return Figure10(cfg, None, ref.alpha, no_plateau=True)
    _, traj = P.run_batch(model, torch.stack(U), torch.stack(V), durations, cfg.solver, progress=ctx.progress)
    if failed := P.failed_runs(traj):
        return Figure10(cfg, None, ref.alpha, failed=failed)
    runs, curves = [], []
    for n, (e, j, i, t_on, q) in enumerate(kept):
        d0 = float(P.rel_distance(traj.beta[n, 0], beta0[e]))
        dist = P.rel_distance(traj.beta[n], ref.traj.beta[0, q])
        runs.append({"tau": t_on, "coordinate": names[i], "beta_i": float(beta0[e, i]), "duration": durations[n],
                     "tau_end": float(tau[q]), "d0": d0, "d_end": float(dist[-1]), "return_ratio": float(dist[-1]) / d0})
        curves.append((f"{names[i]} at tau={t_on:.3g}", traj.tau * durations[n], dist))
    return Figure10(cfg, None, ref.alpha, runs=runs, curves=curves)


def measure(ctx) -> Measurement:
    return Measurement(measure_limit_level(ctx), measure_figure10(ctx))


def judge_limit_level(m: LimitLevel) -> tuple[Verdict, str, Reason | None]:
    """Part 1: fail when nothing decays or an endpoint lies beyond SPREAD_TOL at a vanishing support gradient
    (another stationary point); inconclusive without a stage B, a failed run, or an endpoint not converged."""
    if m.n_stages < 2:
        return (Verdict.INCONCLUSIVE, f"limit level: Algorithm 1 has no stage B to repeat ({m.stages_message})",
                Reason.NOTHING_TO_TEST)
    if m.no_decay:
        return Verdict.FAIL, "limit level: " + "; ".join(
            f"stage {k}: nothing decays towards beta^{k} (|G| = {G:.3g})" for k, G in m.no_decay), Reason.NO_DECAY
    if m.failed:
        return Verdict.INCONCLUSIVE, f"limit level: a stage-B run did not finish ({m.failed[0]})", Reason.SOLVER_FAILED
    far, unconverged = [], []
    for r in m.rows:
        if r["distance"] > SPREAD_TOL:
            where = (f"stage {r['k']} ({r['run']}): endpoint {r['distance']:.3g} from beta^{r['k']} "
                     f"(|g_A| = {r['grad_support']:.3g})")
            (far if r["grad_support"] <= CONVERGED_GTOL * m.scale else unconverged).append(where)
    if far:
        return (Verdict.FAIL, "limit level: stage B ends at another stationary point: " + "; ".join(far),
                Reason.STAGE_B_NOT_ROBUST)
    if unconverged:
        return (Verdict.INCONCLUSIVE, "limit level: stage B has not converged: " + "; ".join(unconverged),
                Reason.NOT_CONVERGED)
    spread = m.spread
    return Verdict.PASS, (f"limit level: {len(spread)} stages x {len(EPS)} runs (eps {EPS[0]:g} perturbed, "
                          f"eps {EPS[1]:g}) end at Algorithm 1's beta^k (eps {STAGE_B_EPS:g}), spread <= "
                          f"{max(spread.values()):.3g}"), None


def judge_figure10(m: Figure10) -> tuple[Verdict, str, Reason | None]:
    """Part 2: fail when an endpoint's distance exceeds RETURN_RATIO of the perturbation's; inconclusive when
    there is nothing to perturb or a run failed."""
    if m.unavailable:
        return m.unavailable
    if m.no_plateau:
        return Verdict.INCONCLUSIVE, (f"Figure 10: no onset epoch is followed by a plateau of the run at "
                                      f"alpha={m.alpha} (raise --horizon)"), Reason.NO_PLATEAU
    if m.failed:
        return Verdict.INCONCLUSIVE, f"Figure 10: a run did not finish ({m.failed[0]})", Reason.SOLVER_FAILED
    bad = [f"onset of {r['coordinate']} at tau={r['tau']:.4g}: endpoint {r['d_end']:.3g} from the unperturbed "
           f"run's after time {r['duration']:.3g} (perturbation {r['d0']:.3g}, ratio {r['return_ratio']:.3g})"
           for r in m.runs if r["return_ratio"] > P.RETURN_RATIO]
    if bad:
        return Verdict.FAIL, "Figure 10: " + "; ".join(bad), Reason.PERTURBED_RUN_LEFT
    return Verdict.PASS, (f"Figure 10 at alpha={m.alpha}: {len(m.runs)} onset epochs, perturbed and "
                          f"unperturbed endpoints agree, ratio <= {max(r['return_ratio'] for r in m.runs):.3g}"), None


def judge(m: Measurement) -> tuple[Verdict, Reason | None, str]:
    """The two parts' verdicts combined (results.decide)."""
    verdict, message, reason = decide([judge_limit_level(m.limit_level), judge_figure10(m.figure10)])
    return verdict, reason, message


def declare(m: Measurement) -> dict[str, Metric]:
    """The spread of the stage-B endpoints (max_spread judged) and Figure 10's runs (max_endpoint_ratio)."""
    metrics = {}
    if m.limit_level.rows:
        spread = m.limit_level.spread
        metrics["limit_level"] = Metric.info({"runs": m.limit_level.rows, "spread_per_stage": spread})
        metrics["max_spread"] = Metric.at_most(max(spread.values()), SPREAD_TOL, SPREAD_GATE)
    if m.figure10.runs:
        metrics["figure10"] = Metric.info({"alpha": m.figure10.alpha, "runs": m.figure10.runs})
        metrics["max_endpoint_ratio"] = Metric.at_most(max(r["return_ratio"] for r in m.figure10.runs),
                                                       P.RETURN_RATIO)
    return metrics


def figures(m: Measurement) -> list[Figure]:
    """The spread of the stage-B endpoints per stage and Figure 10's distances."""
    out = []
    if m.limit_level.rows:
        spread, cfg = m.limit_level.spread, m.limit_level.config
        ks = sorted(spread)
        out.append(Figure(
            "stage-b-spread", "Stage B from several eps and perturbations: spread of the endpoints", "bar",
            "stage k", "max |beta_end - beta^k| / |beta^k|", yscale="log",
            series=(Series("spread", ks, [max(spread[k], 1e-300) for k in ks]),),
            hlines=(Mark(SPREAD_TOL, "threshold"),),
            caption=f"eps {EPS[0]:g} with relative noise {cfg.noise:g}, and eps {EPS[1]:g}; pass needs every bar "
                    f"below {SPREAD_TOL:g}."))
    if m.figure10.runs:
        cfg = m.figure10.config
        out.append(P.distance_figure(
            "figure10-endpoints", f"Figure 10: perturbed runs from onset epochs (alpha={m.figure10.alpha})",
            m.figure10.curves, "|beta_perturbed(t) - beta_unperturbed(end)| / |beta_unperturbed(end)|",
            f"Relative noise {cfg.noise:g} on every coordinate above {cfg.negligible:g} right after a coordinate "
            f"crossed it, trained to the unperturbed run's next plateau; pass needs the endpoint distance below "
            f"{P.RETURN_RATIO:g} of the perturbation's size."))
    return out


@register(ID, CLAIM, reasons=Reason, order=40, reads=("stages", "reference-run"), options=P.PROTOCOL_OPTIONS,
          hunt=Hunt("max_spread"))
def check_assumption_44(ctx) -> CheckResult:
    m = measure(ctx)
    verdict, reason, message = judge(m)
    metrics = declare(m)
    settings = {"eps": [*EPS, STAGE_B_EPS], "negligible": ctx.config.negligible, "noise": ctx.config.noise,
                "perturb_time": P.perturb_time(ctx.config)}
    key = next((k for k in ("max_spread", "max_endpoint_ratio") if k in metrics), None)
    return CheckResult(ID, CLAIM, verdict, message, metrics, key, settings, {"figures": figures(m)}, reason=reason)
