"""The integrator's methods and error budgets (verifier/dynamics/rosenbrock.py, THEORY.md §3): orders measured
on an analytic problem, a W-method's order with a wrong Jacobian, per-sample tolerances, Jacobian reuse, and
the alpha ladder's re-solve hook (Context.refine_ladder)."""

import math

import pytest
import torch

from verifier.checks.theorem45 import unresolved
from verifier.cli import thread_policy
from verifier.config import RunConfig, SolverConfig
from verifier.context import LADDER_BUDGET, Context
from verifier.dynamics import rosenbrock
from verifier.dynamics.rosenbrock import RODAS4, ROS34PW2
from verifier.errors import InputError

F64 = torch.float64


def _f(y, idx=None):
    """A nonlinear 2-d test problem (not stiff, so fixed steps show the classical order)."""
    return torch.stack([-y[:, 1] * y[:, 0] + torch.sin(y[:, 1]), -0.5 * y[:, 1] + y[:, 0] ** 2 / 4], 1)


def _jac(y):
    row0 = torch.stack([-y[:, 1], -y[:, 0] + torch.cos(y[:, 1])], 1)
    row1 = torch.stack([y[:, 0] / 2, torch.full_like(y[:, 0], -0.5)], 1)
    return torch.stack([row0, row1], 1)


def _fixed_steps(tableau, h, wrong_jacobian):
    y = torch.tensor([[1.0, 0.5]], dtype=F64)
    idx = torch.zeros(1, dtype=torch.long)
    for _ in range(round(1.0 / h)):
        y, _ = rosenbrock.rosenbrock_step(_f, y, _f(y), _jac(y) + wrong_jacobian, torch.tensor([h], dtype=F64),
                                          idx, tableau)
    return y


def _observed_orders(tableau, wrong_jacobian):
    # The reference: Rodas4 with the exact Jacobian at a step 8x below the finest one measured.
    ref = _fixed_steps(RODAS4, 1 / 640, torch.zeros(2, 2, dtype=F64))
    errs = [float((_fixed_steps(tableau, h, wrong_jacobian) - ref).abs().max()) for h in (1 / 10, 1 / 20, 1 / 40, 1 / 80)]
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])]


def test_rodas4_is_order_4_and_ros34pw2_order_3_even_with_a_wrong_jacobian():
    """Rodas4 needs the exact Jacobian (it drops to order <= 2 with a wrong one, which is why it refreshes
    J every step); ROS34PW2 keeps order 3 with any J (a W-method, which is why it may reuse J)."""
    exact, wrong = torch.zeros(2, 2, dtype=F64), torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=F64)
    assert min(_observed_orders(RODAS4, exact)[1:]) > 3.7
    assert max(_observed_orders(RODAS4, wrong)[1:]) < 2.5
    for J in (exact, wrong):
        assert all(2.8 < r < 3.3 for r in _observed_orders(ROS34PW2, J)[1:])


def _stiff_linear():
    """y' = A y with eigenvalues -1 and -1000 (Prothero-Robinson-like stiffness), exact solution known."""
    Q = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=F64)
    A = Q @ torch.diag(torch.tensor([-1.0, -1000.0], dtype=F64)) @ torch.linalg.inv(Q)
    f = lambda y, idx: y @ A.T  # noqa: E731
    jac = lambda y, idx: A.expand(len(idx), 2, 2).clone()  # noqa: E731
    exact = lambda y0, t: y0 @ torch.linalg.matrix_exp(A * t).T  # noqa: E731
    return f, jac, exact


@pytest.mark.parametrize("method", [RODAS4, ROS34PW2], ids=lambda m: m.name)
def test_stiff_problem_to_tolerance_and_jacobian_reuse(method):
    f, jac, exact = _stiff_linear()
    y0 = torch.tensor([[1.0, 2.0]], dtype=F64)
    sol = rosenbrock.solve(f, jac, y0, 2.0, rtol=1e-7, atol=1e-9, method=method)
    end = sol.y[0, int(sol.count[0]) - 1]
    assert sol.status == (rosenbrock.Status.SUCCESS,)
    assert float((end - exact(y0, 2.0)[0]).abs().max()) < 1e-6
    if method.w_method:  # a Jacobian is evaluated for a fraction of the steps only
        assert int(sol.njev[0]) < 0.6 * int(sol.nsteps[0])
    else:  # one per accepted step, plus the first
        assert int(sol.njev[0]) == int(sol.nsteps[0])


def test_per_sample_tolerances_equal_separate_solves():
    """rtol/atol per sample: each sample of a batch gets exactly what it gets alone at its tolerance."""
    f, jac, _ = _stiff_linear()
    y0 = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64)
    both = rosenbrock.solve(f, jac, y0, 2.0, rtol=torch.tensor([1e-4, 1e-9], dtype=F64),
                            atol=torch.tensor([1e-4, 1e-11], dtype=F64))
    for b, (r, a) in enumerate([(1e-4, 1e-4), (1e-9, 1e-11)]):
        alone = rosenbrock.solve(f, jac, y0[b:b + 1], 2.0, rtol=r, atol=a)
        n = int(alone.count[0])
        assert int(both.count[b]) == n and torch.allclose(both.t[b, :n], alone.t[0, :n], rtol=1e-12, atol=0)
        assert both.rtol[b] == r and both.atol[b] == a
    assert int(both.nsteps[0]) < int(both.nsteps[1])


def test_solver_method_is_validated():
    assert SolverConfig(method="ros34pw2").method == "ros34pw2"
    with pytest.raises(InputError, match="SolverConfig.method"):
        SolverConfig(method="euler")


def test_ladder_budget_and_refine_hook():
    """The ladder solves the smallest alpha at the run's tolerances and the others at the budget; a quantity
    within 10x of a sample's solver error is flagged (a value no solve at the budget can resolve), and
    refine_ladder re-solves that sample at the run's tolerances: the same trajectory a direct solve gives,
    with the work of both solves counted."""
    ctx = Context(RunConfig(preset="diag-linear", log_inv_alphas=(math.log(1e4), math.log(1e8))), argv=["t"])
    traj = ctx.ladder
    solver = ctx.config.solver
    assert traj.atol.tolist() == [LADDER_BUDGET[1], solver.atol] and traj.rtol[1] == solver.rtol
    err = traj.solver_error()
    assert err[0] > 10 * err[1] > 0
    tiny = {"beta_error": [1e-12, 1.0], "b_error": [1.0, 1.0], "transition_time_error": [1.0, 1.0]}
    need = unresolved(ctx.stages, traj, tiny)
    assert list(need) == [0] and need[0] == pytest.approx(0.1 * 1e-12 / (2 * max(
        1.0, max(float(s.beta.abs().max()) for s in ctx.stages.stages))))  # RESOLUTION x value / (2 max|beta|)
    large = {k: [1.0, 1.0] for k in tiny}
    assert unresolved(ctx.stages, traj, large) == {}
    loose_nfev = int(traj.nfev[0])
    assert ctx.refine_ladder([0, 1]) is True
    tight = ctx.ladder
    assert tight.atol.tolist() == [solver.atol, solver.atol]
    assert torch.equal(tight.beta[1], traj.beta[1])  # the floor sample is not re-solved
    direct = Context(RunConfig(preset="diag-linear", log_inv_alphas=(math.log(1e4),)), argv=["t"]).ladder
    assert torch.allclose(tight.beta[0], direct.beta[0], rtol=1e-12, atol=0, equal_nan=True)
    assert int(tight.nfev[0]) == loose_nfev + int(direct.nfev[0])
    assert ctx.refine_ladder([0, 1]) is False  # everything at the floor: nothing left to tighten


@pytest.mark.parametrize("env, cores, load, want", [
    ({}, 2, 0.1, {"OMP_NUM_THREADS": "2"}),
    ({}, 2, 1.5, {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}),
    ({}, 16, 3.2, {"OMP_NUM_THREADS": "13"}),
    ({}, 1, 0.0, {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}),
    ({"OMP_NUM_THREADS": "4"}, 2, 8.0, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}, 2, 8.0, {}),
])
def test_thread_policy_respects_the_user_and_the_load(env, cores, load, want):
    assert thread_policy(env, cores, load) == want


def test_refine_ladder_solves_at_the_tolerance_a_value_needs():
    """A sample whose smallest measured error allows a solver error e' in S is re-solved at the atol whose
    bound is e' / 2 (not at the floor), which then resolves it; a second request sends it to the floor."""
    ctx = Context(RunConfig(preset="diag-linear", log_inv_alphas=(math.log(1e4), math.log(1e8))), argv=["t"])
    traj = ctx.ladder
    e0 = float(traj.solver_error()[0])
    assert ctx.refine_ladder({0: e0 / 20}) is True
    tight = ctx.ladder
    solver = ctx.config.solver
    assert solver.atol < float(tight.atol[0]) < LADDER_BUDGET[1]
    assert float(tight.solver_error()[0]) == pytest.approx(e0 / 40, rel=0.05)  # half of what was allowed
    assert int(tight.nfev[0]) > int(traj.nfev[0])
    assert ctx.refine_ladder({0: 1e-30}) is True  # asked again: the floor
    assert float(ctx.ladder.atol[0]) == solver.atol
    assert ctx.refine_ladder({0: 1e-30}) is False
