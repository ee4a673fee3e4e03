"""Diagonal linear network (THEORY.md §1): h(x; beta) = <x, beta>, beta = u * v."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import DiagonalModel


@dataclass(frozen=True, eq=False)
class DiagLinear(DiagonalModel):
    """X [N, p], Y [N]; square loss (1/2N) sum (y - <x, beta>)^2 or logistic loss (labels +-1)."""

    family = "diag-linear"

    @property
    def p(self) -> int:
        return self.X.shape[1]

    def predict_beta(self, beta: torch.Tensor) -> torch.Tensor:
        return self.X @ beta

    def predict_uv(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # Two-layer linear network with diagonal first layer diag(u) and output weights v: x -> <v, diag(u) x>.
        return (self.X * u) @ v
