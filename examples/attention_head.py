"""A user's model, written as a plain torch module: the paper's toy attention head with diagonal weights.

    verifier run --model-file examples/attention_head.py:make

``make()`` builds the data (Gaussian tokens and a sparse teacher head of the same form; data_seed 4 is a draw
on which every check passes) and returns ``verifier.from_module(head, pairs, loss)``: the trained products are
q*k (Wq Wk^T = diag(q * k)) and v*o. ``draw(seed)`` is the family for ``verifier survey``.
"""

import torch
from torch import nn

import verifier

F64 = torch.float64


class AttentionHead(nn.Module):
    """softmax((X Wq)(X Wk)^T / sqrt(d)) (X Wv) Wo^T with Wq = diag(q), Wk = diag(k), Wv = diag(v), Wo = diag(o)."""

    def __init__(self, d: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Parameter(torch.ones(d, dtype=F64)) for _ in range(4))
        self.scale = d**-0.5

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Q, K, V = X * self.q, X * self.k, X * self.v
        A = torch.softmax(self.scale * Q @ K.transpose(-1, -2), dim=-1)
        return (A @ V) * self.o


def make(N: int = 200, n: int = 6, d: int = 8, data_seed: int = 4):
    gen = torch.Generator().manual_seed(data_seed)
    X = torch.randn(N, n, d, generator=gen, dtype=F64)
    teacher = AttentionHead(d)
    with torch.no_grad():  # two nonzero q*k and two nonzero v*o entries of size 1-2
        for w in (teacher.q, teacher.v):
            w.zero_()[torch.randperm(d, generator=gen)[:2]] = 1 + torch.rand(2, generator=gen, dtype=F64)
        Y = teacher(X)

    def loss(head):  # (1/2N) sum ||head(X) - Y||^2
        return 0.5 * (head(X) - Y).pow(2).sum() / N

    return verifier.from_module(AttentionHead(d), pairs=[("q", "k"), ("v", "o")], loss=loss)


def draw(seed: int):
    """The same family with data and teacher drawn from ``seed``: ``verifier survey --model-file
    examples/attention_head.py:draw --n 16`` (a factory that takes ``seed`` is called with the run's --seed)."""
    return make(data_seed=seed)
