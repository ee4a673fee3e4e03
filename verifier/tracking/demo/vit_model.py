"""A small vision transformer (Dosovitskiy et al. 2021) as in the paper's Section 5, at any init scale.

Patch embedding (a linear map of each p x p patch), a class token, learned position embeddings, then
``depth`` pre-LayerNorm blocks x = x + MHA(LN(x)); x = x + MLP(LN(x)) with GELU, and a linear head on the
final LayerNorm of the class token. Attention is ``torch.nn.MultiheadAttention``, so
``RankTracker(vit)`` finds every head without configuration.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Images [N, channels, size, size] -> logits [N, classes]."""

    def __init__(self, *, image_size: int, patch: int, channels: int, dim: int, depth: int, heads: int,
                 mlp_dim: int, classes: int):
        super().__init__()
        self.patch = patch
        self.patch_embedding = nn.Linear(channels * patch * patch, dim)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_dim) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = images.unfold(2, p, p).unfold(3, p, p)  # [N, C, H/p, W/p, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # [N, tokens, C p p]
        x = self.patch_embedding(patches)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.position
        return self.head(self.ln(self.blocks(x)[:, 0]))

    @torch.no_grad()
    def scale_init(self, scale: float) -> "ViT":
        """Multiply every parameter's initial value by ``scale`` except the patch embedding's (the paper fixes
        the scale of the token mapper, Section 5): attention, MLP, LayerNorm gains, class token, position
        embedding and head."""
        for name, param in self.named_parameters():
            if not name.startswith("patch_embedding."):
                param.mul_(scale)
        return self
