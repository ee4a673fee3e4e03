"""What one training run of the ``verifier track`` demo returns (ViT or GPT-2, one init scale)."""

from __future__ import annotations

from dataclasses import dataclass

from ..history import RankHistory


@dataclass(frozen=True)
class TrainedRun:
    """One training run: what the tracker measured, and how training went."""

    scale: float
    history: RankHistory
    final_loss: float  # mean training loss over the last epoch
    test_accuracy: float
    steps: int
    train_s: float  # wall time of the training steps
    record_s: float  # wall time inside tracker.record (host time: on a GPU, launch time)
