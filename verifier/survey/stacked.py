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

from dataclasses import dataclass, replace

import torch

from ..checks.registry import REGISTRY
from ..config import SolverConfig
from ..dynamics import rosenbrock
from ..dynamics.flow import ReducedFlow, trajectory
from ..dynamics.trajectory import Trajectory


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

    def _per_draw(self, idx: torch.Tensor, evaluate) -> torch.Tensor:
        """``evaluate(flow, sel, rows, scale)`` for each draw's rows of ``idx`` (positions ``sel`` in idx, rows
        ``local[idx[sel]]`` of that draw's flow, its horizon ``scale`` [k]), assembled in the order of idx."""
        owner = self.owner[idx]
        out = None
        for m in torch.unique(owner).tolist():
            sel = (owner == m).nonzero().squeeze(1)
            val = evaluate(self.flows[m], sel, self.local[idx[sel]], self.scale[idx[sel]])
            if out is None:
                out = val.new_empty(len(idx), *val.shape[1:])
            out[sel] = val
        return out

    def rhs(self, S: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """dS/dt' = H dS/dtau."""
        return self._per_draw(idx, lambda flow, sel, rows, H: flow.rhs(S[sel], rows) * H[:, None])

    def jac(self, S: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self._per_draw(idx, lambda flow, sel, rows, H: flow.jac(S[sel], rows) * H[:, None, None])

    def max_step(self, S: torch.Tensor, dS: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Each draw's :meth:`ReducedFlow.max_step` in the time t': slopes dS/dtau = (dS/dt') / H, and a step
        of h in tau is h / H in t'."""
        return self._per_draw(idx, lambda flow, sel, rows, H: flow.max_step(S[sel], dS[sel] / H[:, None], rows) / H)


def solve_stacked(flows: list[ReducedFlow], horizons: list[float], solver: SolverConfig = SolverConfig(),
                  n_out: int = 241, tolerances: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Trajectory]:
    """:func:`verifier.dynamics.flow.integrate` of every flow to its own horizon, in one batched solve;
    ``tolerances``: (rtol, atol) per row of the stack (the flows' samples in order), else the solver's."""
    stack = StackedFlow.of(flows, horizons)
    S0 = torch.zeros(len(stack.owner), flows[0].log_a0.shape[1], dtype=torch.float64, device=stack.scale.device)
    rtol, atol = (solver.rtol, solver.atol) if tolerances is None else tolerances
    sol = rosenbrock.solve(stack.rhs, stack.jac, S0, 1.0, rtol=rtol, atol=atol,
                           max_steps=solver.max_steps, max_step=stack.max_step)
    out = []
    for m, (flow, H) in enumerate(zip(flows, horizons)):
        rows = (stack.owner == m).nonzero().squeeze(1)
        # back to rescaled time tau = H t': times times H, slopes dS/dtau = (dS/dt') / H
        draw = replace(sol, t=sol.t[rows] * H, y=sol.y[rows], f=sol.f[rows] / H, count=sol.count[rows],
                       nfev=sol.nfev[rows], njev=sol.njev[rows], nsteps=sol.nsteps[rows],
                       status=tuple(sol.status[r] for r in rows.tolist()), rtol=sol.rtol[rows], atol=sol.atol[rows])
        out.append(trajectory(flow, draw, H, n_out))
    return out


def prefill_ladders(contexts: list, ids: list[str]) -> None:
    """When a check of ``ids`` reads ``ctx.ladder`` (the flow for every alpha of the ladder, ``CheckSpec.reads``),
    compute it for every context in one batched solve and leave it in the contexts' caches; each equals what the
    context computes alone up to rounding (module docstring). Contexts with full weights, or whose Algorithm 1
    (which sets the horizon) raises, are left to compute their own, so the error is reported by their check."""
    if not any("ladder" in REGISTRY[i].reads for i in ids):  # declared with @register(..., reads=...)
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
    budgets = [c.ladder_tolerances() for c in eligible]  # each context's error budget (context.py)
    flows = [ReducedFlow.from_init(c.model, c.theta0(1).expand(len(c.log_inv_alphas), -1), c.log_inv_alphas,
                                   atol.to(c.model.device)) for c, (_, atol) in zip(eligible, budgets)]
    tolerances = tuple(torch.cat([b[k] for b in budgets]) for k in (0, 1))
    for c, traj in zip(eligible, solve_stacked(flows, [c.horizon for c in eligible], eligible[0].config.solver,
                                               tolerances=tolerances)):
        c.ladder = traj
