"""What the training-framework callbacks share (:mod:`.hf`, :mod:`.lightning`): the output folder checked
when training begins, a tracker built then (its state restored from a checkpoint, the file named on any
error), records every N steps, and at the end both checks written to ``<the run's folder>/rank-tracking/``
(results.json, report.html, rank-history.npz; :mod:`.output_set`).

Under ``torch.distributed`` (docs/TRACKING.md, "Distributed training") the tracker is built, restored and
called at the same steps on every rank, since under FSDP2 reading a weight is a collective; every decision a
callback takes that changes the framework's control flow (the Hugging Face Trainer's ``should_log``, which
gathers the loss) is taken from what every rank knows alike (:attr:`RankTracker.record_steps`). Only where
the tracker records (rank 0) is the output folder checked, a loss attached, a logger or TensorBoard written,
a checkpoint file saved and the output set written."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..results import RunResults
from . import distributed
from .checkpoints import read_torch_file
from .checks import rank_checks
from .figures import shown_matrices
from .history import RankHistory
from .output_set import check_folder, provenance, tracking_results, write_set
from .tensorboard import TensorBoardSink
from .tracker import RankTracker

LOG_LEVELS = ("products", "heads")


def check_log(log) -> str | None:
    """``log=``: "products" (default: each product's stable rank, the mean over its heads), "heads" (every
    head), or False/None (nothing sent to the framework's loggers)."""
    if log is False or log is None:
        return None
    if log is True:
        return "products"
    if log not in LOG_LEVELS:
        raise InputError("log", f"{log!r}", "'products', 'heads', or False")
    return log


class TrackingSession:
    """``every``: record every N optimizer steps; ``products``: as :class:`RankTracker` (None: detect);
    ``init_scale``: the factor the run's init was multiplied by (1.0: the framework's default init);
    ``tensorboard``: a log folder (or a ``SummaryWriter``) for each product's spectrum as a histogram, or None;
    ``heads``: labels of the heads whose spectra the report draws (None: the heads that learned most)."""

    def __init__(self, every: int = 1, products: Mapping | None = None, init_scale: float = 1.0,
                 tensorboard=None, heads: Sequence[str] | None = None):
        if isinstance(every, bool) or not (isinstance(every, int) and every >= 1):
            raise InputError("every", f"{every!r} is not a positive integer", "an integer >= 1")
        if isinstance(init_scale, bool) or not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale)
                                                 and init_scale > 0):
            raise InputError("init_scale", f"{init_scale!r}", "a positive finite number (1.0: the default init)")
        if heads is not None and (isinstance(heads, str) or not all(isinstance(h, str) for h in heads)):
            raise InputError("heads", f"{heads!r}", "a list of head labels, e.g. ['h.0.attn.qk[h1]']")
        self.every, self.products, self.init_scale = every, products, float(init_scale)
        self.heads = None if heads is None else list(heads)
        self.tensorboard = tensorboard
        self.tracker: RankTracker | None = None
        self.sink: TensorBoardSink | None = None
        self.folder: Path | None = None
        self.flag = "output_dir"
        self.info: dict[str, Any] = {}
        self._pending: tuple[dict, str] | None = None
        self._warned: set[str] = set()
        self.record_s = 0.0  # wall time inside RankTracker.record (host time: on a GPU, launch time)

    @property
    def records_here(self) -> bool:
        """Whether this process records (rank 0 of the default process group; the only process without one)."""
        return self.tracker.records_here if self.tracker is not None else distributed.rank() == 0

    @property
    def recorded(self) -> bool:
        """Whether this process records and has recorded something (what a checkpoint saves, what is written)."""
        return self.tracker is not None and self.tracker.records_here and bool(self.tracker.n_records)

    def warn_once(self, key: str, message: str, every_rank: bool = False) -> None:
        """Warn once, on the recording process (``every_rank``: on each process, for what differs by rank)."""
        if key not in self._warned and (every_rank or self.records_here):
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def prepare(self, folder: str | Path | None, flag: str) -> None:
        """Check the output folder now, when training begins (InputError naming ``flag``), not at its end; only
        where the set will be written (rank 0), so that no two processes probe the same folder."""
        # absolute now: a chdir during training cannot move the output
        self.folder, self.flag = (None if folder is None else Path(os.path.abspath(folder))), flag
        if self.folder is not None and self.records_here:
            check_folder(self.folder, flag)

    def load_file(self, path: Path) -> None:
        """A tracker state saved by a callback (``rank_tracker.pt``), read without unpickling objects
        (``weights_only=True``); an unreadable file is an InputError naming it."""
        state = read_torch_file(path, str(path), "a RankTracker state", "the rank_tracker.pt a RankTrackerCallback "
                                "saved; delete it to start the history again")
        self.load(state, str(path))

    def load(self, state: dict | None, source: str = "state") -> None:
        """A tracker state from a checkpoint, applied now or when the tracker is built."""
        if state is None:
            return
        if self.tracker is not None:
            self._apply(state, source)
        else:
            self._pending = (state, source)

    def _apply(self, state, source: str) -> None:
        try:
            self.tracker.load_state_dict(state)
        except InputError as exc:
            raise InputError(source, str(exc), "the state a RankTrackerCallback saved for this model") from None
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise InputError(source, f"is not a RankTracker state of this model ({type(exc).__name__}: {exc})",
                             "the state a RankTrackerCallback saved for this model") from None

    def start(self, module: torch.nn.Module, step: int, **info: Any) -> None:
        """Build the tracker (restoring a loaded state) and, on a fresh history, record the reference (on every
        rank: under FSDP2 a collective). ``info``: what the history's ``info`` says about the run (model title,
        framework)."""
        if self.tracker is None:
            self.tracker = RankTracker(module, self.products, every=self.every)
        if self._pending is not None:
            state, source = self._pending
            self._pending = None
            self._apply(state, source)
        if self.tensorboard is not None and self.sink is None and self.records_here:
            self.sink = TensorBoardSink(self.tensorboard, scalars=False)
        parameter = next(module.parameters())
        self.info = {**info, "init_scale": self.init_scale, "every": self.every,
                     "tracked": self.tracker.describe().splitlines(), "device": str(self.tracker.device),
                     "dtype": str(parameter.dtype)}
        if self.tracker.last_step is None:  # a fresh history (a restored one has steps, on every rank alike)
            self.record(step)
        if self.heads is not None and self.records_here:
            shown_matrices(self.tracker.history(last=1), self.heads)  # an unknown label: InputError now

    def record(self, step: int, loss=None) -> bool:
        """Record at ``step`` when it is a new multiple of ``every`` (a repeated step, as under gradient
        accumulation, is skipped); write the spectra to TensorBoard. Returns whether the run recorded at
        ``step``, the same on every rank (rank 0 measured; the others took part or returned at once)."""
        t = self.tracker
        if t is None or (t.last_step is not None and step <= t.last_step):
            return False
        start = time.perf_counter()
        done = t.record(step, loss)
        self.record_s += time.perf_counter() - start
        if done and self.sink is not None:
            self.sink.write(t)
        return t.record_steps[-1:] == (step,)

    def reference_step(self) -> int | None:
        """The step of the reference record while it is the only one (its loss not yet known), else None; the
        same on every rank."""
        steps = () if self.tracker is None else self.tracker.record_steps
        return steps[0] if len(steps) == 1 else None

    def set_loss(self, step: int, loss) -> None:
        """The training loss logged at ``step``: that record's; or, the step after the reference record, the
        reference's (the loss of the first step is computed on the reference weights)."""
        t = self.tracker
        if not t.set_loss(step, loss) and self.reference_step() == step - 1:
            t.set_loss(step - 1, loss)

    def logged_ranks(self, level: str) -> dict[str, float]:
        """The last record's stable ranks for the framework's loggers: ``rank/<product>`` (mean over heads) or
        ``rank/<product>[h<head>]``; non-finite values (the first record's zero change) left out."""
        last = self.tracker.history(last=1)
        ranks = last.stable_rank()[0]
        if level == "heads":
            pairs = zip(last.labels, ranks)
        else:
            names = np.array(last.names)
            pairs = ((n, np.nanmean(ranks[names == n]) if np.isfinite(ranks[names == n]).any() else np.nan)
                     for n in dict.fromkeys(last.names))
        return {f"rank/{k}": float(v) for k, v in pairs if np.isfinite(v)}

    def history(self) -> RankHistory:
        if self.tracker is None or (self.tracker.records_here and not self.tracker.n_records):
            raise RuntimeError("RankTrackerCallback.results(): training has not started (nothing recorded)")
        return replace(self.tracker.history(), info={**self.info, "record_s": round(self.record_s, 6)})

    def results(self) -> list:
        return rank_checks({self.init_scale: self.history()}, self.heads)

    def write(self, framework: str) -> RunResults:
        """results.json, report.html and rank-history.npz into the folder checked by :meth:`prepare`."""
        history = self.history()
        config = {"every": self.every, "init_scale": self.init_scale, "framework": framework,
                  **({"heads": self.heads} if self.heads is not None else {})}
        prov = provenance({framework: _version(framework)}, device=history.info["device"],
                          dtype=history.info["dtype"])
        results = tracking_results({self.init_scale: history}, config=config, provenance=prov, heads=self.heads)
        write_set(self.folder, self.flag, results, history)
        if self.sink is not None:
            self.sink.close()
        return results


class TrackingCallback:
    """What a framework callback exposes: ``.tracker`` (None before training starts), ``.results()``,
    ``.history()`` and ``.written`` (the rank-tracking folder, once written)."""

    session: TrackingSession
    written: Path | None = None

    @property
    def tracker(self) -> RankTracker | None:
        return self.session.tracker

    def results(self) -> list:
        """Both checks on what was recorded so far (CheckResults)."""
        return self.session.results()

    def history(self) -> RankHistory:
        """What was recorded so far, with what the run's ``info`` says (``.save(path)`` writes it)."""
        return self.session.history()


def _version(package: str) -> str:
    try:
        return __import__(package).__version__
    except Exception:  # pragma: no cover - the framework is what called us
        warnings.warn(f"cannot read the version of {package}")
        return "unknown"
