"""The adaptive alpha ladder (docs/THEORY.md §5.0): a check whose verdict is undecided only because an error
still shrinks at the smallest alpha extends the ladder rung by rung, instead of stopping at a fixed alpha.

The flow's cost does not grow with log(1/alpha) (THEORY.md §3: measured, gradient evaluations even fall), so
where the ladder stops is a choice. The extension rungs are ``EXTENSION_LOG_INV_ALPHAS`` = L = log(1/alpha) of
2000, 5000, 1e4, 2e4, 5e4, 1e5, taken in order beyond the ladder's smallest alpha; the last is the cap
(``CAP_LOG_INV_ALPHA``): a verdict still undecided there is inconclusive with reason ``ladder-exhausted``. An
error that converges like 1/L needs L ~ C / tolerance: the zero-loss leaver of THEORY.md §5.3 gives beta
errors of ~33 / L on its last plateau, so tolerances of 1e-2 are met near L = 3000 and 3e-4 near the cap.

The finished rungs are reused: ``ctx.ladder`` is never solved again, and each added rung is solved once per
context (cached on it) and shared by every check that asks for it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from ..config import format_alpha
from ..dynamics.trajectory import Trajectory

EXTENSION_LOG_INV_ALPHAS = (2000.0, 5000.0, 1e4, 2e4, 5e4, 1e5)
CAP_LOG_INV_ALPHA = EXTENSION_LOG_INV_ALPHAS[-1]


def fit_rate(L: list[float], err: list[float]) -> float | None:
    """Least-squares slope r of log err = log C - r log L over the finite positive errors (None with fewer than
    two distinct L): the rate at which an error falls along the ladder (theorem-4.5, rank-increments)."""
    pts = [(math.log(l), math.log(e)) for l, e in zip(L, err) if e > 0 and math.isfinite(e)]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    x, y = np.array(pts).T
    return float(-np.polyfit(x, y, 1)[0])


def solve_rung(ctx, log_inv_alpha: float) -> Trajectory:
    """One more rung of ``ctx``'s ladder: the flow from alpha theta0 (the ladder's theta0) to ``ctx.horizon``, on
    the same output grid, solved once per context. The same call :attr:`Context.ladder` makes, for one alpha."""
    from ..dynamics.flow import solve_flow

    cache = ctx.__dict__.setdefault("_ladder_rungs", {})
    if log_inv_alpha not in cache:
        cache[log_inv_alpha] = solve_flow(
            ctx.model, ctx.theta0(1), (log_inv_alpha,), ctx.horizon, ctx.config.solver,
            n_out=len(ctx.ladder.tau),
            progress=lambda f: ctx.progress(f"alpha ladder: extending to alpha={format_alpha(log_inv_alpha)}", f))
    return cache[log_inv_alpha]


def concat(a: Trajectory, b: Trajectory) -> Trajectory:
    """The runs of ``a`` and then ``b`` (the same tau grid) as one batch."""
    if a.tau.shape != b.tau.shape or not torch.allclose(a.tau, b.tau.to(a.tau.device)):
        raise ValueError("ladder rungs must share the rescaled time grid")

    def cat(x, y):
        return torch.cat([x, y.to(x.device)])

    return replace(a, log_inv_alpha=cat(a.log_inv_alpha, b.log_inv_alpha), beta=cat(a.beta, b.beta),
                   b=cat(a.b, b.b), loss=cat(a.loss, b.loss), nfev=cat(a.nfev, b.nfev), njev=cat(a.njev, b.njev),
                   status=a.status + b.status, crossing_tau=cat(a.crossing_tau, b.crossing_tau),
                   crossing_sign=cat(a.crossing_sign, b.crossing_sign),
                   **({"rtol": cat(a.rtol, b.rtol), "atol": cat(a.atol, b.atol)}
                      if a.rtol is not None and b.rtol is not None else {"rtol": None, "atol": None}))


def extend(ctx, undecided: Callable[[Trajectory], str | None]) -> tuple[Trajectory, list[dict]]:
    """``ctx.ladder``, extended one rung at a time while ``undecided(trajectory)`` says why the verdict is not
    yet decided (None: decided) and a rung below the smallest alpha is left. Returns the trajectory and a
    record of every added rung: ``{"alpha", "log_inv_alpha", "why"}`` (``why``: what was undecided before it)."""
    traj, added = ctx.ladder, []
    while (why := undecided(traj)) is not None:
        smallest = float(traj.log_inv_alpha.max())
        nxt = next((L for L in EXTENSION_LOG_INV_ALPHAS if L > smallest), None)
        if nxt is None:
            break
        traj = concat(traj, solve_rung(ctx, nxt))
        added.append({"alpha": format_alpha(nxt), "log_inv_alpha": nxt, "why": why})
    return traj, added


def describe(added: list[dict]) -> str:
    """One sentence for a message: the rungs added and why the first was needed ("" if none)."""
    if not added:
        return ""
    return (f"the ladder was extended to alpha={added[-1]['alpha']} (added "
            + ", ".join(a["alpha"] for a in added) + f") because {added[0]['why']}")
