"""Assumption 4.3 on random diagonal linear networks: with a generic design every support gives a
positive-definite restricted Hessian at its stationary point (the least squares fit on the support); a
design with a duplicated column never does once both copies are in the support."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from verifier.checks import _perturb as P
from verifier.models import DiagLinear
from verifier.testing import linear_problems


def stationary_point(model: DiagLinear, support: list[int]) -> torch.Tensor:
    """beta supported on ``support`` with g_A(beta) = 0: least squares of y on the columns in A."""
    beta = torch.zeros(model.p, dtype=torch.float64)
    beta[support] = torch.linalg.lstsq(model.X[:, support], model.Y[:, None]).solution[:, 0]
    return beta


@given(linear_problems(), st.data())
def test_generic_designs_give_strict_minima(model, data):
    support = sorted(data.draw(st.sets(st.integers(0, model.p - 1), min_size=1)))
    beta = stationary_point(model, support)
    assert float(model.grad_b(beta)[support].abs().max()) < 1e-10
    eigs = P.restricted_hessian(model, beta, support)[0]
    XA = model.X[:, support]
    expected = torch.linalg.eigvalsh(XA.T @ XA / model.X.shape[0])
    assert torch.allclose(eigs, expected, rtol=1e-9, atol=1e-12)
    assert P.is_strict(eigs)


@given(linear_problems(), st.data())
def test_a_duplicated_column_is_never_strict(model, data):
    j = data.draw(st.integers(0, model.p - 1))
    X = torch.cat([model.X, model.X[:, j : j + 1]], dim=1)  # column p is a copy of column j
    dup = DiagLinear(X, model.Y)
    others = data.draw(st.sets(st.integers(0, model.p - 1)))
    support = sorted(others | {j, model.p})
    beta = stationary_point(dup, support)
    eigs = P.restricted_hessian(dup, beta, support)[0]
    assert not P.is_strict(eigs)
    assert abs(float(eigs[0])) <= 1e-12 * float(eigs.abs().max())  # e_j - e_p is exactly flat
