"""A batched, device-agnostic Rodas4 integrator for stiff autonomous ODEs y' = f(y).

Why our own: the reduced gradient flow is stiff on plateaus (THEORY.md §3), so an implicit method with the
exact Jacobian is needed for a cost that does not grow with log(1/alpha); scipy's Radau/BDF handle one
trajectory on the CPU and raise on non-finite Newton iterates, and the torch ODE libraries
(torchdiffeq, torchode) ship explicit methods only. Rodas4 (Hairer & Wanner, Solving ODEs II, IV.7) is
L-stable, stiffly accurate, order 4 with an embedded order-3 error estimate, and needs no Newton
iteration: one Jacobian, one LU and six right-hand sides per step, all batched over samples.

Each sample has its own time, step size and :class:`Status` (torchode-style). A trial step that yields
inf/NaN anywhere is rejected and retried with a quarter of the step, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .trajectory import Status

# Rodas4 in the "G K_i = f(y + sum_j A_ij K_j) + sum_j C_ij / h K_j, G = I / (h gamma) - J" form.
_GAMMA = 0.25
_A = [
    [],
    [1.544],
    [0.9466785280815826, 0.2557011698983284],
    [3.314825187068521, 2.896124015972201, 0.9986419139977817],
    [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950],
    [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0],
]
_C = [
    [],
    [-5.6688],
    [-2.430093356833875, -0.2063599157091915],
    [-0.1073529058151375, -9.594562251023355, -20.47028614809616],
    [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160],
    [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054],
]
_M = [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0, 1.0]
_ORDER = 4  # the error estimate K_6 is of local order 4


@dataclass(frozen=True)
class Solution:
    """Accepted steps per sample: times ``t[b]`` [k_b], states ``y[b]`` [k_b, n], slopes ``f[b]`` [k_b, n]."""

    t: list[torch.Tensor]
    y: list[torch.Tensor]
    f: list[torch.Tensor]
    nfev: torch.Tensor
    njev: torch.Tensor
    nsteps: torch.Tensor
    status: tuple[Status, ...]


RHS = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def solve(f: RHS, jac: RHS, y0: torch.Tensor, t_end: float, *, rtol: float, atol: float,
          max_steps: int = 5000) -> Solution:
    """Integrate y' = f(y) from t = 0 to ``t_end`` for a batch y0 [B, n].

    ``f(y, idx)`` and ``jac(y, idx)`` evaluate the samples ``idx`` (rows of y) and return [len(idx), n]
    and [len(idx), n, n]. Local error is held at RMS(err / (atol + rtol |y|)) <= 1.
    """
    B, n = y0.shape
    dev, dt = y0.device, y0.dtype
    y = y0.clone()
    t = torch.zeros(B, dtype=dt, device=dev)
    eye = torch.eye(n, dtype=dt, device=dev)
    all_idx = torch.arange(B, device=dev)
    f_now = f(y, all_idx)
    J = jac(y, all_idx)
    fresh = torch.ones(B, dtype=torch.bool, device=dev)  # f_now, J belong to the current y
    # Initial step: a small fraction of the horizon and of the time the state needs to move by 1.
    speed = f_now.abs().amax(dim=1).clamp_min(1e-12)
    h = torch.minimum(torch.full_like(t, 1e-3 * t_end), 0.1 / speed)
    nfev = torch.ones(B, dtype=torch.long, device=dev)
    njev = torch.ones(B, dtype=torch.long, device=dev)
    nsteps = torch.zeros(B, dtype=torch.long, device=dev)
    attempts = torch.zeros(B, dtype=torch.long, device=dev)
    status = [Status.SUCCESS] * B
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    ts, ys, fs = [[t[b : b + 1].clone()] for b in range(B)], [[y[b : b + 1].clone()] for b in range(B)], [
        [f_now[b : b + 1].clone()] for b in range(B)]

    while not bool(done.all()):
        idx = (~done).nonzero().squeeze(1)
        stale = idx[~fresh[idx]]
        if len(stale):
            f_now[stale] = f(y[stale], stale)
            J[stale] = jac(y[stale], stale)
            nfev[stale] += 1
            njev[stale] += 1
            fresh[stale] = True
            for b in stale.tolist():
                fs[b].append(f_now[b : b + 1].clone())
        hi = torch.minimum(h[idx], t_end - t[idx])
        yi, hcol = y[idx], hi[:, None]
        G = eye / (hi * _GAMMA)[:, None, None] - J[idx]
        lu, piv = torch.linalg.lu_factor(G)
        K: list[torch.Tensor] = []
        for s in range(6):
            if s == 0:
                Fs = f_now[idx]
            else:
                Ys = yi + sum(a * k for a, k in zip(_A[s], K))
                Fs = f(Ys, idx)
                nfev[idx] += 1
            rhs = Fs + sum(c * k for c, k in zip(_C[s], K)) / hcol if s else Fs
            K.append(torch.linalg.lu_solve(lu, piv, rhs.unsqueeze(-1)).squeeze(-1))
        y_new = yi + sum(m * k for m, k in zip(_M, K))
        scale = atol + rtol * torch.maximum(yi.abs(), y_new.abs())
        err = (K[5] / scale).pow(2).mean(dim=1).sqrt()
        finite = torch.isfinite(y_new).all(dim=1) & torch.isfinite(err)
        accept = finite & (err <= 1.0)
        factor = torch.where(finite, (0.9 * err.clamp_min(1e-10) ** (-1.0 / _ORDER)).clamp(0.2, 6.0),
                             torch.full_like(err, 0.25))
        attempts[idx] += 1
        acc = idx[accept]
        if len(acc):
            t[acc] = t[acc] + hi[accept]
            y[acc] = y_new[accept]
            fresh[acc] = False
            nsteps[acc] += 1
            for j, b in zip(accept.nonzero().squeeze(1).tolist(), acc.tolist()):
                ts[b].append(t[b : b + 1].clone())
                ys[b].append(y_new[j : j + 1])
        h[idx] = hi * factor
        finished = t[idx] >= t_end * (1 - 1e-12)
        for j, b in enumerate(idx.tolist()):
            if finished[j]:
                done[b] = True
            elif attempts[b] >= max_steps:
                done[b], status[b] = True, Status.MAX_STEPS
            elif h[b] < 1e-13 * max(1.0, float(t[b])):
                done[b], status[b] = True, Status.STEP_TOO_SMALL
    stale = (~fresh).nonzero().squeeze(1)  # the slope at each final point, one batched call
    if len(stale):
        f_end = f(y[stale], stale)
        nfev[stale] += 1
        for j, b in enumerate(stale.tolist()):
            fs[b].append(f_end[j : j + 1])
    return Solution(t=[torch.cat(x) for x in ts], y=[torch.cat(x) for x in ys], f=[torch.cat(x) for x in fs],
                    nfev=nfev, njev=njev, nsteps=nsteps, status=tuple(status))
