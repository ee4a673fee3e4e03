"""Track the rank of learned perturbations of attention products in any training run (THEORY.md §6)."""

from .checks import GRADUAL, LOW_RANK, rank_checks
from .history import RankHistory
from .layouts import AttentionSpec, Weight, register_attention
from .lora import LoraRecommendation, recommend_lora
from .tracker import Product, RankTracker

__all__ = ["GRADUAL", "LOW_RANK", "AttentionSpec", "LoraRecommendation", "Product", "RankHistory", "RankTracker",
           "Weight", "rank_checks", "recommend_lora", "register_attention"]
