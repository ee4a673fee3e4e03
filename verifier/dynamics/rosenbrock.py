"""A batched, device-agnostic Rodas4 integrator for stiff autonomous ODEs y' = f(y).

Why our own: the reduced gradient flow is stiff on plateaus (THEORY.md §3), so an implicit method with the
exact Jacobian is needed for a cost that does not grow with log(1/alpha); scipy's Radau/BDF handle one
trajectory on the CPU and raise on non-finite Newton iterates, and the torch ODE libraries
(torchdiffeq, torchode) ship explicit methods only. Rodas4 (Hairer & Wanner, Solving ODEs II, IV.7) is
L-stable, stiffly accurate, order 4 with an embedded order-3 error estimate, and needs no Newton
iteration: one Jacobian, one LU and six right-hand sides per step, all batched over samples.

Three parts: :func:`rosenbrock_step` (one trial step of a batch), :class:`StepSizeController` (accept or
reject, and the next step size) and :func:`solve` (the loop: per-sample time, step size and
:class:`Status`, torchode-style). Everything per sample is a tensor: the loop has no Python loop over
samples and a few host synchronisations per step (how many samples are still running, which need a new
Jacobian). A trial step that yields inf/NaN is rejected and retried with a quarter of the step, never fatal.

Two methods (``method=``): Rodas4 (the default) and ROS34PW2 (Rang & Angermann 2005), a Rosenbrock-W
method: order 3 (embedded order 2), stiffly accurate, which keeps its order with any approximation W of the
Jacobian, so :func:`solve` reuses its Jacobian across accepted steps and refreshes it only when the step
controller asks (after a rejected step with an old Jacobian, or after ``JacobianPolicy.max_age`` steps); four
stages, three new right-hand sides per step. Rodas4's order conditions assume the exact Jacobian, so it
refreshes it at every accepted step. Which is cheaper depends on the tolerance: benchmarks/README.md compares
both on the alpha ladder (work and accuracy side by side). A rejected step keeps its Jacobian (the state did
not move) and only refactors I / (h gamma) - J, which is cheap (p^3 next to a Hessian of the loss).

``rtol`` and ``atol`` may be one number or one per sample [B] (per-sample error budgets, THEORY.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .trajectory import Status


@dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in the form G K_i = f(y + sum_j A_ij K_j) + sum_j C_ij / h K_j with
    G = I / (h gamma) - J; y_new = y + sum_i M_i K_i, and the error estimate sum_i E_i K_i (E None: the
    last stage K_s, as in Rodas4), of local order ``order`` (the order the step controller uses).
    ``w_method``: the order holds with any approximation of J (the Jacobian may be reused)."""

    name: str
    gamma: float
    A: tuple[tuple[float, ...], ...]
    C: tuple[tuple[float, ...], ...]
    M: tuple[float, ...]
    order: int
    E: tuple[float, ...] | None = None
    w_method: bool = False

    @property
    def stages(self) -> int:
        return len(self.M)

    @classmethod
    def from_row_form(cls, name: str, gamma: float, alpha, Gamma, b, b_hat, order: int, w_method: bool):
        """Convert the published (alpha, Gamma, b, b_hat) form, (I - h gamma J) k_i = h f(y + sum alpha_ij
        k_j) + h J sum Gamma_ij k_j, with Gamma's diagonal gamma, to this form (Hairer & Wanner II, IV.7:
        A = alpha Gamma^-1, C = diag(1/gamma) - Gamma^-1, M = b Gamma^-1, E = (b - b_hat) Gamma^-1)."""
        s = len(b)
        G = torch.tensor(Gamma, dtype=torch.float64) + gamma * torch.eye(s, dtype=torch.float64)
        Gi = torch.linalg.inv(G)
        A = torch.tensor(alpha, dtype=torch.float64) @ Gi
        C = torch.eye(s, dtype=torch.float64) / gamma - Gi
        bt, bh = torch.tensor(b, dtype=torch.float64), torch.tensor(b_hat, dtype=torch.float64)
        rows = lambda X: tuple(tuple(float(x) for x in X[i, :i]) for i in range(s))  # noqa: E731
        return cls(name, gamma, rows(A), rows(C), tuple((bt @ Gi).tolist()), order,
                   tuple(((bt - bh) @ Gi).tolist()), w_method)


RODAS4 = RosenbrockTableau(
    name="rodas4",
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

# ROS34PW2 (Rang & Angermann, BIT 45 (2005) 761-787), in its published coefficients: a W-method of order 3
# with an embedded order-2 solution; tests/test_rosenbrock.py measures both orders with an inexact Jacobian.
_G = 0.435866521508459
ROS34PW2 = RosenbrockTableau.from_row_form(
    "ros34pw2", _G,
    alpha=((0, 0, 0, 0), (0.87173304301691801, 0, 0, 0), (0.84457060015369423, -0.11299064236484185, 0, 0),
           (0, 0, 1, 0)),
    Gamma=((0, 0, 0, 0), (-0.87173304301691801, 0, 0, 0), (-0.90338057013044082, 0.054180672388095326, 0, 0),
           (0.24212380706095346, -1.2232505839045147, 0.54526025533510214, 0)),
    b=(0.24212380706095346, -1.2232505839045147, 1.5452602553351020, _G),
    b_hat=(0.37810903145819369, -0.096042292212423178, 0.5, 0.2179332607542295),
    order=3, w_method=True)
METHODS = {t.name: t for t in (RODAS4, ROS34PW2)}


@dataclass(frozen=True)
class JacobianPolicy:
    """When a W-method refreshes its Jacobian: after a rejected trial step made with a Jacobian older than
    the current point, or once it is ``max_age`` accepted steps old (at the latest)."""

    max_age: int = 4

RHS = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepLimit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (y, f(y), idx) -> h_max


def rosenbrock_step(f: RHS, y: torch.Tensor, f0: torch.Tensor, J: torch.Tensor, h: torch.Tensor, idx: torch.Tensor,
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
    err = K[-1] if tableau.E is None else sum(e * k for e, k in zip(tableau.E, K))
    return y + sum(m * k for m, k in zip(tableau.M, K)), err


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

    rtol: float | torch.Tensor  # one number, or one per sample of the rows error() sees
    atol: float | torch.Tensor
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

    def error(self, y: torch.Tensor, y_new: torch.Tensor, err: torch.Tensor, rtol=None, atol=None) -> torch.Tensor:
        """The scaled RMS error norm of each sample; inf where the trial step is not finite. ``rtol`` and
        ``atol`` (numbers or [k, 1] per sample) replace the controller's own."""
        rtol = self.rtol if rtol is None else rtol
        atol = self.atol if atol is None else atol
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
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
    states ``y[b, :count[b]]`` [n] and slopes ``f[b, :count[b]]`` [n]; ``rtol``, ``atol`` [B] the
    tolerances each sample was solved at."""

    t: torch.Tensor
    y: torch.Tensor
    f: torch.Tensor
    count: torch.Tensor
    nfev: torch.Tensor
    njev: torch.Tensor
    nsteps: torch.Tensor
    status: tuple[Status, ...]
    rtol: torch.Tensor | None = None
    atol: torch.Tensor | None = None


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


def solve(f: RHS, jac: RHS, y0: torch.Tensor, t_end: float, *, rtol, atol,
          max_steps: int = 5000, progress: Callable[[float], None] | None = None,
          progress_every: int = 8, controller: StepSizeController | None = None,
          max_step: StepLimit | None = None, method: RosenbrockTableau = RODAS4,
          jacobian_policy: JacobianPolicy = JacobianPolicy()) -> Solution:
    """Integrate y' = f(y) from t = 0 to ``t_end`` for a batch y0 [B, n].

    ``f(y, idx)`` and ``jac(y, idx)`` evaluate the samples ``idx`` (rows of y) and return [len(idx), n]
    and [len(idx), n, n]. ``rtol``, ``atol``: numbers or one per sample [B]. ``max_step(y, f(y), idx)``, if
    given, caps each sample's next step [len(idx)]; ``progress(fraction)``, if given, is called every
    ``progress_every`` steps with the smallest t / t_end of the running samples; ``controller`` defaults to
    :class:`StepSizeController` at the method's order; ``method``: :data:`RODAS4` or :data:`ROS34PW2` (a
    W-method: its Jacobian is refreshed as ``jacobian_policy`` says, not at every step).
    """
    B, n = y0.shape
    dev = y0.device
    ctl = controller or StepSizeController(rtol=0.0, atol=0.0, order=method.order)
    rtol_b = torch.as_tensor(rtol, dtype=y0.dtype, device=dev).expand(B)[:, None]
    atol_b = torch.as_tensor(atol, dtype=y0.dtype, device=dev).expand(B)[:, None]
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
    fresh = torch.ones(B, dtype=torch.bool, device=dev)  # f_now belongs to the current y
    age = torch.zeros(B, dtype=torch.long, device=dev)  # accepted steps since J was evaluated
    memory = torch.tensor([0.0, 1.0, float("nan")], dtype=y0.dtype, device=dev).repeat(B, 1)  # see judge
    iteration = 0
    while len(idx):
        iteration += 1
        rec.reserve(iteration + 1)
        stale = idx[~fresh[idx]]
        if len(stale):
            f_now[stale] = f(y[stale], stale)
            nfev[stale] += 1
            fresh[stale] = True
            rec.add_slopes(stale, f_now[stale])
        # Rodas4: a new J at every new point; a W-method: after a rejection with an old J, or when too old.
        old = age[idx] > 0
        if method.w_method:
            old &= (memory[idx, 0] > 0) | (age[idx] >= jacobian_policy.max_age)
        renew = idx[old]
        if len(renew):
            J[renew] = jac(y[renew], renew)
            njev[renew] += 1
            age[renew] = 0
        ti, yi = t[idx], y[idx]
        hi = torch.minimum(h[idx], t_end - ti)
        if max_step is not None:
            hi = torch.minimum(hi, max_step(yi, f_now[idx], idx))
        y_new, err = rosenbrock_step(f, yi, f_now[idx], J[idx], hi, idx, method)
        nfev[idx] += method.stages - 1
        attempts[idx] += 1
        norm = ctl.error(yi, y_new, err, rtol_b[idx], atol_b[idx])
        accept, factor, memory[idx] = ctl.judge(norm, hi, memory[idx])
        ti = torch.where(accept, ti + hi, ti)
        t[idx], y[idx] = ti, torch.where(accept[:, None], y_new, yi)
        rec.add_points(idx, ti, y_new, accept)
        fresh[idx] &= ~accept
        age[idx] += accept.long()
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
                    status=tuple(_CODES[c] for c in code.tolist()), rtol=rtol_b[:, 0], atol=atol_b[:, 0])


_CODES = (Status.SUCCESS, Status.MAX_STEPS, Status.STEP_TOO_SMALL)
