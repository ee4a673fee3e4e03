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

Derivatives: ``predict_beta`` (one beta, head by head) is the reference; ``loss_b`` and ``grad_b`` run
:meth:`DiagTransformer._predict_batch`, the same network written for a leading batch of betas with the heads
of a layer fused (one projection GEMM into every head, one GEMM back that also sums the heads) and the first
layer's views of the data and their pair products cached, differentiated by autograd without a vmap over
the betas. Hessian columns stay DiagonalModel's (reverse-over-reverse on ``predict_beta``): through the
batched forward they measured no faster (0.8-1.0x; benchmarks/README.md, issue 20).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad

from .attention import _keep_freed_blocks, attention, diag_attention
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

    def __post_init__(self):
        """Cache the frozen parts the batched forward reuses, built here (outside any torch.func transform):
        the projections of a layer side by side, P_cat [L, d, H*d] (z @ P_cat is every head's view z P_h),
        the first layer's views of the data X P_h [N, H, n, d], and their pair products
        (X P_h)_tj (X P_h)_rj [H, N n n, d], so the first layer's scores are one GEMM with qk."""
        L, H, d = self.layers, self.heads, self.d
        cat = None if self.head_proj is None else self.head_proj.permute(0, 2, 1, 3).reshape(L, d, H * d)
        object.__setattr__(self, "_proj_cat", cat)
        views = self._views(self.X, 0)
        object.__setattr__(self, "_views0", views)
        v = views.transpose(0, 1)  # [H, N, n, d]
        object.__setattr__(self, "_pairs0", (v[:, :, :, None, :] * v[:, :, None, :, :]).reshape(H, -1, d))

    def _views(self, z: torch.Tensor, l: int) -> torch.Tensor:
        """[..., N, H, n, d]: head h's view z P_h of the stream z [..., N, n, d] at layer l."""
        n, d, H = *z.shape[-2:], self.heads
        if self.head_proj is None:
            return z.unsqueeze(-3).expand(*z.shape[:-2], H, n, d)
        zp = (z.reshape(-1, d) @ self._proj_cat[l]).reshape(*z.shape[:-1], H, d)
        return zp.transpose(-3, -2)

    def _predict_batch(self, beta: torch.Tensor) -> torch.Tensor:
        """The network's output [B, N, n, d] at every row of beta [B, p] (equal to ``predict_beta`` row by
        row): head h of layer l is softmax(c zP diag(qk) (zP)^T) zP diag(vo) P^T, the heads of a layer
        summed by one contraction over (head, coordinate)."""
        B, L, H, d = beta.shape[0], self.layers, self.heads, self.d
        N, n = self.X.shape[:2]
        b = beta.reshape(B, L, H, 2, d)
        z = self.X
        for l in range(L):
            qk = self.temperature * b[:, l, :, 0]  # [B, H, d]
            if l == 0:  # the views are data: the scores are one GEMM per head with the cached pair products
                zp = self._views0
                scores = (self._pairs0 @ qk.permute(1, 2, 0)).reshape(H, N, n, n, B).permute(4, 1, 0, 2, 3)
            else:
                zp = self._views(z, l)
                scores = (zp * qk[:, None, :, None, :]) @ zp.transpose(-1, -2)
            attn = _softmax(scores) @ zp  # [B, N, H, n, d]
            vo = b[:, l, :, 1]  # [B, H, d]
            if self.head_proj is None:
                out = (attn * vo[:, None, :, None, :]).sum(-3)
            else:  # sum_h (attn_h diag(vo_h)) P_h^T: one batched GEMM over (head, coordinate)
                back = (vo[..., None] * self.head_proj[l].transpose(-1, -2)).reshape(B, H * d, d)
                out = (attn.transpose(-3, -2).reshape(B, -1, H * d) @ back).reshape(B, N, n, d)
            z = z + out
            z = z + (self._sigma(z.reshape(-1, d) @ self.ff_in[l]) @ self.ff_out[l]).reshape(z.shape)
        return z

    def _loss_batch(self, beta: torch.Tensor) -> torch.Tensor:
        """Lb at every row of beta [B, p]: [B] (``Model._loss`` per beta)."""
        pred = self._predict_batch(beta)
        if self.loss == "square":
            return 0.5 * (pred - self.Y).pow(2).flatten(1).sum(1) / pred.shape[1]
        return torch.nn.functional.softplus(-self.Y * pred).flatten(1).mean(1)

    def _grad_batch(self, beta: torch.Tensor) -> torch.Tensor:
        """g at every row of beta [B, p]: the gradient of the sum of the B losses (row b depends on beta_b only).
        Plain autograd (1.1-1.35x faster than torch.func's wrappers here), torch.func inside a transform."""
        if torch._C._are_functorch_transforms_active():
            return grad(lambda b: self._loss_batch(b).sum())(beta)
        with torch.enable_grad():
            b = beta.detach().requires_grad_()
            return torch.autograd.grad(self._loss_batch(b).sum(), b)[0]

    def loss_b(self, beta: torch.Tensor) -> torch.Tensor:
        flat = beta.reshape(-1, self.p)
        if flat.device.type == "cpu":
            _keep_freed_blocks()
        return torch.cat([self._loss_batch(flat[s]) for s in self._chunks(len(flat), 1)]).reshape(beta.shape[:-1])

    def grad_b(self, beta: torch.Tensor) -> torch.Tensor:
        """g(beta) batched over leading dimensions."""
        flat = beta.reshape(-1, self.p)
        if flat.device.type == "cpu":
            _keep_freed_blocks()
        return torch.cat([self._grad_batch(flat[s]) for s in self._chunks(len(flat), 1)]).reshape(beta.shape)

    def _chunks(self, batch: int, copies: int) -> list[slice]:
        """Slices of the beta batch whose intermediates (``copies`` per beta, each N H n max(n, d) entries)
        stay under about 2^22 entries, at least one beta each."""
        N, n, d = self.X.shape
        step = max(1, (1 << 22) // (copies * N * self.heads * n * max(n, d)))
        return [slice(i, min(i + step, batch)) for i in range(0, max(batch, 1), step)]

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


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax over the last dimension, differentiable: torch.softmax is slow in float64 for rows of
    a few tokens on a CPU. The shift by the row maximum is held constant (it cancels exactly in the softmax,
    so the derivatives need not go through it)."""
    e = (scores - scores.amax(-1, keepdim=True).detach()).exp()
    return e / e.sum(-1, keepdim=True)
