"""A user's model with full weights: the two-layer linear network f(x) = W2 W1^T x (a 4 x 5 map through width 4).

    verifier limit --model-file examples/two_layer_linear.py:make          # the closed-form stages
    verifier run --model-file examples/two_layer_linear.py:make --checks rank-increments --alphas 1e-32,1e-64,1e-128

``make()`` draws N Gaussian inputs and a target map with singular values 3, 2, 1 (random singular vectors), so
the input covariance does not commute with the target and the jump times follow the recursion of THEORY.md §8,
not 1/sigma_k; the trained product is W2 W1^T (``from_module`` pair ("W2", "W1")). ``tied()``: whitened inputs
and target singular values 2, 2, 1 (two jumps at once: rank-increments must fail); ``near_tie()``: 2, 1.9, 1
(separate jumps 5% apart). ``draw(seed)`` is the family for ``verifier survey``.
"""

import torch
from torch import nn

import verifier

F64 = torch.float64


class TwoLayer(nn.Module):
    """x -> W2 W1^T x with W1 [d_in, width], W2 [d_out, width]."""

    def __init__(self, d_in: int = 5, width: int = 4, d_out: int = 4):
        super().__init__()
        self.W1 = nn.Parameter(torch.zeros(d_in, width, dtype=F64))
        self.W2 = nn.Parameter(torch.zeros(d_out, width, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W1 @ self.W2.T


def make(singular_values=(3.0, 2.0, 1.0), whiten: bool = False, N: int = 200, data_seed: int = 0):
    """Inputs x ~ N(0, I_5) (exactly whitened: X^T X / N = I, when ``whiten``), targets y = B x with B [4, 5]
    of the given singular values; square loss (1/2N) sum ||f(x) - y||^2."""
    gen = torch.Generator().manual_seed(data_seed)
    X = torch.randn(N, 5, generator=gen, dtype=F64)
    if whiten:
        X = X - X.mean(0)
        X = X @ torch.linalg.inv(torch.linalg.cholesky(X.T @ X / N)).T
    U, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=F64))
    k = len(singular_values)
    B = U[:, :k] @ torch.diag(torch.tensor(singular_values, dtype=F64)) @ V[:, :k].T
    Y = X @ B.T

    def loss(net):
        return 0.5 * (net(X) - Y).pow(2).sum() / N

    return verifier.from_module(TwoLayer(), pairs=[("W2", "W1")], loss=loss)


def tied():
    return make((2.0, 2.0, 1.0), whiten=True)


def near_tie():
    return make((2.0, 1.9, 1.0), whiten=True)


def draw(seed: int):
    """The same family with data and target directions drawn from ``seed``."""
    return make(data_seed=seed)
