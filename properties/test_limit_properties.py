"""Algorithm 1 and Theorem 4.5 over random teachers (diag-linear and a small toy attention head).

Invariants of every stage of Algorithm 1 hold for any model; where Assumption 4.2's margin is comfortable,
Theorem 4.5's check does not fail on a short ladder. ``hypothesis.target`` drives the search toward small
argmin margins; run with ``--hypothesis-show-statistics`` to see the smallest margin found.
"""

import math

import pytest
import torch
from hypothesis import assume, given, target
from hypothesis import strategies as st

from verifier.checks import Verdict, run_check
from verifier.config import RunConfig, parse_alphas
from verifier.context import Context
from verifier.limit import StageStatus, algorithm1
from verifier.testing import attention_problems, linear_problems

COMFORTABLE_MARGIN = 0.1  # ten times assumption-4.2's tie threshold


def amax(t: torch.Tensor) -> float:
    return float(t.abs().max()) if len(t) else 0.0


def min_margin(seq) -> float:
    margins = [s.margin for s in seq.stages[1:] if s.margin is not None]
    return min(margins, default=math.inf)


@given(st.one_of(linear_problems(p=st.integers(2, 4)), attention_problems(d=2)))
def test_every_stage_is_a_signed_stationary_point(model):
    """T non-decreasing; on the support |b| = 1 with sign(beta) = b and g = 0; off it |b| <= 1 and beta = 0
    (coordinates that left included); the loss never rises from one stage to the next."""
    seq = algorithm1(model)
    m = min_margin(seq)
    if math.isfinite(m) and m > 0:
        target(-math.log10(m), label="-log10(smallest argmin margin)")
    for prev, s in zip(seq.stages, seq.stages[1:]):
        assert s.T >= prev.T
        A = list(s.support)
        off = [i for i in range(model.p) if i not in s.support]
        assert bool((s.b[A].abs() == 1).all()) and bool((s.beta[A].sign() == s.b[A]).all())
        assert amax(s.grad[A]) <= seq.gtol
        assert bool((s.b[off].abs() <= 1 + 1e-9).all()) and bool((s.beta[off] == 0).all())
        assert s.coordinate in s.support or s.coordinate in s.left
        assert s.loss <= prev.loss + 1e-9 * max(1.0, prev.loss)
    if seq.status is StageStatus.COMPLETE:
        last = seq.stages[-1]
        off = [i for i in range(model.p) if i not in last.support]
        assert amax(last.grad[off]) <= seq.gtol


@pytest.mark.slow
@given(linear_problems(p=st.integers(2, 4)))
def test_theorem_45_holds_where_the_margin_is_comfortable(model):
    ctx = Context(RunConfig(preset=None, model="diag-linear", log_inv_alphas=parse_alphas("1e-8,1e-16,1e-32")),
                  model=model, argv=["property"])
    m = min_margin(ctx.stages)
    assume(ctx.stages.status is StageStatus.COMPLETE and m >= COMFORTABLE_MARGIN)
    target(-math.log10(m) if math.isfinite(m) else 0.0, label="-log10(smallest comfortable margin)")
    assert run_check("assumption-4.2", ctx).verdict is not Verdict.FAIL
    r = run_check("theorem-4.5", ctx)
    assert r.verdict is not Verdict.FAIL, r.message
    errors = r.values["transition_time_error"]
    assert errors[-1] <= errors[0] or errors[-1] <= r.metrics["transition_time_error_at_smallest_alpha"].threshold
