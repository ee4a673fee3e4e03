"""``RankTrackerCallback`` for a Lightning ``Trainer`` (the ``lightning`` extra).

    from verifier.tracking.lightning import RankTrackerCallback
    trainer = lightning.Trainer(max_steps=1000, callbacks=[RankTrackerCallback(every=10)])
    trainer.fit(module, data)      # then <trainer.log_dir>/rank-tracking/: results.json, report.html, rank-history.npz

When training begins the output folder is checked (an InputError naming
``output_dir``, or ``Trainer.log_dir`` for the default, before the first step) and the tracker is built on
the LightningModule. It records in ``on_train_batch_end`` after every ``every``-th optimizer step with the
step's loss (``training_step``'s returned loss; a warning, once, when there is none), and sends the stable
ranks to every logger of the trainer (``logger.log_metrics(..., step=<the record's step>)``: the same step
numbers as the report; ``rank/<product>``, the mean over its heads, or ``log="heads"`` for every head). Its
state is saved in the trainer's checkpoint (the callback's ``state_dict``), so ``trainer.fit(...,
ckpt_path=...)`` continues the history. At the end both checks are judged and written to
``<trainer.log_dir>/rank-tracking/`` (the logger's version folder; ``default_root_dir`` without a logger;
``output_dir=`` to change). The report's title is the model inside the LightningModule that holds every
tracked attention module (``GPT2LMHeadModel in MyModule``).

Distributed (strategy "ddp", or FSDP2 through ``ModelParallelStrategy``; :mod:`.session`): every process builds
the tracker, restores it from the checkpoint and calls ``record()`` at the same steps (``trainer.log_dir``, a
broadcast, is read on every process too); global rank 0 alone checks the folder, logs, and writes the set. The
loss recorded is the one ``training_step`` returns on rank 0: its share of the batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback

from .output_set import FOLDER
from .session import TrackingCallback, TrackingSession, check_log


def model_title(module, tracker) -> str:
    """The class of the one child of ``module`` that holds every tracked attention module ("GPT2LMHeadModel in
    MyModule"); the module's own class when there is no such child (named products, attention at the top)."""
    paths = {t.module for t in tracker.tracked}
    heads = {p.split(".", 1)[0] for p in paths}
    if len(heads) == 1 and "" not in paths:
        child = dict(module.named_children()).get(heads.pop())
        if child is not None:
            return f"{type(child).__name__} in {type(module).__name__}"
    return type(module).__name__


class RankTrackerCallback(TrackingCallback, Callback):
    """``every``: record every N optimizer steps. ``products``, ``init_scale``, ``heads``: see
    :class:`~verifier.tracking.session.TrackingSession`. ``log``: "products" (default), "heads", or False: the
    stable ranks sent to the trainer's loggers. ``tensorboard``: a folder or ``SummaryWriter`` for the spectra as
    histograms (``True``: ``<log_dir>/rank-spectra``). ``output_dir``: where results.json, report.html and
    rank-history.npz go (default ``<trainer.log_dir>/rank-tracking``)."""

    def __init__(self, every: int = 1, *, products: Mapping | None = None, init_scale: float = 1.0,
                 heads: Sequence[str] | None = None, log="products", tensorboard=None,
                 output_dir: str | os.PathLike | None = None):
        self._tensorboard = tensorboard
        self.session = TrackingSession(every, products, init_scale, None if tensorboard is True else tensorboard,
                                       heads)
        self.log, self.output_dir = check_log(log), output_dir
        self.written: Path | None = None
        self._restored: dict | None = None  # the tracker state of the checkpoint resumed from, applied at the start

    def on_train_start(self, trainer, pl_module):
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast from rank 0: on every process
        folder, flag = ((self.output_dir, "output_dir") if self.output_dir is not None
                        else (log_dir / FOLDER, "Trainer.log_dir"))
        self.session.prepare(folder, flag)
        if self._tensorboard is True:
            self.session.tensorboard = log_dir / "rank-spectra"
        if self._restored is not None:  # an error names the checkpoint file
            self.session.load(self._restored, f"{trainer.ckpt_path or 'the checkpoint'} (RankTrackerCallback state)")
            self._restored = None
        self.session.start(pl_module, trainer.global_step, framework="lightning")
        self.session.info["model"] = model_title(pl_module, self.tracker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.tracker is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if step % self.session.every:
            if loss is not None and self.session.reference_step() == step - 1 and self.tracker.records_here:
                self.session.set_loss(step, loss)  # the first step's loss, computed on the reference weights
            return
        if loss is None:
            self.session.warn_once("loss", "RankTrackerCallback: training_step returned no loss, so records carry "
                                   "none and runs at several init scales cannot be compared at matched loss; return "
                                   "the loss (or a dict with 'loss')")
        if self.session.record(step, loss) and self.log is not None and self.tracker.records_here:
            metrics = self.session.logged_ranks(self.log)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_train_end(self, trainer, pl_module):
        if self.session.recorded:
            self.session.write("lightning")
            self.written = self.session.folder

    def state_dict(self) -> dict[str, Any]:
        """The tracker's state where it records (rank 0, whose checkpoint is the one written); every rank loads it
        on resume."""
        recording = self.tracker is not None and self.tracker.records_here
        return {"tracker": self.tracker.state_dict() if recording else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict.get("tracker")
