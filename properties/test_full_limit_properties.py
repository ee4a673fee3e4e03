"""The full-weight limit over random two-layer linear networks (THEORY.md §8.2): the greedy saddle-to-saddle
limit, run from the model's gradients alone, equals the closed form (plateaus P_Uk Syx Sxx^-1, losses, and the
jump-time recursion) whatever the input covariance; the plateaus are stationary with non-increasing losses."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import verifier
from verifier.limit.pairs import full_limit, gradients, greedy_limit

F64 = torch.float64


class Linear(torch.nn.Module):
    def __init__(self, d_in: int, width: int, d_out: int):
        super().__init__()
        self.A = torch.nn.Parameter(torch.zeros(d_out, width, dtype=F64))
        self.B = torch.nn.Parameter(torch.zeros(d_in, width, dtype=F64))

    def forward(self, x):
        return x @ self.B @ self.A.T


def _amax(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


@st.composite
def linear_networks(draw):
    """A d_out x d_in linear network through width min(d_in, d_out) on N correlated Gaussian inputs, target map
    with singular values at least 20% apart (the greedy limit's ties are not what is tested here)."""
    d_in, d_out = draw(st.integers(2, 3)), draw(st.integers(2, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    N = 3 * d_in + 4
    X = torch.randn(N, d_in, generator=gen, dtype=F64) @ (torch.eye(d_in, dtype=F64)
                                                          + 0.5 * torch.randn(d_in, d_in, generator=gen, dtype=F64))
    B = torch.randn(d_out, d_in, generator=gen, dtype=F64)
    Y = X @ B.T
    S = torch.linalg.svdvals(Y.T @ X / N)
    assume(bool((S[1:] < 0.8 * S[:-1]).all()) and float(S[-1]) > 1e-3 * float(S[0]))
    net = Linear(d_in, min(d_in, d_out), d_out)
    return verifier.from_module(net, [("A", "B")], lambda m: 0.5 * (m(X) - Y).pow(2).sum() / N)


@pytest.mark.slow  # ~10 s an example (a stage B per jump); tests/test_pair_flow.py has the fixed case in CI
@given(linear_networks())
def test_greedy_limit_equals_the_closed_form(model):
    closed, greedy = full_limit(model), greedy_limit(model)
    assert closed.kind == "closed-form" and greedy.kind == "greedy"
    assert len(closed.stages) == len(greedy.stages)
    for c, g in zip(closed.stages, greedy.stages):
        assert abs(g.T - c.T) <= 1e-6 * max(1.0, c.T)
        assert abs(g.loss - c.loss) <= 1e-6 * max(1.0, closed.stages[0].loss)
        assert float((g.products[0] - c.products[0]).abs().max()) <= 1e-5 * max(1.0, float(c.products[0].abs().max()))
    losses = [s.loss for s in closed.stages]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    for s in closed.stages:  # every plateau is stationary on its active modes: Gamma V = 0 and Gamma^T U = 0
        M = s.products[0]
        G, = gradients(model, [M])
        X, S, Yh = torch.linalg.svd(M)
        k = int((S > 1e-9 * max(1.0, float(S.max()))).sum())
        assert _amax(G @ Yh[:k].T) <= 1e-8 and _amax(G.T @ X[:, :k]) <= 1e-8
