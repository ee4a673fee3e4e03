"""Track the rank of learned perturbations of attention products in any training run (THEORY.md §6)."""

from .checks import GRADUAL, LOW_RANK, rank_checks
from .tracker import Product, RankHistory, RankTracker

__all__ = ["GRADUAL", "LOW_RANK", "Product", "RankHistory", "RankTracker", "rank_checks"]
