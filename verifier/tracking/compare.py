"""``verifier track-compare RUN[:SCALE] RUN[:SCALE] ...``: runs tracked in separate jobs (each at its own init
scale) judged together, with the cross-scale part of ``gradual-rank-increase`` (docs/TRACKING.md).

A RUN is a callback's output folder (``rank-tracking/``), the run's own folder holding one (a Trainer's
``output_dir``, a Lightning version folder), a Hugging Face checkpoint folder (``checkpoint-N/``, where the
callback saves ``rank-history.npz`` beside ``rank_tracker.pt``) or a ``rank-history.npz``. SCALE, the factor the
run's init was multiplied by, defaults to the ``init_scale`` the callback recorded. Every argument is read and
validated before anything is judged or written: a bad one is an InputError naming it (exit 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..results import RunResults
from .history import RankHistory
from .output_set import FOLDER, HISTORY_FILE, locate_history, provenance, tracking_results

STATE_FILE = "rank_tracker.pt"  # the tracker state a Hugging Face checkpoint holds (hf.STATE_FILE)
ALLOWED = (f"RUN[:SCALE]: a callback's output folder ({FOLDER}/), the folder holding it, a checkpoint folder with "
           f"{HISTORY_FILE}, or a {HISTORY_FILE}; SCALE a positive number (default: the init_scale recorded)")


def _history_file(path: Path, argument: str) -> Path:
    found = locate_history(path, argument, ALLOWED)
    if found is not None:
        return found
    if (path / STATE_FILE).is_file():
        raise InputError(argument, f"{path} holds {STATE_FILE} but no {HISTORY_FILE} (a checkpoint saved before "
                         "the callback wrote histories beside its state)", ALLOWED)
    raise InputError(argument, f"no {HISTORY_FILE} in {path} or in {path / FOLDER}", ALLOWED)


def _split(text: str) -> tuple[str, float | None]:
    """'runs/a:0.1' -> ('runs/a', 0.1); a path whose last ':' part is not a number keeps it (no scale)."""
    head, sep, tail = text.rpartition(":")
    if not sep or (not tail and not head):
        return text, None
    try:
        return head, float(tail)
    except ValueError:
        if Path(text).exists():
            return text, None
        raise InputError(f"argument {text!r}", f"scale {tail!r} is not a number", ALLOWED) from None


def load_runs(arguments: Sequence[str]) -> tuple[dict[float, RankHistory], dict[float, str]]:
    """{scale: history} and {scale: the file it came from}, every argument validated (InputError naming it)."""
    if len(arguments) < 2:
        raise InputError("track-compare", f"{len(arguments)} run given", "two or more RUN[:SCALE] arguments")
    runs: dict[float, RankHistory] = {}
    sources: dict[float, str] = {}
    for text in arguments:
        argument = f"argument {text!r}"
        where, scale = _split(text)
        file = _history_file(Path(where), argument)
        try:
            history = RankHistory.load(file)
        except InputError as exc:
            raise InputError(argument, str(exc)) from None
        if scale is None:
            scale = history.info.get("init_scale")
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise InputError(argument, f"{file} records no init scale", "give it as RUN:SCALE, e.g. run-a:0.1")
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(argument, f"scale {scale!r}", "a positive finite number")
        if float(scale) in runs:
            raise InputError(argument, f"init scale {scale:g} is also {sources[float(scale)]}'s",
                             "one run per init scale (give RUN:SCALE to set it)")
        runs[float(scale)], sources[float(scale)] = history, str(file)
    return runs, sources


def compare_runs(runs: dict[float, RankHistory], sources: dict[float, str], heads: Sequence[str] | None = None,
                 argv: Sequence[str] | None = None) -> RunResults:
    """Both checks on the runs together, as one RunResults (results.json, report.html)."""
    products = {s: tuple(dict.fromkeys(h.names)) for s, h in runs.items()}
    notes = []
    if len(set(products.values())) > 1:
        notes.append("The runs track different products (" + "; ".join(
            f"init scale {s:g}: {len(p)} products" for s, p in sorted(products.items(), reverse=True)) +
            "): each run's mean stable rank is over its own matrices.")
    prov = provenance()
    if argv is not None:
        prov["command"] = " ".join(argv)
    config = {"runs": {f"{s:g}": sources[s] for s in sorted(runs, reverse=True)},
              **({"heads": list(heads)} if heads is not None else {})}
    return tracking_results(runs, config=config, provenance=prov, heads=heads, sources=sources, notes=notes)
