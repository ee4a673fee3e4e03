"""Theorem 4.5 on a diagonal linear network with a leave and a re-entry: the errors shrink like
1/log(1/alpha) and the check passes; a wrong limit stalls and fails; a failed solve is inconclusive."""

import dataclasses
import math

import pytest

from verifier.checks import Verdict, run_check
from verifier.checks.theorem45 import error_table, fit_rate, judge_errors, measure_errors, trend_verdict
from verifier.config import RunConfig, parse_alphas
from verifier.context import Context
from verifier.dynamics.trajectory import Status
from verifier.limit import algorithm1
from verifier.models import DiagLinear


@pytest.fixture(scope="module")
def ctx(leave_reenter_model):
    c = Context(RunConfig(preset=None, model="diag-linear", log_inv_alphas=parse_alphas("1e-8,1e-16,1e-32")),
                model=leave_reenter_model)
    assert all(s.value == "success" for s in c.ladder.status)
    return c


def test_passes_and_errors_shrink_like_one_over_log_inv_alpha(ctx):
    r = run_check("theorem-4.5", ctx)
    assert r.verdict is Verdict.PASS, r.message
    m = r.values
    assert m["alphas"] == ["1e-08", "1e-16", "1e-32"]
    for key in ("transition_time_error", "b_error", "beta_error"):
        assert m[key][0] > m[key][1] > m[key][2], key
    # THEORY.md §5: b and transition times converge at rate 1 in 1/log(1/alpha); beta on windows faster
    assert 0.8 < m["rate"]["transition_time_error"] < 1.2 and 0.8 < m["rate"]["b_error"] < 1.2
    assert m["rate"]["beta_error"] > 2
    assert len(m["nfev"]) == 3 and min(m["nfev"]) > 0
    assert m["windows_measured"] == 5
    assert [f.id for f in r.evidence["figures"]] == ["loss-vs-tau", "beta-vs-tau", "errors-vs-alpha"]
    assert len(m["per_stage_transition_error"][0]) == 4  # the re-entry of beta[1] included
    assert len(error_table(measure_errors(ctx.stages, ctx.ladder, ctx.horizon)).splitlines()) == 4


def test_a_wrong_limit_stalls_and_fails(ctx, leave_reenter_model, leave_beta_star):
    """The stages of a teacher 20% larger: every time is off by a fixed amount, whatever alpha."""
    other = leave_reenter_model
    wrong = algorithm1(DiagLinear(other.X, 1.2 * other.Y))
    assert [s.coordinate for s in wrong.stages] == [s.coordinate for s in ctx.stages.stages]
    errors = measure_errors(wrong, ctx.ladder, ctx.horizon)
    judgement = judge_errors(errors)
    assert judgement.verdict is Verdict.FAIL and judgement.reason == "errors-not-shrinking"
    assert "transition_time_error stalls" in judgement.message and "beta_error stalls" in judgement.message
    # on the last plateau the flow sits at beta*, the wrong limit at 1.2 beta*
    assert errors.beta_error[-1] >= 0.2 * max(abs(x) for x in leave_beta_star) * (1 - 1e-3)


def test_solver_failure_is_inconclusive(ctx):
    traj = dataclasses.replace(ctx.ladder, status=(Status.SUCCESS, Status.STEP_TOO_SMALL, Status.SUCCESS))
    judgement = judge_errors(measure_errors(ctx.stages, traj, ctx.horizon))
    assert judgement.verdict is Verdict.INCONCLUSIVE and "alpha=1e-16" in judgement.message
    assert judgement.reason == "solver-failed"


def test_fit_rate_and_trend_verdict_on_exact_series():
    L = [10.0, 20.0, 40.0, 80.0]
    assert fit_rate(L, [3 / x for x in L]) == pytest.approx(1.0)
    assert fit_rate(L, [2 / x**2 for x in L]) == pytest.approx(2.0)
    assert fit_rate(L, [0.0, math.inf, 1.0, 0.5]) == pytest.approx(1.0)
    assert trend_verdict(L, [0.4, 0.2, 0.1, 0.05], tol=0.06) is Verdict.PASS
    assert trend_verdict(L, [0.4, 0.2, 0.1, 0.05], tol=0.01) is Verdict.INCONCLUSIVE
    assert trend_verdict(L, [0.1, 0.1, 0.1, 0.1], tol=0.01) is Verdict.FAIL
    assert trend_verdict(L, [0.1, 0.2, 0.3, 0.4], tol=0.01) is Verdict.FAIL
    assert trend_verdict(L, [1e-8, 2e-8, 1e-8, 1e-8], tol=1e-3) is Verdict.PASS  # at the floor, below tolerance


def test_a_short_ladder_that_is_still_converging_is_inconclusive_not_a_stall():
    """The beta error of a one-stage problem on alpha = 1e-8, 1e-16, 1e-32 (docs/THEORY.md §5.6, measured by
    `python docs/measure_theory.py short-ladder`): slow at first (global rate 0.48), fast at the end (0.83):
    extend the ladder, not a failure. An error that stays put is a stall and fails."""
    L = [math.log(10.0) * e for e in (8, 16, 32)]
    assert trend_verdict(L, [0.552, 0.506, 0.285], 0.01) is Verdict.INCONCLUSIVE
    assert trend_verdict(L, [0.975, 0.984, 0.984], 0.01) is Verdict.FAIL
    assert trend_verdict(L, [0.3, 0.2, 0.005], 0.01) is Verdict.PASS


def test_the_ladder_extends_itself_while_an_error_still_shrinks(zero_loss_context):
    """At the zero-loss last stage the leaver decays like 1/t, so beta's error on the last plateau shrinks only
    like 1/log(1/alpha) (~33 / L): above its tolerance at 1e-256, the check adds rungs until it is decided."""
    r = run_check("theorem-4.5", zero_loss_context)
    assert r.verdict is Verdict.PASS and r.reason is None, r.message
    added = r.values["rungs_added"]
    assert [a["alpha"] for a in added] == ["exp(-2000)", "exp(-5000)"]
    assert all(a["why"].startswith("beta_error shrinks but is still above") for a in added)
    beta = r.values["beta_error"]
    assert len(beta) == len(zero_loss_context.log_inv_alphas) + 2  # the finished rungs are reused, not re-solved
    L = r.values["log_inv_alphas"]
    assert beta[-1] * L[-1] == pytest.approx(beta[-3] * L[-3], rel=0.1)  # the 1/L law from 1e-256 to exp(-5000)
    assert "the ladder was extended to alpha=exp(-5000)" in r.message


def test_at_the_ladder_cap_an_error_still_shrinking_is_inconclusive(zero_loss_context, monkeypatch):
    from verifier.checks import _ladder

    monkeypatch.setattr(_ladder, "EXTENSION_LOG_INV_ALPHAS", (2000.0,))
    monkeypatch.setattr(_ladder, "CAP_LOG_INV_ALPHA", 2000.0)
    r = run_check("theorem-4.5", zero_loss_context)
    assert r.verdict is Verdict.INCONCLUSIVE and r.reason == "ladder-exhausted", r.message
    assert "the ladder reached its cap alpha=exp(-2000)" in r.message
