"""Cost of the Theorem 4.5 check on the toy-attention preset (pytest-benchmark; not a timed test).

Run: ``pytest benchmarks/test_theorem45_bench.py --benchmark-enable``. Each alpha of the default ladder
(1e-4 .. 1e-256) is solved alone to the check's horizon; ``extra_info`` records the gradient (nfev) and
Hessian (njev) evaluations per alpha. The reduced flow's cost should not grow with log(1/alpha) (THEORY.md §3).
"""

import pytest

from verifier.checks import run_check
from verifier.config import DEFAULT_LOG_INV_ALPHAS, RunConfig, format_alpha
from verifier.context import Context
from verifier.dynamics.flow import solve_flow

COST: dict[float, int] = {}


@pytest.fixture(scope="module")
def ctx():
    c = Context(RunConfig(preset="toy-attention", device="cpu"), argv=["benchmark"])
    c.horizon  # Algorithm 1, once, outside the timings
    return c


@pytest.mark.parametrize("L", DEFAULT_LOG_INV_ALPHAS, ids=format_alpha)
def test_flow_cost_per_alpha(benchmark, ctx, L):
    traj = benchmark.pedantic(solve_flow, args=(ctx.model, ctx.theta0(1), [L], ctx.horizon, ctx.config.solver),
                              rounds=1, iterations=1)
    COST[L] = int(traj.nfev[0])
    benchmark.extra_info.update(alpha=format_alpha(L), nfev=COST[L], njev=int(traj.njev[0]),
                                status=traj.status[0].value, horizon=ctx.horizon)
    assert traj.ok.all()


def test_cost_does_not_grow_with_log_inv_alpha():
    """Gradient evaluations at the smallest alpha are at most 1.5x those at alpha = 1e-8 (issue 11)."""
    if len(COST) < len(DEFAULT_LOG_INV_ALPHAS):
        pytest.skip("needs every test_flow_cost_per_alpha run first")
    L = sorted(COST)
    assert COST[L[-1]] <= 1.5 * COST[L[1]], COST


def test_whole_check(benchmark, ctx):
    """The whole check: the batched ladder (7 alphas, one solve) plus the measurement."""
    def run():
        ctx.__dict__.pop("ladder", None)
        return run_check("theorem-4.5", ctx)

    r = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(verdict=r.verdict.value, nfev=r.metrics.get("nfev"),
                                transition_time_error=r.metrics.get("transition_time_error"))
    assert ctx.ladder.ok.all(), r.message
