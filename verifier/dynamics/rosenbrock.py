"""A batched, device-agnostic Rodas4 integrator for stiff autonomous ODEs y' = f(y).

Why our own: the reduced gradient flow is stiff on plateaus (THEORY.md §3), so an implicit method with the
exact Jacobian is needed for a cost that does not grow with log(1/alpha); scipy's Radau/BDF handle one
trajectory on the CPU and raise on non-finite Newton iterates, and the torch ODE libraries
(torchdiffeq, torchode) ship explicit methods only. Rodas4 (Hairer & Wanner, Solving ODEs II, IV.7) is
L-stable, stiffly accurate, order 4 with an embedded order-3 error estimate, and needs no Newton
iteration: one Jacobian, one LU and six right-hand sides per step, all batched over samples.

Three parts: :func:`rodas4_step` (one trial step of a batch), :class:`StepSizeController` (accept or
reject, and the next step size) and :func:`solve` (the loop: per-sample time, step size and
:class:`Status`, torchode-style). Everything per sample is a tensor: the loop has no Python loop over
samples and a few host synchronisations per step (how many samples are still running, which need a new
Jacobian). A trial step that yields inf/NaN is rejected and retried with a quarter of the step, never fatal.

Why the Jacobian is not reused across steps: Rodas4's order conditions assume the exact Jacobian (it is not
a W-method), and the steps of the reduced flow are spent in the transitions, where the Jacobian changes
from step to step; on plateaus a step already spans the whole plateau. A rejected step keeps its
Jacobian (the state did not move) and only refactors I / (h gamma) - J, which is cheap (p^3 next to a
Hessian of the loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .trajectory import Status


@dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in the form G K_i = f(y + sum_j A_ij K_j) + sum_j C_ij / h K_j with
    G = I / (h gamma) - J; y_new = y + sum_i M_i K_i, and the last stage K_s is the error estimate, of
    local order ``order``."""

    gamma: float
    A: tuple[tuple[float, ...], ...]
    C: tuple[tuple[float, ...], ...]
    M: tuple[float, ...]
    order: int

    @property
    def stages(self) -> int:
        return len(self.M)


RODAS4 = RosenbrockTableau(
    gamma=0.25,
    A=((),
       (1.544,),
       (0.9466785280815826, 0.2557011698983284),
       (3.314825187068521, 2.896124015972201, 0.9986419139977817),
       (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950),
       (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0)),
    C=((),
       (-5.6688,),
       (-2.430093356833875, -0.2063599157091915),
       (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
       (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
       (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054)),
    M=(1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0, 1.0),
    order=4,
)

RHS = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepLimit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (y, f(y), idx) -> h_max


def rodas4_step(f: RHS, y: torch.Tensor, f0: torch.Tensor, J: torch.Tensor, h: torch.Tensor, idx: torch.Tensor,
                tableau: RosenbrockTableau = RODAS4) -> tuple[torch.Tensor, torch.Tensor]:
    """One trial step of size h [k] from y [k, n] with slope f0 = f(y) and Jacobian J [k, n, n] for the
    samples idx [k]. Returns (y_new, error estimate) [k, n]; costs ``tableau.stages - 1`` calls of f."""
    n = y.shape[1]
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    lu, piv = torch.linalg.lu_factor(eye / (h * tableau.gamma)[:, None, None] - J)
    hcol = h[:, None]
    K: list[torch.Tensor] = []
    for s in range(tableau.stages):
        if s == 0:
            rhs = f0
        else:
            Ys = y + sum(a * k for a, k in zip(tableau.A[s], K))
            rhs = f(Ys, idx) + sum(c * k for c, k in zip(tableau.C[s], K)) / hcol
        K.append(torch.linalg.lu_solve(lu, piv, rhs.unsqueeze(-1)).squeeze(-1))
    return y + sum(m * k for m, k in zip(tableau.M, K)), K[-1]


@dataclass(frozen=True)
class StepSizeController:
    """Accept a trial step when RMS(err / (atol + rtol max(|y|, |y_new|))) <= 1. The next step is h times

        min(SAFETY err^(-1/order),  SAFETY (h / h_prev) (err_prev / err^2)^(1/order))

    clamped to [MIN_FACTOR, MAX_FACTOR]: the elementary controller and Gustafsson's predictive one (Hairer &
    Wanner II, IV.8, eq. 8.21, as in their RODAS code), whose second term sees the error growing from one
    accepted step (h_prev, err_prev) to the next, as it does all the way into a transition of the reduced
    flow, and shrinks the step before it is rejected. After a rejection the step does not grow; a non-finite
    trial step gives h * NONFINITE_FACTOR. The loop stops a sample whose step falls below
    MIN_STEP_REL * max(1, t)."""

    rtol: float
    atol: float
    order: int = RODAS4.order
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 6.0
    nonfinite_factor: float = 0.25
    err_floor: float = 1e-2  # err_prev is remembered as at least this (a tiny error predicts nothing)
    predictive: bool = True
    initial_fraction: float = 1e-3  # first step: this fraction of the horizon ...
    initial_move: float = 0.1  # ... or the time the fastest component needs to move by this much
    min_step_rel: float = 1e-13

    def initial_step(self, f0: torch.Tensor, t_end: float) -> torch.Tensor:
        speed = f0.abs().amax(dim=1).clamp_min(1e-12)
        return torch.clamp(self.initial_move / speed, max=self.initial_fraction * t_end)

    def error(self, y: torch.Tensor, y_new: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """The scaled RMS error norm of each sample; inf where the trial step is not finite."""
        scale = self.atol + self.rtol * torch.maximum(y.abs(), y_new.abs())
        norm = (err / scale).pow(2).mean(dim=1).sqrt()
        return torch.where(torch.isfinite(y_new).all(dim=1), norm, torch.full_like(norm, float("inf")))

    def judge(self, norm: torch.Tensor, h: torch.Tensor, memory: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(accept, factor for the next step, new memory) from the error norms and step sizes [k] and the
        memory [k, 3] of each sample: (last trial rejected, h_prev, err_prev), err_prev NaN before the
        first accepted step."""
        rejected, h_prev, err_prev = memory.unbind(1)
        finite = torch.isfinite(norm)
        accept = finite & (norm <= 1.0)
        e = norm.clamp_min(1e-10)
        factor = self.safety * e ** (-1.0 / self.order)
        if self.predictive:
            trend = self.safety * (h / h_prev) * (err_prev / (e * e)) ** (1.0 / self.order)
            factor = torch.where(accept & torch.isfinite(trend), torch.minimum(factor, trend), factor)
        factor = factor.clamp(self.min_factor, self.max_factor)
        factor = torch.where(accept & (rejected > 0), factor.clamp(max=1.0), factor)
        factor = torch.where(finite, factor, torch.full_like(norm, self.nonfinite_factor))
        kept = torch.stack([(~accept).to(h.dtype), h, e.clamp_min(self.err_floor)], 1)
        memory = torch.where(accept[:, None], kept, torch.cat([kept[:, :1], memory[:, 1:]], 1))
        return accept, factor, memory


@dataclass(frozen=True)
class Solution:
    """Accepted steps, padded: sample b has ``count[b]`` points, times ``t[b, :count[b]]`` (then +inf),
    states ``y[b, :count[b]]`` [n] and slopes ``f[b, :count[b]]`` [n]."""

    t: torch.Tensor
    y: torch.Tensor
    f: torch.Tensor
    count: torch.Tensor
    nfev: torch.Tensor
    njev: torch.Tensor
    nsteps: torch.Tensor
    status: tuple[Status, ...]


class _Record:
    """Growing buffers of the accepted points of every sample (a slot per iteration at most)."""

    def __init__(self, B: int, n: int, like: torch.Tensor):
        self.t = torch.full((B, 64), float("inf"), dtype=like.dtype, device=like.device)
        self.y = like.new_zeros(B, 64, n)
        self.f = like.new_zeros(B, 64, n)
        self.count = torch.zeros(B, dtype=torch.long, device=like.device)

    def reserve(self, slots: int):
        cap = self.t.shape[1]
        if slots > cap:
            extra = max(slots, 2 * cap) - cap
            self.t = torch.cat([self.t, self.t.new_full((self.t.shape[0], extra), float("inf"))], 1)
            self.y = torch.cat([self.y, self.y.new_zeros(self.y.shape[0], extra, self.y.shape[2])], 1)
            self.f = torch.cat([self.f, self.f.new_zeros(self.f.shape[0], extra, self.f.shape[2])], 1)

    def add_points(self, idx: torch.Tensor, t: torch.Tensor, y: torch.Tensor, accepted: torch.Tensor):
        """Write (t, y) of samples idx at their next slot; only the accepted ones keep it."""
        pos = self.count[idx]
        self.t[idx, pos] = torch.where(accepted, t, self.t[idx, pos])
        self.y[idx, pos] = y
        self.count[idx] += accepted.long()

    def add_slopes(self, idx: torch.Tensor, f: torch.Tensor):
        """The slope at the last accepted point of samples idx."""
        self.f[idx, self.count[idx] - 1] = f


def solve(f: RHS, jac: RHS, y0: torch.Tensor, t_end: float, *, rtol: float, atol: float,
          max_steps: int = 5000, progress: Callable[[float], None] | None = None,
          progress_every: int = 8, controller: StepSizeController | None = None,
          max_step: StepLimit | None = None) -> Solution:
    """Integrate y' = f(y) from t = 0 to ``t_end`` for a batch y0 [B, n].

    ``f(y, idx)`` and ``jac(y, idx)`` evaluate the samples ``idx`` (rows of y) and return [len(idx), n]
    and [len(idx), n, n]. ``max_step(y, f(y), idx)``, if given, caps each sample's next step [len(idx)];
    ``progress(fraction)``, if given, is called every ``progress_every`` steps with the smallest t / t_end
    of the running samples; ``controller`` defaults to :class:`StepSizeController` at rtol, atol.
    """
    B, n = y0.shape
    dev = y0.device
    ctl = controller or StepSizeController(rtol=rtol, atol=atol)
    y = y0.clone()
    t = torch.zeros(B, dtype=y0.dtype, device=dev)
    idx = torch.arange(B, device=dev)
    f_now, J = f(y, idx), jac(y, idx)
    rec = _Record(B, n, y0)
    rec.add_points(idx, t, y, torch.ones(B, dtype=torch.bool, device=dev))
    rec.add_slopes(idx, f_now)
    h = ctl.initial_step(f_now, t_end)
    nfev = torch.ones(B, dtype=torch.long, device=dev)
    njev = torch.ones(B, dtype=torch.long, device=dev)
    nsteps = torch.zeros(B, dtype=torch.long, device=dev)
    attempts = torch.zeros(B, dtype=torch.long, device=dev)
    code = torch.zeros(B, dtype=torch.long, device=dev)  # index into _CODES
    fresh = torch.ones(B, dtype=torch.bool, device=dev)  # f_now, J belong to the current y
    memory = torch.tensor([0.0, 1.0, float("nan")], dtype=y0.dtype, device=dev).repeat(B, 1)  # see judge
    iteration = 0
    while len(idx):
        iteration += 1
        rec.reserve(iteration + 1)
        stale = idx[~fresh[idx]]
        if len(stale):
            f_now[stale], J[stale] = f(y[stale], stale), jac(y[stale], stale)
            nfev[stale] += 1
            njev[stale] += 1
            fresh[stale] = True
            rec.add_slopes(stale, f_now[stale])
        ti, yi = t[idx], y[idx]
        hi = torch.minimum(h[idx], t_end - ti)
        if max_step is not None:
            hi = torch.minimum(hi, max_step(yi, f_now[idx], idx))
        y_new, err = rodas4_step(f, yi, f_now[idx], J[idx], hi, idx)
        nfev[idx] += RODAS4.stages - 1
        attempts[idx] += 1
        accept, factor, memory[idx] = ctl.judge(ctl.error(yi, y_new, err), hi, memory[idx])
        ti = torch.where(accept, ti + hi, ti)
        t[idx], y[idx] = ti, torch.where(accept[:, None], y_new, yi)
        rec.add_points(idx, ti, y_new, accept)
        fresh[idx] &= ~accept
        nsteps[idx] += accept.long()
        h[idx] = hi * factor
        finished = ti >= t_end * (1 - 1e-12)
        out_of_steps = ~finished & (attempts[idx] >= max_steps)
        too_small = ~finished & ~out_of_steps & (h[idx] < ctl.min_step_rel * ti.clamp_min(1.0))
        code[idx] = torch.where(out_of_steps, 1, torch.where(too_small, 2, 0))
        idx = idx[~(finished | out_of_steps | too_small)]
        if progress is not None and iteration % progress_every == 0 and len(idx):
            progress(float(t[idx].min()) / t_end)
    stale = (~fresh).nonzero().squeeze(1)  # the slope at each final point, one batched call
    if len(stale):
        rec.add_slopes(stale, f(y[stale], stale))
        nfev[stale] += 1
    return Solution(t=rec.t, y=rec.y, f=rec.f, count=rec.count, nfev=nfev, njev=njev, nsteps=nsteps,
                    status=tuple(_CODES[c] for c in code.tolist()))


_CODES = (Status.SUCCESS, Status.MAX_STEPS, Status.STEP_TOO_SMALL)
