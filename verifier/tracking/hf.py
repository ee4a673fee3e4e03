"""``RankTrackerCallback`` for the Hugging Face ``Trainer`` (the ``hf`` extra: transformers, accelerate).

    from verifier.tracking.hf import RankTrackerCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[RankTrackerCallback(every=10)])
    trainer.train()      # then <output_dir>/rank-tracking/: results.json, report.html, rank-history.npz

When training begins the output folder is checked (an InputError naming ``output_dir``, or
``TrainingArguments.output_dir`` for the default, before the first step) and the tracker is built (the model's
attention found as ``RankTracker(model)`` finds it, or ``products=``). It records at the
end of every ``every``-th optimizer step. Each record takes the training loss the Trainer logs at that step:
where ``logging_steps`` would not log there, the callback asks the Trainer to (``control.should_log``), so every
record carries the mean training loss since the previous log, and the reference record (the initial weights)
the loss of the first step after it; with ``logging_strategy="no"`` records carry no loss and a warning says so
once. The stable ranks go through ``Trainer.log`` (``rank/<product>``, the mean over
its heads; ``log="heads"`` for every head), so every ``report_to`` integration and ``trainer.state.log_history``
get them at the record steps. At each checkpoint the tracker's state is saved next to it
(``checkpoint-N/rank_tracker.pt``, with ``checkpoint-N/rank-history.npz`` for ``verifier track-compare``), and
``trainer.train(resume_from_checkpoint=...)`` continues the history (the file is read with
``weights_only=True``; a damaged one is an InputError naming it). At the end both checks are judged and
written to ``<output_dir>/rank-tracking/`` (``output_dir=`` to change).

Distributed (DDP, FSDP2; :mod:`.session`): every process builds the tracker, restores it from the checkpoint and
calls ``record()`` at the same steps, and sets ``control.should_log`` alike (the Trainer gathers the loss across
processes when it logs); the main process (rank 0) alone checks the folder, logs the ranks, saves the state file
and writes the set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

import torch
from transformers import TrainerCallback

from .output_set import FOLDER, HISTORY_FILE
from .session import TrackingCallback, TrackingSession, check_log

STATE_FILE = "rank_tracker.pt"


def _calling_trainer(callback):
    """The ``transformers.Trainer`` whose callback handler is calling ``callback`` (up the call stack: callbacks
    are not handed their trainer), or None."""
    from transformers import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer) and any(c is callback for c in owner.callback_handler.callbacks):
            return owner
        frame = frame.f_back
    return None


def model_title(model) -> str:
    """The model's class (the base model's under PEFT) and the checkpoint it was loaded from, if any."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    source = getattr(getattr(base, "config", None), "_name_or_path", "") or ""
    title = type(base).__name__ + (f" ({source})" if source else "")
    return title if base is model else f"{title} in {type(model).__name__}"


class RankTrackerCallback(TrackingCallback, TrainerCallback):
    """``every``: record every N optimizer steps. ``products``, ``init_scale``, ``heads``: see
    :class:`~verifier.tracking.session.TrackingSession`. ``log``: "products" (default), "heads", or False: the
    stable ranks sent through ``Trainer.log``. ``tensorboard``: a folder or ``SummaryWriter`` for the spectra as
    histograms (``True``: ``<logging_dir>/rank-spectra``); the scalars need no writer of their own
    (``report_to="tensorboard"`` gets them). ``output_dir``: where results.json, report.html and
    rank-history.npz go (default ``<args.output_dir>/rank-tracking``); ``write``: False to write nothing at the
    end (call :meth:`results` yourself)."""

    def __init__(self, every: int = 1, *, products: Mapping | None = None, init_scale: float = 1.0,
                 heads: Sequence[str] | None = None, log="products", tensorboard=None,
                 output_dir: str | os.PathLike | None = None, write: bool = True):
        self._tensorboard = tensorboard
        self.session = TrackingSession(every, products, init_scale, None if tensorboard is True else tensorboard,
                                       heads)
        self.log, self.output_dir, self.write = check_log(log), output_dir, write
        self.written: Path | None = None
        self._trainer, self._log_loss = None, True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        session = self.session
        if self.write:
            folder, flag = ((self.output_dir, "output_dir") if self.output_dir is not None
                            else (Path(args.output_dir) / FOLDER, "TrainingArguments.output_dir"))
            session.prepare(folder, flag)
        if self._tensorboard is True:
            session.tensorboard = os.path.join(getattr(args, "logging_dir", None) or
                                               os.path.join(args.output_dir, "runs"), "rank-spectra")
        if state.global_step > 0 and self.tracker is None:  # resumed: the trainer has loaded checkpoint-<step>
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            if saved.is_file():
                session.load_file(saved)
            else:  # on every process that misses it: they must all restore the same state
                session.warn_once("resume", f"resumed at step {state.global_step} without {saved}: the rank history "
                                  "starts again here, measuring the change from the resumed weights", every_rank=True)
        if self.log is not None:
            self._trainer = _calling_trainer(self)
            if self._trainer is None:
                session.warn_once("trainer", "RankTrackerCallback: no transformers.Trainer is calling this callback, "
                                  "so the stable ranks are not logged (log=False silences this)")
        self._log_loss = str(getattr(args, "logging_strategy", "steps")).rsplit(".", 1)[-1].lower() != "no"
        if not self._log_loss:
            session.warn_once("loss", "logging_strategy='no': records carry no training loss, so runs at several "
                              "init scales cannot be compared at matched loss; log with logging_steps dividing every")
        session.start(model, state.global_step, model=model_title(model), framework="transformers")

    def on_step_end(self, args, state, control, **kwargs):
        if self._log_loss and self.session.reference_step() == state.global_step - 1:
            control.should_log = True  # the loss of the step after the reference: the initial weights' loss
        if state.global_step % self.session.every:
            return
        if self.session.record(state.global_step):  # on every process alike
            wanted = control.should_log
            if self._trainer is not None and self.tracker.records_here:
                self._trainer.log(self.session.logged_ranks(self.log))  # its on_log resets control.should_log
            # the Trainer logs its loss at this step (on_log attaches it to the record), and on every process: it
            # gathers the loss, so a flag set on one process only would leave the others waiting
            control.should_log = wanted or self._log_loss

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.session.records_here and self.tracker is not None and logs and "loss" in logs:
            self.session.set_loss(state.global_step, float(logs["loss"]))

    def on_save(self, args, state, control, **kwargs):
        if self.session.recorded:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.tracker.state_dict(), folder / STATE_FILE)
            self.history().save(folder / HISTORY_FILE)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.write and self.session.recorded:
            self.session.write("transformers")
            self.written = self.session.folder
