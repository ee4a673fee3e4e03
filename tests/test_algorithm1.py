"""Algorithm 1 against exact answers (THEORY.md §4): the orthogonal-design closed form, and for correlated linear
designs stage B against sign-constrained least squares (scipy nnls after sign flips), including a design
where a coordinate leaves the support and re-enters with the opposite sign."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from verifier import data as D
from verifier.cli import main
from verifier.limit import algorithm1
from verifier.models import DiagLinear

F64 = torch.float64

def sign_constrained_ls(X: np.ndarray, y: np.ndarray, support: list[int], signs: list[int]) -> np.ndarray:
    """argmin ||y - X beta||^2 over beta supported on ``support`` with sign(beta_j) in {0, signs_j}."""
    z, _ = nnls(X[:, support] * np.array(signs), y)
    beta = np.zeros(X.shape[1])
    beta[support] = np.array(signs) * z
    return beta


def reference(X: np.ndarray, y: np.ndarray, max_stages: int = 20) -> list[dict]:
    """Algorithm 1 for square loss on a linear model, stage B by nnls: the independent oracle."""
    N, p = X.shape
    beta, b, T, support, out = np.zeros(p), np.zeros(p), 0.0, [], []
    for _ in range(max_stages):
        G = -X.T @ (y - X @ beta) / N
        cand = [i for i in range(p) if i not in support and abs(G[i]) > 1e-9]
        if not cand:
            break
        delta = {i: ((1 - b[i]) / -G[i]) if G[i] < 0 else ((1 + b[i]) / G[i]) for i in cand}
        i = min(delta, key=delta.get)
        off = np.array([j not in support for j in range(p)])
        b = np.where(off, b - G * delta[i], b)
        sign = 1 if G[i] < 0 else -1
        new_support = sorted(set(support) | {i})
        signs = [int(np.sign(beta[j])) if j != i else sign for j in new_support]
        beta = sign_constrained_ls(X, y, new_support, signs)
        left = [j for j in new_support if beta[j] == 0]
        for j in left:
            b[j] = signs[new_support.index(j)]
        support = [j for j in new_support if j not in left]
        T += delta[i]
        out.append({"T": T, "coordinate": i, "sign": sign, "beta": beta.copy(), "left": left, "support": support})
    return out


def assert_matches_reference(model: DiagLinear, seq) -> list[dict]:
    ref = reference(model.X.numpy(), model.Y.numpy())
    assert seq.status == "complete"
    assert len(seq.stages) - 1 == len(ref)
    for s, r in zip(seq.stages[1:], ref):
        assert (s.coordinate, s.sign, list(s.left), list(s.support)) == (r["coordinate"], r["sign"], r["left"],
                                                                          r["support"])
        assert s.T == pytest.approx(r["T"], rel=1e-9)
        np.testing.assert_allclose(s.beta.numpy(), r["beta"], atol=1e-8)
    return ref


@pytest.fixture(scope="module")
def orthogonal():
    beta_star = torch.tensor([2.0, -0.5, 0.0, 1.25, -0.8], dtype=F64)
    X = D.orthogonal_design(16, 5, D.generator(3))
    model = DiagLinear(X, X @ beta_star)
    return beta_star, algorithm1(model)


def test_orthogonal_design_closed_form(orthogonal):
    """Coordinates enter in decreasing |beta*_i| at T = 1 / |beta*_i|; beta^k keeps the k largest entries."""
    beta_star, seq = orthogonal
    order = [0, 3, 4, 1]
    assert seq.status == "complete"
    assert [s.coordinate for s in seq.stages[1:]] == order
    assert [s.sign for s in seq.stages[1:]] == [1, 1, -1, -1]
    assert [s.T for s in seq.stages[1:]] == pytest.approx([0.5, 0.8, 1.25, 2.0], rel=1e-12)
    for k, s in enumerate(seq.stages[1:], start=1):
        expected = torch.zeros(5, dtype=F64)
        expected[order[:k]] = beta_star[order[:k]]
        torch.testing.assert_close(s.beta, expected, atol=1e-9, rtol=0)
        assert s.left == ()
    # margin of stage k: Delta of the runner-up over Delta of the winner, from T_{k-1}
    T = [0.0, 0.5, 0.8, 1.25, 2.0]
    expected_margins = [(T[k + 1] - T[k - 1]) / (T[k] - T[k - 1]) - 1 for k in (1, 2, 3)] + [math.inf]
    assert [s.margin for s in seq.stages[1:]] == pytest.approx(expected_margins, rel=1e-9)
    assert seq.stages[-1].loss == pytest.approx(0.0, abs=1e-20)


def test_limit_b_is_piecewise_linear(orthogonal):
    """b(tau) = -G tau off the support before T_1 and hits +-1 exactly at each activation."""
    beta_star, seq = orthogonal
    b = seq.b_at(torch.tensor([0.25, 0.5, 0.8, 1.0, 3.0], dtype=F64))
    torch.testing.assert_close(b[0], 0.25 * beta_star)
    assert float(b[1, 0]) == pytest.approx(1.0) and float(b[2, 3]) == pytest.approx(1.0)
    assert float(b[3, 4]) == pytest.approx(-0.8) and float(b[4, 1]) == pytest.approx(-1.0)


def test_correlated_design_matches_sign_constrained_least_squares():
    gen = D.generator(11)
    X = D.gaussian_design(40, 6, gen)
    model = DiagLinear(X, X @ D.sparse_vector(6, 4, (0.5, 2.0), gen))
    ref = assert_matches_reference(model, algorithm1(model))
    assert len(ref) >= 4


def test_a_coordinate_leaves_and_reenters_with_the_opposite_sign(leave_reenter_model, leave_beta_star):
    model = leave_reenter_model
    seq = algorithm1(model)
    assert_matches_reference(model, seq)
    assert [(s.coordinate, s.sign, s.left) for s in seq.stages[1:]] == [
        (2, -1, ()), (1, -1, ()), (0, 1, (1,)), (1, 1, ())]
    # it left with b = -1 and G < 0 pointing b inward (Assumption 4.2c), re-entering after Delta = 2 / |G|
    s3 = seq.stages[3]
    assert float(s3.b[1]) == -1.0 and float(s3.grad[1]) < 0
    assert seq.stages[4].T - s3.T == pytest.approx(2 / abs(float(s3.grad[1])), rel=1e-9)
    torch.testing.assert_close(seq.stages[-1].beta, torch.tensor(leave_beta_star, dtype=F64), atol=1e-9, rtol=0)


def test_to_dict_is_strict_json_and_table_names_stages(orthogonal):
    _, seq = orthogonal
    d = seq.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d) == {"stages"}
    assert [set(s) for s in d["stages"]] == [{"k", "T", "coordinate", "sign", "support", "loss", "margin", "left"}] * 5
    assert d["stages"][0]["coordinate"] is None and d["stages"][-1]["margin"] == "inf"
    table = seq.table()
    assert "beta[3]" in table and "status: complete" in table and len(table.splitlines()) == 8


def test_cli_limit_prints_the_table_and_writes_json(tmp_path, capsys, leave_reenter_model):
    model = leave_reenter_model
    np.savez(tmp_path / "d.npz", X=model.X.numpy(), y=model.Y.numpy())
    out = tmp_path / "stages.json"
    assert main(["limit", "--model", "diag-linear", "--data", str(tmp_path / "d.npz"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "activated" in printed and "beta[1]" in printed
    stages = json.loads(out.read_text())["stages"]
    assert [s["coordinate"] for s in stages] == [None, 2, 1, 0, 1]
    assert stages[3]["left"] == [1]


def test_a_leave_at_the_zero_loss_last_stage_is_decided_by_newtons_active_set(zero_loss_context, monkeypatch):
    """At a zero-loss minimum the leaver decays like 1/t, so the flow alone leaves it far above LEAVE_TOL
    (THEORY.md §5.3): Newton's active set sends it to zero, and its gradient there is 0, not inward."""
    import verifier.limit.incremental as I

    calls = []
    polish = I.newton_polish
    monkeypatch.setattr(I, "newton_polish", lambda model, beta, active, gtol, max_iter=12: calls.append(
        (beta.clone(), polish(model, beta, active, gtol, max_iter))) or calls[-1][1])
    seq = I.algorithm1(zero_loss_context.model)
    last = seq.stages[-1]
    assert [s.coordinate for s in seq.stages[1:]] == [2, 1, 0] and last.left == (2,)
    assert last.loss <= 1e-20 and abs(float(last.grad[2])) <= seq.gtol
    start, (beta, left) = calls[-1]
    assert left == [2] and float(start[2]) > 1e3 * I.LEAVE_TOL  # the flow had not brought it near LEAVE_TOL
