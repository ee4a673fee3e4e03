"""Our exact flow side by side with peer integrators (issue 11, item 4): one table.

For each problem (a preset) and alpha, every method integrates gradient flow from alpha * theta0 to the
rescaled horizon of the run (1.25 x Algorithm 1's last stage time) and is tuned to the same accuracy: the
transition time of every coordinate within ACCURACY of a tight reference (our flow at rtol = atol = 1e-9).
An adaptive method tries the tolerances TOLS in order and is reported at the first that is accurate enough;
GD tries step sizes 1, 1/2, 1/4, ... and is reported at the largest that is stable and accurate. A run past
``--cap`` seconds is stopped and reported as "> cap".

Methods: (a) ours: batched Rodas4 on the reduced coordinates with the exact Jacobian (rtol = atol = tol);
(b) GD on (u, v), as the paper trains; (c) torchdiffeq dopri5 on (u, v) (its implicit_adams is a fixed-step
predictor-corrector with fixed-point iterations, no use on a stiff problem, so it is not run); (d) scipy
solve_ivp Radau and LSODA on (u, v), Jacobians by finite differences; (e) scipy Radau on the reduced
coordinates with our torch Hessian as its Jacobian. Every method uses the same gradient (the model's
``grad_b`` and the chain rule dL/du = v g, dL/dv = u g), so the table compares integrators. Transition
times follow ``flow._crossings``: |S_i| reaches L - CROSSING_MARGIN, plus CROSSING_MARGIN / slope, with
S_i = log|a_i / a_i(0)| where |a_i| >= |c_i|, else -log|c_i / c_i(0)| (a = u + v, c = u - v; THEORY.md §3).

Run: ``python benchmarks/compare.py [--problems diag-linear,toy-attention] [--alphas 1e-2,1e-4,1e-8,1e-16]
[--ours-further 1e-64,1e-256,exp(-10000)] [--cap 60]`` (needs the ``bench`` extra for torchdiffeq).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy
import torch
from scipy.integrate import solve_ivp

from verifier.config import RunConfig, SolverConfig, format_alpha, parse_alphas
from verifier.context import Context
from verifier.dynamics.flow import CROSSING_MARGIN, ReducedFlow, solve_flow

ACCURACY = 1e-3
TOLS = (1e-4, 1e-6, 1e-8, 1e-10)
GD_STEPS = tuple(2.0**-k for k in range(12))
REFERENCE = SolverConfig(rtol=1e-9, atol=1e-9, max_steps=20000)
GRID = 4001  # output times of the peers, on which transitions are located


class OverCap(Exception):
    pass


class Budget:
    """Counts gradient (and Hessian) evaluations of one run and stops it past ``cap`` seconds."""

    def __init__(self, cap: float):
        self.cap, self.start, self.grads, self.hessians = cap, time.perf_counter(), 0, 0

    def grad(self, k: int = 1):
        self.grads += k
        if time.perf_counter() - self.start > self.cap:
            raise OverCap

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Row:
    problem: str
    alpha: str
    method: str
    setting: str
    seconds: float | None  # None: over the cap
    grads: int | None
    hessians: int = 0
    error: float = math.nan


def crossings(tau: np.ndarray, S: np.ndarray, L: float) -> np.ndarray:
    """Transition time of each coordinate from S [T, p] sampled at tau (flow._crossings' rule)."""
    level = L - CROSSING_MARGIN
    out = np.full(S.shape[1], np.nan)
    x = np.abs(S) - level
    for i in range(S.shape[1]):
        hit = np.nonzero((x[1:, i] >= 0) & (x[:-1, i] < 0))[0]
        if len(hit):
            k = hit[0]
            w = -x[k, i] / (x[k + 1, i] - x[k, i])
            slope = (x[k + 1, i] - x[k, i]) / (tau[k + 1] - tau[k])
            out[i] = tau[k] + w * (tau[k + 1] - tau[k]) + CROSSING_MARGIN / slope
    return out


def error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest transition-time difference; inf when a coordinate crosses in one run and not the other."""
    if not np.array_equal(np.isnan(got), np.isnan(ref)):
        return math.inf
    both = ~np.isnan(ref)
    return float(np.abs(got[both] - ref[both]).max()) if both.any() else 0.0


class Problem:
    """A preset at one alpha: the model, theta0, L and the horizon; (u, v) helpers for the peers."""

    def __init__(self, name: str, L: float):
        self.ctx = Context(RunConfig(preset=name), argv=["compare"])
        self.name, self.L, self.model = name, L, self.ctx.model
        self.theta0 = self.ctx.theta0(1)[0].cpu()
        self.horizon = self.ctx.horizon
        p = self.model.p
        u0, v0 = self.theta0[:p], self.theta0[p:]
        self.log_a0 = (u0 + v0).abs().log().numpy() - L
        self.log_c0 = (u0 - v0).abs().log().numpy() - L
        self.tau = np.linspace(0.0, self.horizon, GRID)

    def neg_grad_uv(self, theta: torch.Tensor) -> torch.Tensor:
        p = self.model.p
        u, v = theta[..., :p], theta[..., p:]
        g = self.model.grad_b(u * v)
        return -torch.cat([v * g, u * g], -1)

    def S_of_uv(self, theta: np.ndarray) -> np.ndarray:
        """S [T, p] from (u, v) [T, 2p] by the larger of a = u + v and c = u - v (a c is conserved, so
        log|a / a(0)| = -log|c / c(0)| = S; the smaller one is lost to cancellation in u +- v)."""
        p = self.model.p
        with np.errstate(divide="ignore"):
            la = np.log(np.abs(theta[:, :p] + theta[:, p:]))
            lc = np.log(np.abs(theta[:, :p] - theta[:, p:]))
        return np.where(la >= lc, la - self.log_a0, self.log_c0 - lc)

    @property
    def y0(self) -> np.ndarray:
        return math.exp(-self.L) * self.theta0.numpy()


def ours(pb: Problem, solver: SolverConfig) -> tuple[np.ndarray, float, int, int]:
    start = time.perf_counter()
    tr = solve_flow(pb.model, pb.theta0[None], [pb.L], pb.horizon, solver)
    seconds = time.perf_counter() - start
    assert tr.ok.all(), tr.status
    return tr.crossing_tau[0].numpy(), seconds, int(tr.nfev[0]), int(tr.njev[0])


def ours_tuned(pb: Problem, tol: float, budget: Budget) -> np.ndarray:
    """Our flow at rtol = atol = tol (its cost counted into ``budget``)."""
    got, _, budget.grads, budget.hessians = ours(pb, SolverConfig(rtol=tol, atol=tol))
    return got


def gd(pb: Problem, lr: float, budget: Budget) -> np.ndarray:
    """GD on (u, v) with step lr (plain time per step lr), S recorded every step."""
    theta = torch.as_tensor(pb.y0)
    steps = math.ceil(pb.horizon * pb.L / lr)
    S = np.empty((steps + 1, pb.model.p))
    S[0] = 0.0
    for k in range(steps):
        budget.grad()
        theta = theta + lr * pb.neg_grad_uv(theta)
        if not torch.isfinite(theta).all():
            raise FloatingPointError("unstable")
        S[k + 1] = pb.S_of_uv(theta.numpy()[None])[0]
    return crossings(np.arange(steps + 1) * lr / pb.L, S, pb.L)


def dopri5(pb: Problem, tol: float, budget: Budget) -> np.ndarray:
    from torchdiffeq import odeint

    def f(t, y):
        budget.grad()
        return pb.neg_grad_uv(y)

    y = odeint(f, torch.as_tensor(pb.y0), torch.as_tensor(pb.tau * pb.L), rtol=tol,
               atol=tol * math.exp(-pb.L) * 1e-3, method="dopri5")
    return crossings(pb.tau, pb.S_of_uv(y.numpy()), pb.L)


def scipy_uv(pb: Problem, tol: float, budget: Budget, method: str) -> np.ndarray:
    def f(t, y):
        budget.grad()
        return pb.neg_grad_uv(torch.from_numpy(y)).numpy()

    sol = solve_ivp(f, (0.0, pb.horizon * pb.L), pb.y0, method=method, t_eval=pb.tau * pb.L, rtol=tol,
                    atol=tol * math.exp(-pb.L) * 1e-3)
    if sol.status != 0:
        raise FloatingPointError(sol.message)
    return crossings(pb.tau, pb.S_of_uv(sol.y.T), pb.L)


def radau_reduced(pb: Problem, tol: float, budget: Budget) -> np.ndarray:
    """Radau on S(tau) with our exact Jacobian -L H diag(dbeta/dS) (torch Hessian columns)."""
    flow = ReducedFlow.from_init(pb.model, pb.theta0[None].to(pb.model.device), [pb.L], tol)
    idx = torch.zeros(1, dtype=torch.long, device=pb.model.device)

    def f(t, S):
        budget.grad()
        return flow.rhs(torch.from_numpy(S)[None].to(pb.model.device), idx)[0].cpu().numpy()

    def jac(t, S):
        budget.hessians += 1
        return flow.jac(torch.from_numpy(S)[None].to(pb.model.device), idx)[0].cpu().numpy()

    sol = solve_ivp(f, (0.0, pb.horizon), np.zeros(pb.model.p), method="Radau", jac=jac, t_eval=pb.tau,
                    rtol=tol, atol=tol)
    if sol.status != 0:
        raise FloatingPointError(sol.message)
    return crossings(pb.tau, sol.y.T, pb.L)


OURS = "ours: Rodas4 on reduced S"
PEERS = {  # key: (name in the table, run, settings tried in order, what the setting is)
    "ours": (OURS, ours_tuned, TOLS, "tol"),
    "gd": ("GD on (u, v)", gd, GD_STEPS, "lr"),
    "dopri5": ("torchdiffeq dopri5 on (u, v)", dopri5, TOLS, "rtol"),
    "radau": ("scipy Radau on (u, v)", lambda pb, tol, b: scipy_uv(pb, tol, b, "Radau"), TOLS, "rtol"),
    "lsoda": ("scipy LSODA on (u, v)", lambda pb, tol, b: scipy_uv(pb, tol, b, "LSODA"), TOLS, "rtol"),
    "radau-reduced": ("scipy Radau, reduced S + our Hessian", radau_reduced, TOLS, "rtol"),
}


def run_peer(pb: Problem, alpha: str, key: str, ref: np.ndarray, cap: float) -> Row:
    """The cheapest setting of a peer that is accurate to ACCURACY (see the module docstring)."""
    name, run, settings, what = PEERS[key]
    last_error = math.nan
    for setting in settings:
        budget = Budget(cap)
        try:
            got = run(pb, setting, budget)
        except OverCap:
            return Row(pb.name, alpha, name, f"{what}={setting:g}", None, None, error=last_error)
        except FloatingPointError:
            continue  # unstable (GD) or failed: try the next setting
        last_error = error(got, ref)
        if last_error <= ACCURACY:
            return Row(pb.name, alpha, name, f"{what}={setting:g}", budget.seconds, budget.grads, budget.hessians,
                       last_error)
    return Row(pb.name, alpha, name, f"none of {what}={settings[0]:g}..{settings[-1]:g}", math.inf, None,
               error=last_error)


def table(rows: list[Row]) -> str:
    head = ("| problem | alpha | method | setting | wall s | x ours | gradient evals | x ours | Hessians | "
            "max transition error |")
    lines = [head, "|" + "---|" * 10]
    ours_row = {}
    for r in rows:
        if r.method == OURS:
            ours_row[(r.problem, r.alpha)] = r
    for r in rows:
        o = ours_row.get((r.problem, r.alpha))
        wall = "> cap" if r.seconds is None else ("-" if math.isinf(r.seconds) else f"{r.seconds:.2f}")
        grads = "-" if r.grads is None else str(r.grads)
        xw = "-" if (r.seconds is None or math.isinf(r.seconds) or o is None) else f"{r.seconds / o.seconds:.1f}"
        xg = "-" if (r.grads is None or o is None) else f"{r.grads / o.grads:.1f}"
        err = "-" if math.isnan(r.error) else f"{r.error:.1e}"
        lines.append(f"| {r.problem} | {r.alpha} | {r.method} | {r.setting} | {wall} | {xw} | {grads} | {xg} | "
                     f"{r.hessians or '-'} | {err} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="diag-linear,toy-attention")
    ap.add_argument("--alphas", default="1e-2,1e-4,1e-8,1e-16")
    ap.add_argument("--ours-further", default="1e-64,1e-256,exp(-10000)")
    ap.add_argument("--peers", default=",".join(k for k in PEERS if k != "ours"),
                    help="comma-separated: " + ", ".join(k for k in PEERS if k != "ours"))
    ap.add_argument("--cap", type=float, default=60.0, help="seconds per peer run before it is stopped")
    args = ap.parse_args(argv)
    rows: list[Row] = []
    peers = [p for p in args.peers.split(",") if p and p != "ours"]
    for name in args.problems.split(","):
        for L, with_peers in [(L, True) for L in parse_alphas(args.alphas)] + [
                (L, False) for L in parse_alphas(args.ours_further or None) or ()]:
            pb, alpha = Problem(name, L), format_alpha(L)
            ref = ours(pb, REFERENCE)[0]
            for peer in ["ours"] + (peers if with_peers else []):
                rows.append(run_peer(pb, alpha, peer, ref, args.cap))
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), scipy {scipy.__version__}; accuracy {ACCURACY:g} in transition "
          f"times against our flow at rtol = atol = {REFERENCE.rtol:g}; cap {args.cap:g} s per run")
    print(table(rows))


if __name__ == "__main__":
    main()
