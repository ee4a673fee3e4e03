"""``RankTrackerCallback`` for a Lightning ``Trainer`` (the ``lightning`` extra).

    from verifier.tracking.lightning import RankTrackerCallback
    trainer = lightning.Trainer(max_steps=1000, callbacks=[RankTrackerCallback(every=10)])
    trainer.fit(module, data)      # then <default_root_dir>/verifier/results.json and report.html

On global rank 0 only: the tracker is built at the start of training on the LightningModule, records in
``on_train_batch_end`` after every ``every``-th optimizer step with the step's loss (``training_step``'s
returned loss), and logs each head's stable rank of the change through the module's logger
(``rank/<product>[h<head>]``). Its state is saved in the trainer's checkpoint (the callback's
``state_dict``), so ``trainer.fit(..., ckpt_path=...)`` continues the history. At the end both checks are
judged and written to ``<default_root_dir>/verifier/`` (``output_dir=`` to change).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback

from .session import TrackingCallback, TrackingSession


class RankTrackerCallback(TrackingCallback, Callback):
    """``every``: record every N optimizer steps. ``products``, ``init_scale``, ``tensorboard``: see
    :class:`~verifier.tracking.session.TrackingSession`. ``log``: log per-head stable ranks through
    ``pl_module.log_dict`` (one host transfer per record). ``output_dir``: where results.json and report.html
    go (default ``<trainer.default_root_dir>/verifier``)."""

    def __init__(self, every: int = 1, *, products: Mapping | None = None, init_scale: float = 1.0,
                 tensorboard=None, log: bool = True, output_dir: str | os.PathLike | None = None):
        self.session = TrackingSession(every, products, init_scale, tensorboard)
        self.log, self.output_dir = log, output_dir
        self.written: Path | None = None

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.session.start(pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.session.every:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if self.session.record(step, loss) and self.log:
            last = self.tracker.history(last=1)
            ranks = last.stable_rank()[0]
            pl_module.log_dict({f"rank/{k}": float(v) for k, v in zip(last.labels, ranks) if np.isfinite(v)},
                               on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.tracker is not None and self.tracker.n_records:
            folder = Path(self.output_dir) if self.output_dir is not None else Path(trainer.default_root_dir) / "verifier"
            self.session.write(folder, "lightning", pl_module)
            self.written = folder

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": None if self.tracker is None else self.tracker.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.session.load(state_dict.get("tracker"))
