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

from dataclasses import dataclass

import torch

from ..config import SolverConfig
from ..models.base import DiagonalModel
from . import rosenbrock
from .trajectory import Trajectory

# A Jacobian column j is kept while L^2 dbeta_j/dS > NEGLIGIBLE_COLUMN * atol (module docstring).
NEGLIGIBLE_COLUMN = 1e-5
# The step cap of ReducedFlow.max_step: no exponential log(a0^2 e^{2S}) below ONSET_LEVEL (beta_i ~ 1e-9,
# where a coordinate starts to move the gradient at the default atol) may pass it in one step, and none above
# it may grow by more than e^ONSET_GROWTH. Chosen on the toy (rejections 115 -> 10 at alpha = 1e-256).
ONSET_LEVEL = -20.0
ONSET_GROWTH = 8.0


def onset_cap(q: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """The longest step [k] over the last axis of log-sizes ``q`` growing at ``rate``: none below ONSET_LEVEL
    passes it, none at or above it grows by more than ONSET_GROWTH; (ONSET_LEVEL - q) / rate or
    ONSET_GROWTH / rate, whichever is larger, for the growing ones (THEORY.md §3)."""
    room = torch.clamp(ONSET_LEVEL - q, min=ONSET_GROWTH)
    return torch.where(rate > 0, room / rate, torch.full_like(rate, float("inf"))).amin(1)


@dataclass(frozen=True)
class ReducedFlow:
    """The reduced ODE for a batch of initialisations: log|a0|, log|c0| and signs per sample [B, p]."""

    model: DiagonalModel
    L: torch.Tensor  # [B]
    log_a0: torch.Tensor
    log_c0: torch.Tensor
    sign_a: torch.Tensor
    sign_c: torch.Tensor
    atol: float | torch.Tensor  # one number, or one per sample [B]: it sets which Jacobian columns count

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
        """-L H(beta) diag(dbeta/dS) with, per sample, only the columns whose dbeta/dS is not negligible.
        Samples with the same column set share one batched Hessian call (a loop over the distinct sets, not
        the samples), so a small alpha never pays for a large alpha's columns."""
        beta, dbeta = self.beta(S, idx)
        L = self.L[idx]
        atol = torch.as_tensor(self.atol, dtype=S.dtype, device=S.device).expand(len(self.L))[idx, None]
        keep = dbeta * (L * L)[:, None] > NEGLIGIBLE_COLUMN * atol
        sets, group = torch.unique(keep, dim=0, return_inverse=True)
        k, p = S.shape
        J = torch.zeros(k, p, p, dtype=S.dtype, device=S.device)
        for g, cols in enumerate(sets):
            cols = cols.nonzero().squeeze(1)
            if len(cols):
                rows = (group == g).nonzero()  # [r, 1]
                H = self.model.hessian_columns(beta[rows[:, 0]], cols)  # [r, p, len(cols)]
                J[rows[:, :, None], torch.arange(p, device=S.device)[:, None], cols] = (
                    -L[rows, None] * H * dbeta[rows, cols][:, None, :])
        return J

    def max_step(self, S: torch.Tensor, dS: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The longest step [k] that takes no growing exponential q = log(a0^2 e^{2S}) (or of c0^2 e^{-2S})
        past ONSET_LEVEL, and none at or above it up by more than ONSET_GROWTH: a coordinate still of size
        alpha^2 grows at the rate 2 |dS/dtau| ~ L |g| and would otherwise be jumped into its transition in one
        step (a rejected step, often several). Per coordinate: (ONSET_LEVEL - q) / rate or
        ONSET_GROWTH / rate, whichever is larger."""
        qa, qc = 2 * (self.log_a0[idx] + S), 2 * (self.log_c0[idx] - S)
        return torch.minimum(onset_cap(qa, 2 * dS), onset_cap(qc, -2 * dS))

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


def _crossings(sol: rosenbrock.Solution, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Transition time of each coordinate of each sample [B, p]: when b_i = S_i / L reaches +-1 along its
    linear (exponential growth) path. A coordinate whose limit value is small may saturate just below
    |b| = 1, so we locate |S_i| = L - CROSSING_MARGIN on the step's Hermite cubic (bisection to float64
    resolution, all samples and coordinates at once) and add the CROSSING_MARGIN / |dS_i/dtau| the linear
    path needs to reach L. Unlike a fixed threshold on |beta| (THEORY.md §5), this is unbiased to first
    order. NaN where a coordinate never gets there (sign 0)."""
    B, _, p = sol.y.shape
    out = torch.full((B, p), float("nan"), dtype=sol.y.dtype, device=sol.y.device)
    sign = torch.zeros(B, p, dtype=torch.long, device=sol.y.device)
    level = (L - CROSSING_MARGIN)[:, None]
    valid = torch.arange(sol.t.shape[1], device=sol.t.device)[None, 1:] < sol.count[:, None]  # step k -> k+1
    for s in (1, -1):
        x = s * sol.y - level[:, None]  # [B, K, p]; crosses from < 0 to >= 0
        hit = (x[:, 1:] >= 0) & (x[:, :-1] < 0) & valid[..., None] & (level[:, None] > 0)
        found = hit.any(1)
        k = hit.long().argmax(1)  # the first hit [B, p]
        t0, t1 = sol.t.gather(1, k), sol.t.gather(1, k + 1)
        args = (t0, t1, sol.y.gather(1, k[:, None]).squeeze(1), sol.y.gather(1, k[:, None] + 1).squeeze(1),
                sol.f.gather(1, k[:, None]).squeeze(1), sol.f.gather(1, k[:, None] + 1).squeeze(1))
        args = tuple(torch.where(found, a, 0.0) for a in args)
        lo, hi = args[0], torch.where(found, args[1], 1.0)
        args = (args[0], hi) + args[2:]
        for _ in range(60):  # bisection on the cubic to float64 resolution
            mid = (lo + hi) / 2
            up = s * hermite(*args, mid) - level >= 0
            hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
        slope = hermite_slope(*args, hi).abs()
        tc = hi + torch.where(slope > 0, CROSSING_MARGIN / slope, 0.0)
        better = found & ~(tc >= out)  # NaN (nothing yet) or later: take this one
        out, sign = torch.where(better, tc, out), torch.where(better, s, sign)
    return out, sign


def solve_flow(model: DiagonalModel, theta0: torch.Tensor, log_inv_alphas, horizon: float,
               solver: SolverConfig = SolverConfig(), n_out: int = 241, progress=None,
               tolerances: tuple[torch.Tensor, torch.Tensor] | None = None) -> Trajectory:
    """Gradient flow from alpha_b * theta0_b for every sample b to rescaled time ``horizon``, in one
    batched Rosenbrock solve (``solver.method``). Returns a :class:`Trajectory` sampled at ``n_out``
    rescaled times. ``tolerances``: (rtol, atol) [B] per sample, replacing the solver's (an error budget)."""
    atol = solver.atol if tolerances is None else tolerances[1]
    return integrate(ReducedFlow.from_init(model, theta0, log_inv_alphas, atol), horizon, solver, n_out,
                     progress, tolerances)


def integrate(flow: ReducedFlow, horizon: float, solver: SolverConfig = SolverConfig(), n_out: int = 241,
              progress=None, tolerances: tuple[torch.Tensor, torch.Tensor] | None = None,
              loss: bool = True) -> Trajectory:
    """Integrate a :class:`ReducedFlow` (any batch of starting states) to rescaled time ``horizon``;
    ``Trajectory.b`` is then S / L, the log-scale change since the start. ``progress(fraction)`` is
    called now and then with the fraction of the horizon the slowest sample has covered; ``tolerances``
    as in :func:`solve_flow`; ``loss`` as in :func:`trajectory`."""
    S0 = torch.zeros(flow.log_a0.shape, dtype=torch.float64, device=flow.model.device)
    rtol, atol = (solver.rtol, solver.atol) if tolerances is None else tolerances
    sol = rosenbrock.solve(flow.rhs, flow.jac, S0, horizon, rtol=rtol, atol=atol,
                           max_steps=solver.max_steps, progress=progress,
                           max_step=flow.max_step, method=rosenbrock.METHODS[solver.method])
    return trajectory(flow, sol, horizon, n_out, loss)


def trajectory(flow: ReducedFlow, sol: rosenbrock.Solution, horizon: float, n_out: int = 241,
               loss: bool = True) -> Trajectory:
    """A solve's accepted steps of ``flow`` (in rescaled time) as a :class:`Trajectory` on ``n_out`` rescaled
    times from 0 to ``horizon``: states, beta and loss on the grid, crossing times from the steps. With
    ``loss=False`` the loss is not evaluated (NaN): a caller that reads beta only saves B * n_out loss
    evaluations (on the toy, more than the solve's own gradients for a 401-point grid)."""
    model = flow.model
    B, p = flow.log_a0.shape
    dev = model.device
    tau = torch.linspace(0.0, horizon, n_out, dtype=torch.float64, device=dev)
    S_grid = _dense(sol, tau)  # [B, T, p]
    idx = torch.arange(B, device=dev)[:, None].expand(B, n_out).reshape(-1)
    beta, _ = flow.beta(S_grid.reshape(-1, p), idx)
    beta = beta.reshape(B, n_out, p)
    values = (torch.cat([model.loss_b(chunk) for chunk in beta.reshape(-1, p).split(256)]).reshape(B, n_out)
              if loss else torch.full((B, n_out), float("nan"), dtype=beta.dtype, device=dev))
    crossing_tau, crossing_sign = _crossings(sol, flow.L)
    return Trajectory(
        method="flow", log_inv_alpha=flow.L.cpu(), tau=tau.cpu(), beta=beta.cpu(),
        b=(S_grid / flow.L[:, None, None]).cpu(), loss=values.cpu(), nfev=sol.nfev.cpu(), njev=sol.njev.cpu(),
        status=sol.status, crossing_tau=crossing_tau.cpu(), crossing_sign=crossing_sign.cpu(),
        rtol=None if sol.rtol is None else sol.rtol.cpu(), atol=None if sol.atol is None else sol.atol.cpu(),
    )


def _dense(sol: rosenbrock.Solution, tau: torch.Tensor) -> torch.Tensor:
    """The Hermite interpolant of every sample's accepted steps at the grid ``tau`` [B, T, n]; NaN past a
    sample's last accepted time."""
    B, _, n = sol.y.shape
    last = sol.count - 1
    k = torch.searchsorted(sol.t, tau.expand(B, -1).contiguous(), right=True)
    k = torch.minimum(k, last[:, None]).clamp_min(1) - 1  # the step [k, k + 1] holding tau
    kk = k[..., None].expand(-1, -1, n)
    out = hermite(sol.t.gather(1, k)[..., None], sol.t.gather(1, k + 1)[..., None], sol.y.gather(1, kk),
                  sol.y.gather(1, kk + 1), sol.f.gather(1, kk), sol.f.gather(1, kk + 1), tau[None, :, None])
    out = torch.where((last >= 1)[:, None, None], out, sol.y[:, :1])
    t_last = sol.t.gather(1, last[:, None])
    return torch.where((tau[None] <= t_last * (1 + 1e-12))[..., None], out, torch.full_like(out, float("nan")))
