"""Lemma 4.1 over random problems of every model family, through the same check the CLI runs."""

import math

import torch
from hypothesis import given, strategies as st

from properties.strategies import attention_problems, linear_problems, seeds
from verifier import data as D
from verifier.checks import Verdict, run_check
from verifier.config import OptimizerConfig, RunConfig
from verifier.context import Context
from verifier.models import DiagTransformer, FullAttention
from verifier.presets import frozen_feedforward


@st.composite
def transformers(draw):
    gen = D.generator(draw(seeds))
    d, n, N = draw(st.integers(2, 3)), draw(st.integers(2, 3)), draw(st.integers(4, 12))
    X = D.gaussian_tokens(N, n, d, gen)
    A, B = frozen_feedforward(draw(st.integers(1, 2)), d, 4, gen)
    return DiagTransformer(X, D.gaussian_tokens(N, n, d, gen), ff_in=A, ff_out=B, heads=draw(st.integers(1, 2)),
                           temperature=d**-0.5)


@st.composite
def full_heads(draw):
    gen = D.generator(draw(seeds))
    d, n, N = draw(st.integers(2, 3)), draw(st.integers(2, 3)), draw(st.integers(4, 12))
    return FullAttention(D.gaussian_tokens(N, n, d, gen), D.gaussian_tokens(N, n, d, gen), temperature=d**-0.5)


any_model = st.one_of(linear_problems(), attention_problems(max_d=3), transformers(), full_heads())


def _check(model, seed, **opt):
    cfg = RunConfig(seed=seed, log_inv_alphas=(math.log(10.0),), optimizer=OptimizerConfig(**opt))
    return run_check("lemma-4.1", Context(cfg, model=model, argv=["property"]))


@given(any_model, seeds)
def test_gradient_flow_conserves(model, seed):
    result = _check(model, seed, name="flow")
    assert result.verdict is Verdict.PASS, result.message
    assert result.values["max_drift"] <= result.metrics["max_drift"].threshold


@given(any_model, seeds, st.sampled_from(["gd", "sgd"]), st.floats(1e-3, 5e-2))
def test_gradient_steps_follow_the_exact_discrete_law(model, seed, name, lr):
    result = _check(model, seed, name=name, lr=lr, steps=40, batch_size=3)
    assert result.verdict is Verdict.PASS, result.message


@given(any_model, seeds)
def test_adam_breaks_the_law(model, seed):
    result = _check(model, seed, name="adam", lr=1e-2, steps=40)
    assert result.verdict is Verdict.FAIL, result.message
    assert result.values["max_law_error"] > 1e3 * result.metrics["max_law_error"].threshold
