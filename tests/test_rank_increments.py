"""rank-increments: full-weight products learn one rank at a time on the full-attention preset; a teacher whose
product has two equal singular values, with data symmetric under exchanging those two directions, makes two
singular values rise together (the known counterexample the check must flag)."""

import math

import pytest
import torch
from torch import nn

import verifier
from verifier import data as D
from verifier.checks import REGISTRY, Verdict, run_check
from verifier.checks import rank_increments as R
from verifier.config import RunConfig
from verifier.context import Context
from verifier.models.attention import attention
from verifier.presets import build_model

F64 = torch.float64


class FullHead(nn.Module):
    """A user's head with full weight matrices: softmax((X Wq)(X Wk)^T c) X Wv Wo^T."""

    def __init__(self, d, temperature):
        super().__init__()
        self.Wq, self.Wk, self.Wv, self.Wo = (nn.Parameter(torch.eye(d, dtype=F64)) for _ in range(4))
        self.temperature = temperature

    def forward(self, X):
        A = torch.softmax(self.temperature * (X @ self.Wq) @ (X @ self.Wk).transpose(-1, -2), dim=-1)
        return A @ X @ self.Wv @ self.Wo.T


def symmetric_tied_teacher(d=4, n=4, N=32, seed=0):
    """Wv Wo^T = 1.5 (e1 e1^T + e2 e2^T) (two equal singular values), Wq Wk^T = 0, and every sequence also
    appears with e1 and e2 exchanged and with either sign flipped: the data are invariant under the symmetries
    of the (e1, e2) square, so the loss is invariant under them and the two directions grow at the same rate."""
    X = D.gaussian_tokens(N, n, d, D.generator(seed))
    maps = []
    for swap in (False, True):
        for s1 in (1.0, -1.0):
            for s2 in (1.0, -1.0):
                g = torch.eye(d, dtype=F64)
                if swap:
                    g[[0, 1]] = g[[1, 0]]
                g[0] *= s1
                g[1] *= s2
                maps.append(g)
    X = torch.cat([X @ g for g in maps])
    VO = torch.diag(torch.tensor([1.5, 1.5] + [0.0] * (d - 2), dtype=F64))
    Y = attention(X, torch.zeros(d, d, dtype=F64), VO, d**-0.5)
    head = FullHead(d, d**-0.5)
    loss = lambda m: 0.5 * (m(X) - Y).pow(2).sum() / X.shape[0]  # noqa: E731
    return verifier.from_module(head, [("Wq", "Wk"), ("Wv", "Wo")], loss)


def _run(model, **cfg):
    return run_check(R.ID, Context(RunConfig(**cfg), model=model, argv=["test"]))


def test_full_attention_learns_one_rank_at_a_time():
    res = _run(build_model("full-attention"))
    assert res.verdict is Verdict.PASS, res.message
    v = res.values
    assert v["jumps"] == 4 and v["final_ranks"] == {"Wq Wk^T": 2, "Wv Wo^T": 2}  # the teacher's ranks
    smallest = v["events"]["1e-08"]
    assert [(e["product"], e["sigma"], e["direction"]) for e in smallest] == [
        ("Wv Wo^T", 1, "up"), ("Wv Wo^T", 2, "up"), ("Wq Wk^T", 1, "up"), ("Wq Wk^T", 2, "up")]
    assert v["min_limit_gap_ratio"] >= R.LIMIT_GAP_FRACTION
    assert [f.id for f in res.evidence["figures"]] == ["singular-values-0", "singular-values-1",
                                                         "singular-values-2", "jump-gaps"]


def test_symmetric_tied_teacher_is_flagged():
    model = symmetric_tied_teacher()
    assert model.product_names() == ("Wq Wk^T", "Wv Wo^T")
    res = _run(model)
    assert res.verdict is Verdict.FAIL and res.reason == "jumps-not-separated", res.message
    assert "jumps do not separate" in res.message and "raises the rank of Wv Wo^T by two" in res.message
    gap = res.values["gaps"][0]
    assert gap["between"] == ["sigma_1(Wv Wo^T)", "sigma_2(Wv Wo^T)"]
    g = gap["gaps"]  # closes like 1 / log(1/alpha): halves each time log(1/alpha) doubles
    assert g[0] > g[1] > g[2] > 0 and g[0] / g[2] == pytest.approx(4.0, rel=0.1)
    assert abs(gap["limit"]) < 0.1 * g[2]


def test_applies_to_full_weights_only():
    assert REGISTRY[R.ID].applies_to(build_model("full-attention")) is None
    reason = REGISTRY[R.ID].applies_to(build_model("diag-linear"))
    assert "diagonal weights" in reason
    assert REGISTRY[R.ID].applies_to(symmetric_tied_teacher(N=2)) is None  # a from_module matrix-pair model


def test_events_and_limit_fit():
    tau = torch.linspace(0, 1, 11, dtype=F64)
    up = torch.exp(20 * (tau - 0.5))  # crosses 1 at tau = 0.5
    down = torch.exp(-20 * (tau - 0.3))  # crosses 1 at 0.3, going down
    assert R.crossings(tau, up, 1.0) == [(pytest.approx(0.5), True)]
    assert R.crossings(tau, down, 1.0) == [(pytest.approx(0.3), False)]
    evs = R.events(tau, (torch.stack([up, 0.1 * up], 1), torch.stack([down, 0.5 * down], 1)), 1.0)
    assert [(e.product, e.index, e.up) for e in evs] == [(1, 2, False), (1, 1, False), (0, 1, True), (0, 2, True)]
    assert [e.tau for e in evs] == pytest.approx([0.3 - math.log(2) / 20, 0.3, 0.5, 0.5 + math.log(10) / 20])
    L = [5.0, 10.0, 20.0]
    assert R.fit_limit(L, [0.3 + 1.0 / l for l in L]) == pytest.approx(0.3)
    assert R.fit_limit(L, [2.0 / l for l in L]) == pytest.approx(0.0, abs=1e-12)
    assert R.fit_limit([5.0], [0.1]) is None


def test_nothing_learned_is_inconclusive():
    """A loss with zero gradient at theta = 0 (no teacher signal): no jump to judge, never a pass."""
    X = torch.zeros(1, 2, 4, dtype=F64)
    zero = verifier.from_module(FullHead(4, 0.5), [("Wq", "Wk"), ("Wv", "Wo")], lambda m: m(X).pow(2).sum())
    res = _run(zero)
    assert res.verdict is Verdict.INCONCLUSIVE and "nothing is learned" in res.message
    assert res.reason == "nothing-to-test"
