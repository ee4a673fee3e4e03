"""The exact gradient flow in reduced coordinates (THEORY.md §3): against scipy on the full (u, v) flow, the
orthogonal-design closed form (THEORY.md §4), work flat in log(1/alpha), rejection of non-finite trial steps,
and a status per sample."""

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from scipy.integrate import quad, solve_ivp

from verifier import data as D
from verifier.config import RunConfig, SolverConfig
from verifier.context import Context
from verifier.dynamics import rosenbrock
from verifier.dynamics.flow import CROSSING_MARGIN, ReducedFlow, integrate, solve_flow
from verifier.dynamics.trajectory import Status
from verifier.models import DiagAttention, DiagLinear

F64 = torch.float64


def _linear():
    """A correlated 4-coordinate design with a sparse teacher (one zero entry)."""
    gen = D.generator(11)
    X = D.gaussian_design(20, 4, gen)
    return DiagLinear(X, X @ torch.tensor([1.5, -1.0, 0.0, 0.7], dtype=F64))


def _attention():
    """A small toy head (N=8 sequences of 3 tokens in d=3) with a diagonal teacher."""
    gen = D.generator(12)
    X = D.gaussian_tokens(8, 3, 3, gen)
    teacher = DiagAttention(X, X, temperature=3**-0.5)
    Y = teacher.predict_beta(torch.tensor([1.0, 0.0, -1.5, 0.0, 1.2, -0.8], dtype=F64))
    return DiagAttention(X, Y, temperature=3**-0.5)


BETA_STAR = torch.tensor([2.0, -1.25, 0.8], dtype=F64)
THETA0 = torch.tensor([0.9, -0.4, 1.3, 0.2, 0.7, -0.6], dtype=F64)  # (u0, v0), u0 != +-v0


def _orthogonal(cls=DiagLinear):
    """X^T X / N = I and y = X beta*: g(beta) = beta - beta*, every coordinate on its own (THEORY.md §4)."""
    X = D.orthogonal_design(12, 3, D.generator(3))
    return cls(X, X @ BETA_STAR)


@pytest.mark.parametrize("make,horizon", [(_linear, 4.0), (_attention, 8.0)], ids=["diag-linear", "attention"])
@pytest.mark.parametrize("alpha", [1e-2, 1e-3])
def test_reduced_flow_matches_scipy_on_the_uv_flow(make, horizon, alpha):
    """u' = -dL/du, v' = -dL/dv on the network built from its weights (autograd), by scipy's DOP853 at
    tight tolerances, against the reduced flow's beta on the output grid."""
    model = make()
    theta0 = model.init_params(1.0, torch.Generator().manual_seed(0))
    L = -math.log(alpha)
    tr = solve_flow(model, theta0[None], [L], horizon, n_out=41)
    assert tr.status == (Status.SUCCESS,)

    def rhs(t, y):
        return -model.grad_params(torch.from_numpy(y)).numpy()

    t_eval = tr.tau.numpy() * L
    ref = solve_ivp(rhs, (0.0, t_eval[-1]), alpha * theta0.numpy(), method="DOP853", t_eval=t_eval,
                    rtol=1e-10, atol=1e-12 * alpha)
    assert ref.success
    beta_ref = (ref.y[: model.p] * ref.y[model.p :]).T
    assert np.abs(tr.beta[0].numpy() - beta_ref).max() < 1e-5
    assert np.abs(beta_ref[-1]).max() > 0.5  # the comparison covers learned, order-one weights


def _tau_of_S(L, i, S):
    """Exact rescaled time at which coordinate i of the orthogonal problem reaches S: the ODE
    S' = beta*_i - beta_i(S) separates, tau = (1/L) int_0^S ds / (beta*_i - beta_i(s)) with
    beta_i(s) = (a0^2 e^{2s} - c0^2 e^{-2s}) / 4, a0 = alpha (u0 + v0), c0 = alpha (u0 - v0)."""
    u0, v0 = float(THETA0[i]), float(THETA0[3 + i])
    la, lc = math.log(abs(u0 + v0)) - L, math.log(abs(u0 - v0)) - L
    bs = float(BETA_STAR[i])

    def integrand(s):
        return 1.0 / (bs - (math.exp(2 * (la + s)) - math.exp(2 * (lc - s))) / 4)

    knee = -la if S > 0 else lc  # where beta_i leaves the plateau
    points = [knee] if min(0.0, S) < knee < max(0.0, S) else None
    val, _ = quad(integrand, 0.0, S, points=points, limit=500, epsabs=0.0, epsrel=1e-12)
    return val / L


@pytest.mark.parametrize("alpha", [1e-8, 1e-64])
def test_orthogonal_design_matches_the_separated_solution(alpha):
    L = -math.log(alpha)
    tr = solve_flow(_orthogonal(), THETA0[None], [L], 2.0, n_out=81)
    assert tr.status == (Status.SUCCESS,)
    checked = 0
    for i in range(3):
        for k in range(1, len(tr.tau)):
            if abs(float(tr.beta[0, k, i] - BETA_STAR[i])) < 0.05 * abs(float(BETA_STAR[i])):
                break  # near the fixed point the integrand blows up; stop before it
            S = float(tr.b[0, k, i]) * L
            assert abs(_tau_of_S(L, i, S) - float(tr.tau[k])) < 1e-6
            checked += 1
    assert checked > 60
    assert torch.allclose(tr.beta[0, -1], BETA_STAR, rtol=1e-6, atol=0)


def test_orthogonal_transitions_approach_one_over_beta_star():
    """Coordinate i becomes active at tau = 1/|beta*_i| in the limit (THEORY.md §4), with sign(beta*_i).
    Before it, |beta_i| ~ w^2 e^{2|S|}/4 (w = u0+v0 if beta*_i > 0, else u0-v0) slows S by int beta_i;
    detection at |S| = L - m plus a linear extrapolation (flow.CROSSING_MARGIN = m) leaves a delay of
    about beta_c (m + 1/2) / (beta*_i^2 L), beta_c = w^2 e^{-2m}/4: first order in 1/L. We allow twice that."""
    Ls = [math.log(1e8), math.log(1e128), 1e4]
    tr = solve_flow(_orthogonal(), THETA0.expand(3, -1), Ls, 2.0, n_out=21)
    assert all(s is Status.SUCCESS for s in tr.status)
    m = CROSSING_MARGIN
    limit = 1 / BETA_STAR.abs()
    a0, c0 = THETA0[:3] + THETA0[3:], THETA0[:3] - THETA0[3:]
    beta_c = torch.where(BETA_STAR > 0, a0, c0) ** 2 * math.exp(-2 * m) / 4
    bound = 2 * beta_c * (m + 0.5) / BETA_STAR**2
    errors = []
    for b, L in enumerate(Ls):
        err = tr.crossing_tau[b] - limit
        assert (err.abs() <= bound / L).all(), (L, err)
        assert torch.equal(tr.crossing_sign[b], BETA_STAR.sign().long())
        errors.append(float(err.abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6


@pytest.mark.parametrize("make,horizon,drop", [(_linear, 4.0, 1e-3), (_attention, 8.0, 1e-2)],
                         ids=["diag-linear", "attention"])
def test_work_does_not_grow_with_log_inv_alpha(make, horizon, drop):
    """An implicit method with the exact Jacobian crosses plateaus in a few steps (THEORY.md §3), and the
    onset cap keeps it from jumping into transitions: gradient evaluations to a fixed rescaled horizon
    stay within 1.5x from alpha = 1e-8 to exp(-10^4) (issue 11's target)."""
    model = make()
    Ls = [math.log(1e8), math.log(1e128), 1e4]
    tr = solve_flow(model, model.init_params(1.0, torch.Generator().manual_seed(0))[None].expand(3, -1),
                    Ls, horizon, n_out=21)
    assert all(s is Status.SUCCESS for s in tr.status)
    assert torch.isfinite(tr.beta).all()
    nfev = tr.nfev.double()
    assert nfev[1] / nfev[0] <= 1.5 and nfev[2] / nfev[0] <= 1.5, tr.nfev.tolist()
    # every alpha learned the same thing: the loss at the horizon is small for all
    assert (tr.loss[:, -1] < drop * tr.loss[:, 0]).all(), tr.loss[:, -1] / tr.loss[:, 0]


def test_progress_reports_algorithm1_and_the_ladder():
    """``Context.progress`` hears each stage B of Algorithm 1 and the ladder's integration (fractions of
    the horizon in [0, 1], in order), so a progress bar never sits still for a whole check."""
    seen = []
    model = _linear()
    ctx = Context(RunConfig(preset=None, model="diag-linear", log_inv_alphas=(math.log(1e8), math.log(1e32))),
                  model=model, argv=["test"], progress=lambda label, f=None: seen.append((label, f)))
    ctx.ladder
    stages = [label for label, f in seen if label.startswith("Algorithm 1 stage")]
    assert len({label for label in stages}) == len(ctx.stages.stages) - 1
    ladder = [f for label, f in seen if label == "alpha ladder"]
    assert len(ladder) >= 3 and ladder == sorted(ladder) and 0 <= ladder[0] and ladder[-1] <= 1
    assert all(isinstance(f, float) for label, f in seen if f is not None)


@dataclass(frozen=True, eq=False)
class Overflowing(DiagLinear):
    """Adds sum exp(beta_i^2 - 900): below 1e-380 on the true path (|beta| <= 2) but inf for |beta| > 40,
    which large trial steps across a transition (beta ~ e^{2S}) reach. Counts non-finite gradients."""

    nonfinite: list = field(default_factory=list)

    def loss_beta(self, beta):
        return super().loss_beta(beta) + torch.exp(beta * beta - 900.0).sum()

    def grad_b(self, beta):
        g = super().grad_b(beta)
        self.nonfinite.append(int((~torch.isfinite(g)).any(-1).sum()))
        return g


def test_non_finite_trial_steps_are_rejected_not_fatal():
    """Without the onset cap (``ReducedFlow.max_step``) the solver's large trial steps jump into a
    transition and overflow; each is rejected and retried, and the run ends where the clean one does."""
    Ls = [1e4]
    model = _orthogonal(Overflowing)
    flow = ReducedFlow.from_init(model, THETA0[None], Ls, SolverConfig().atol)
    S0 = torch.zeros(1, 3, dtype=F64)
    sol = rosenbrock.solve(flow.rhs, flow.jac, S0, 2.0, rtol=SolverConfig().rtol, atol=SolverConfig().atol)
    assert sum(model.nonfinite) > 0  # the solver did try steps that overflowed
    assert sol.status == (Status.SUCCESS,)
    end = sol.y[0, int(sol.count[0]) - 1]
    assert torch.isfinite(end).all() and float(sol.t[0, int(sol.count[0]) - 1]) == pytest.approx(2.0)
    assert torch.allclose(flow.beta(end[None], torch.zeros(1, dtype=torch.long))[0][0], BETA_STAR, rtol=1e-6, atol=0)
    clean = solve_flow(_orthogonal(), THETA0[None], Ls, 2.0, n_out=41)
    capped = solve_flow(model, THETA0[None], Ls, 2.0, n_out=41)
    assert capped.status == (Status.SUCCESS,) and (capped.beta - clean.beta).abs().max() < 1e-12


def test_each_sample_has_its_own_status():
    """A batch of a stationary start (done in a few steps) and a small start (needs many): with a step
    budget between the two, the first succeeds exactly as it does alone and the second reports
    max_steps, with NaN past its last accepted time."""
    model = _orthogonal()
    root = BETA_STAR.abs().sqrt()
    small = 1e-6 * THETA0
    u = torch.stack([root, small[:3]])
    v = torch.stack([BETA_STAR.sign() * root, small[3:]])
    L = [math.log(1e6)] * 2
    solver = SolverConfig(max_steps=25)
    tr = integrate(ReducedFlow.from_uv(model, u, v, L, solver.atol), 2.0, solver, n_out=21)
    assert tr.status == (Status.SUCCESS, Status.MAX_STEPS)
    assert tr.ok.tolist() == [True, False]
    assert tr.njev[0] < solver.max_steps
    alone = integrate(ReducedFlow.from_uv(model, u[:1], v[:1], L[:1], solver.atol), 2.0, solver, n_out=21)
    assert torch.allclose(alone.beta[0], tr.beta[0], rtol=1e-12, atol=0)
    assert torch.allclose(tr.beta[0, -1], BETA_STAR, rtol=1e-12, atol=0)
    assert torch.isnan(tr.beta[1, -1]).all() and torch.isfinite(tr.beta[1, 0]).all()
    assert "max_steps" in Status.MAX_STEPS.message
