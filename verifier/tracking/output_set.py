"""What tracked runs write, and the RunResults they are written from (docs/TRACKING.md).

A callback writes ``<the run's output or log folder>/rank-tracking/`` — a name that is not a Python
identifier, so the folder can never be imported in place of a package — holding ``results.json``,
``report.html`` and ``rank-history.npz`` (:meth:`RankHistory.save`), whole or not at all (an
:class:`~verifier.outputs.OutputSet` with these three files). ``verifier track`` and ``verifier
track-compare`` write results.json and report.html the same way, from :func:`tracking_results`.
"""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..context import versions
from ..errors import InputError
from ..outputs import SET_FILES, OutputSet
from ..paths import absent
from ..results import RunResults
from .checks import rank_checks
from .history import RankHistory

FOLDER = "rank-tracking"
HISTORY_FILE = "rank-history.npz"
FILES = (*SET_FILES, HISTORY_FILE)


def locate_history(run: str | Path, field: str, allowed: str, *,
                   names: Sequence[str] = (HISTORY_FILE, f"{FOLDER}/{HISTORY_FILE}"), depth: int = 0) -> Path | None:
    """The rank-history.npz of ``run``: the file itself, the first of ``names`` in the folder, or the one
    ``FOLDER/HISTORY_FILE`` up to ``depth`` folders below it; None when the folder holds none (the caller says
    what it expected). ``run`` neither a file nor a folder, or more than one history below it: an InputError
    naming ``field`` (``allowed``: what it may be)."""
    path = Path(run)
    if path.is_file():
        return path
    if not path.is_dir():
        raise InputError(field, f"{run} {absent(run)}", allowed)
    for name in names:
        if (path / name).is_file():
            return path / name
    found = sorted(p for d in range(1, depth + 1) for p in path.glob("/".join(["*"] * d) + f"/{FOLDER}/{HISTORY_FILE}"))
    if len(found) > 1:
        raise InputError(field, f"{run} holds {len(found)} histories ({', '.join(str(p) for p in found[:3])})",
                         "one of them")
    return found[0] if found else None


def provenance(extra_versions: Mapping[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """The command line, library versions and a UTC timestamp, with ``fields`` (device, dtype, seed, ...)."""
    return {"command": " ".join(sys.argv), "versions": {**versions(), **(extra_versions or {})}, **fields,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _span(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    return f"{finite[0]:.4g} -> {finite[-1]:.4g} ({finite.size} of {values.size} records)" if finite.size else \
        f"none recorded ({values.size} records)"


def problem_rows(runs: Mapping[float, RankHistory], sources: Mapping[float, str] | None = None) -> dict[str, Any]:
    """The report's "Problem" table: the model, per init scale where the run came from, its records, steps,
    record time and training loss; the tracked products (``RankTracker.describe()``) of the first run."""
    ordered = sorted(runs.items(), reverse=True)
    models = list(dict.fromkeys(str(h.info.get("model", "?")) for _, h in ordered))
    rows: dict[str, Any] = {"model": " / ".join(models)}
    for scale, h in ordered:
        row = {"source": sources[scale]} if sources and scale in sources else {}
        if "framework" in h.info:
            row["framework"] = h.info["framework"]
        row.update(records=len(h.steps), steps=f"{int(h.steps[0])} to {int(h.steps[-1])}"
                   + (f", every {h.info['every']}" if "every" in h.info else ""),
                   training_loss=_span(h.losses), tracked_matrices=len(h.names))
        record_s = h.info.get("record_s")
        if isinstance(record_s, (int, float)):
            row["record_time"] = f"{record_s:.3g} s in all, {1e3 * record_s / max(1, len(h.steps)):.3g} ms a record"
        rows[f"init scale {scale:g}"] = row
    tracked = next((h.info.get("tracked") for _, h in ordered if h.info.get("tracked")), None)
    if isinstance(tracked, list):
        rows["tracked"] = {line.split()[0]: " ".join(line.split()[1:]) for line in tracked if line.split()}
    return rows


def tracking_results(runs: Mapping[float, RankHistory], *, config: dict[str, Any], provenance: dict[str, Any],
                     heads: Sequence[str] | None = None, sources: Mapping[float, str] | None = None,
                     notes: Sequence[str] = (), **run: Any) -> RunResults:
    """Both checks on ``runs`` (keyed by init scale) as one RunResults: the checks stamped with ``config`` and
    ``provenance``, the Problem table of :func:`problem_rows`, and ``run``'s other entries (training, ...)."""
    checks = rank_checks(runs, heads)
    models = " / ".join(dict.fromkeys(str(h.info.get("model", "?")) for h in runs.values()))
    body = {"config": config, "provenance": provenance, "model": models, "checks": [c.id for c in checks],
            "problem": problem_rows(runs, sources), **run}
    if notes:
        body["notes"] = list(notes)
    return RunResults(run=body, checks=tuple(replace(c, config=config, provenance=provenance) for c in checks))


def check_folder(folder: str | Path, flag: str) -> OutputSet:
    """The set's folder checked without writing anything lasting (a new folder, an empty one or a previous
    set; its parent writable: probed with a temporary folder): an InputError naming ``flag`` otherwise."""
    output = OutputSet.for_out(str(folder), flag=flag, files=FILES)
    output.open()
    output.discard()
    return OutputSet.for_out(str(folder), flag=flag, files=FILES)


def write_set(folder: str | Path, flag: str, results: RunResults, history: RankHistory) -> list[Path]:
    """results.json, report.html and rank-history.npz into ``folder``, replaced whole."""
    output = OutputSet.for_out(str(folder), flag=flag, files=FILES)
    output.open()
    try:
        return output.commit(results, extra={HISTORY_FILE: history.npz_bytes()})
    finally:
        output.discard()
