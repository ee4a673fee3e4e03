"""The lifted flow of full-weight models (THEORY.md §8.1): the same flow as theta's where float64 can hold theta,
exact where it cannot (alpha = exp(-10^4)), its W matrix the Jacobian on the modes that matter, its cost flat in
log(1/alpha); and the full-weight limit (§8.2): the greedy limit equals the closed forms."""

import math

import pytest
import torch
from torch import nn
from torch.func import jacfwd, vmap

import verifier
from verifier.config import SolverConfig
from verifier.dynamics.pair_flow import LiftedFlow, exact_path, solve_lifted, with_jacobian_for
from verifier.dynamics.param_flow import solve_param_flow
from verifier.limit.pairs import full_limit, greedy_limit, linear_attention_limit, linear_network
from verifier.presets import build_model

F64 = torch.float64


def _theta0(model):
    return model.init_params(1.0, torch.Generator().manual_seed(1000003))


def _active_state(model, L=5.0):
    """A graded state: two modes of order one, one in transition and one dormant (sizes e^0.3 ... e^-60), the
    first three coupled in R (entries (0, 1), (0, 2), (1, 2) of its strict upper triangle, row-major)."""
    flow, y = LiftedFlow.initial_state(model, model.factors(_theta0(model)[None]), [L])
    (Q, l, R), = flow.unpack(y[0])
    n = Q.numel()
    y = y.clone()
    y[0, n : n + 4] = torch.tensor([0.3, 0.1, -3.0, -60.0], dtype=F64)
    y[0, n + 4 :] = torch.tensor([0.3, 0.3, 0.0, 0.3, 0.0, 0.0], dtype=F64)
    return flow, y


def test_lifted_flow_is_the_flow_of_theta(two_layer):
    """At alpha = 1e-2 and 1e-4 (where theta's own flow is exact in float64) both integrators give the same
    products and losses along the run, through all three jumps."""
    model = two_layer.make()
    theta0 = _theta0(model)
    L = [math.log(1e2), math.log(1e4)]
    _, lifted = solve_lifted(model, theta0, L, 1.2, SolverConfig(rtol=1e-8, atol=1e-8), n_out=25)
    theta = solve_param_flow(model, theta0, L, 1.2, rtol=1e-11, n_out=25)
    ref = model.products(theta.theta)[0]
    assert lifted.ok and float(torch.linalg.svdvals(ref[0, -1])[0]) > 2.9  # the last plateau: 3, 2, 1
    assert float((lifted.products[0] - ref).abs().max()) <= 1e-5
    assert torch.allclose(lifted.loss, theta.loss, rtol=1e-5, atol=1e-8)


def test_two_ways_of_reading_gamma_agree(two_layer):
    """Gamma Q_V and Gamma^T Q_U from Gamma itself (one gradient at ([M, 0], [I, 0])) and from the gradients at
    two factorisations of the same products (the path for pairs with r < min(a, b))."""
    model = two_layer.make()
    flow, y = _active_state(model)
    assert flow.full_gamma
    G, = flow.gammas(flow._products1(y[0]))
    (Q, _, _), = flow.unpack(y[0])
    (GQv, GtQu), = flow.sides_from_gradients(y[0])
    assert torch.allclose(GQv, G @ Q[4:], rtol=0, atol=1e-12 * float(G.abs().max()))
    assert torch.allclose(GtQu, G.T @ Q[:4], rtol=0, atol=1e-12 * float(G.abs().max()))


def test_w_matrix_is_the_jacobian_on_the_modes_that_matter(two_layer):
    """The W-method's matrix equals the exact Jacobian (forward mode through the loss) in every column but those
    of the dormant mode (size e^-60), where the difference is the tiny non-stiff term it leaves out."""
    model = two_layer.make()
    flow, y = _active_state(model)
    W = with_jacobian_for(flow, SolverConfig(method="ros34pw2")).jac(y, torch.arange(1))[0]
    J = vmap(jacfwd(flow._rhs1))(y, flow.L)[0]
    dormant = flow._mode_columns()[3]
    keep = torch.ones(J.shape[1], dtype=torch.bool)
    keep[dormant] = False
    assert float((W - J)[:, keep].abs().max()) <= 1e-10 * float(J.abs().max())
    assert float((W - J)[:, dormant].abs().max()) <= 1e-40


def test_product_only_losses_have_an_exact_path(two_layer):
    """The lifted flow needs a loss that reads each pair only through U V^T; weight decay on one factor does not."""
    assert exact_path(two_layer.make()) is None
    assert exact_path(build_model("full-attention")) is None
    net = two_layer.TwoLayer()
    X = torch.randn(10, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    decayed = verifier.from_module(net, [("W2", "W1")], lambda m: m(X).pow(2).mean() + 0.1 * m.W1.pow(2).sum())
    assert "only through U V^T" in exact_path(decayed)


@pytest.mark.slow
def test_exact_at_exp_minus_ten_thousand_and_flat_cost(two_layer):
    """At alpha = exp(-10^4) the dormant modes keep their exact sizes (log sigma_j = 2 L (sigma_j(Syx) tau - 1)
    + O(1) before any jump), the jumps come at the limit's times to O(1/L), the run ends at the target's
    singular values, and the solver does not work harder than at alpha = 1e-16."""
    model = two_layer.make()
    limit = full_limit(model)
    rates = limit.stages[0].rates[0]
    L = [math.log(1e16), 1e4]
    _, traj = solve_lifted(model, _theta0(model), L, 1.4, SolverConfig(rtol=1e-6, atol=1e-6, method="ros34pw2"),
                           n_out=1401)
    assert traj.ok
    i = int(torch.argmin((traj.tau - 0.1).abs()))
    for j in range(3):
        predicted = 2 * 1e4 * (rates[j] * float(traj.tau[i]) - 1)  # about -1.8e4 for the third mode
        assert abs(float(traj.log_sv[0][1, i, j]) - predicted) <= 10.0
    assert torch.allclose(traj.sv[0][1, -1, :3], torch.tensor([3.0, 2.0, 1.0], dtype=F64), rtol=1e-9)
    for jump in limit.jumps():  # the j-th singular value crosses half its plateau value within O(1/L) of T_j
        s = traj.sv[0][1, :, jump.index - 1]
        first = traj.tau[int((s > 0.5 * limit.stages[jump.k].singular_values()[0][jump.index - 1]).nonzero()[0])]
        assert abs(float(first) - jump.T) <= 2e-3
    assert int(traj.nfev[1]) <= 1.5 * int(traj.nfev[0])


# -- the full-weight limit --------------------------------------------------------------------------------
def test_commuting_network_jumps_at_inverse_singular_values(two_layer):
    """Whitened inputs (Sxx = I commutes with the target): T_k = 1 / sigma_k, plateaus keep the top k singular
    values, losses 1/2 sum_{i > k} sigma_i^2 (THEORY.md §8.2) - proven (Saxe et al., Gidel et al.)."""
    limit = full_limit(two_layer.near_tie())
    assert limit.kind == "closed-form" and limit.basis == "proven"
    assert [s.T for s in limit.stages] == pytest.approx([0.0, 1 / 2.0, 1 / 1.9, 1.0], rel=1e-12, abs=1e-12)
    sv = [2.0, 1.9, 1.0]
    for k, s in enumerate(limit.stages):
        assert [v for v in s.singular_values()[0] if v > 1e-9] == pytest.approx(sv[:k], rel=1e-10)
        assert s.loss == pytest.approx(0.5 * sum(x * x for x in sv[k:]), rel=1e-10, abs=1e-12)
    assert limit.ties() == []


def test_equal_singular_values_are_a_predicted_tie(two_layer):
    limit = full_limit(two_layer.tied())
    assert limit.stages[1].T == pytest.approx(limit.stages[2].T, rel=1e-12) == pytest.approx(0.5)
    assert limit.ties() == [1, 2]  # jump 1 ties with its runner-up, jump 2 comes after it in zero time


def test_linear_network_is_detected_in_either_layout(two_layer):
    """Gamma(M) = M Sxx - Syx (pair (W2, W1), M = W2 W1^T), and the transposed layout (pair (W1, W2), M = B^T);
    a nonlinear network is not a linear network."""
    model = two_layer.make()
    net = linear_network(model)
    assert net is not None and not net.transposed
    X = torch.randn(40, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    B = torch.randn(4, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    flipped = verifier.from_module(two_layer.TwoLayer(), [("W1", "W2")], lambda m: 0.5 * (m(X) - X @ B.T).pow(2).sum() / 40)
    net = linear_network(flipped)
    assert net is not None and net.transposed
    assert torch.allclose(net.Sxx, X.T @ X / 40, atol=1e-12) and torch.allclose(net.Syx, B @ X.T @ X / 40, atol=1e-12)
    last = full_limit(flipped).stages[-1].products[0]
    assert torch.allclose(last, B.T, atol=1e-9)
    bent = verifier.from_module(two_layer.TwoLayer(), [("W2", "W1")], lambda m: 0.5 * (torch.tanh(m(X)) - X @ B.T).pow(2).sum())
    assert linear_network(bent) is None


def test_greedy_limit_equals_the_closed_form(two_layer):
    """The greedy saddle-to-saddle limit (stage B by the lifted flow) reproduces the closed form of a network
    whose input covariance does not commute with the target: jump times (Kunin et al.'s recursion, not
    1/sigma_k), plateaus, losses."""
    model = two_layer.make()
    closed, greedy = full_limit(model), greedy_limit(model)
    assert closed.kind == "closed-form" and closed.basis == "derived" and not closed.extra["commuting"]
    assert len(greedy.stages) == len(closed.stages) == 4
    for c, g in zip(closed.stages, greedy.stages):
        assert g.T == pytest.approx(c.T, rel=1e-7, abs=1e-12)
        assert g.loss == pytest.approx(c.loss, rel=1e-7, abs=1e-10)
        assert float((g.products[0] - c.products[0]).abs().max()) <= 1e-6
    inverse = [1 / s for s in closed.stages[0].rates[0][:3]]
    assert max(abs(c.T - t) for c, t in zip(closed.stages[1:], inverse)) > 1e-4  # the recursion matters here


def test_linear_attention_closed_form():
    """Linear attention (THEORY.md §8.4): the population loss equals the mean squared error of the heads'
    predictions on sampled sequences (within 4 standard errors), Gamma(0) = -Lambda^2, and the greedy limit
    reproduces the closed-form stages."""
    model = build_model("linear-attention")
    gen = torch.Generator().manual_seed(5)
    theta = 0.7 * torch.randn(model.n_params, generator=gen, dtype=F64)
    S, N, D = 20000, model.context, model.D
    root = torch.linalg.cholesky(model.X)
    x = torch.randn(S, N, D, generator=gen, dtype=F64) @ root.T
    xq = torch.randn(S, D, generator=gen, dtype=F64) @ root.T
    w = torch.randn(S, D, generator=gen, dtype=F64)
    y = (x * w[:, None]).sum(-1)
    err = 0.5 * (model.predict(theta, x, y, xq) - (xq * w).sum(-1)) ** 2
    assert float(model.loss_params(theta)) == pytest.approx(float(err.mean()), abs=4 * float(err.std()) / S**0.5)
    from verifier.limit.pairs import gradients

    G0, = gradients(model, [torch.zeros(D, D, dtype=F64)])
    assert torch.allclose(G0, -model.X @ model.X, atol=1e-12)
    closed, greedy = linear_attention_limit(model), greedy_limit(model)
    lam = torch.linalg.eigvalsh(model.X).flip(0)
    assert [s.T for s in closed.stages[1:]] == pytest.approx((1 / lam**2).tolist(), rel=1e-12)
    for c, g in zip(closed.stages, greedy.stages):
        assert g.T == pytest.approx(c.T, rel=1e-7, abs=1e-12)
        assert g.loss == pytest.approx(c.loss, rel=1e-7)
        assert g.singular_values()[0] == pytest.approx(c.singular_values()[0], abs=1e-6)


def test_commuting_network_whose_rates_and_mu_disagree_uses_the_greedy_limit():
    """Sxx = diag(4, 1) commutes with the target diag(1, 3), but the growth rates |Syx^T u_i| = 4, 3 and the
    eigenvalues mu_i = 4, 9 order the modes differently: the first plateau learns the faster mode (rate 4, value 1),
    not the top-mu projection, so the closed form does not apply and the greedy limit (which follows the rates)
    is used: T = 1/4, 1/3."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.A = nn.Parameter(torch.zeros(2, 2, dtype=F64))
            self.B = nn.Parameter(torch.zeros(2, 2, dtype=F64))

        def forward(self, x):
            return x @ self.B @ self.A.T

    X = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=F64) * 2**0.5  # X^T X / 4 = diag(4, 1)
    Y = X @ torch.diag(torch.tensor([1.0, 3.0], dtype=F64))
    model = verifier.from_module(Net(), [("A", "B")], lambda m: 0.5 * (m(X) - Y).pow(2).sum() / 4)
    assert linear_network(model) is not None
    limit = full_limit(model)
    assert limit.kind == "greedy"
    assert [s.T for s in limit.stages] == pytest.approx([0.0, 0.25, 1 / 3], rel=1e-7)
    assert [v for v in limit.stages[1].singular_values()[0] if v > 1e-6] == pytest.approx([1.0], rel=1e-6)
