"""Models with diagonal weights (Definition 3.1), a full-weight attention head, and linear attention with
separate rank-one key/query heads (full weights: one matrix pair)."""

from .attention import DiagAttention, FullAttention
from .base import DiagonalModel, Model
from .linear import DiagLinear
from .linear_attention import LinearAttention
from .transformer import DiagTransformer

__all__ = ["Model", "DiagonalModel", "DiagLinear", "DiagAttention", "DiagTransformer", "FullAttention",
           "LinearAttention"]
