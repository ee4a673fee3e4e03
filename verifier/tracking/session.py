"""What the training-framework callbacks share (:mod:`.hf`, :mod:`.lightning`): a tracker built at the start
of training on the main process, its state restored from a checkpoint, records every N steps, and at the end
the two checks written as an output set (results.json, report.html), like ``verifier track``."""

from __future__ import annotations

import datetime as _dt
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from ..context import versions
from ..errors import InputError
from ..results import RunResults
from .tensorboard import TensorBoardSink
from .tracker import RankTracker


class TrackingSession:
    """``every``: record every N optimizer steps; ``products``: as :class:`RankTracker` (None: detect);
    ``init_scale``: the factor the run's init was multiplied by (1.0: the framework's default init);
    ``tensorboard``: a log folder (or a ``SummaryWriter``) for per-head stable ranks and spectra, or None."""

    def __init__(self, every: int = 1, products: Mapping | None = None, init_scale: float = 1.0,
                 tensorboard=None):
        if isinstance(every, bool) or not (isinstance(every, int) and every >= 1):
            raise InputError("every", f"{every!r} is not a positive integer", "an integer >= 1")
        self.every, self.products, self.init_scale = every, products, init_scale
        self.tensorboard = tensorboard
        self.tracker: RankTracker | None = None
        self.sink: TensorBoardSink | None = None
        self._pending_state: dict | None = None
        self.record_s = 0.0  # wall time inside RankTracker.record (host time: on a GPU, launch time)

    def start(self, model: torch.nn.Module, step: int) -> None:
        """Build the tracker (restoring a loaded state) and, on a fresh history, record the reference."""
        if self.tracker is None:
            self.tracker = RankTracker(model, self.products, every=self.every)
        if self._pending_state is not None:
            self.tracker.load_state_dict(self._pending_state)
            self._pending_state = None
        if self.tensorboard is not None and self.sink is None:
            self.sink = TensorBoardSink(self.tensorboard)
        if not self.tracker.n_records:
            self.record(step)

    def load(self, state: dict | None) -> None:
        """A tracker state from a checkpoint, applied now or when the tracker is built."""
        if state is None:
            return
        if self.tracker is not None:
            self.tracker.load_state_dict(state)
        else:
            self._pending_state = state

    def record(self, step: int, loss=None) -> bool:
        """Record at ``step`` when it is a new multiple of ``every`` (a repeated step, as under gradient
        accumulation, is skipped); write the record to TensorBoard."""
        t = self.tracker
        if t is None or (t.last_step is not None and step <= t.last_step):
            return False
        start = time.perf_counter()
        done = t.record(step, loss)
        self.record_s += time.perf_counter() - start
        if done and self.sink is not None:
            self.sink.write(t)
        return done

    def results(self) -> list:
        if self.tracker is None or not self.tracker.n_records:
            raise RuntimeError("RankTrackerCallback.results(): training has not started (nothing recorded)")
        return self.tracker.results(self.init_scale)

    def write(self, folder: str | Path, framework: str, model: torch.nn.Module) -> RunResults:
        """results.json and report.html of both checks into ``folder`` (replaced whole, like an output set)."""
        from ..outputs import OutputSet

        checks = self.results()
        history = self.tracker.history()
        provenance = {"command": " ".join(sys.argv), "versions": {**versions(), framework: _version(framework)},
                      "device": str(self.tracker.device), "dtype": str(next(model.parameters()).dtype),
                      "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        config = {"every": self.every, "init_scale": self.init_scale, "framework": framework}
        run = {"config": config, "provenance": provenance, "model": type(model).__name__,
               "checks": [c.id for c in checks], "tracked": self.tracker.describe().splitlines(),
               "training": {f"{self.init_scale:g}": {"records": len(history.steps), "last_step": int(history.steps[-1]),
                                                      "tracked_matrices": len(history.names),
                                                      "record_s": round(self.record_s, 3),
                                                      "diverged_step": history.diverged_step}}}
        results = RunResults(run=run, checks=tuple(replace(c, config=config, provenance=provenance) for c in checks))
        output = OutputSet.for_out(str(folder))
        output.open()
        try:
            output.commit(results)
        finally:
            output.discard()
        if self.sink is not None:
            self.sink.close()
        return results


class TrackingCallback:
    """What a framework callback exposes: ``.tracker`` (None before training starts) and ``.results()``."""

    session: TrackingSession

    @property
    def tracker(self) -> RankTracker | None:
        return self.session.tracker

    def results(self) -> list:
        """Both checks on what was recorded so far (CheckResults)."""
        return self.session.results()


def _version(package: str) -> str:
    try:
        return __import__(package).__version__
    except Exception:  # pragma: no cover - the framework is what called us
        warnings.warn(f"cannot read the version of {package}")
        return "unknown"
