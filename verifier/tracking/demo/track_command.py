"""``verifier track``: train the preset once per init scale, judge the stored measurements, one RunResults."""

from __future__ import annotations

import tempfile
import time

import numpy as np

from ...context import git_sha
from ...results import RunResults
from ..output_set import provenance, tracking_results
from .track_config import TrackConfig
from .trained_run import TrainedRun
from .vit_training import load_digits, train


def run_track(config: TrackConfig, argv: list[str] | None = None, progress: bool = True) -> RunResults:
    device = config.torch_device
    start = time.perf_counter()
    runs, library = _train_runs(config, device, progress)
    wall = time.perf_counter() - start
    prov = provenance({library.__name__: library.__version__}, seed=config.seed, device=str(device),
                      dtype="float32", git_sha=git_sha(), wall_s=round(wall, 2))
    if argv is not None:
        prov["command"] = " ".join(argv)
    training = {f"{r.scale:g}": {
        "final_train_loss": r.final_loss, "test_accuracy": r.test_accuracy, "steps": r.steps,
        "records": len(r.history.steps), "tracked_matrices": len(r.history.names),
        "train_s": round(r.train_s, 3), "record_s": round(r.record_s, 3),
        "record_ms_per_record": round(1e3 * r.record_s / max(1, len(r.history.steps) - 1), 3),
        "record_overhead": round(r.record_s / r.train_s, 4) if r.train_s > 0 else float("nan"),
        "median_final_stable_rank": _finite_median(r.history.stable_rank()[-1]),
        "diverged_step": r.history.diverged_step,
    } for r in runs}
    return tracking_results({r.scale: r.history for r in runs}, config=config.as_dict(), provenance=prov,
                            model=f"{config.spec.model} ({config.preset})", training=training)


def _train_runs(config: TrackConfig, device, progress: bool) -> tuple[list[TrainedRun], object]:
    """One run per init scale, and the library the data or the trainer came from (for the provenance)."""
    if config.spec.model == "gpt2":
        import transformers

        from .gpt2_training import train_gpt2

        with tempfile.TemporaryDirectory(prefix="verifier-track-") as workdir:
            return [train_gpt2(config, s, device, workdir, progress) for s in config.scales], transformers
    import sklearn

    data = load_digits(config.seed, device)
    return [train(config, s, data, device, progress) for s in config.scales], sklearn


def _finite_median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")
