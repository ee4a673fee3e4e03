"""Linear attention on in-context linear regression with separate rank-one key and query heads (Zhang, Singh,
Latham & Saxe, ICML 2025), trained on its population loss (THEORY.md §8, "linear attention").

A sequence holds N context tokens (x_n, y_n = w^T x_n) and a query x_q, with x ~ N(0, Lambda) and a task
vector w ~ N(0, I_D) drawn afresh for every sequence. Head h has a key k_h and a query q_h in R^D (rank one)
and a value that reads the y entry of a token (frozen at 1): the heads together predict

    y_hat = sum_h (k_h^T beta_hat) (q_h^T x_q) = beta_hat^T K Q^T x_q,   beta_hat = (1/N) sum_n x_n y_n,

so the merged key-query product M = K Q^T (K = [k_1 ... k_H], Q = [q_1 ... q_H], both D x H) is one matrix
pair. The population loss 1/2 E (y_hat - w^T x_q)^2 is, with Phi = E[beta_hat beta_hat^T] =
((N + 1) / N) Lambda^2 + (tr Lambda / N) Lambda (Gaussian fourth moments),

    L(M) = 1/2 tr(M^T Phi M Lambda) - tr(Lambda M^T Lambda) + 1/2 tr Lambda,   Gamma = Phi M Lambda - Lambda^2.

Every matrix here is diagonal in Lambda's eigenbasis e_i (eigenvalues lambda_1 > ... > lambda_D), so the modes
decouple: mode i grows at rate lambda_i^2 from zero, jumps at T_i = 1 / lambda_i^2 (rescaled time) and settles
at m_i = lambda_i / phi_i = 1 / (((N + 1) / N) lambda_i + tr Lambda / N) (principal component regression in
context, one component per plateau), lowering the loss by lambda_i^3 / (2 phi_i).
:func:`verifier.limit.pairs.linear_attention_limit` gives these stages. The value is frozen (a constant readout) so that each head is a product of two factors: with a
trained scalar value per head the product has three factors, its dormant heads escape on the time scale
1/alpha instead of log(1/alpha), and the theorem's rescaled time does not apply (THEORY.md §8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Model

F64 = torch.float64


@dataclass(frozen=True, eq=False)
class LinearAttention(Model):
    """``X`` = Lambda [D, D] (token covariance), ``Y`` = Phi [D, D] (E[beta_hat beta_hat^T]); ``heads`` H;
    ``context`` N. theta = (K, Q) flattened, each [D, H]."""

    heads: int = 4
    context: int = 16
    family = "linear-attention"

    @classmethod
    def build(cls, Lambda: torch.Tensor, heads: int, context: int) -> "LinearAttention":
        N = float(context)
        Phi = (N + 1) / N * Lambda @ Lambda + torch.trace(Lambda) / N * Lambda
        return cls(Lambda, Phi, heads=heads, context=context)

    @property
    def D(self) -> int:
        return self.X.shape[-1]

    @property
    def n_params(self) -> int:
        return 2 * self.D * self.heads

    def factors(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        D, H = self.D, self.heads
        return [(theta[..., : D * H].reshape(*theta.shape[:-1], D, H),
                 theta[..., D * H :].reshape(*theta.shape[:-1], D, H))]

    def join_factors(self, factors) -> torch.Tensor:
        (K, Q), = factors
        return torch.cat([K.flatten(-2), Q.flatten(-2)], dim=-1)

    products_only = True

    @property
    def factor_shapes(self) -> tuple[tuple[int, int, int], ...]:
        return ((self.D, self.D, self.heads),)

    def products(self, theta: torch.Tensor) -> tuple[torch.Tensor]:
        (K, Q), = self.factors(theta)
        return (K @ Q.transpose(-1, -2),)

    def product_names(self) -> tuple[str, ...]:
        return ("K Q^T",)

    def loss_of_product(self, M: torch.Tensor) -> torch.Tensor:
        Lam, Phi = self.X, self.Y
        return 0.5 * torch.trace(M.T @ Phi @ M @ Lam) - torch.trace(Lam @ M.T @ Lam) + 0.5 * torch.trace(Lam)

    def loss_params(self, theta: torch.Tensor) -> torch.Tensor:
        return self.loss_of_product(self.products(theta)[0])

    def predict(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """The heads' prediction for sequences: context x [S, N, D], y [S, N], queries xq [S, D] -> [S]."""
        (K, Q), = self.factors(theta)
        beta_hat = (x * y[..., None]).mean(-2)
        return ((beta_hat @ K) * (xq @ Q)).sum(-1)

    def conserved(self, theta: torch.Tensor) -> torch.Tensor:
        (K, Q), = self.factors(theta)
        t = lambda W: W.transpose(-1, -2)  # noqa: E731
        return (t(K) @ K - t(Q) @ Q).flatten(-2)

    def conserved_scale(self, theta: torch.Tensor) -> torch.Tensor:
        (K, Q), = self.factors(theta.abs())
        t = lambda W: W.transpose(-1, -2)  # noqa: E731
        return (t(K) @ K + t(Q) @ Q).flatten(-2)

    def init_params(self, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """alpha * theta0, entries i.i.d. N(0, 1/D)."""
        theta0 = torch.randn(self.n_params, generator=generator, dtype=F64) / math.sqrt(self.D)
        return alpha * theta0.to(self.device)
