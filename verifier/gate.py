"""The CI regression gate: compare a new results.json with a committed baseline; say what got worse.

A result got worse (exit 1 of ``verifier gate``) when

* a check that passed in the baseline now fails, is inconclusive, or is missing; or
* a metric the baseline's check declared gated (``Metric.gate``, verifier/results.py) moved in its declared
  bad direction by more than its declared tolerance (:meth:`verifier.results.Gate.worse`), became non-finite,
  or disappeared (a renamed metric is a missing one: renaming never silently ungates). Lists (one value per
  alpha or stage) are compared entry by entry when they have the same length.

Nothing is inferred from metric names: the declarations of the baseline decide what is watched, so a
baseline records its own rules. Metrics that are not gated are not compared (their checks' verdicts are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .report.format import fmt, normalized
from .results import Metric, RunResults, Verdict

# What a baseline and a new run must share for their metrics to be comparable (differences are noted).
COMPARABLE_CONFIG = ("preset", "model", "data", "loss", "seed", "alphas", "optimizer", "solver")


class RowStatus(str, Enum):
    """What happened to one gated item between the baseline and the new run."""

    WORSE = "worse"  # a regression (gated): the gate fails
    BETTER = "better"
    SAME = "same"
    CHANGED = "changed"  # a verdict that changed where the baseline did not pass (not gated)
    NEW = "new"  # a check the baseline does not have
    NOT_COMPARED = "not compared"  # lists of different lengths (another ladder), or a list against a number


@dataclass(frozen=True)
class GateRow:
    check: str
    item: str  # "verdict" or a metric name (with [k] for one entry of a list)
    base: str
    new: str
    status: RowStatus
    detail: str = ""


@dataclass(frozen=True)
class GateOutcome:
    rows: tuple[GateRow, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(r.status is RowStatus.WORSE for r in self.rows)

    def table(self) -> str:
        head = ("check", "item", "baseline", "new", "status", "detail")
        body = [(r.check, r.item, r.base, r.new,
                 r.status.value.upper() if r.status is RowStatus.WORSE else r.status.value, r.detail) for r in self.rows]
        widths = [min(max(len(x[i]) for x in [head, *body]), 40) for i in range(len(head))]
        lines = ["  ".join(f"{c[:w]:<{w}}" for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
        lines.insert(1, "-" * len(lines[0]))
        lines += [f"note: {n}" for n in self.notes]
        worse = sum(r.status is RowStatus.WORSE for r in self.rows)
        lines.append("gate: OK, nothing got worse" if self.ok else f"gate: FAIL, {worse} regression(s)")
        return "\n".join(lines)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)  # also "nan", "inf" as written by results.json
    except (TypeError, ValueError, OverflowError):  # an int beyond float64 (read_results refuses those)
        return None


def _compare_value(check: str, name: str, decl: Metric, base: Any, new: Any) -> list[GateRow]:
    if isinstance(base, list) and isinstance(new, list):
        if len(base) != len(new):
            return [GateRow(check, name, f"{len(base)} values", f"{len(new)} values", RowStatus.NOT_COMPARED,
                            "lengths differ (different ladder?)")]
        return [r for k, (b, n) in enumerate(zip(base, new)) for r in _compare_value(check, f"{name}[{k}]", decl, b, n)]
    if isinstance(base, list) or isinstance(new, list):
        return [GateRow(check, name, fmt(base), fmt(new), RowStatus.NOT_COMPARED, "a list in one run, not in the other")]
    b, n = _number(base), _number(new)
    if b is None or not math.isfinite(b):
        return []  # nothing finite to hold the new run to
    if n is None or not math.isfinite(n):
        return [GateRow(check, name, fmt(base), fmt(new), RowStatus.WORSE, "finite in the baseline, not now")]
    gate = decl.gate
    if gate.worse(b, n, decl.better):
        return [GateRow(check, name, fmt(base), fmt(new), RowStatus.WORSE,
                        f"{decl.better} is better; tolerance factor {gate.factor:g}" + (f", atol {gate.atol:g}" if gate.atol else ""))]
    if gate.worse(n, b, decl.better):  # the baseline would have been a regression of the new run: it improved
        return [GateRow(check, name, fmt(base), fmt(new), RowStatus.BETTER)]
    return []


_RANK = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.FAIL: 2}


def verdict_text(c) -> str:
    """A result's verdict with its failure reason: "fail (tie)", "pass"."""
    return c.verdict.value + (f" ({c.reason})" if c.reason else "")


def _compare_check(base, new) -> list[GateRow]:
    rows = []
    b, n = verdict_text(base), verdict_text(new)
    if base.verdict is Verdict.PASS and new.verdict is not Verdict.PASS:
        rows.append(GateRow(base.id, "verdict", b, n, RowStatus.WORSE, new.message[:80]))
    elif _RANK[new.verdict] < _RANK[base.verdict]:
        rows.append(GateRow(base.id, "verdict", b, n, RowStatus.BETTER))
    elif base.verdict is not new.verdict or base.reason != new.reason:
        rows.append(GateRow(base.id, "verdict", b, n, RowStatus.CHANGED, "not gated: baseline did not pass"))
    else:
        rows.append(GateRow(base.id, "verdict", b, n, RowStatus.SAME))
    for name, decl in base.metrics.items():
        if decl.gate is None:
            continue
        if name not in new.metrics:
            rows.append(GateRow(base.id, name, fmt(decl.value), "missing", RowStatus.WORSE, "gated metric disappeared"))
            continue
        rows += _compare_value(base.id, name, decl, decl.value, new.metrics[name].value)
    return rows


def _config_notes(base: RunResults, new: RunResults) -> list[str]:
    bc, nc = base.run["config"], new.run["config"]
    return [f"config {k} differs: baseline {fmt(bc.get(k))}, new {fmt(nc.get(k))}"
            for k in COMPARABLE_CONFIG if bc.get(k) != nc.get(k)]


def compare(base: RunResults, new: RunResults) -> GateOutcome:
    """Every baseline check against the new run (by id; a repeated id is matched in order of appearance)."""
    base, new = normalized(base), normalized(new)
    pending: dict[str, list] = {}
    for c in new.checks:
        pending.setdefault(c.id, []).append(c)
    rows: list[GateRow] = []
    for b in base.checks:
        matches = pending.get(b.id)
        if matches:
            rows += _compare_check(b, matches.pop(0))
        elif b.verdict is Verdict.PASS:
            rows.append(GateRow(b.id, "verdict", "pass", "missing", RowStatus.WORSE, "check not run"))
        else:
            rows.append(GateRow(b.id, "verdict", verdict_text(b), "missing", RowStatus.CHANGED,
                                "not gated: baseline did not pass"))
    rows += [GateRow(c.id, "verdict", "-", verdict_text(c), RowStatus.NEW) for cs in pending.values() for c in cs]
    return GateOutcome(rows=tuple(rows), notes=tuple(_config_notes(base, new)))
