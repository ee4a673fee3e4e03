"""Exact gradient flow of a diagonal network in reduced coordinates (THEORY.md §3).

With a = u + v, c = u - v and S(t) = -int_0^t g(beta):
    beta = (a0^2 e^{2S} - c0^2 e^{-2S}) / 4,   dS/dt = -g(beta),   a c = u^2 - v^2 constant (Lemma 4.1).
We integrate in rescaled time tau = t / L, L = log(1/alpha): dS/dtau = -L g(beta(S)), and form
a0^2 e^{2S} as exp(2 (log|a0| + S)) with log|a0| = -L + log|u0 + v0|, so alpha = exp(-10^4) costs what
alpha = 1e-2 costs and nothing under- or overflows. The Jacobian is -L H(beta) diag(dbeta/dS) with
dbeta/dS = (a0^2 e^{2S} + c0^2 e^{-2S}) / 2; columns whose dbeta/dS is below
``1e-5 * atol / L^2`` (coordinates still of size ~alpha^2) are dropped, which changes a Rodas4 stage by
far less than the error tolerance and makes a Jacobian cost one Hessian-vector product per *active*
coordinate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import SolverConfig
from ..models.base import DiagonalModel
from . import rosenbrock
from .trajectory import Trajectory


@dataclass(frozen=True)
class ReducedFlow:
    """The reduced ODE for a batch of initialisations: log|a0|, log|c0| and signs per sample [B, p]."""

    model: DiagonalModel
    L: torch.Tensor  # [B]
    log_a0: torch.Tensor
    log_c0: torch.Tensor
    sign_a: torch.Tensor
    sign_c: torch.Tensor
    atol: float

    @classmethod
    def from_uv(cls, model: DiagonalModel, u: torch.Tensor, v: torch.Tensor, log_inv_alphas, atol: float) -> "ReducedFlow":
        """Start from any state (u, v) [B, p] (a perturbed point of a run, a stage of Algorithm 1);
        log_inv_alphas only sets the time rescaling tau = t / L. Balanced coordinates (u_i = +-v_i) are
        allowed here: log 0 = -inf makes that exponential vanish exactly, and u_i = v_i = 0 stays 0."""
        L = torch.as_tensor(list(log_inv_alphas), dtype=torch.float64, device=model.device)
        a0, c0 = (u + v).to(model.device), (u - v).to(model.device)
        return cls(model, L, a0.abs().log(), c0.abs().log(), a0.sign(), c0.sign(), atol)

    @classmethod
    def from_init(cls, model: DiagonalModel, theta0: torch.Tensor, log_inv_alphas, atol: float) -> "ReducedFlow":
        """theta0 [B, 2p] unit-scale (u0, v0); the initialisation is alpha * theta0 (needs u0 != +-v0)."""
        dev = model.device
        theta0 = theta0.to(dev, torch.float64)
        L = torch.as_tensor(list(log_inv_alphas), dtype=torch.float64, device=dev)
        u0, v0 = theta0[:, : model.p], theta0[:, model.p :]
        if bool(((u0 + v0 == 0) | (u0 - v0 == 0)).any()):
            raise ValueError("u0 = +-v0 for some coordinate: the reduced flow needs u0_i != +-v0_i (Assumption 4.2a)")
        flow = cls.from_uv(model, u0, v0, log_inv_alphas, atol)
        # alpha * theta0: log|a(0)| = log|u0 + v0| - L, the only place alpha enters (THEORY.md §3).
        return cls(model, L, flow.log_a0 - L[:, None], flow.log_c0 - L[:, None], flow.sign_a, flow.sign_c, atol)

    def beta(self, S: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """beta and dbeta/dS at S [k, p] for the samples idx [k]."""
        ea = torch.exp(2 * (self.log_a0[idx] + S))
        ec = torch.exp(2 * (self.log_c0[idx] - S))
        return (ea - ec) / 4, (ea + ec) / 2

    def rhs(self, S: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        beta, _ = self.beta(S, idx)
        return -self.L[idx, None] * self.model.grad_b(beta)

    def jac(self, S: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """-L H(beta) diag(dbeta/dS), with the Hessian columns chosen per sample: samples that keep the
        same columns share one batched call, so a small alpha never pays for a large alpha's columns."""
        beta, dbeta = self.beta(S, idx)
        L = self.L[idx]
        keep = (dbeta * (L * L)[:, None] > 1e-5 * self.atol).cpu()
        k, p = S.shape
        J = torch.zeros(k, p, p, dtype=S.dtype, device=S.device)
        groups: dict[tuple[int, ...], list[int]] = {}
        for row in range(k):
            groups.setdefault(tuple(torch.nonzero(keep[row]).squeeze(1).tolist()), []).append(row)
        for cols, rows in groups.items():
            if not cols:
                continue
            r = torch.tensor(rows, device=S.device)
            c = torch.tensor(cols, device=S.device)
            H = self.model.hessian_columns(beta[r], c)  # [len(r), p, len(c)]
            J[r[:, None, None], torch.arange(p, device=S.device)[None, :, None], c[None, None, :]] = (
                -L[r, None, None] * H * dbeta[r][:, None, c])
        return J

    def uv(self, S: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, v) from S: a = sign(a0) exp(log|a0| + S), c = sign(c0) exp(log|c0| - S)."""
        a = self.sign_a[idx] * torch.exp(self.log_a0[idx] + S)
        c = self.sign_c[idx] * torch.exp(self.log_c0[idx] - S)
        return (a + c) / 2, (a - c) / 2


def hermite(t0, t1, y0, y1, f0, f1, t):
    """Cubic Hermite interpolation on [t0, t1] at t (broadcast over trailing dims)."""
    h = t1 - t0
    s = (t - t0) / h
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
    return h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1


CROSSING_MARGIN = 3.0  # detect |S_i| = L - 3, i.e. |beta_i| ~ e^-6 (u0+v0)^2 / 4: still exponential growth


def hermite_slope(t0, t1, y0, y1, f0, f1, t):
    """d/dt of :func:`hermite`."""
    h = t1 - t0
    s = (t - t0) / h
    return ((6 * s**2 - 6 * s) * y0 + (-6 * s**2 + 6 * s) * y1) / h + (3 * s**2 - 4 * s + 1) * f0 + (3 * s**2 - 2 * s) * f1


def _crossings(sol_t, sol_y, sol_f, L: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Transition time of each coordinate: when b_i = S_i / L reaches +-1 along its linear (exponential
    growth) path. A coordinate whose limit value is small may saturate just below |b| = 1, so we locate
    |S_i| = L - CROSSING_MARGIN on the step's Hermite cubic and add the CROSSING_MARGIN / |dS_i/dtau| the
    linear path needs to reach L. Unlike a fixed threshold on |beta| (THEORY.md §5), this is unbiased to first
    order. NaN where a coordinate never gets there."""
    p = sol_y.shape[1]
    out = torch.full((p,), float("nan"), dtype=sol_y.dtype)
    sign = torch.zeros(p, dtype=torch.long)
    level = L - CROSSING_MARGIN
    if len(sol_t) < 2 or level <= 0:
        return out, sign
    for s in (1, -1):
        x = s * sol_y - level  # [k, p]; crosses from < 0 to >= 0
        hit = (x[1:] >= 0) & (x[:-1] < 0)
        for i in torch.nonzero(hit.any(0)).squeeze(1).tolist():
            k = int(torch.nonzero(hit[:, i])[0])
            lo, hi = sol_t[k].clone(), sol_t[k + 1].clone()
            args = (sol_t[k], sol_t[k + 1], sol_y[k, i], sol_y[k + 1, i], sol_f[k, i], sol_f[k + 1, i])
            for _ in range(60):  # bisection on the cubic to float64 resolution
                mid = (lo + hi) / 2
                if s * hermite(*args, mid) - level >= 0:
                    hi = mid
                else:
                    lo = mid
            slope = abs(float(hermite_slope(*args, hi)))
            tc = float(hi) + (CROSSING_MARGIN / slope if slope > 0 else 0.0)
            if math.isnan(out[i]) or tc < out[i]:
                out[i], sign[i] = tc, s
    return out, sign


def solve_flow(model: DiagonalModel, theta0: torch.Tensor, log_inv_alphas, horizon: float,
               solver: SolverConfig = SolverConfig(), n_out: int = 241) -> Trajectory:
    """Gradient flow from alpha_b * theta0_b for every sample b to rescaled time ``horizon``, in one
    batched Rodas4 solve. Returns a :class:`Trajectory` sampled at ``n_out`` rescaled times."""
    return integrate(ReducedFlow.from_init(model, theta0, log_inv_alphas, solver.atol), horizon, solver, n_out)


def integrate(flow: ReducedFlow, horizon: float, solver: SolverConfig = SolverConfig(), n_out: int = 241) -> Trajectory:
    """Integrate a :class:`ReducedFlow` (any batch of starting states) to rescaled time ``horizon``;
    ``Trajectory.b`` is then S / L, the log-scale change since the start."""
    model = flow.model
    B, p = flow.log_a0.shape
    dev = model.device
    S0 = torch.zeros(B, p, dtype=torch.float64, device=dev)
    sol = rosenbrock.solve(flow.rhs, flow.jac, S0, horizon, rtol=solver.rtol, atol=solver.atol,
                           max_steps=solver.max_steps)
    tau = torch.linspace(0.0, horizon, n_out, dtype=torch.float64, device=dev)
    S_grid = torch.stack([_dense(sol.t[b], sol.y[b], sol.f[b], tau) for b in range(B)])  # [B, T, p]
    idx = torch.arange(B, device=dev)[:, None].expand(B, n_out).reshape(-1)
    beta, _ = flow.beta(S_grid.reshape(-1, p), idx)
    beta = beta.reshape(B, n_out, p)
    loss = torch.cat([model.loss_b(chunk) for chunk in beta.reshape(-1, p).split(256)]).reshape(B, n_out)
    cross = [_crossings(sol.t[b].cpu(), sol.y[b].cpu(), sol.f[b].cpu(), float(flow.L[b])) for b in range(B)]
    return Trajectory(
        method="flow", log_inv_alpha=flow.L.cpu(), tau=tau.cpu(), beta=beta.cpu(),
        b=(S_grid / flow.L[:, None, None]).cpu(), loss=loss.cpu(), nfev=sol.nfev.cpu(), njev=sol.njev.cpu(),
        status=sol.status, crossing_tau=torch.stack([c[0] for c in cross]),
        crossing_sign=torch.stack([c[1] for c in cross]),
    )


def _dense(t: torch.Tensor, y: torch.Tensor, f: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The Hermite interpolant of accepted steps at the grid ``tau``; NaN past the last accepted time."""
    k = torch.searchsorted(t, tau, right=True).clamp(1, max(len(t) - 1, 1)) - 1
    if len(t) < 2:
        return torch.where((tau <= t[-1])[:, None], y[:1].expand(len(tau), -1), float("nan"))
    out = hermite(t[k, None], t[k + 1, None], y[k], y[k + 1], f[k], f[k + 1], tau[:, None])
    return torch.where((tau <= t[-1] * (1 + 1e-12))[:, None], out, torch.full_like(out, float("nan")))
