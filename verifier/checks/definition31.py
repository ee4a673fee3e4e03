"""Check ``definition-3.1``: the network is a network with diagonal weights in the paper's sense.

Definition 3.1 asks two things, and both are measured:

(a) the network depends on theta = (u, v) only through beta = u * v: the loss of the network as built from
    its weight matrices equals Lb(u * v), also after the rescaling u -> s u, v -> v / s, at random points;
    pass when the largest relative mismatch is <= 1e-10.
(b) h is twice continuously differentiable in beta (GELU, softmax, tanh: yes; ReLU: no). Along random
    directions delta the Taylor remainder r(eps) = |g(beta + eps delta) - g(beta) - eps H delta| of the
    gradient is O(eps^2) for a C^2 loss with a locally Lipschitz Hessian, but only O(eps) where the
    gradient has kinks (a ReLU network crosses one kink per pre-activation that changes sign). We fit the
    order from eps = 1e-2 and 1e-3 and pass when every probe's order lies in [1.5, 2.5] (or is infinite: a
    remainder at rounding level, e.g. a quadratic loss). Too low: the remainder is O(eps), a kink at beta.
    Too high: a kink crossed between beta + 1e-3 delta and beta + 1e-2 delta inflates r(1e-2) only, a slope no
    C^2 function has (its r(eps) = c eps^2 + O(eps^3)); a ReLU network shows either, depending on the probe
    (docs/THEORY.md §5.1: measured, half of the ReLU seeds showed only the high order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch.func import grad, jvp

from .. import seeds
from ..figures import Figure, Series
from ..results import CheckResult, CommonReason, Gate, Judgement, Metric, Verdict
from .registry import register

ID = "definition-3.1"
CLAIM = "Definition 3.1: the loss depends on (u, v) only through beta = u * v, and is C^2 in beta"
MISMATCH_TOL = 1e-10
MIN_ORDER, MAX_ORDER = 1.5, 2.5
EPSILONS = (1e-2, 1e-3)
N_PROBES = 4
PROBE_SCALE = 0.5  # probes beta ~ N(0, 0.5^2): the scale of beta along a training run
# The mismatch is rounding (~1e-16) when the claim holds; rounding varies by a few x between machines and
# BLAS builds, so the gate allows a factor of 5 above a floor of 1e-14.
MISMATCH_GATE = Gate(factor=5.0, atol=1e-14)


class Reason(str, Enum):
    """definition-3.1's failure kinds (docs/THEORY.md §5.0)."""

    NOT_A_PRODUCT = "not-a-product"  # fail: the network's loss is not a function of u*v
    NOT_C2 = "not-c2"  # fail: the gradient's Taylor remainder is not O(eps^2) (a kink)
    OVERFLOW = "overflow"  # inconclusive: the loss or gradient is not finite at the probes
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # inconclusive: p = 0 or a constant loss


@dataclass(frozen=True)
class Measurement:
    """What (a) and (b) measure at the probes. ``nonfinite_loss``: (network, Lb(u*v)) at the first probe whose
    loss is not finite, where the measurement stops (the Taylor fields stay empty)."""

    p: int
    mismatches: tuple[float, ...] = ()
    nonfinite_loss: tuple[float, float] | None = None
    orders: tuple[float, ...] = ()
    remainders: tuple[tuple[float, ...], ...] = ()
    grad_norms: tuple[float, ...] = ()

    @property
    def mismatch(self) -> float:
        return max(self.mismatches)

    @property
    def order(self) -> float:
        return min(self.orders)

    @property
    def top_order(self) -> float | None:
        finite = [o for o in self.orders if math.isfinite(o)]
        return max(finite) if finite else None


def taylor_orders(model, betas: torch.Tensor, directions: torch.Tensor
                  ) -> tuple[list[float], list[list[float]], list[float]]:
    """Fitted order of the gradient's Taylor remainder per probe, the remainders for each eps, and |g(beta)|."""
    g = grad(model.loss_beta)
    orders, remainders, grad_norms = [], [], []
    for beta, delta in zip(betas, directions):
        g0, h_delta = jvp(g, (beta,), (delta,))
        r = [float((g(beta + eps * delta) - g0 - eps * h_delta).norm()) for eps in EPSILONS]
        remainders.append(r)
        grad_norms.append(float(g0.norm()))
        floor = 1e-13 * (1.0 + float(g0.norm()))  # below this the remainder is rounding
        if r[1] <= floor:
            orders.append(float("inf"))
        else:
            orders.append(math.log(max(r[0], floor) / r[1]) / math.log(EPSILONS[0] / EPSILONS[1]))
    return orders, remainders, grad_norms


def measure(model, seed: int) -> Measurement:
    """(a) the relative mismatch |loss_params(u, v) - Lb(u*v)| / |Lb| at N_PROBES random (u, v) and their
    rescalings (s u, v / s); (b) the Taylor orders of the gradient at N_PROBES random beta (module docstring)."""
    p = model.p
    if p == 0:
        return Measurement(p)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(N_PROBES, p, generator=gen, dtype=torch.float64).to(model.device) * PROBE_SCALE ** 0.5
    v = torch.randn(N_PROBES, p, generator=gen, dtype=torch.float64).to(model.device) * PROBE_SCALE ** 0.5
    s = torch.exp(torch.randn(N_PROBES, 1, generator=gen, dtype=torch.float64)).to(model.device)
    mismatches = []
    for k in range(N_PROBES):
        lb = model.loss_beta(u[k] * v[k])
        for uu, vv in ((u[k], v[k]), (s[k] * u[k], v[k] / s[k])):
            lp = model.loss_params(torch.cat([uu, vv]))
            if not (torch.isfinite(lp) and torch.isfinite(lb)):
                return Measurement(p, tuple(mismatches), (float(lp), float(lb)))
            mismatches.append(float((lp - lb).abs() / (lb.abs() + 1e-300)))
    betas = torch.randn(N_PROBES, p, generator=gen, dtype=torch.float64).to(model.device) * PROBE_SCALE
    dirs = torch.randn(N_PROBES, p, generator=gen, dtype=torch.float64).to(model.device)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    orders, remainders, grad_norms = taylor_orders(model, betas, dirs)
    return Measurement(p, tuple(mismatches), None, tuple(orders), tuple(map(tuple, remainders)), tuple(grad_norms))


def judge(m: Measurement) -> Judgement:
    """pass: mismatch <= MISMATCH_TOL and every Taylor order in [MIN_ORDER, MAX_ORDER] (or infinite); fail:
    not a product, or not C^2 (the first problem's reason); inconclusive: p = 0, a non-finite loss, gradient
    or remainder, or a gradient of exactly 0 at every probe (nothing to test)."""
    if m.p == 0:
        return Judgement.inconclusive(Reason.NOTHING_TO_TEST, "the model has no coordinates (p = 0): there is nothing to test")
    if m.nonfinite_loss is not None:
        lp, lb = m.nonfinite_loss
        return Judgement.inconclusive(Reason.OVERFLOW, (
            f"the loss is not finite at the probes (network {lp:.3g}, Lb(u*v) {lb:.3g}): the data's scale "
            "overflows float64"))
    if not all(math.isfinite(r) for rs in m.remainders for r in rs) or not all(map(math.isfinite, m.grad_norms)):
        return Judgement.inconclusive(Reason.OVERFLOW, (
            "the gradient or its Taylor remainder overflowed float64 at the probes (largest "
            f"|gradient| {max(m.grad_norms):.3g}): the data's scale is too large to measure"))
    if max(m.grad_norms) == 0.0:
        return Judgement.inconclusive(Reason.NOTHING_TO_TEST, (
            "the gradient of Lb is exactly zero at every probe (a constant loss, e.g. X = 0): there is no "
            "dependence on beta to test"))
    mismatch, order, top = m.mismatch, m.order, m.top_order
    problems = []
    if not mismatch <= MISMATCH_TOL:
        problems.append(Judgement.failed(Reason.NOT_A_PRODUCT, (
            f"the network's loss differs from Lb(u*v) by {mismatch:.1e} (relative): it does not depend on (u, v) "
            "only through u*v")))
    if not order >= MIN_ORDER:
        problems.append(Judgement.failed(Reason.NOT_C2, (
            f"the gradient's Taylor remainder shrinks like eps^{order:.2f}, not eps^2: the loss is not twice "
            "continuously differentiable in beta (a ReLU or another kink?)")))
    if top is not None and not top <= MAX_ORDER:
        problems.append(Judgement.failed(Reason.NOT_C2, (
            f"the gradient's Taylor remainder falls like eps^{top:.2f} from eps = {EPSILONS[0]:g} to "
            f"{EPSILONS[1]:g}, faster than the eps^2 of a C^2 loss: a kink lies between the two probe sizes "
            "(a ReLU?)")))
    if problems:
        return Judgement.compose(problems, "; ")
    return Judgement.passed(
        f"the loss is a function of u*v (mismatch {mismatch:.1e}) and C^2 in beta (Taylor orders of the gradient "
        f"in [{order:.2f}, {top if top is not None else math.inf:.2f}])")


def declare(m: Measurement) -> dict[str, Metric]:
    """The mismatch and the Taylor orders as metrics (a complete measurement only)."""
    return {"max_param_mismatch": Metric.at_most(m.mismatch, MISMATCH_TOL, MISMATCH_GATE),
            "taylor_order": Metric.at_least(m.order, MIN_ORDER),
            "max_taylor_order": Metric.at_most(m.top_order, MAX_ORDER, None),
            "taylor_orders": Metric.info(list(m.orders))}


def figures(m: Measurement) -> list[Figure]:
    return [Figure("taylor-remainder", "Taylor remainder of the gradient", "line", "eps",
                   "|g(beta + eps d) - g(beta) - eps H d|", xscale="log", yscale="log",
                   series=tuple(Series(f"probe {k}", EPSILONS, list(r), "o-") for k, r in enumerate(m.remainders)),
                   caption="Slope 2 on log axes: C^2. Slope 1: kinks (not covered by Definition 3.1).")]


@register(ID, CLAIM, reasons=Reason, order=5, flow=False)
def check_definition_31(ctx) -> CheckResult:
    m = measure(ctx.model, ctx.config.seed + seeds.DEFINITION_31)
    judgement = judge(m)
    if judgement.verdict is Verdict.INCONCLUSIVE:  # nothing complete to declare
        return CheckResult.judged(ID, CLAIM, judgement)
    return CheckResult.judged(ID, CLAIM, judgement, metrics=declare(m), key_metric="taylor_order",
                              settings={"epsilons": list(EPSILONS), "probes": N_PROBES},
                              evidence={"figures": figures(m)})
