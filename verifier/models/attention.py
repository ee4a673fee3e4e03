"""Attention heads (SPEC 1): the paper's toy head with diagonal weights, and a head with full weights.

attn(X) = softmax_rowwise(temperature * X Wq Wk^T X^T) X Wv Wo^T  for tokens X in R^{n x d}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import DiagonalModel, Model


def attention(X: torch.Tensor, QK: torch.Tensor, VO: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(temperature * X QK X^T) X VO for X [N, n, d] and d x d matrices QK, VO."""
    scores = temperature * (X @ QK) @ X.transpose(-1, -2)
    return torch.softmax(scores, dim=-1) @ X @ VO


def diag_attention(X: torch.Tensor, qk: torch.Tensor, vo: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same head with QK = diag(qk), VO = diag(vo), without forming d x d matrices."""
    scores = temperature * (X * qk) @ X.transpose(-1, -2)
    return (torch.softmax(scores, dim=-1) @ X) * vo


@dataclass(frozen=True, eq=False)
class DiagAttention(DiagonalModel):
    """The paper's toy (Section 5, Appendix A): Wq = diag(q), Wk = diag(k), Wv = diag(vv), Wo = diag(o).

    u = (q, vv), v = (k, o), beta = (q * k, vv * o) in R^{2d}; X, Y are [N, n, d]; square loss.
    """

    temperature: float = 1.0
    family = "toy-attention"

    @property
    def d(self) -> int:
        return self.X.shape[-1]

    @property
    def p(self) -> int:
        return 2 * self.d

    def coordinate_names(self) -> list[str]:
        return [f"qk[{i}]" for i in range(self.d)] + [f"vo[{i}]" for i in range(self.d)]

    def predict_beta(self, beta: torch.Tensor) -> torch.Tensor:
        return diag_attention(self.X, beta[: self.d], beta[self.d :], self.temperature)

    def predict_uv(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = self.d
        Wq, Wv = torch.diag(u[:d]), torch.diag(u[d:])
        Wk, Wo = torch.diag(v[:d]), torch.diag(v[d:])
        return attention(self.X, Wq @ Wk.T, Wv @ Wo.T, self.temperature)


@dataclass(frozen=True, eq=False)
class FullAttention(Model):
    """One head with full d x d weights Wq, Wk, Wv, Wo (outside the theory; the paper's Figure 2 right).

    theta = vec(Wq, Wk, Wv, Wo). Lemma 4.1 becomes matrix balancedness: Wq^T Wq - Wk^T Wk and
    Wv^T Wv - Wo^T Wo are constant along gradient flow.
    """

    temperature: float = 1.0
    family = "full-attention"

    @property
    def d(self) -> int:
        return self.X.shape[-1]

    @property
    def n_params(self) -> int:
        return 4 * self.d * self.d

    def weights(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = self.d
        return tuple(theta[..., i * d * d : (i + 1) * d * d].reshape(*theta.shape[:-1], d, d) for i in range(4))

    def loss_params(self, theta: torch.Tensor) -> torch.Tensor:
        Wq, Wk, Wv, Wo = self.weights(theta)
        return self._loss(attention(self.X, Wq @ Wk.T, Wv @ Wo.T, self.temperature))

    def conserved(self, theta: torch.Tensor) -> torch.Tensor:
        Wq, Wk, Wv, Wo = self.weights(theta)
        t = lambda W: W.transpose(-1, -2)  # noqa: E731
        qk = t(Wq) @ Wq - t(Wk) @ Wk
        vo = t(Wv) @ Wv - t(Wo) @ Wo
        return torch.cat([qk.flatten(-2), vo.flatten(-2)], dim=-1)

    def conserved_scale(self, theta: torch.Tensor) -> torch.Tensor:
        """|Wq|^T |Wq| + |Wk|^T |Wk| (and for Wv, Wo): the size of the terms that cancel in ``conserved``."""
        Wq, Wk, Wv, Wo = self.weights(theta.abs())
        t = lambda W: W.transpose(-1, -2)  # noqa: E731
        return torch.cat([(t(Wq) @ Wq + t(Wk) @ Wk).flatten(-2), (t(Wv) @ Wv + t(Wo) @ Wo).flatten(-2)], dim=-1)

    def init_params(self, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """alpha * theta0, theta0 with i.i.d. N(0, 1/d) entries."""
        theta0 = torch.randn(self.n_params, generator=generator, dtype=torch.float64) / self.d**0.5
        return alpha * theta0.to(self.device)

    def products(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Wq Wk^T and Wv Wo^T, whose singular values the paper tracks (Figure 2, right)."""
        Wq, Wk, Wv, Wo = self.weights(theta)
        return Wq @ Wk.transpose(-1, -2), Wv @ Wo.transpose(-1, -2)
