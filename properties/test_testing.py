"""The strategies of ``verifier.testing`` build valid inputs: shapes, finiteness, sparsity, margins,
orthogonality, alphas that parse back to their log(1/alpha), and sizes given as ints respected."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from verifier import testing as T
from verifier.checks.assumption42 import init_margin
from verifier.config import parse_alphas
from verifier.dynamics.flow import ReducedFlow
from verifier.models import DiagAttention, DiagLinear, DiagTransformer, FullAttention

sizes = st.integers(1, 7)


@given(st.data(), sizes)
def test_teachers_are_sparse_with_sizes_in_scale(data, p):
    r = data.draw(st.integers(0, p))
    beta = data.draw(T.teachers(p, r, scale=(0.5, 2.0)))
    assert beta.shape == (p,) and beta.dtype == torch.float64
    nonzero = beta[beta != 0].abs()
    assert len(nonzero) == r
    assert bool(((nonzero >= 0.5) & (nonzero <= 2.0)).all())


@given(st.data(), sizes)
def test_designs(data, p):
    N = data.draw(st.integers(p, 3 * p + 5))
    X = data.draw(T.gaussian_designs(N, p))
    assert X.shape == (N, p) and bool(torch.isfinite(X).all())
    Q = data.draw(T.orthogonal_designs(N, p))
    assert Q.shape == (N, p)
    torch.testing.assert_close(Q.T @ Q / N, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)


def draw_once(strategy):
    @given(strategy)
    def draw(_):
        pass

    draw()


def test_an_orthogonal_design_needs_enough_samples():
    with pytest.raises(InvalidArgument, match="N >= p"):
        draw_once(T.orthogonal_designs(2, 3))


@given(T.tokens(st.integers(1, 5), 3, st.integers(1, 4)))
def test_tokens(X):
    assert X.dim() == 3 and X.shape[1] == 3 and bool(torch.isfinite(X).all())


@given(st.data(), sizes, st.floats(1e-3, 2.0))
def test_inits_keep_the_margin_the_reduced_flow_needs(data, p, margin):
    theta0 = data.draw(T.inits(p, margin))
    assert theta0.shape == (2 * p,) and bool(torch.isfinite(theta0).all())
    m, _ = init_margin(theta0, p)
    assert m >= margin * (1 - 1e-12)
    assert bool((theta0.abs() >= 0.5).all())
    # the exact flow accepts it (it refuses u0 = +-v0, THEORY.md §3)
    model = DiagLinear(torch.eye(p, dtype=torch.float64), torch.ones(p, dtype=torch.float64))
    ReducedFlow.from_init(model, theta0[None], [10.0], atol=1e-7)


@given(T.log_inv_alphas())
def test_log_inv_alphas_are_alphas_in_the_unit_interval(L):
    assert T.MIN_LOG_INV_ALPHA <= L <= T.MAX_LOG_INV_ALPHA
    assert 0.0 <= math.exp(-L) < 1.0  # exp(-L) may underflow; L itself is the alpha


@given(T.alpha_texts())
def test_alpha_texts_parse_back(text):
    (L,) = parse_alphas(text)
    assert T.MIN_LOG_INV_ALPHA * (1 - 1e-12) <= L <= T.MAX_LOG_INV_ALPHA
    if text.startswith("exp("):
        assert L == float(text[5:-1])
    else:
        assert L == pytest.approx(-math.log(float(text)), rel=1e-15)


@pytest.mark.parametrize("strategy,says", [
    (lambda: T.log_inv_alphas(0.0, 1.0), "0 < min_value"),
    (lambda: T.teachers(3, 4), "0 <= r <= p"),
    (lambda: T.teachers(3, 1, scale=(2.0, 1.0)), "0 < lo <= hi"),
    (lambda: T.inits(2, margin=0.0), "margin > 0"),
    (lambda: T.linear_problems(loss="hinge"), "loss in"),
])
def test_bad_arguments_are_refused(strategy, says):
    with pytest.raises(InvalidArgument, match=says):
        draw_once(strategy())


def test_the_usage_example_runs():
    """The example in verifier.testing's docstring is a working property test."""
    code = T.__doc__.split("Example::")[1].split("Importing this module")[0]
    namespace: dict = {}
    exec(textwrap.dedent(code), namespace)
    settings(max_examples=5)(namespace["test_stages_are_stationary"])()  # the example, not a workload


@given(st.data(), st.integers(2, 5), st.booleans(), st.sampled_from(["square", "logistic"]))
def test_linear_problems(data, p, orthogonal, loss):
    model = data.draw(T.linear_problems(p=p, N=p + 3, orthogonal=orthogonal, loss=loss))
    assert isinstance(model, DiagLinear) and model.p == p and model.X.shape == (p + 3, p)
    assert model.loss == loss and bool(torch.isfinite(model.Y).all())
    if orthogonal:
        torch.testing.assert_close(model.X.T @ model.X / (p + 3), torch.eye(p, dtype=torch.float64),
                                   atol=1e-12, rtol=0)
    if loss == "logistic":
        assert set(model.Y.tolist()) <= {-1.0, 1.0}
    else:  # y = X beta* with a nonzero teacher
        assert float(model.Y.abs().max()) > 0


@given(T.attention_problems(d=3, n=2, N=5))
def test_attention_problems(model):
    assert isinstance(model, DiagAttention) and model.X.shape == model.Y.shape == (5, 2, 3)
    assert model.temperature == pytest.approx(3**-0.5)
    assert bool(torch.isfinite(model.Y).all()) and float(model.Y.abs().max()) > 0  # r_vo >= 1
    assert bool(torch.isfinite(model.grad_b(torch.zeros(model.p, dtype=torch.float64))).all())


@given(T.transformer_problems(d=2, layers=2, heads=1, activation="relu"))
def test_transformer_problems(model):
    assert isinstance(model, DiagTransformer) and model.layers == 2 and model.heads == 1 and model.d == 2
    assert model.activation == "relu" and model.p == 2 * 2 * 1 * 2
    assert math.isfinite(float(model.loss_beta(torch.zeros(model.p, dtype=torch.float64))))


@given(T.full_attention_problems(d=st.integers(2, 3), n=st.integers(2, 3), N=st.integers(4, 6)))
def test_full_attention_problems(model):
    assert isinstance(model, FullAttention) and model.X.shape == model.Y.shape
    assert model.n_params == 4 * model.d**2


def test_importing_verifier_does_not_import_hypothesis():
    code = "import sys, verifier; assert 'hypothesis' not in sys.modules and 'verifier.testing' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
