"""Lemma 4.1 over random problems of every model family, through the same check the CLI runs."""

import math

from hypothesis import given, strategies as st

from verifier.checks import Verdict, run_check
from verifier.config import OptimizerConfig, RunConfig
from verifier.context import Context
from verifier.testing import (attention_problems, full_attention_problems, linear_problems, seeds,
                              transformer_problems)

any_model = st.one_of(linear_problems(), attention_problems(d=st.integers(2, 3)), transformer_problems(),
                      full_attention_problems())


def _check(model, seed, **opt):
    cfg = RunConfig(seed=seed, log_inv_alphas=(math.log(10.0),), optimizer=OptimizerConfig(**opt))
    return run_check("lemma-4.1", Context(cfg, model=model, argv=["property"]))


@given(any_model, seeds())
def test_gradient_flow_conserves(model, seed):
    result = _check(model, seed, name="flow")
    assert result.verdict is Verdict.PASS, result.message
    assert result.values["max_drift"] <= result.metrics["max_drift"].threshold


@given(any_model, seeds(), st.sampled_from(["gd", "sgd"]), st.floats(1e-3, 5e-2))
def test_gradient_steps_follow_the_exact_discrete_law(model, seed, name, lr):
    result = _check(model, seed, name=name, lr=lr, steps=40, batch_size=3)
    assert result.verdict is Verdict.PASS, result.message


@given(any_model, seeds())
def test_adam_breaks_the_law(model, seed):
    result = _check(model, seed, name="adam", lr=1e-2, steps=40)
    assert result.verdict is Verdict.FAIL and result.reason == "conservation-broken", result.message
    assert result.values["max_law_error"] > 1e3 * result.metrics["max_law_error"].threshold


@given(any_model, seeds(), st.sampled_from([{"momentum": 0.9}, {"weight_decay": 0.1}]))
def test_momentum_and_weight_decay_break_the_law(model, seed, change):
    """Neither update is a gradient step of the current point: a momentum step adds eta * mu * (old
    gradients), whose first-order change of C does not cancel; weight decay scales C by (1 - eta lambda)^2."""
    result = _check(model, seed, name="gd", lr=1e-2, steps=40, **change)
    assert result.verdict is Verdict.FAIL and result.reason == "conservation-broken", result.message
    assert result.values["max_law_error"] > 1e3 * result.metrics["max_law_error"].threshold
