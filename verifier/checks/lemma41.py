"""Check ``lemma-4.1``: the conservation law of Lemma 4.1 (THEORY.md §2), measured on the network as built.

* flow: d/dt (u_i^2 - v_i^2) = 0 (full weights: Wq^T Wq - Wk^T Wk and Wv^T Wv - Wo^T Wo). We integrate the
  gradient flow of the *parameters* theta (not the reduced coordinates, where the law holds by
  construction) with scipy's DOP853 at rtol = 1e-10 from alpha * theta0 to twice the time the fastest
  coordinate needs to activate, and demand max_i max_t |C_i(t) - C_i(0)| / max_t scale_i(t) <= 1e3 * rtol,
  scale_i = u_i^2 + v_i^2 (the size rounding and truncation errors are relative to).
* gd / sgd: a gradient step gives C(theta_new) = C(theta) + eta^2 C(grad) exactly, i.e.
  (u_i^2 - v_i^2)(1 - eta^2 g_i^2) for diagonal weights. We demand the accumulated prediction to match the
  final C to 64 * machine-eps * (steps + 1) relative to the scale.
* adam, momentum, weight decay: their updates are not gradient steps; the same comparison is made and the
  law is reported broken (fail) when it does not hold — which it does not.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch.func import grad

from ..config import format_alpha
from ..dynamics import param_flow
from ..dynamics.optimizers import train
from ..figures import Figure, Mark, Series
from ..results import CheckResult, CommonReason, Gate, Metric, Verdict
from .registry import register

ID = "lemma-4.1"
CLAIM = "Lemma 4.1: u_i^2 - v_i^2 (matrix balancedness for full weights) is conserved by gradient flow"
FLOW_RTOL = 1e-10
FLOW_FACTOR = 1e3
DISCRETE_FACTOR = 64
DEFAULT_LOG_INV_ALPHA = math.log(100.0)  # alpha = 1e-2 unless --alphas is given
# The flow reference integrates the parameters themselves with an explicit method, whose cost grows like
# log(1/alpha) (the plateau lasts log(1/alpha) / rate); below alpha = 1e-8 it runs at 1e-8 instead (about 3x
# the work at 1e-2) and says so. The law holds for every alpha, so this is a test, not a vacuous pass.
FLOW_MAX_LOG_INV_ALPHA = math.log(1e8)
# Drifts and law errors are rounding or integrator truncation (1e-16 .. 1e-11) when the law holds; they vary
# by a few x between machines, so the gate allows a factor of 5 above a floor of 1e-15.
ROUNDING_GATE = Gate(factor=5.0, atol=1e-15)


class Reason(str, Enum):
    """lemma-4.1's failure kinds (docs/THEORY.md §5.0)."""

    CONSERVATION_BROKEN = "conservation-broken"  # fail: the conserved quantities drift beyond rounding
    OPTIMIZER_DIVERGED = "optimizer-diverged"  # inconclusive: gd/sgd/adam reached non-finite weights
    UNDERFLOW = "underflow"  # inconclusive: u^2 + v^2 underflows float64 at the smallest alpha
    SOLVER_FAILED = CommonReason.SOLVER_FAILED.value  # inconclusive: the reference integrator failed
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # inconclusive: the gradient vanishes at zero


def growth_rate(model) -> float:
    """How fast the first coordinate grows from theta = 0: max |g_i(0)| for diagonal weights; for full weights
    the largest |eigenvalue| of the Hessian at zero, the top singular value of dL/d(U V^T) over the products
    (the rate of the first rank-one mode)."""
    if model.diagonal:
        return float(model.grad_b(torch.zeros(model.p, dtype=torch.float64, device=model.device)).abs().max())
    return param_flow.growth_rate(model)


def _flow(ctx, log_inv_alphas, note: str = "") -> CheckResult:
    model = ctx.model
    rate = growth_rate(model)
    if not rate > 0:
        return CheckResult(ID, CLAIM, Verdict.INCONCLUSIVE, "the gradient vanishes at zero: nothing moves, so "
                           "there is no flow to test (is the teacher zero?)", reason=Reason.NOTHING_TO_TEST)
    theta0 = ctx.theta0(1)[0].to(model.device)
    loss_grad = grad(model.loss_params)
    drifts, curves, nfev = [], [], []
    for L in log_inv_alphas:
        alpha = math.exp(-L)
        t_end = 2.0 * L / rate

        def rhs(_t, y):
            th = torch.as_tensor(y, dtype=torch.float64, device=model.device)
            return (-loss_grad(th)).cpu().numpy()

        sol = solve_ivp(rhs, (0.0, t_end), (alpha * theta0).cpu().numpy(), method="DOP853", rtol=FLOW_RTOL,
                        atol=FLOW_RTOL * alpha * 1e-3, dense_output=False)
        if sol.status != 0:
            return CheckResult(ID, CLAIM, Verdict.INCONCLUSIVE, f"scipy DOP853 failed at alpha={format_alpha(L)}: "
                               f"{sol.message}", reason=Reason.SOLVER_FAILED)
        th = torch.as_tensor(sol.y.T, dtype=torch.float64)
        C = model.conserved(th)
        scale = model.conserved_scale(th).amax(dim=0).clamp_min(np.finfo(float).tiny)
        rel = ((C - C[0]).abs() / scale)  # [T, m]
        drifts.append(float(rel.max()))
        nfev.append(int(sol.nfev))
        keep = np.linspace(0, len(sol.t) - 1, min(len(sol.t), 200)).astype(int)
        curves.append(Series(f"alpha={format_alpha(L)}", sol.t[keep] / L, rel.amax(dim=1)[keep].clamp_min(1e-18)))
    threshold = FLOW_FACTOR * FLOW_RTOL
    worst = max(drifts)
    verdict = Verdict.PASS if worst <= threshold else Verdict.FAIL
    msg = (f"{note}gradient flow of the network's own parameters: max relative drift of the conserved quantities "
           f"{worst:.2e} {'<=' if verdict is Verdict.PASS else '>'} {threshold:.0e} (integrator rtol "
           f"{FLOW_RTOL:.0e})")
    if verdict is Verdict.FAIL:
        msg += ": the loss does not depend on the weights only through the products u*v (Definition 3.1)"
    return CheckResult(
        ID, CLAIM, verdict, msg, reason=Reason.CONSERVATION_BROKEN if verdict is Verdict.FAIL else None,
        metrics={"max_drift": Metric.at_most(worst, threshold, ROUNDING_GATE), "drift": Metric.info(drifts),
                 "nfev": Metric.lower(nfev), "alphas": Metric.info([format_alpha(L) for L in log_inv_alphas])},
        key_metric="max_drift", settings={"optimizer": "flow", "integrator": "DOP853", "integrator_rtol": FLOW_RTOL},
        evidence={"figures": [_figure(curves, "tau = t / log(1/alpha)", threshold,
                                      "Conservation drift along gradient flow")]},
    )


def _discrete(ctx, log_inv_alphas) -> CheckResult:
    model, opt = ctx.model, ctx.config.optimizer
    theta0 = ctx.theta0(len(log_inv_alphas))
    alphas = torch.tensor([math.exp(-L) for L in log_inv_alphas], dtype=torch.float64, device=theta0.device)
    run = train(model, alphas[:, None] * theta0, opt, seed=ctx.config.seed)
    if any(s.value != "success" for s in run.status):
        return CheckResult(ID, CLAIM, Verdict.INCONCLUSIVE, f"{opt.name} diverged (non-finite weights): "
                           "lower --lr", settings={"optimizer": opt.name, "lr": opt.lr},
                           reason=Reason.OPTIMIZER_DIVERGED)
    if not bool((run.scale > np.finfo(float).tiny).all()):
        return CheckResult(ID, CLAIM, Verdict.INCONCLUSIVE, f"{opt.name}: u^2 + v^2 underflows float64 at "
                           f"alpha={format_alpha(max(log_inv_alphas))}: the conservation law cannot be measured "
                           "(use a larger alpha)", settings={"optimizer": opt.name, "lr": opt.lr},
                           reason=Reason.UNDERFLOW)
    scale = run.scale
    law_error = ((run.conserved[:, -1] - run.predicted).abs() / scale).amax(dim=1)  # [B]
    drift = ((run.conserved[:, -1] - run.conserved[:, 0]).abs() / scale).amax(dim=1)
    threshold = DISCRETE_FACTOR * np.finfo(float).eps * (opt.steps + 1)
    worst = float(law_error.max())
    ok = worst <= threshold
    plain = opt.name in ("gd", "sgd") and opt.momentum == 0 and opt.weight_decay == 0
    if ok:
        msg = (f"{opt.name}: C(theta_T) equals C(theta_0) + eta^2 sum_t C(grad_t), i.e. the product of "
               f"(1 - eta^2 g_i^2), to {worst:.1e} <= {threshold:.1e} (rounding)")
    else:
        why = ("its update is not a plain gradient step" if not plain else
               "the loss does not depend on the weights only through the products u*v")
        msg = (f"{opt.name}: the conservation law is broken: C(theta_T) differs from the Lemma 4.1 prediction by "
               f"{worst:.2e} > {threshold:.1e} relative to the weights' scale ({why})")
    curves = [Series(f"alpha={format_alpha(L)}", run.steps,
                     ((run.conserved[b] - run.conserved[b, :1]).abs() / scale[b]).amax(dim=1).clamp_min(1e-18))
              for b, L in enumerate(log_inv_alphas)]
    return CheckResult(
        ID, CLAIM, Verdict.PASS if ok else Verdict.FAIL, msg, reason=None if ok else Reason.CONSERVATION_BROKEN,
        metrics={"max_law_error": Metric.at_most(worst, threshold, ROUNDING_GATE),
                 "law_error": Metric.info(law_error.tolist()), "drift": Metric.info(drift.tolist()),
                 "alphas": Metric.info([format_alpha(L) for L in log_inv_alphas])},
        key_metric="max_law_error", settings={"optimizer": opt.name, "lr": opt.lr, "steps": opt.steps},
        evidence={"figures": [_figure(curves, "step", None, f"Drift of the conserved quantities under {opt.name}")]},
    )


def _figure(curves: list[Series], xlabel: str, threshold: float | None, title: str) -> Figure:
    return Figure("lemma41-drift", title, "line", xlabel, "max_i |C_i(t) - C_i(0)| / scale_i", yscale="log",
                  series=tuple(curves), hlines=() if threshold is None else (Mark(threshold, "threshold"),),
                  caption="Lemma 4.1: C = u^2 - v^2 (or Wq^T Wq - Wk^T Wk) relative to u^2 + v^2.")


@register(ID, CLAIM, reasons=Reason, diagonal_only=False, order=10)
def check_lemma_41(ctx) -> CheckResult:
    log_inv_alphas = ctx.config.log_inv_alphas or (DEFAULT_LOG_INV_ALPHA,)
    if ctx.config.optimizer.name == "flow":
        # An explicit integrator's cost grows with log(1/alpha): the flow test uses the largest alpha given,
        # capped so that the cost stays bounded.
        L = min(log_inv_alphas)
        if L <= FLOW_MAX_LOG_INV_ALPHA:
            return _flow(ctx, (L,))
        note = (f"alpha={format_alpha(L)} is below what the parameter-space reference integrator affords (its "
                f"cost grows like log(1/alpha)): tested at alpha={format_alpha(FLOW_MAX_LOG_INV_ALPHA)} instead; ")
        return _flow(ctx, (FLOW_MAX_LOG_INV_ALPHA,), note)
    return _discrete(ctx, log_inv_alphas)
