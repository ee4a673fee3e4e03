"""One :class:`Trajectory` type for every way of training (exact flow, GD, SGD, Adam)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


# The error of S that a solve at (rtol, atol) leaves is at most this times its local tolerance at the largest
# |S|: measured 0.4-1.0x on diag-linear and the toy (benchmarks/README.md, "error budget"); 4 for safety.
GLOBAL_ERROR_FACTOR = 4.0


class Status(str, Enum):
    """Per-sample outcome of a run, with an actionable message."""

    SUCCESS = "success"
    MAX_STEPS = "max_steps"
    STEP_TOO_SMALL = "step_too_small"
    DIVERGED = "diverged"

    @property
    def message(self) -> str:
        return {
            "success": "reached the horizon",
            "max_steps": "ran out of steps before the horizon: raise SolverConfig.max_steps or loosen rtol/atol",
            "step_too_small": "the step size collapsed (non-finite values, or an error estimate that would not "
                              "shrink): check the model for non-smooth or overflowing terms, or loosen atol",
            "diverged": "the iterates became non-finite: lower the learning rate",
        }[self.value]


@dataclass(frozen=True)
class Trajectory:
    """A batch of B runs sampled on a shared grid of rescaled times tau = t / log(1/alpha).

    beta [B, T, p]; b [B, T, p] are the log-scale weights b = S / log(1/alpha) with
    S = log|a(t) / a(0)|, a = u + v (THEORY.md §3); loss [B, T]. ``crossing_tau`` [B, p] is the first rescaled
    time at which |b_i| reaches 1 (NaN if never), ``crossing_sign`` its sign. ``nfev``/``njev`` count
    gradient and Jacobian (Hessian) evaluations per sample. ``rtol``, ``atol`` [B]: the tolerances of each
    sample's exact-flow solve (None for discrete training); :meth:`solver_error` turns them into a bound.
    """

    method: str
    log_inv_alpha: torch.Tensor
    tau: torch.Tensor
    beta: torch.Tensor
    b: torch.Tensor
    loss: torch.Tensor
    nfev: torch.Tensor
    njev: torch.Tensor
    status: tuple[Status, ...]
    crossing_tau: torch.Tensor
    crossing_sign: torch.Tensor
    rtol: torch.Tensor | None = None
    atol: torch.Tensor | None = None

    def solver_error(self) -> torch.Tensor:
        """A bound [B] on the integrator's error in S = b log(1/alpha) over the run (THEORY.md §3, error
        budget): GLOBAL_ERROR_FACTOR x (atol + rtol max|S|), the local tolerance of the largest state.
        Zero where no tolerance is recorded."""
        if self.rtol is None or self.atol is None:
            return torch.zeros(self.b.shape[0], dtype=torch.float64)
        s_max = torch.nan_to_num(self.b.abs(), nan=0.0).flatten(1).amax(1) * self.log_inv_alpha
        return GLOBAL_ERROR_FACTOR * (self.atol + self.rtol * s_max)

    @property
    def ok(self) -> torch.Tensor:
        return torch.tensor([s is Status.SUCCESS for s in self.status])

    def first_crossings(self, sample: int) -> list[tuple[float, int, int]]:
        """[(tau, coordinate, sign)] of sample ``sample``, in time order."""
        ct, cs = self.crossing_tau[sample], self.crossing_sign[sample]
        idx = torch.nonzero(torch.isfinite(ct)).squeeze(1).tolist()
        return sorted((float(ct[i]), i, int(cs[i])) for i in idx)


def grid_crossings(tau: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First crossing of |b_i| = 1 on a sampled grid, by linear interpolation. b [B, T, p]."""
    B, T, p = b.shape
    out = torch.full((B, p), float("nan"), dtype=b.dtype)
    sign = torch.zeros(B, p, dtype=torch.long)
    above = b.abs() >= 1.0
    for bi in range(B):
        for i in torch.nonzero(above[bi].any(0)).squeeze(1).tolist():
            k = int(torch.nonzero(above[bi, :, i])[0])
            s = 1 if b[bi, k, i] > 0 else -1
            if k == 0:
                out[bi, i] = tau[0]
            else:
                x0, x1 = s * b[bi, k - 1, i], s * b[bi, k, i]
                w = (1 - x0) / (x1 - x0)
                out[bi, i] = tau[k - 1] + w * (tau[k] - tau[k - 1])
            sign[bi, i] = s
    return out, sign
