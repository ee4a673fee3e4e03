"""Shared machinery of the Appendix A protocols (Figures 9 and 10) behind Assumptions 4.3 and 4.4.

* The reference run: exact gradient flow (reduced coordinates, THEORY.md §3) from alpha * theta0 at the
  smallest alpha of the run (the paper uses its smallest alpha as "closest to the limit"), to the rescaled
  horizon; cached per Context so both checks share it.
* Conventions. A coordinate is *non-negligible* when |beta_i| > ``config.negligible``. A perturbation adds
  relative Gaussian noise to both weights of every non-negligible coordinate:
  u_i <- u_i (1 + noise z), v_i <- v_i (1 + noise z'), z, z' ~ N(0, 1) (noise = ``config.noise``): the
  paper's protocol (Figures 9, 10), *independent* noise on u and v. It changes the product beta_i by the
  factor (1 + noise z)(1 + noise z') and also the conserved quantity u_i^2 - v_i^2 (Lemma 4.1), which gradient
  flow keeps. Its *balanced* twin (:func:`perturb_both`, THEORY.md §5.5) applies the same factor to beta_i and
  keeps u_i^2 - v_i^2: the two differ by exactly the break of the conservation law.
  For gradient flow one *epoch* is the time ``optimizer.lr`` (one GD step of size lr covers time lr), so
  ``config.perturb_epochs`` epochs are the plain time perturb_epochs * lr.
* Flows run at :func:`protocol_solver` tolerances (see PROTOCOL_TOL).
* All perturbed runs of one check are ONE call to the batched integrator: each sample b gets its own
  duration D_b by the time rescaling of :class:`ReducedFlow` (L_b = D_b, rescaled horizon 1).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace

import torch

from ..config import SolverConfig, format_alpha
from ..dynamics.flow import ReducedFlow, integrate, solve_flow
from ..dynamics.trajectory import Status, Trajectory
from ..figures import Figure, Series
from ..results import CommonReason, Judgement

# A grid epoch is a plateau when its non-negligible set equals its neighbours' and beta moved by less than
# this (relative) between the neighbouring grid points.
PLATEAU_TOL = 1e-3
# Figure 9/10 pass criterion: the distance left after training on is at most this fraction of the
# distance the perturbation made.
RETURN_RATIO = 0.1
# The reason a perturbation protocol gives when its reference run has no epoch to perturb (inconclusive).
NO_PLATEAU = "no-plateau"
# Restricted Hessians (Assumption 4.3): lambda_min must exceed REL_EIG * max|lambda|. Stationary points are
# located to a gradient of ~1e-8 of the loss scale (Algorithm 1, STAGE_B tolerances), which moves Hessian
# eigenvalues by ~1e-8 of the spectrum's scale for smooth models; 1e-6 is 100x above that, so a smaller
# value cannot be told apart from a flat direction.
REL_EIG = 1e-6
N_OUT = 61  # samples of each perturbed run kept for the figures
# Every flow of these protocols is integrated at the run's tolerances or PROTOCOL_TOL, whichever is looser:
# the smallest distances judged are RETURN_RATIO * noise ~ 1e-2 (Figures 9, 10) and the stage-B spread
# tolerance 1e-4 (converging runs do not accumulate error), so a relative error of ~1e-6 in beta
# (atol on S, THEORY.md §3) is 100x below every threshold while needing far fewer steps than 1e-8.
PROTOCOL_TOL = 1e-6
# The run options the protocols use: the reference run's alpha (the smallest), horizon and tolerances, and the
# perturbation's noise, negligible level and length (registry.RUN_OPTIONS).
PROTOCOL_OPTIONS = ("alphas", "horizon", "rtol", "atol", "noise", "negligible", "perturb_epochs")


def perturb_time(config) -> float:
    """``perturb_epochs`` epochs of flow: one epoch is the time lr (what one GD step of size lr covers)."""
    return config.perturb_epochs * config.optimizer.lr


def protocol_solver(solver: SolverConfig) -> SolverConfig:
    return replace(solver, rtol=max(solver.rtol, PROTOCOL_TOL), atol=max(solver.atol, PROTOCOL_TOL))


@dataclass(frozen=True)
class Reference:
    """The reference (unperturbed) run at log(1/alpha) = L: its reduced flow and sampled trajectory."""

    L: float
    flow: ReducedFlow
    traj: Trajectory

    @property
    def alpha(self) -> str:
        return format_alpha(self.L)

    def S(self, j: int) -> torch.Tensor:
        return self.traj.b[0, j] * self.L

    def state(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, v) [p] at grid index j, from a = a0 e^S, c = c0 e^-S (THEORY.md §3)."""
        idx = torch.zeros(1, dtype=torch.long, device=self.flow.L.device)
        u, v = self.flow.uv(self.S(j)[None].to(self.flow.L.device), idx)
        return u[0], v[0]


_REFERENCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def reference_run(ctx) -> Reference:
    """Gradient flow from the smallest alpha of the run to ``ctx.horizon`` (cached on the Context)."""
    if ctx not in _REFERENCES:
        L = max(ctx.log_inv_alphas)
        theta0 = ctx.theta0(1)
        solver = protocol_solver(ctx.config.solver)
        flow = ReducedFlow.from_init(ctx.model, theta0, [L], solver.atol)
        traj = solve_flow(ctx.model, theta0, [L], ctx.horizon, solver,
                          progress=lambda f: ctx.progress(f"reference run at alpha={format_alpha(L)}", f))
        _REFERENCES[ctx] = Reference(L, flow, traj)
    return _REFERENCES[ctx]


def restricted_hessian(model, beta: torch.Tensor, support) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the Hessian of Lb at beta restricted to ``support``
    (Assumption 4.3), on the CPU."""
    idx = torch.as_tensor(list(support), dtype=torch.long, device=model.device)
    H = model.hessian_columns(beta.to(model.device)[None], idx)[0][idx]
    eigs, vecs = torch.linalg.eigh((H + H.T) / 2)
    return eigs.cpu(), vecs.cpu()


def is_strict(eigs: torch.Tensor) -> bool:
    """lambda_min > REL_EIG * max|lambda| (and > 0)."""
    return bool(eigs[0] > REL_EIG * eigs.abs().max() and eigs[0] > 0)


def non_negligible(beta: torch.Tensor, threshold: float) -> torch.Tensor:
    return beta.abs() > threshold


def plateau_epochs(ref: Reference, threshold: float) -> list[int]:
    """Interior grid indices j on a plateau with at least one non-negligible coordinate."""
    beta = ref.traj.beta[0]
    big = non_negligible(beta, threshold)
    out = []
    for j in range(1, beta.shape[0] - 1):
        if not bool(torch.isfinite(beta[j - 1 : j + 2]).all()):
            continue
        if not bool(big[j].any()) or not (torch.equal(big[j - 1], big[j]) and torch.equal(big[j], big[j + 1])):
            continue
        if float((beta[j + 1] - beta[j - 1]).norm()) <= PLATEAU_TOL * float(beta[j].norm()):
            out.append(j)
    return out


def lasting_epochs(ref: Reference, epochs: list[int], threshold: float, duration: float,
                   final_after: float = math.inf) -> list[int]:
    """The plateau ``epochs`` whose plateau lasts at least the plain time ``duration`` more: no coordinate's
    transition (``Trajectory.crossing_tau``) and no change of the non-negligible set within rescaled time
    ``duration / L`` after tau_j, and that window inside the run unless tau_j is past ``final_after`` (the
    last stage of Algorithm 1: that plateau never ends)."""
    tau, big = ref.traj.tau, non_negligible(ref.traj.beta[0], threshold)
    crossings = ref.traj.crossing_tau[0]
    crossings = crossings[torch.isfinite(crossings)]
    room = duration / ref.L
    out = []
    for j in epochs:
        if float(tau[j]) + room > float(tau[-1]) and float(tau[j]) <= final_after:
            continue
        ahead = (tau > tau[j]) & (tau <= tau[j] + room)
        same = bool((big[ahead] == big[j]).all())
        if same and not bool(((crossings > tau[j]) & (crossings <= tau[j] + room)).any()):
            out.append(j)
    return out


def onset_events(ref: Reference, threshold: float) -> list[tuple[int, int]]:
    """(j, i): coordinate i is negligible at grid j - 1 and non-negligible at grid j (Figure 10's epochs)."""
    big = non_negligible(ref.traj.beta[0], threshold)
    hits = big[1:] & ~big[:-1]
    return [(int(j) + 1, int(i)) for j, i in torch.nonzero(hits).tolist()]


def sample_reference(ctx, figure: str, events_of, empty: str, seed_offset: int):
    """The reference run and up to ``n_perturb`` of its events ``events_of(ref)``, drawn reproducibly, with
    the generator (which goes on to draw the noise). Returns ``((ref, chosen, gen), None)``, or ``(None,
    judgement)``, an inconclusive :class:`~verifier.results.Judgement`, when the run failed (``solver-failed``)
    or has no event (``no-plateau``); ``empty`` may use {alpha}."""
    ref = reference_run(ctx)
    if failed := failed_runs(ref.traj):
        return None, Judgement.inconclusive(CommonReason.SOLVER_FAILED, f"{figure}: the reference run at "
                                            f"alpha={ref.alpha} did not finish ({failed[0]})")
    events = events_of(ref)
    if not events:
        return None, Judgement.inconclusive(NO_PLATEAU, f"{figure}: " + empty.format(alpha=ref.alpha))
    gen = torch.Generator().manual_seed(ctx.config.seed + seed_offset)
    chosen = sorted(events[int(k)] for k in torch.randperm(len(events), generator=gen)[: ctx.config.n_perturb])
    return (ref, chosen, gen), None


def _factors(u: torch.Tensor, mask: torch.Tensor, noise: float,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors (1 + noise z, 1 + noise z') of the coordinates in ``mask`` (1 elsewhere), one draw."""
    z = torch.randn(2, u.shape[-1], generator=gen, dtype=torch.float64).to(u.device)
    m = mask.to(u.dtype).to(u.device)
    return 1 + noise * z[0] * m, 1 + noise * z[1] * m


def perturb(u: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, noise: float,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative Gaussian noise, independent on both weights of the coordinates in ``mask`` (module docstring)."""
    fu, fv = _factors(u, mask, noise, gen)
    return u * fu, v * fv


def perturb_both(u: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, noise: float, gen: torch.Generator
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One draw, two perturbations: the independent one of :func:`perturb` (the same draw it would make) and its
    balanced twin, the same change of every product u_i v_i with u_i^2 - v_i^2 kept (:func:`with_products`)."""
    fu, fv = _factors(u, mask, noise, gen)
    return (u * fu, v * fv), with_products(u, v, u * v * fu * fv)


def with_products(u: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights (u', v') with products u' v' = ``beta`` and the conserved quantity of Lemma 4.1 kept,
    u'^2 - v'^2 = u^2 - v^2: in the reduced coordinates a = u + v, c = u - v (THEORY.md §3), a' c' = a c = lambda
    and a'^2 - c'^2 = 4 beta, so with r = sqrt(4 beta^2 + lambda^2), a'^2 = 2 beta + r and c' = lambda / a' for
    beta >= 0, c'^2 = r - 2 beta and a' = lambda / c' for beta < 0 (no cancellation either way). a' and c' keep
    the signs of a and c (of u where those are 0). Where beta = u v already, (u, v) is returned unchanged."""
    a, c = u + v, u - v
    lam = a * c
    r = torch.hypot(2 * beta, lam)
    side = torch.where(u != 0, u.sign(), torch.ones_like(u))
    sa = torch.where(a != 0, a.sign(), side)
    sc = torch.where(c != 0, c.sign(), side)
    pos = beta >= 0
    root = torch.where(pos, 2 * beta + r, r - 2 * beta).sqrt()  # |a'| (beta >= 0) or |c'| (beta < 0)
    safe = torch.where(root > 0, root, torch.ones_like(root))
    a2 = torch.where(pos, sa * root, torch.where(root > 0, lam / (sc * safe), 0.0))
    c2 = torch.where(pos, torch.where(root > 0, lam / (sa * safe), 0.0), sc * root)
    same = beta == u * v
    return torch.where(same, u, (a2 + c2) / 2), torch.where(same, v, (a2 - c2) / 2)


def run_batch(model, U: torch.Tensor, V: torch.Tensor, durations, solver, n_out: int = N_OUT, progress=None,
              loss: bool = True, tolerance=None) -> tuple[ReducedFlow, Trajectory]:
    """One batched flow from the states (U, V) [B, p], sample b for plain time durations[b] (rescaled
    horizon 1 with L_b = durations[b]); ``Trajectory.tau`` * durations[b] is the elapsed time.
    ``progress`` is a ``Context.progress``; ``loss=False``: the trajectory's loss is not evaluated (NaN);
    ``tolerance``: one number per sample, its rtol and atol where looser than :func:`protocol_solver`'s."""
    solver = protocol_solver(solver)
    tolerances = None
    if tolerance is not None:
        t = torch.as_tensor([float(x) for x in tolerance], dtype=torch.float64, device=model.device)
        tolerances = (t.clamp_min(solver.rtol), t.clamp_min(solver.atol))
    flow = ReducedFlow.from_uv(model, U, V, [float(d) for d in durations],
                               solver.atol if tolerances is None else tolerances[1])
    report = None if progress is None else (lambda f: progress(f"{len(U)} perturbed runs", f))
    return flow, integrate(flow, 1.0, solver, n_out, progress=report, tolerances=tolerances, loss=loss)


def failed_runs(traj: Trajectory) -> list[str]:
    return [f"run {b}: {s.message}" for b, s in enumerate(traj.status) if s is not Status.SUCCESS]


def rel_distance(beta: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|beta - ref| / |ref| over the last dimension (broadcast)."""
    return (beta - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-300)


def subsample(x, n: int = 300) -> list[float]:
    x = [float(v) for v in x]
    if len(x) <= n:
        return x
    step = math.ceil(len(x) / n)
    return x[::step] + ([x[-1]] if (len(x) - 1) % step else [])


def spectra_figure(rows: list[tuple[str, int, torch.Tensor]], title: str, caption: str) -> Figure:
    """Eigenvalues of restricted Hessians: one scatter series per (label, x, eigenvalues)."""
    positive = all(bool((e > 0).all()) for _, _, e in rows)
    return Figure("hessian-spectra", title, "scatter", "stage k", "eigenvalue of the Hessian of Lb restricted to A_k",
                  yscale="log" if positive else "linear",
                  series=tuple(Series(lab, [x] * len(e), e, "o") for lab, x, e in rows), caption=caption)


def distance_figure(fid: str, title: str, series: list[tuple[str, torch.Tensor, torch.Tensor]],
                    ylabel: str, caption: str) -> Figure:
    """Distance to the unperturbed point/run against elapsed time, one line per perturbed run."""
    return Figure(fid, title, "line", "time t since the perturbation", ylabel, yscale="log",
                  series=tuple(Series(lab, subsample(t), subsample(d), "-") for lab, t, d in series), caption=caption)
