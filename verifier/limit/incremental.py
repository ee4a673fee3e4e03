"""Algorithm 1 (THEORY.md §4): the alpha -> 0 limit of gradient flow, as greedy incremental learning.

State at stage k: a stationary point beta^k of Lb restricted to its support A_k, log-scale weights b^k
in [-1, 1]^p and a rescaled time T_k. From G = g(beta^k):

* stage A: for i outside A_k (coordinates that left included) with G_i != 0 the time until active is
  Delta_k(i) = (1 - b^k_i) / (-G_i) if G_i < 0, (1 + b^k_i) / G_i if G_i > 0; i_k = argmin Delta_k,
  T_{k+1} = T_k + Delta_k(i_k), b^{k+1} = b^k - G Delta_k(i_k) off A_k.
* stage B: gradient flow on A_k + {i_k} (balanced weights u = sqrt|beta|, v = sign(beta) u; zeros stay
  zero) from beta^k with beta_{i_k} = sign * eps, run to convergence and polished by Newton on the
  support. A coordinate that shrinks to zero leaves the support with b = +-1 and may re-enter later with
  the opposite sign (Delta = 2 / |G_i|).

Only ``model.grad_b``, ``model.loss_b`` and ``model.hessian_columns`` are used, so every
:class:`~verifier.models.base.DiagonalModel` works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from ..config import SolverConfig
from ..dynamics.flow import ReducedFlow, integrate
from ..dynamics.trajectory import Status
from ..models.base import DiagonalModel

# A gradient entry with |G_i| <= GTOL_REL * max(1, max|g(0)|) counts as zero (Delta = inf): Algorithm 1
# stops when every off-support entry is that small. Stage B's Newton polish brings the support gradient
# to ~1e-13, far below it, so rounding cannot start a spurious stage.
GTOL_REL = 1e-8
# A coordinate leaves the support when |beta_i| <= LEAVE_TOL * max(1, max|beta|) and the flow shrinks it
# (sign(beta_i) g_i > 0). How fast it got there depends on the stage (THEORY.md §5.3), and so does what decides
# the leave. At a stationary point with a positive loss the leaver's gradient tends to a nonzero G_i pointing
# inward, and the balanced flow beta_i' = -2 |beta_i| g_i decays it exponentially, at rate 2 |G_i|: it reaches
# LEAVE_TOL within a few chunks of stage B's flow. At a zero-loss minimum (the last stage of a realisable
# teacher) every gradient vanishes there: g_i ~ S beta_i (S the Schur complement of the Hessian on the support
# and i), so beta_i ~ 1 / (2 S t) and g_i t -> 1/2, an algebraic decay that would need t ~ 1 / (2 S LEAVE_TOL)
# to reach LEAVE_TOL. There the leave is decided by newton_polish's active set (Newton sends beta_i through
# zero; the KKT condition sign_i g_i >= -gtol holds with g = 0), not by this threshold, and the leaver's G_i
# is 0: assumption-4.2 reports it as ``zero-loss-last-stage`` and measures the 1/t law.
LEAVE_TOL = 1e-7
# A coordinate below LEAVING * max(1, max|beta|) that the flow shrinks is a candidate to leave: Newton's
# active set decides (it leaves if Newton would send it through zero and the KKT sign condition holds).
LEAVING = 1e-2
# Stage B's flow is considered converged once max |g_A| <= FLOW_GTOL_REL * max(1, max|g(0)|); Newton
# then polishes to the gradient tolerance above (or the flow goes on if Newton would change a sign).
FLOW_GTOL_REL = 1e-3
STAGE_B_SOLVER = SolverConfig(rtol=1e-5, atol=1e-5, max_steps=2000)
# Size at which stage B switches the new coordinate on (eps of THEORY.md §4 step 4; the limit is eps -> 0).
STAGE_B_EPS = 1e-6


@dataclass(frozen=True)
class Stage:
    """Stage k of Algorithm 1. ``coordinate``/``sign``: the coordinate i_k that activated at T_k (None at
    stage 0); ``b``, ``beta``, ``grad`` = g(beta^k) [p]; ``margin``: (second smallest - smallest) /
    smallest Delta of the argmin that chose i_k (inf with a single candidate, None at stage 0);
    ``left``: coordinates that shrank to zero in this stage's stage B."""

    k: int
    T: float
    coordinate: int | None
    sign: int
    b: torch.Tensor
    beta: torch.Tensor
    grad: torch.Tensor
    support: tuple[int, ...]
    loss: float
    margin: float | None
    left: tuple[int, ...]

    def to_dict(self) -> dict:
        def num(x):
            return x if x is None or math.isfinite(x) else ("inf" if x > 0 else "-inf")

        return {"k": self.k, "T": num(self.T), "coordinate": self.coordinate, "sign": self.sign,
                "support": list(self.support), "loss": self.loss, "margin": num(self.margin),
                "left": list(self.left)}


class StageStatus(str, Enum):
    """Why Algorithm 1 stopped."""

    COMPLETE = "complete"  # no coordinate can activate: T_{K+1} = inf
    MAX_STAGES = "max_stages"  # the stage budget ran out
    STAGE_B_FAILED = "stage_b_failed"  # a stage B found no stationary point


@dataclass(frozen=True)
class StageSequence:
    """The stages of Algorithm 1 in time order; ``status`` (a :class:`StageStatus`; text is converted) says
    why it stopped; ``message`` says more.
    A tie (Assumption 4.2b) or a coordinate that left with its gradient pointing outward (4.2c) shows as
    a Delta of 0 and a ``margin`` of 0; the stages go on so a check can name them."""

    stages: tuple[Stage, ...]
    status: str
    message: str
    gtol: float
    names: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "status", StageStatus(self.status))

    def name(self, i: int | None) -> str:
        if i is None:
            return "-"
        return self.names[i] if i < len(self.names) else f"beta[{i}]"

    def to_dict(self) -> dict:
        return {"stages": [s.to_dict() for s in self.stages]}

    def delta(self, k: int) -> torch.Tensor:
        """Delta_k [p]: the time each coordinate outside A_k needs to activate from stage k (stage A)."""
        s = self.stages[k]
        return time_to_activate(s.b, s.grad, s.support, self.gtol)

    def runner_up(self, k: int) -> int | None:
        """The coordinate with the smallest Delta_{k-1} other than the one stage k activated (None if no other
        is finite): the runner-up of stage k's argmin, either of the two in an exact tie."""
        delta = self.delta(k - 1)
        for c in torch.argsort(delta).tolist():
            if c != self.stages[k].coordinate:
                return c if math.isfinite(float(delta[c])) else None
        return None

    def first_activations(self) -> list[tuple[float, int, int]]:
        """[(T_k, i_k, sign)]: the first time each coordinate activates, in time order."""
        seen, out = set(), []
        for s in self.stages[1:]:
            if s.coordinate not in seen:
                seen.add(s.coordinate)
                out.append((s.T, s.coordinate, s.sign))
        return out

    def stage_at(self, tau: torch.Tensor) -> torch.Tensor:
        """The stage k with T_k <= tau < T_{k+1} for each tau (the last stage extends to infinity)."""
        starts = torch.tensor([s.T for s in self.stages], dtype=torch.float64)
        return (torch.searchsorted(starts, torch.as_tensor(tau, dtype=torch.float64), right=True) - 1).clamp_min(0)

    def b_at(self, tau: torch.Tensor) -> torch.Tensor:
        """The piecewise-linear limit b(tau) [len(tau), p]: b^k - G^k (tau - T_k) off A_k on [T_k, T_{k+1}],
        constant on A_k."""
        tau = torch.as_tensor(tau, dtype=torch.float64)
        k = self.stage_at(tau)
        out = torch.empty(len(tau), len(self.stages[0].b), dtype=torch.float64)
        for j, s in enumerate(self.stages):
            rows = k == j
            if bool(rows.any()):
                moving = torch.ones_like(s.b, dtype=torch.bool)
                moving[list(s.support)] = False
                out[rows] = s.b - moving * s.grad * (tau[rows, None] - s.T)
        return out

    def table(self) -> str:
        """One line per stage: time, the coordinate that activated, loss, margin, leavers, support."""
        head = f"{'k':>3} {'T_k':>10} {'activated':>12} {'loss':>11} {'margin':>9} {'left':>12}  support"
        lines = [head, "-" * (len(head) + 20)]
        for s in self.stages:
            margin = "-" if s.margin is None else ("inf" if math.isinf(s.margin) else f"{s.margin:.3g}")
            new = "-" if s.coordinate is None else f"{'+' if s.sign > 0 else '-'}{self.name(s.coordinate)}"
            left = ",".join(self.name(i) for i in s.left) or "-"
            support = " ".join(f"{'+' if s.beta[i] > 0 else '-'}{self.name(i)}" for i in s.support[:8])
            support += f" (+{len(s.support) - 8} more)" if len(s.support) > 8 else ""
            lines.append(f"{s.k:>3} {s.T:>10.5g} {new:>12} {s.loss:>11.4e} {margin:>9} {left:>12}  {support or '-'}")
        lines.append(f"status: {self.status.value} ({self.message})")
        return "\n".join(lines)


def time_to_activate(b: torch.Tensor, G: torch.Tensor, support, gtol: float) -> torch.Tensor:
    """Delta_k(i) of stage A (THEORY.md §4, step 1); inf on the support and where |G_i| <= gtol."""
    delta = torch.where(G < 0, (1 - b) / (-G), (1 + b) / G)
    delta = torch.where(G.abs() > gtol, delta, torch.full_like(delta, math.inf))
    delta[list(support)] = math.inf
    return delta.clamp_min(0.0)


def argmin_margin(delta: torch.Tensor) -> float:
    """(second smallest - smallest) / smallest Delta; inf with one finite candidate. A smallest Delta of 0
    (the coordinate activates at the same instant as the previous one: a tie) gives 0."""
    finite = torch.sort(delta[torch.isfinite(delta)]).values
    if len(finite) < 2:
        return math.inf
    lo, second = float(finite[0]), float(finite[1])
    return (second - lo) / lo if lo > 0 else 0.0


def algorithm1(model: DiagonalModel, eps: float = STAGE_B_EPS, max_stages: int | None = None,
               newton: bool = True, max_flow_time: float = 1e7, progress=None) -> StageSequence:
    """Run Algorithm 1 on ``model`` (THEORY.md §4). ``eps``: size of the new coordinate at the start of stage B;
    ``max_stages`` defaults to 2p + 2 (every coordinate can enter, leave and re-enter once);
    ``progress(label, fraction)`` hears which stage B runs (``verifier.context.Progress``)."""
    p = model.p
    dev = model.device
    max_stages = 2 * p + 2 if max_stages is None else max_stages
    beta = torch.zeros(p, dtype=torch.float64, device=dev)
    G = model.grad_b(beta)
    scale = max(1.0, float(G.abs().max()))
    gtol = GTOL_REL * scale
    b = torch.zeros(p, dtype=torch.float64, device=dev)
    stage = Stage(0, 0.0, None, 0, b.cpu(), beta.cpu(), G.cpu(), (), float(model.loss_b(beta)), None, ())
    stages = [stage]
    names = tuple(model.coordinate_names())
    status, message = StageStatus.COMPLETE, "no coordinate can activate (every Delta is infinite)"
    while True:
        delta = time_to_activate(b, G, stage.support, gtol)
        if not bool(torch.isfinite(delta).any()):
            break
        if len(stages) > max_stages:
            status, message = StageStatus.MAX_STAGES, f"stopped after {max_stages} stages"
            break
        i = int(torch.argmin(delta))
        d = float(delta[i])
        margin = argmin_margin(delta)
        off = torch.ones(p, dtype=torch.bool, device=dev)
        off[list(stage.support)] = False
        b = torch.where(off, b - G * d, b)
        sign = 1 if G[i] < 0 else -1
        b[i] = float(sign)
        start = beta.clone()
        start[i] = sign * eps
        support = tuple(sorted(set(stage.support) | {i}))
        label = f"Algorithm 1 stage {stage.k + 1} (T={stage.T + d:.4g}, {names[i]})"
        if progress is not None:
            progress(label, None)
        beta, left, ok, why = stage_b(model, start, support, i, gtol, scale, newton, max_flow_time,
                                      None if progress is None else (lambda f, label=label: progress(label, f)))
        if not ok:
            status, message = StageStatus.STAGE_B_FAILED, f"stage {stage.k + 1} (activating {names[i]}): {why}"
            break
        for j in left:
            b[j] = 1.0 if start[j] > 0 else -1.0
        G = model.grad_b(beta)
        support = tuple(j for j in support if j not in left)
        stage = Stage(stage.k + 1, stage.T + d, i, sign, b.cpu().clone(), beta.cpu(), G.cpu(), support,
                      float(model.loss_b(beta)), margin, tuple(left))
        stages.append(stage)
    return StageSequence(tuple(stages), status, message, gtol, names)


def stage_b(model: DiagonalModel, start: torch.Tensor, support: tuple[int, ...], new: int, gtol: float,
            scale: float, newton: bool, max_flow_time: float, progress=None
            ) -> tuple[torch.Tensor, list[int], bool, str]:
    """Gradient flow on ``support`` from ``start`` (balanced weights) to a stationary point.

    Integrates in chunks of doubling length, the first log(1/eps) / |g_new|: twice the time the new
    coordinate needs to grow from eps to order one (balanced weights: beta_i' = -2 |beta_i| g_i). After
    each chunk, coordinates the flow shrinks below LEAVE_TOL leave; once the gradient is below
    FLOW_GTOL_REL * scale on every coordinate except those still shrinking below LEAVING, the active-set
    Newton polish is tried. Returns (beta, left, ok, reason)."""
    beta = start.clone()
    active = list(support)
    left: list[int] = []
    g_new = abs(float(model.grad_b(beta)[new]))
    chunk = max(1.0, math.log(1.0 / abs(float(beta[new]))) / g_new)
    elapsed = 0.0
    while elapsed < max_flow_time:
        u = beta.abs().sqrt()
        flow = ReducedFlow.from_uv(model, u[None], (beta.sign() * u)[None], [1.0], STAGE_B_SOLVER.atol)
        traj = integrate(flow, chunk, STAGE_B_SOLVER, n_out=2, progress=progress)
        if traj.status[0] is not Status.SUCCESS:
            return beta, left, False, f"the flow stopped: {traj.status[0].message}"
        beta = traj.beta[0, -1].to(start.device)
        elapsed += chunk
        g = model.grad_b(beta)
        big = max(1.0, float(beta.abs().max()))
        shrinking = [j for j in active if float(beta[j] * g[j]) > 0 and abs(float(beta[j])) <= LEAVING * big]
        gone = [j for j in shrinking if abs(float(beta[j])) <= LEAVE_TOL * big]
        if gone:
            beta[gone] = 0.0
            left += gone
            active = [j for j in active if j not in gone]
            g = model.grad_b(beta)
        if not active:
            return beta, left, False, "every coordinate of the support shrank to zero"
        rest = [j for j in active if j not in shrinking]
        if not rest or float(g[rest].abs().max()) <= FLOW_GTOL_REL * scale:
            polished = newton_polish(model, beta, active, gtol) if newton else None
            if polished is not None:
                return polished[0], left + polished[1], True, ""
            if float(g[active].abs().max()) <= gtol:
                return beta, left, True, ""
        chunk *= 2.0
    return beta, left, False, f"no stationary point within flow time {max_flow_time:g}"


def newton_polish(model: DiagonalModel, beta: torch.Tensor, active: list[int], gtol: float,
                  max_iter: int = 12) -> tuple[torch.Tensor, list[int]] | None:
    """Active-set Newton on g_A(beta) = 0 from a point the flow brought close to a stationary point.

    A coordinate that Newton would send through zero (or to |beta_j| <= LEAVE_TOL) is set to zero and
    leaves A, provided the flow does not push it back (sign_j g_j >= -gtol at the end: the KKT condition
    of the sign-constrained problem). Returns (beta, left) once |g_A| <= gtol without raising the loss;
    None otherwise (singular restricted Hessian, no convergence), and the flow goes on."""
    x, A, left = beta.clone(), list(active), []
    sign = beta.sign()
    tol = LEAVE_TOL * max(1.0, float(beta.abs().max()))
    for _ in range(max_iter):
        idx = torch.tensor(A, device=beta.device)
        g = model.grad_b(x)
        if float(g[idx].abs().max()) <= 1e-3 * gtol:
            break
        H = model.hessian_columns(x[None], idx)[0][idx]  # [K, K]
        try:
            step = torch.linalg.solve(H, -g[idx])
        except RuntimeError:  # singular restricted Hessian (Assumption 4.3 fails): keep the flow's point
            return None
        new = x[idx] + step
        out = (new.sign() != sign[idx]) | (new.abs() <= tol)
        if bool(out.all()):
            return None
        if bool(out.any()):
            gone = idx[out]
            x[gone] = 0.0
            left += gone.tolist()
            A = [j for j in A if j not in set(gone.tolist())]
            continue
        x[idx] = new
    g = model.grad_b(x)
    converged = float(g[A].abs().max()) <= gtol
    kkt = all(float(sign[j] * g[j]) >= -gtol for j in left)
    descent = float(model.loss_b(x)) <= float(model.loss_b(beta)) + gtol
    return (x, left) if converged and kkt and descent else None
