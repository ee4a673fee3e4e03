"""Gradient flow of a full-weight model in its own parameters theta (outside the reduced coordinates of
THEORY.md §3, which need diagonal weights), for a ladder of initialisation scales at once.

theta(0) = alpha_b theta0, d theta / d tau = -L_b grad L(theta) in rescaled time tau = t / L_b,
L_b = log(1/alpha_b). Integrator: scipy's DOP853 (explicit Runge-Kutta of order 8 with error control and
dense output) on the stacked batch, rtol = ``rtol`` and a per-sample absolute tolerance
rtol * ATOL_FRACTION * alpha_b, so weights of size alpha_b (the directions not yet learned, which decide
when the next one is) are integrated to relative accuracy too, at every alpha. An implicit method would
need the Hessian in theta every step (4 d^2 columns for one head: ~1 s at d = 8 on a CPU), more than the
explicit steps it saves at the moderate alphas used here; the price is a cost that grows like log(1/alpha)
(plateaus are stiff, THEORY.md §3), so this flow is for ladders down to alpha ~ 1e-8 - 1e-16, not 1e-256.
Rounding limits small alphas anyway: a direction whose size falls below ~rtol times the learned weights
is noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch.func import grad, jvp, vmap

from ..models.base import Model
from .trajectory import Status

ATOL_FRACTION = 1e-3


@dataclass(frozen=True)
class ParamTrajectory:
    """B runs on a shared grid of rescaled times: theta [B, T, n], loss [B, T]; ``nfev`` counts batched
    gradient evaluations (each covers every sample)."""

    log_inv_alpha: torch.Tensor
    tau: torch.Tensor
    theta: torch.Tensor
    loss: torch.Tensor
    nfev: int
    status: Status
    message: str


def solve_param_flow(model: Model, theta0: torch.Tensor, log_inv_alphas, horizon: float, *, rtol: float = 1e-8,
                     n_out: int = 401, start: torch.Tensor | None = None, t0: float = 0.0) -> ParamTrajectory:
    """Flow from alpha_b * theta0 (theta0 [n], unit scale) for every L_b in ``log_inv_alphas`` over
    rescaled times [t0, horizon]; ``start`` [B, n] continues a run from its state at t0 instead."""
    dev = model.device
    L = torch.as_tensor(list(log_inv_alphas), dtype=torch.float64)
    B, n = len(L), model.n_params
    alpha = torch.exp(-L)
    g = vmap(grad(model.loss_params))
    Ld = L.to(dev)[:, None]
    nfev = 0

    def rhs(_t, y):
        nonlocal nfev
        nfev += 1
        th = torch.from_numpy(y).to(dev).reshape(B, n)
        return (-Ld * g(th)).reshape(-1).cpu().numpy()

    y0 = (alpha[:, None] * theta0.cpu()[None]) if start is None else start.cpu()
    atol = (rtol * ATOL_FRACTION * alpha[:, None]).expand(B, n).reshape(-1).numpy()
    sol = solve_ivp(rhs, (t0, horizon), y0.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol,
                    dense_output=True)
    tau = np.linspace(t0, horizon, n_out)
    if sol.status == 0:
        theta = torch.from_numpy(sol.sol(tau).T.copy()).reshape(n_out, B, n).transpose(0, 1)
        status, message = Status.SUCCESS, ""
    else:
        reached = float(sol.t[-1])
        theta = torch.full((n_out, B, n), math.nan, dtype=torch.float64)
        ok = tau <= reached
        theta[ok] = torch.from_numpy(sol.sol(tau[ok]).T.copy()).reshape(int(ok.sum()), B, n)
        theta = theta.transpose(0, 1)
        status, message = Status.STEP_TOO_SMALL, f"DOP853 stopped at tau={reached:.4g}: {sol.message}"
    loss = vmap(vmap(model.loss_params))(theta.to(dev)).cpu()
    return ParamTrajectory(L, torch.from_numpy(tau), theta, loss, nfev, status, message)


def growth_rate(model, iters: int = 60) -> float:
    """max |eigenvalue| of the Hessian of L(theta) at theta = 0, by power iteration with Hessian-vector
    products. For a product U V^T with gradient G at zero the eigenvalues are +-sigma(G): the rate at which the
    first mode leaves zero, so the first jump comes at tau ~ 1 / rate."""
    zero = torch.zeros(model.n_params, dtype=torch.float64, device=model.device)
    g = grad(model.loss_params)
    v = torch.randn(model.n_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(zero.device)
    rate = 0.0
    for _ in range(iters):
        v = v / v.norm()
        hv = jvp(g, (zero,), (v,))[1]
        rate = float(hv.norm())
        if rate == 0.0:
            return 0.0
        v = hv
    return rate
