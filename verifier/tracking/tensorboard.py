"""A TensorBoard sink for a RankTracker: per record, each head's stable rank of the change as a scalar
(``rank/<product>[h<head>]``; not with ``scalars=False``, as the callbacks use it: their scalars go through the
framework's own loggers) and each product's singular values of the change, all heads together, as a
histogram (``spectrum/<product>``). Needs the ``tensorboard`` extra (torch's SummaryWriter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class TensorBoardSink:
    """``target``: a log folder, or an object with ``add_scalar``/``add_histogram`` (a SummaryWriter);
    ``scalars``: also write each head's stable rank."""

    def __init__(self, target, scalars: bool = True):
        self.scalars = scalars
        if hasattr(target, "add_scalar"):
            self.writer, self._owned = target, False
        else:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - depends on the environment
                raise ImportError("the TensorBoard sink needs tensorboard: pip install 'verifier[tensorboard]'") from None
            self.writer, self._owned = SummaryWriter(log_dir=str(Path(target))), True

    def write(self, tracker) -> None:
        """The tracker's last record (one host transfer)."""
        last = tracker.history(last=1)
        step = int(last.steps[0])
        ranks = last.stable_rank()[0]
        for label, value in zip(last.labels, ranks):
            if self.scalars and np.isfinite(value):
                self.writer.add_scalar(f"rank/{label}", float(value), step)
        names = np.array(last.names)
        for name in dict.fromkeys(last.names):
            values = last.delta_spectra[0, names == name].ravel()
            if np.isfinite(values).all() and values.any():
                self.writer.add_histogram(f"spectrum/{name}", values, step)
        self.writer.flush()

    def close(self) -> None:
        if self._owned:
            self.writer.close()
