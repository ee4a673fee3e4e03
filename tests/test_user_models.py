"""verifier.from_module / verifier.from_loss: a user's torch module (or loss of beta) is checked like a built-in
model. The modules below are written the way a user would write them, in this file, not in the package."""

import math

import pytest
import torch
from torch import nn

import verifier
from verifier import data as D
from verifier.checks import Verdict, run_check
from verifier.config import RunConfig
from verifier.context import Context
from verifier.errors import InputError
from verifier.limit import algorithm1
from verifier.models import DiagAttention, DiagLinear, FullAttention
from verifier.models.attention import attention
from verifier.models.user import ModuleMatrixModel, ModuleModel
from verifier.presets import place

F64 = torch.float64


class ToyHead(nn.Module):
    """The paper's toy head as a plain module: softmax((X Wq)(X Wk)^T c) (X Wv) Wo^T, diagonal W's as vectors."""

    def __init__(self, d, temperature):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Parameter(torch.randn(d, dtype=F64)) for _ in range(4))
        self.temperature = temperature

    def forward(self, X):
        Q, K, V = X * self.q, X * self.k, X * self.v
        A = torch.softmax(self.temperature * Q @ K.transpose(-1, -2), dim=-1)
        return (A @ V) * self.o


class QTwice(ToyHead):
    """Uses q in the values too: the loss is not a function of q * k and v * o (Definition 3.1 fails)."""

    def forward(self, X):
        return super().forward(X) + 0.1 * X * self.q


class FullHead(nn.Module):
    """A head with full weight matrices Wq, Wk, Wv, Wo [d, r] and a frozen output bias."""

    def __init__(self, d, r, temperature):
        super().__init__()
        self.Wq, self.Wk, self.Wv, self.Wo = (nn.Parameter(torch.randn(d, r, dtype=F64)) for _ in range(4))
        self.bias = nn.Parameter(torch.zeros(d, dtype=F64))
        self.temperature = temperature

    def forward(self, X):
        A = torch.softmax(self.temperature * (X @ self.Wq) @ (X @ self.Wk).transpose(-1, -2), dim=-1)
        return A @ X @ self.Wv @ self.Wo.T + self.bias


def _toy_data(seed=3, N=100, n=5, d=6):
    gen = D.generator(seed)
    X = D.gaussian_tokens(N, n, d, gen)
    beta = torch.cat([D.sparse_vector(d, 2, (1.0, 2.0), gen), D.sparse_vector(d, 2, (1.0, 2.0), gen)])
    Y = DiagAttention(X, X, temperature=d**-0.5).predict_beta(beta)
    return X, Y


def _square(X, Y):
    return lambda module: 0.5 * (module(X) - Y).pow(2).sum() / X.shape[0]


def _toy_pair(seed=3):
    X, Y = _toy_data(seed)
    d = X.shape[-1]
    user = verifier.from_module(ToyHead(d, d**-0.5), [("q", "k"), ("v", "o")], _square(X, Y))
    return user, DiagAttention(X, Y, temperature=d**-0.5)


def _run(check_id, model, **cfg):
    return run_check(check_id, Context(RunConfig(**cfg), model=model, argv=["test"]))


def test_module_toy_head_has_the_same_algorithm1_stages_as_the_builtin():
    """The Must-show of issue 10: same stages, coordinates, signs and times (1e-6 relative)."""
    user, builtin = _toy_pair()
    assert isinstance(user, ModuleModel) and user.coordinate_names()[:2] == ["q*k[0]", "q*k[1]"]
    mine, ref = algorithm1(user), algorithm1(builtin)
    assert mine.status == ref.status == "complete" and len(ref.stages) >= 4
    assert [(s.coordinate, s.sign, s.support, s.left) for s in mine.stages] == \
           [(s.coordinate, s.sign, s.support, s.left) for s in ref.stages]
    for a, b in zip(mine.stages[1:], ref.stages[1:]):
        assert a.T == pytest.approx(b.T, rel=1e-6)
        assert torch.allclose(a.beta, b.beta, rtol=1e-6, atol=1e-9)


def test_module_derivatives_match_the_closed_form_ones():
    user, builtin = _toy_pair()
    beta = 0.7 * torch.randn(3, user.p, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(user.loss_b(beta), builtin.loss_b(beta), rtol=1e-12)
    assert torch.allclose(user.grad_b(beta), builtin.grad_b(beta), rtol=1e-10, atol=1e-12)
    cols = torch.tensor([0, 7, 11])
    assert torch.allclose(user.hessian_columns(beta, cols), builtin.hessian_columns(beta, cols), rtol=1e-9,
                          atol=1e-11)
    theta = torch.randn(user.n_params, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert float(user.loss_params(theta)) == pytest.approx(float(builtin.loss_params(theta)), rel=1e-12)


def test_module_is_evaluated_in_place_not_copied():
    X, Y = _toy_data()
    head = ToyHead(X.shape[-1], 0.5)
    model = verifier.from_module(head, [("q", "k"), ("v", "o")], _square(X, Y))
    assert model.wrapper.net is head
    before = {k: v.clone() for k, v in head.state_dict().items()}
    model.grad_b(torch.randn(2, model.p, dtype=F64))
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())  # the user's weights untouched


def test_definition31_and_lemma41_run_on_the_module_itself():
    user, _ = _toy_pair()
    assert _run("definition-3.1", user).verdict is Verdict.PASS
    assert _run("lemma-4.1", user, log_inv_alphas=(math.log(10.0),)).verdict is Verdict.PASS
    X, Y = _toy_data()
    twice = verifier.from_module(QTwice(X.shape[-1], 0.5), [("q", "k"), ("v", "o")], _square(X, Y))
    res = _run("definition-3.1", twice)
    assert res.verdict is Verdict.FAIL and res.values["max_param_mismatch"] > 1e-3 and res.reason == "not-a-product"
    assert "does not depend on (u, v) only through u*v" in res.message
    lemma = _run("lemma-4.1", twice, log_inv_alphas=(math.log(10.0),))
    assert lemma.verdict is Verdict.FAIL and lemma.reason == "conservation-broken"


def test_matrix_pairs_give_a_full_weight_model_with_matrix_balancedness():
    gen = D.generator(2)
    d, r = 4, 3
    X = D.gaussian_tokens(30, 3, d, gen)
    Y = D.gaussian_tokens(30, 3, d, gen)
    head = FullHead(d, r, d**-0.5)
    model = verifier.from_module(head, [("Wq", "Wk"), ("Wv", "Wo")], _square(X, Y))
    assert isinstance(model, ModuleMatrixModel) and not model.diagonal
    assert model.product_names() == ("Wq Wk^T", "Wv Wo^T") and model.n_params == 4 * d * r
    theta = torch.randn(2, model.n_params, generator=gen, dtype=F64)
    QK, VO = model.products(theta)
    Wq = theta[:, : d * r].reshape(2, d, r)
    Wk = theta[:, 2 * d * r : 3 * d * r].reshape(2, d, r)  # all u's first, then all v's
    assert torch.allclose(QK, Wq @ Wk.transpose(-1, -2))
    assert model.conserved(theta).shape == (2, 2 * r * r)
    # the same loss as the built-in full head with Wq Wk^T, Wv Wo^T (bias frozen at zero)
    th = theta[0]
    Wv, Wo = th[d * r : 2 * d * r].reshape(d, r), th[3 * d * r :].reshape(d, r)
    ref = FullAttention(X, Y, temperature=d**-0.5)
    expected = ref._loss(attention(X, Wq[0] @ Wk[0].T, Wv @ Wo.T, d**-0.5))
    assert float(model.loss_params(th)) == pytest.approx(float(expected), rel=1e-12)
    res = _run("lemma-4.1", model, log_inv_alphas=(math.log(10.0),))
    assert res.verdict is Verdict.PASS, res.message


def test_from_loss_gives_the_stages_of_the_same_linear_network():
    gen = D.generator(4)
    X = D.gaussian_design(40, 5, gen)
    y = X @ torch.tensor([1.5, 0.0, -1.0, 0.0, 0.6], dtype=F64)
    ref = DiagLinear(X, y)
    model = verifier.from_loss(lambda beta: 0.5 * (X @ beta - y).pow(2).sum() / 40, 5,
                               names=[f"w{i}" for i in range(5)])
    assert model.coordinate_names()[0] == "w0" and model.diagonal
    mine, theirs = algorithm1(model), algorithm1(ref)
    assert [s.coordinate for s in mine.stages] == [s.coordinate for s in theirs.stages]
    assert [s.T for s in mine.stages] == pytest.approx([s.T for s in theirs.stages], rel=1e-9)
    assert _run("definition-3.1", model).verdict is Verdict.PASS


@pytest.mark.parametrize("build,field,text", [
    (lambda X, Y: verifier.from_module(ToyHead(6, 0.5).float(), [("q", "k")], _square(X, Y)), "module", "float32"),
    (lambda X, Y: verifier.from_module(ToyHead(6, 0.5), [("q", "kk")], _square(X, Y)), "pairs", "no parameter 'kk'"),
    (lambda X, Y: verifier.from_module(ToyHead(6, 0.5), [("q", "q")], _square(X, Y)), "pairs", "appears twice"),
    (lambda X, Y: verifier.from_module(ToyHead(6, 0.5), [], _square(X, Y)), "pairs", "non-empty"),
    (lambda X, Y: verifier.from_module(FullHead(6, 2, 0.5), [("Wq", "bias")], _square(X, Y)), "pairs",
     "do not form a product"),
    (lambda X, Y: verifier.from_module(ToyHead(6, 0.5), [("q", "k")], lambda m: m(X).sum().item()), "loss",
     "float"),
    (lambda X, Y: verifier.from_module(ToyHead(6, 0.5), [("q", "k")], lambda m: m(X).sum() * math.inf), "loss",
     "finite"),
    (lambda X, Y: verifier.from_module(ToyHead(6, 0.5), [("q", "k")],
                                       lambda m: m(X).sum() if m.q.sum() > -1e9 else 0), "loss", "vmap"),
    (lambda X, Y: verifier.from_loss(lambda b: b.sum(), 0), "p", "positive integer"),
    (lambda X, Y: verifier.from_loss(lambda b: b.sum(), 3, names=["a"]), "names", "3 names"),
    (lambda X, Y: verifier.from_loss(lambda b: b[:2], 3), "loss_beta", "scalar"),
])
def test_bad_user_models_raise_input_error_naming_the_field(build, field, text):
    X, Y = _toy_data()
    with pytest.raises(InputError) as info:
        build(X, Y)
    assert info.value.field == field and text in str(info.value)


def test_user_models_stay_on_their_device():
    user, _ = _toy_pair()
    assert place(user, "auto") is user and place(user, "cpu") is user
    if not torch.cuda.is_available():
        return
    with pytest.raises(InputError, match="--device"):  # pragma: no cover - needs a GPU
        place(user, "cuda")


def test_sgd_needs_a_data_set():
    user, _ = _toy_pair()
    from verifier.config import OptimizerConfig

    with pytest.raises(InputError, match="--optimizer"):
        Context(RunConfig(preset=None, model_file=None, optimizer=OptimizerConfig(name="sgd")), model=user)
