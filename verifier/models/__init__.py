"""Models with diagonal weights (Definition 3.1) and a full-weight attention head."""

from .attention import DiagAttention, FullAttention
from .base import DiagonalModel, Model
from .linear import DiagLinear
from .transformer import DiagTransformer

__all__ = ["Model", "DiagonalModel", "DiagLinear", "DiagAttention", "DiagTransformer", "FullAttention"]
