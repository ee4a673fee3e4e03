"""Models (THEORY.md §1, Definition 3.1): autograd gradients against finite differences for every family, the
beta form against the (u, v) network, the logistic loss, and the hand-derived DiagAttention gradient and
Hessian columns against torch.func."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from verifier import data as D
from verifier.models import DiagAttention, DiagLinear, DiagonalModel, DiagTransformer
from verifier.models import attention as attention_module
from verifier.presets import build_model, frozen_feedforward, head_projections

F64 = torch.float64


def _small_attention(seed=0, N=20, n=4, d=5, temperature=5**-0.5, loss="square"):
    gen = D.generator(seed)
    X = D.gaussian_tokens(N, n, d, gen)
    Y = D.gaussian_tokens(N, n, d, gen)
    if loss == "logistic":
        Y = torch.where(Y >= 0, 1.0, -1.0).to(F64)
    return DiagAttention(X, Y, loss=loss, temperature=temperature)


def _models():
    """One model of every family, small enough for finite differences."""
    return {
        "diag-linear": build_model("diag-linear"),
        "diag-linear-logistic": build_model("diag-linear", loss="logistic"),
        "toy-attention": _small_attention(),
        "diag-transformer": build_model("diag-transformer"),
        "full-attention": build_model("full-attention"),
    }


MODELS = _models()


def _directional_fd(f, x, direction, h=1e-5):
    """Central difference of f along ``direction`` (error O(h^2) + O(eps / h))."""
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


def _assert_gradient_matches_fd(loss, grad, x, gen):
    """<grad(x), v> against the central difference of ``loss`` along three random unit directions."""
    g = grad(x)
    for _ in range(3):
        v = torch.randn(x.shape[0], generator=gen, dtype=F64)
        v /= v.norm()
        fd = float(_directional_fd(loss, x, v))
        assert abs(fd - float(g @ v)) <= 1e-7 * (1.0 + float(g.norm()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_grad_params_matches_finite_differences(name):
    model = MODELS[name]
    gen = torch.Generator().manual_seed(1)
    theta = 0.7 * torch.randn(model.n_params, generator=gen, dtype=F64)
    _assert_gradient_matches_fd(model.loss_params, model.grad_params, theta, gen)


@pytest.mark.parametrize("name", sorted(n for n in MODELS if MODELS[n].diagonal))
def test_grad_b_matches_finite_differences(name):
    model = MODELS[name]
    gen = torch.Generator().manual_seed(2)
    beta = 0.8 * torch.randn(model.p, generator=gen, dtype=F64)
    _assert_gradient_matches_fd(model.loss_beta, model.grad_b, beta, gen)


@pytest.mark.parametrize("name", sorted(n for n in MODELS if MODELS[n].diagonal))
def test_uv_network_is_a_function_of_beta(name):
    """Definition 3.1: L(u, v) = Lb(u * v), and the chain rule grad_(u, v) L = (v * g, u * g)."""
    model = MODELS[name]
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(2, model.n_params, generator=gen, dtype=F64)
    u, v = theta[:, : model.p], theta[:, model.p :]
    for b in range(2):
        assert torch.allclose(model.loss_params(theta[b]), model.loss_beta(u[b] * v[b]), rtol=1e-12, atol=0)
    g = model.grad_b(u * v)  # batched over the leading dimension
    assert torch.allclose(model.grad_params(theta), torch.cat([v * g, u * g], dim=1), rtol=1e-10, atol=1e-13)


def test_logistic_loss_value_and_gradient_closed_form():
    """Lb = (1/N) sum log(1 + exp(-y <x, beta>)),  g = -(1/N) X^T (y sigmoid(-y <x, beta>))."""
    model = MODELS["diag-linear-logistic"]
    X, y = model.X.numpy(), model.Y.numpy()
    assert set(np.unique(y)) == {-1.0, 1.0}
    beta = np.linspace(-1.0, 1.0, model.p)
    margin = y * (X @ beta)
    loss = np.mean(np.log1p(np.exp(-margin)))
    grad = -(X.T @ (y / (1.0 + np.exp(margin)))) / len(y)
    b = torch.tensor(beta)
    assert float(model.loss_beta(b)) == pytest.approx(loss, rel=1e-13)
    assert np.allclose(model.grad_b(b).numpy(), grad, rtol=1e-12, atol=1e-15)


def test_logistic_loss_is_stable_for_large_margins():
    model = MODELS["diag-linear-logistic"]
    beta = 1e4 * torch.ones(model.p, dtype=F64)
    assert torch.isfinite(model.loss_beta(beta)) and torch.isfinite(model.grad_b(beta)).all()


def test_diag_linear_hessian_is_the_design_covariance():
    model = MODELS["diag-linear"]
    H = model.hessian(torch.zeros(model.p, dtype=F64))
    assert torch.allclose(H, model.X.T @ model.X / model.X.shape[0], rtol=1e-12, atol=1e-14)


# -- the hand-derived DiagAttention derivatives -----------------------------------------------------

def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("temperature", [5**-0.5, 1.3])
@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])
def test_attention_closed_form_matches_torch_func(temperature, scale):
    model = _small_attention(temperature=temperature)
    gen = torch.Generator().manual_seed(4)
    beta = scale * torch.randn(3, model.p, generator=gen, dtype=F64)
    assert _rel(model.grad_b(beta), DiagonalModel.grad_b(model, beta)) < 1e-12
    H = model.hessian(beta)
    assert _rel(H, DiagonalModel.hessian(model, beta)) < 1e-12
    assert _rel(H, H.transpose(-1, -2)) < 1e-13


@pytest.mark.parametrize("columns", [[3], [3, 20], [15, 14], [20, 2, 2], [0, 5, 7, 9, 13], list(range(24))[::-1]])
def test_attention_hessian_columns_in_any_order(columns):
    """Few qk columns (a batch of small products), many (one wide product), vo only, repeats, any order."""
    model = _small_attention(seed=1, d=12, temperature=0.3)
    gen = torch.Generator().manual_seed(5)
    beta = torch.randn(2, 3, model.p, generator=gen, dtype=F64)  # any leading batch shape
    cols = torch.tensor(columns)
    H = model.hessian_columns(beta, cols)
    assert H.shape == (2, 3, model.p, len(columns))
    assert _rel(H, DiagonalModel.hessian_columns(model, beta, cols)) < 1e-12
    assert model.hessian_columns(beta, torch.tensor([], dtype=torch.long)).shape == (2, 3, model.p, 0)


def test_attention_tiling_does_not_change_the_result(monkeypatch):
    """Tiles over (beta, sequence) pairs bound the memory; results must not depend on the tiling."""
    model = _small_attention(seed=2, N=37)
    gen = torch.Generator().manual_seed(6)
    beta = torch.randn(5, model.p, generator=gen, dtype=F64)
    cols = torch.tensor([1, 7, 3])
    g, H = model.grad_b(beta), model.hessian_columns(beta, cols)
    monkeypatch.setattr(attention_module, "_BLOCK", 400)
    assert _rel(model.grad_b(beta), g) < 1e-13
    assert _rel(model.hessian_columns(beta, cols), H) < 1e-13


@pytest.mark.parametrize("batch,N,per_pair", [(1, 1000, 500), (7, 1000, 500), (7, 10, 100), (3, 5, 10**9)])
def test_blocks_cover_every_pair_once_and_bound_the_tile(batch, N, per_pair):
    budget = 1 << 12
    seen = np.zeros((batch, N), dtype=int)
    for bs, ss in attention_module._blocks(batch, N, per_pair, budget):
        seen[bs, ss] += 1
        pairs = (min(bs.stop, batch) - bs.start) * (min(ss.stop, N) - ss.start)
        assert pairs * per_pair <= max(budget, per_pair)
    assert (seen == 1).all()


def test_attention_batched_loss_matches_the_per_beta_loss(monkeypatch):
    model = _small_attention(seed=3, N=37)
    beta = torch.randn(2, 3, model.p, generator=torch.Generator().manual_seed(9), dtype=F64)
    expected = torch.stack([model.loss_beta(b) for b in beta.reshape(-1, model.p)]).reshape(2, 3)
    assert _rel(model.loss_b(beta), expected) < 1e-14
    assert model.loss_b(beta[0, 0]).shape == ()
    monkeypatch.setattr(attention_module, "_BLOCK", 400)
    assert _rel(model.loss_b(beta), expected) < 1e-14


def test_attention_at_paper_size_matches_torch_func():
    """The toy preset's sequences (n=10 tokens in d=50), the first 100 of its N=1000, at one beta."""
    toy = build_model("toy-attention")
    model = DiagAttention(toy.X[:100], toy.Y[:100], temperature=toy.temperature)
    gen = torch.Generator().manual_seed(7)
    beta = 0.5 * torch.randn(1, model.p, generator=gen, dtype=F64)
    cols = torch.tensor([4, 61])
    assert _rel(model.grad_b(beta), DiagonalModel.grad_b(model, beta)) < 1e-10
    assert _rel(model.hessian_columns(beta, cols), DiagonalModel.hessian_columns(model, beta, cols)) < 1e-10


def test_attention_other_losses_use_autograd():
    """The closed forms are for the square loss; any other loss goes through torch.func."""
    model = _small_attention(loss="logistic")
    beta = 0.5 * torch.ones(model.p, dtype=F64)
    fd = (model.loss_beta(beta + 1e-6 * torch.eye(model.p, dtype=F64)[3])
          - model.loss_beta(beta - 1e-6 * torch.eye(model.p, dtype=F64)[3])) / 2e-6
    assert math.isclose(float(model.grad_b(beta)[3]), float(fd), rel_tol=1e-7)
    assert _rel(model.hessian_columns(beta, torch.tensor([3])), DiagonalModel.hessian_columns(
        model, beta, torch.tensor([3]))) == 0.0


def test_diag_linear_square_loss_gradient_closed_form():
    gen = D.generator(8)
    X = D.gaussian_design(15, 4, gen)
    y = D.gaussian_design(15, 1, gen)[:, 0]
    model = DiagLinear(X, y)
    beta = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=F64)
    assert torch.allclose(model.grad_b(beta), X.T @ (X @ beta - y) / 15, rtol=1e-13, atol=1e-15)


def _transformers():
    """The batched DiagTransformer against the per-beta reference: both presets, the logistic loss, ReLU, and
    three heads in one layer."""
    gen = D.generator(3)
    X = D.gaussian_tokens(7, 5, 4, gen)
    A, B = frozen_feedforward(1, 4, 6, gen)
    P = head_projections(1, 3, 4, gen)
    three = DiagTransformer(X, D.gaussian_tokens(7, 5, 4, gen), ff_in=A, ff_out=B, head_proj=P, heads=3,
                            temperature=0.7)
    return {"diag-transformer": build_model("diag-transformer"),
            "symmetric": build_model("diag-transformer-symmetric"),
            "logistic": dataclasses.replace(three, loss="logistic", Y=torch.where(three.Y >= 0, 1.0, -1.0).to(F64)),
            "relu": dataclasses.replace(build_model("diag-transformer"), activation="relu"),
            "three-heads": three}


TRANSFORMERS = _transformers()


@pytest.mark.parametrize("scale", [0.1, 0.5, 1.5])
@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_batched_transformer_matches_the_per_beta_reference(name, scale):
    """loss_b, grad_b and hessian_columns of DiagTransformer equal torch.func on ``predict_beta`` (one beta at a
    time, head by head: DiagonalModel's generic derivatives) to rounding, 1e-12 relative."""
    model = TRANSFORMERS[name]
    beta = scale * torch.randn(2, 3, model.p, generator=torch.Generator().manual_seed(7), dtype=F64)
    cols = torch.tensor([model.p - 1, 0, 5, 5])

    def close(fast, ref):
        assert fast.shape == ref.shape
        assert float((fast - ref).abs().max()) <= 1e-12 * float(ref.abs().max())

    close(model.loss_b(beta), DiagonalModel.loss_b(model, beta))
    close(model.grad_b(beta), DiagonalModel.grad_b(model, beta))
    close(model.hessian_columns(beta, cols), DiagonalModel.hessian_columns(model, beta, cols))
    close(model.grad_b(beta[0, 0]), DiagonalModel.grad_b(model, beta[0, 0]))  # one beta, no batch axis


def test_batched_transformer_chunks_do_not_change_the_result(monkeypatch):
    model = TRANSFORMERS["diag-transformer"]
    beta = torch.randn(5, model.p, generator=torch.Generator().manual_seed(8), dtype=F64)
    whole = model.loss_b(beta), model.grad_b(beta)
    monkeypatch.setattr(type(model), "_chunks", lambda self, batch, copies: [slice(i, i + 1) for i in range(batch)])
    for fast, ref in zip((model.loss_b(beta), model.grad_b(beta)), whole):
        assert float((fast - ref).abs().max()) <= 1e-13 * float(ref.abs().max())  # GEMMs of another size round differently


def test_batched_transformer_gradient_inside_a_transform():
    """grad_b under vmap (torch.func's path) equals grad_b outside (autograd's path)."""
    model = TRANSFORMERS["three-heads"]
    beta = torch.randn(3, model.p, generator=torch.Generator().manual_seed(9), dtype=F64)
    inside = torch.func.vmap(model.grad_b)(beta)
    assert float((inside - model.grad_b(beta)).abs().max()) <= 1e-13 * float(inside.abs().max())
