"""Exact ties from a symmetry of the loss (limit/symmetry.py) and what assumption-4.2, 4.3 and theorem-4.5 say
about them: exchangeable heads (the transformer of Example 3.2 without per-head projections) are named; heads
that read the stream through their own projections are not exchangeable."""

import math

import pytest
import torch

from verifier import data as D
from verifier.checks import Verdict, run_check
from verifier.config import RunConfig
from verifier.context import Context
from verifier.limit import algorithm1
from verifier.limit.symmetry import candidates, exchange_text, find_symmetry, ties
from verifier.models import DiagAttention, DiagTransformer
from verifier.presets import frozen_feedforward, head_projections

F64 = torch.float64


def transformer(projections: bool, seed: int = 1, layers: int = 1, heads: int = 2, d: int = 3, N: int = 20):
    """A small Example 3.2 transformer whose teacher (same architecture) has q*k[0] = 1.2 and vv*o[0] = 1.5 in
    head 0 of layer 0 only."""
    gen = D.generator(seed)
    X = D.gaussian_tokens(N, 3, d, gen)
    A, B = frozen_feedforward(layers, d, 4, gen)
    P = head_projections(layers, heads, d, gen) if projections else None
    kw = dict(ff_in=A, ff_out=B, head_proj=P, heads=heads, temperature=d**-0.5)
    teacher = DiagTransformer(X, X, **kw)
    beta = torch.zeros(teacher.p, dtype=F64)
    beta[0], beta[d] = 1.2, 1.5
    return DiagTransformer(X, teacher.predict_beta(beta), **kw)


def index(model, name):
    return model.coordinate_names().index(name)


def test_exchange_text():
    assert exchange_text("head 0 of layer 1", "head 1 of layer 1") == "heads 0 and 1 of layer 1"
    assert exchange_text("head 0 of layer 0", "head 1 of layer 1") == "head 0 of layer 0 and head 1 of layer 1"
    assert exchange_text("heads.0", "heads.1") == "heads.0 and heads.1"


def test_exchangeable_heads_are_found_and_projected_heads_are_not():
    sym = transformer(projections=False, layers=2)
    i, j = index(sym, "L1H0.vo[2]"), index(sym, "L1H1.vo[2]")
    found = find_symmetry(sym, i, j)
    assert found is not None and found.description == "heads 0 and 1 of layer 1 are exchangeable"
    assert found.max_change <= 1e-12
    perm = found.permutation  # the whole heads are exchanged, entry by entry
    assert all(sym.coordinate_names()[perm[k]].replace("L1H1", "L1H0") == n.replace("L1H1", "L1H0")
               for k, n in enumerate(sym.coordinate_names()))
    proj = transformer(projections=True, layers=2)
    assert find_symmetry(proj, i, j) is None


def test_symmetric_data_make_two_dimensions_exchangeable():
    """Toy head on tokens whose dimensions 0 and 1 are exchangeable (every sequence also appears swapped),
    and a teacher symmetric under the swap."""
    gen = D.generator(0)
    X = D.gaussian_tokens(30, 4, 3, gen)
    X = torch.cat([X, X[..., [1, 0, 2]]])
    model = DiagAttention(X, DiagAttention(X, X, temperature=0.5).predict_beta(
        torch.tensor([1.0, 1.0, 0.0, 1.5, 1.5, 0.3], dtype=F64)), temperature=0.5)
    found = find_symmetry(model, index(model, "vo[0]"), index(model, "vo[1]"))
    assert found is not None and found.description == "dimensions 0 and 1 are exchangeable in every weight of the model"
    assert [p for p, _ in candidates(model, 0, 2)][-1][:3] == (2, 1, 0)  # the plain exchange is always a candidate
    assert find_symmetry(model, index(model, "vo[0]"), index(model, "vo[2]")) is None


def test_every_first_stage_of_exchangeable_heads_is_an_exact_tie():
    model = transformer(projections=False)
    found = ties(model, algorithm1(model), 1e-2)
    assert found and found[0].k == 1 and found[0].margin == 0.0 and found[0].exact
    assert found[0].symmetry.description == "heads 0 and 1 of layer 0 are exchangeable"
    proj = transformer(projections=True)
    assert not [t for t in ties(proj, algorithm1(proj), 1e-2) if t.exact]


@pytest.fixture(scope="module")
def symmetric_context():
    cfg = RunConfig(log_inv_alphas=tuple(math.log(10.0) * e for e in (4, 8, 16)))
    return Context(cfg, model=transformer(projections=False), argv=["test"])


def test_assumption42_names_the_symmetry(symmetric_context):
    res = run_check("assumption-4.2", symmetric_context)
    assert res.verdict is Verdict.FAIL and res.reason == "tie"
    assert "margin 0 < 0.01: heads 0 and 1 of layer 0 are exchangeable (the loss is invariant" in res.message
    assert res.values["symmetries"][0]["exchange"] == "heads 0 and 1 of layer 0 are exchangeable"


def test_theorem45_says_algorithm1_is_undefined_after_the_tie(symmetric_context):
    res = run_check("theorem-4.5", symmetric_context)
    assert res.verdict is Verdict.FAIL and res.reason == "tie"
    assert res.message.startswith("Algorithm 1 is undefined after stage 0: at T_1 = ")
    assert "heads 0 and 1 of layer 0 are exchangeable" in res.message and "stalls" not in res.message
    assert res.values["undefined_after_stage"] == 0


def test_assumption43_names_the_flat_direction_and_its_symmetry(symmetric_context):
    res = run_check("assumption-4.3", symmetric_context)
    assert res.verdict is Verdict.FAIL and res.reason == "not-strict-minimum"
    assert "a flat direction the run sits in along L0H0.vo[0] and L0H1.vo[0]: heads 0 and 1 of layer 0 are " \
           "exchangeable (the loss is invariant" in res.message
    assert res.message.count("the loss is invariant") == 1  # explained once, then named
