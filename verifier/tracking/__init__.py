"""Track the rank of learned perturbations of attention products in any training run (THEORY.md §6)."""

from .tracker import Product, RankHistory, RankTracker

__all__ = ["Product", "RankHistory", "RankTracker"]
