"""The transformer of Example 3.2 with diagonal attention weights.

L layers; each layer is  z <- z + sum_h attn_h(z)  then  z <- z + GELU(z A) B, with A, B frozen at
their random initialisation; only the attention weights train. beta concatenates (q*k, vv*o) of every
head of every layer: p = 2 * L * H * d.

Head h of layer l reads the stream through a frozen projection P = ``head_proj[l, h]`` [d, d] (None: the
identity): attn_h(z) = softmax(c (z P) diag(q*k) (z P)^T) (z P) diag(vv*o) P^T, i.e. Wq = P diag(q),
Wk = P diag(k), Wv = P diag(vv), Wo = P diag(o), so Wq Wk^T = P diag(q*k) P^T: each head is diagonal in its
own basis, as in multi-head attention where every head has its own projections, and Definition 3.1 holds.
Without projections the heads of a layer have the same functional form: the loss is invariant under
exchanging them, their coordinates tie exactly, and Example 4.6 ("at most one head per stage") cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import attention, diag_attention
from .base import DiagonalModel


@dataclass(frozen=True, eq=False)
class DiagTransformer(DiagonalModel):
    """X, Y [N, n, d]; ``ff_in`` [L, d, m] and ``ff_out`` [L, m, d] are the frozen feedforward weights.

    ``activation`` is ``gelu`` (smooth, inside Definition 3.1) or ``relu`` (not C^2: a counterexample).
    """

    ff_in: torch.Tensor = None  # type: ignore[assignment]
    ff_out: torch.Tensor = None  # type: ignore[assignment]
    head_proj: torch.Tensor | None = None  # [L, H, d, d] frozen per-head projections, None = identity
    heads: int = 1
    temperature: float = 1.0
    activation: str = "gelu"
    family = "diag-transformer"

    @property
    def d(self) -> int:
        return self.X.shape[-1]

    @property
    def layers(self) -> int:
        return self.ff_in.shape[0]

    @property
    def p(self) -> int:
        return 2 * self.layers * self.heads * self.d

    def coordinate_names(self) -> list[str]:
        return [
            f"L{l}H{h}.{kind}[{i}]"
            for l in range(self.layers)
            for h in range(self.heads)
            for kind in ("qk", "vo")
            for i in range(self.d)
        ]

    def coordinate_structure(self) -> list[tuple[str, str, int]]:
        """(group, pair, index) per coordinate: the group is the head (limit/symmetry.py)."""
        return [(f"head {h} of layer {l}", kind, i) for l in range(self.layers) for h in range(self.heads)
                for kind in ("qk", "vo") for i in range(self.d)]

    def _sigma(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(z) if self.activation == "gelu" else torch.relu(z)

    def _forward(self, head) -> torch.Tensor:
        """Run the layers; ``head(zP, l, h)`` is the output of head h of layer l on its view zP of the stream
        (P = head_proj[l, h]), written back through P^T."""
        z = self.X
        for l in range(self.layers):
            if self.head_proj is None:
                z = z + sum(head(z, l, h) for h in range(self.heads))
            else:
                P = self.head_proj[l]
                z = z + sum(head(z @ P[h], l, h) @ P[h].T for h in range(self.heads))
            z = z + self._sigma(z @ self.ff_in[l]) @ self.ff_out[l]
        return z

    def predict_beta(self, beta: torch.Tensor) -> torch.Tensor:
        b = beta.reshape(self.layers, self.heads, 2, self.d)
        return self._forward(lambda z, l, h: diag_attention(z, b[l, h, 0], b[l, h, 1], self.temperature))

    def predict_uv(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # The same network built from the diagonal weight matrices Wq Wk^T and Wv Wo^T of every head.
        U = u.reshape(self.layers, self.heads, 2, self.d)
        V = v.reshape(self.layers, self.heads, 2, self.d)

        def head(z, l, h):
            qk = torch.diag(U[l, h, 0]) @ torch.diag(V[l, h, 0]).T
            vo = torch.diag(U[l, h, 1]) @ torch.diag(V[l, h, 1]).T
            return attention(z, qk, vo, self.temperature)

        return self._forward(head)
