"""Flows of several draws of one family in one batched Rodas4 solve (a layer over ``verifier.dynamics``).

The exact flow (THEORY.md §3) is solved per batch of samples that share one model and one horizon. A survey
has many models (one per draw) with different horizons. :class:`StackedFlow` makes them one batch: row r is
(draw m, sample j); its right-hand side and Jacobian are those of draw m's :class:`ReducedFlow`, evaluated for
all rows of that draw at once, times the draw's horizon H_m, so that every row runs to t_end = 1 in the time
t' = tau / H_m. Rodas4 is invariant under that rescaling (h' = h / H, J' = H J, so G' = H G and the stages
K are unchanged; the initial step 1e-3 t_end and 0.1 / |f| map to the same tau), so each row takes the steps
the draw's own solve takes, up to rounding. What is shared: one step loop, one batched LU per step, and
the step-size control, for all draws.

Native support in ``verifier.dynamics`` would need: ``rosenbrock.solve`` with a per-sample ``t_end`` [B], and a
model whose ``grad_b``/``hessian_columns`` take the sample's data (data tensors with a leading draw axis),
so that one call evaluates every draw's rows (on an accelerator, one kernel launch instead of one per draw).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SolverConfig
from ..dynamics import rosenbrock
from ..dynamics.flow import ReducedFlow, _crossings, _dense
from ..dynamics.trajectory import Trajectory

LADDER_CHECKS = ("assumption-4.2", "theorem-4.5")  # the checks that read ctx.ladder


@dataclass(frozen=True)
class StackedFlow:
    """Rows of several :class:`ReducedFlow` s: row r is row ``local[r]`` of ``flows[owner[r]]``, its time
    scaled by ``scale[r]`` (its draw's horizon)."""

    flows: tuple[ReducedFlow, ...]
    owner: torch.Tensor
    local: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def of(cls, flows: list[ReducedFlow], horizons: list[float]) -> "StackedFlow":
        dev = flows[0].model.device
        sizes = [len(f.L) for f in flows]
        owner = torch.repeat_interleave(torch.arange(len(flows), device=dev), torch.tensor(sizes, device=dev))
        local = torch.cat([torch.arange(k, device=dev) for k in sizes])
        scale = torch.cat([torch.full((k,), float(h), dtype=torch.float64, device=dev) for k, h in zip(sizes, horizons)])
        return cls(tuple(flows), owner, local, scale)

    def _per_draw(self, method: str, S: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        owner = self.owner[idx]
        out = None
        for m in torch.unique(owner).tolist():
            sel = (owner == m).nonzero().squeeze(1)
            rows = idx[sel]
            val = getattr(self.flows[m], method)(S[sel], self.local[rows])
            val = val * self.scale[rows].reshape(-1, *[1] * (val.dim() - 1))
            if out is None:
                out = val.new_empty(len(idx), *val.shape[1:])
            out[sel] = val
        return out

    def rhs(self, S: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self._per_draw("rhs", S, idx)

    def jac(self, S: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self._per_draw("jac", S, idx)


def solve_stacked(flows: list[ReducedFlow], horizons: list[float], solver: SolverConfig = SolverConfig(),
                  n_out: int = 241) -> list[Trajectory]:
    """:func:`verifier.dynamics.flow.integrate` of every flow to its own horizon, in one batched solve."""
    stack = StackedFlow.of(flows, horizons)
    p = flows[0].log_a0.shape[1]
    R = len(stack.owner)
    S0 = torch.zeros(R, p, dtype=torch.float64, device=stack.scale.device)
    sol = rosenbrock.solve(stack.rhs, stack.jac, S0, 1.0, rtol=solver.rtol, atol=solver.atol,
                           max_steps=solver.max_steps)
    out = []
    for m, (flow, H) in enumerate(zip(flows, horizons)):
        rows = (stack.owner == m).nonzero().squeeze(1).tolist()
        # back to rescaled time tau = H t': times times H, slopes dS/dtau = (dS/dt') / H
        t = [sol.t[r] * H for r in rows]
        f = [sol.f[r] / H for r in rows]
        y = [sol.y[r] for r in rows]
        out.append(_trajectory(flow, t, y, f, [sol.status[r] for r in rows], sol.nfev[rows], sol.njev[rows],
                               H, n_out))
    return out


def _trajectory(flow: ReducedFlow, t, y, f, status, nfev, njev, horizon: float, n_out: int) -> Trajectory:
    """A draw's accepted steps (t, S, dS/dtau per sample) on the grid of ``n_out`` rescaled times, as
    ``integrate`` samples them."""
    model, dev = flow.model, flow.model.device
    B, p = flow.log_a0.shape
    tau = torch.linspace(0.0, horizon, n_out, dtype=torch.float64, device=dev)
    S_grid = torch.stack([_dense(t[b], y[b], f[b], tau) for b in range(B)])
    idx = torch.arange(B, device=dev)[:, None].expand(B, n_out).reshape(-1)
    beta = flow.beta(S_grid.reshape(-1, p), idx)[0].reshape(B, n_out, p)
    loss = torch.cat([model.loss_b(chunk) for chunk in beta.reshape(-1, p).split(256)]).reshape(B, n_out)
    cross = [_crossings(t[b].cpu(), y[b].cpu(), f[b].cpu(), float(flow.L[b])) for b in range(B)]
    return Trajectory(method="flow", log_inv_alpha=flow.L.cpu(), tau=tau.cpu(), beta=beta.cpu(),
                      b=(S_grid / flow.L[:, None, None]).cpu(), loss=loss.cpu(), nfev=nfev.cpu(), njev=njev.cpu(),
                      status=tuple(status), crossing_tau=torch.stack([c[0] for c in cross]),
                      crossing_sign=torch.stack([c[1] for c in cross]))


def prefill_ladders(contexts: list, ids: list[str]) -> None:
    """When the checks ``ids`` read ``ctx.ladder`` (the flow for every alpha of the ladder), compute it for
    every context in one batched solve and leave it in the contexts' caches; each equals what the context
    computes alone up to rounding (module docstring). Contexts with full weights, or whose Algorithm 1 (which
    sets the horizon) raises, are left to compute their own, so the error is reported by their check."""
    if not any(i in LADDER_CHECKS for i in ids):
        return
    eligible = []
    for c in contexts:
        try:
            if c.model.diagonal and c.horizon > 0:
                eligible.append(c)
        except Exception:  # noqa: BLE001 - run_check reports it as the check's inconclusive result
            continue
    if len(eligible) < 2:
        return
    flows = [ReducedFlow.from_init(c.model, c.theta0(1).expand(len(c.log_inv_alphas), -1), c.log_inv_alphas,
                                   c.config.solver.atol) for c in eligible]
    for c, traj in zip(eligible, solve_stacked(flows, [c.horizon for c in eligible], eligible[0].config.solver)):
        c.ladder = traj
