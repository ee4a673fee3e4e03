"""``RankTrackerCallback`` for the Hugging Face ``Trainer`` (the ``hf`` extra: transformers, accelerate).

    from verifier.tracking.hf import RankTrackerCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[RankTrackerCallback(every=10)])
    trainer.train()      # then <output_dir>/verifier/results.json and report.html

On the main process only: the tracker is built at the start of training (the model's attention found as
``RankTracker(model)`` finds it, or ``products=``), records at the end of every ``every``-th optimizer step,
and takes the training loss the Trainer logs at that step (``logging_steps`` = ``every`` gives every record a
loss; records at steps that are not logged carry none). At each checkpoint its state is saved next to it
(``checkpoint-N/rank_tracker.pt``) and ``trainer.train(resume_from_checkpoint=...)`` continues the history.
At the end both checks are judged and written to ``<output_dir>/verifier/`` (``output_dir=`` to change).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from transformers import TrainerCallback

from .session import TrackingCallback, TrackingSession

STATE_FILE = "rank_tracker.pt"


class RankTrackerCallback(TrackingCallback, TrainerCallback):
    """``every``: record every N optimizer steps. ``products``, ``init_scale``, ``tensorboard``: see
    :class:`~verifier.tracking.session.TrackingSession` (``tensorboard=True`` logs to ``args.logging_dir``, or ``<output_dir>/runs``).
    ``output_dir``: where results.json and report.html go (default ``<args.output_dir>/verifier``); ``write``:
    False to write nothing at the end (call :meth:`results` yourself)."""

    def __init__(self, every: int = 1, *, products: Mapping | None = None, init_scale: float = 1.0,
                 tensorboard=None, output_dir: str | os.PathLike | None = None, write: bool = True):
        self._tensorboard = tensorboard
        self.session = TrackingSession(every, products, init_scale,
                                       None if tensorboard is True else tensorboard)
        self.output_dir, self.write = output_dir, write
        self.written: Path | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._tensorboard is True:
            self.session.tensorboard = getattr(args, "logging_dir", None) or os.path.join(args.output_dir, "runs")
        if state.global_step > 0:  # resumed: the trainer has loaded checkpoint-<global_step>
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            if saved.is_file():
                self.session.load(torch.load(saved, map_location="cpu", weights_only=True))
        self.session.start(model, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step % self.session.every == 0:
            self.session.record(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.tracker is not None and logs and "loss" in logs:
            self.tracker.set_loss(state.global_step, float(logs["loss"]))

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.tracker is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.tracker.state_dict(), folder / STATE_FILE)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.write and state.is_world_process_zero and self.tracker is not None and self.tracker.n_records:
            folder = Path(self.output_dir) if self.output_dir is not None else Path(args.output_dir) / "verifier"
            self.session.write(folder, "transformers", model)
            self.written = folder
