"""The alpha -> 0 limit of gradient flow from small initialisation: Algorithm 1 (THEORY.md §4)."""

from .incremental import Stage, StageSequence, StageStatus, algorithm1, argmin_margin, time_to_activate

__all__ = ["Stage", "StageSequence", "StageStatus", "algorithm1", "argmin_margin", "time_to_activate"]
