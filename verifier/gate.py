"""The CI regression gate: compare a new results.json with a committed baseline; say what got worse.

A result got worse (exit 1 of ``verifier gate``) when

* a check that passed in the baseline now fails, is inconclusive, or is missing; or
* a gated metric degrades beyond its tolerance. Which metrics are gated, and how, is :data:`GATED_METRICS`
  (the one place): the first rule whose pattern matches the metric name (case-insensitive glob) applies.
  For a metric where lower is better (errors, drifts, costs), worse means

      new > base + rtol * |base| + slack,   slack = max(atol, THRESHOLD_SLACK * |threshold|),

  and for one where higher is better (margins, smallest eigenvalues) ``new < base - rtol * |base| - slack``.
  ``threshold`` is the check's own threshold for that metric in the new run (same naming rule as the
  report, :func:`verifier.report.format.threshold_name`), when it has one: a change that stays a small
  fraction of the threshold away is rounding, not a regression. Lists (one value per alpha) are compared
  entry by entry when they have the same length. A finite baseline value that became NaN/inf, or a gated
  metric that disappeared, is worse. Metrics no rule matches are not gated (their checks' verdicts are).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

from .checks.result import Verdict
from .report.format import fmt, normalized, threshold_name
from .results import RunResults

LOWER, HIGHER = "lower", "higher"
THRESHOLD_SLACK = 0.1


@dataclass(frozen=True)
class GateRule:
    pattern: str
    better: str  # LOWER or HIGHER
    rtol: float
    atol: float

    def worse(self, base: float, new: float, threshold: float | None) -> bool:
        slack = max(self.atol, THRESHOLD_SLACK * abs(threshold)) if threshold is not None else self.atol
        margin = self.rtol * abs(base) + slack
        return new > base + margin if self.better == LOWER else new < base - margin


GATED_METRICS: tuple[GateRule, ...] = (
    GateRule("*nfev*", LOWER, rtol=0.5, atol=0.0),  # cost: gradient evaluations of the integrator
    GateRule("*error*", LOWER, rtol=0.5, atol=1e-12),  # Theorem 4.5 errors against Algorithm 1
    GateRule("*drift*", LOWER, rtol=0.5, atol=1e-12),  # Lemma 4.1 conservation drift
    GateRule("*residual*", LOWER, rtol=0.5, atol=1e-12),
    GateRule("*distance*", LOWER, rtol=0.5, atol=1e-12),  # Assumptions 4.3/4.4 return distances
    GateRule("*spread*", LOWER, rtol=0.5, atol=1e-12),  # Assumption 4.4 spread of stage-B endpoints
    GateRule("*_ratio", LOWER, rtol=0.5, atol=1e-12),  # Assumptions 4.3/4.4 return and endpoint distance ratios
    GateRule("*mismatch*", LOWER, rtol=0.5, atol=1e-12),  # Definition 3.1 loss(u, v) vs loss(u * v)
    GateRule("*condition*", LOWER, rtol=0.5, atol=0.0),  # Assumption 4.3 condition numbers
    GateRule("*margin*", HIGHER, rtol=0.5, atol=1e-12),  # Assumption 4.2 margins
    GateRule("*lambda_min*", HIGHER, rtol=0.5, atol=1e-12),  # Assumption 4.3 smallest Hessian eigenvalue
    GateRule("*min_eig*", HIGHER, rtol=0.5, atol=1e-12),
)

# What a baseline and a new run must share for their metrics to be comparable (differences are noted).
COMPARABLE_CONFIG = ("preset", "model", "data", "loss", "seed", "alphas", "optimizer", "solver")


def gate_rule(metric: str) -> GateRule | None:
    for rule in GATED_METRICS:
        if fnmatch.fnmatchcase(metric.lower(), rule.pattern):
            return rule
    return None


@dataclass(frozen=True)
class GateRow:
    check: str
    item: str  # "verdict" or a metric name (with [k] for one entry of a list)
    base: str
    new: str
    status: str  # "worse" (gated), "better", "same", "changed" (not gated), "new", "not compared"
    detail: str = ""


@dataclass(frozen=True)
class GateOutcome:
    rows: tuple[GateRow, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(r.status == "worse" for r in self.rows)

    def table(self) -> str:
        head = ("check", "item", "baseline", "new", "status", "detail")
        body = [(r.check, r.item, r.base, r.new, r.status.upper() if r.status == "worse" else r.status, r.detail)
                for r in self.rows]
        widths = [min(max(len(x[i]) for x in [head, *body]), 40) for i in range(len(head))]
        lines = ["  ".join(f"{c[:w]:<{w}}" for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
        lines.insert(1, "-" * len(lines[0]))
        lines += [f"note: {n}" for n in self.notes]
        worse = sum(r.status == "worse" for r in self.rows)
        lines.append("gate: OK, nothing got worse" if self.ok else f"gate: FAIL, {worse} regression(s)")
        return "\n".join(lines)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)  # also "nan", "inf" as written by results.json
    except (TypeError, ValueError):
        return None


def _compare_value(check: str, name: str, rule: GateRule, base: Any, new: Any, threshold: Any) -> list[GateRow]:
    if isinstance(base, list) and isinstance(new, list):
        if len(base) != len(new):
            return [GateRow(check, name, f"{len(base)} values", f"{len(new)} values", "not compared",
                            "lengths differ (different ladder?)")]
        ts = threshold if isinstance(threshold, list) and len(threshold) == len(new) else [threshold] * len(new)
        return [r for k, (b, n, t) in enumerate(zip(base, new, ts))
                for r in _compare_value(check, f"{name}[{k}]", rule, b, n, t)]
    if isinstance(base, list) or isinstance(new, list):
        return [GateRow(check, name, fmt(base), fmt(new), "not compared", "a list in one run, not in the other")]
    b, n = _number(base), _number(new)
    t = _number(threshold)
    t = t if t is not None and math.isfinite(t) else None
    if b is None or not math.isfinite(b):
        return []  # nothing finite to hold the new run to
    if n is None or not math.isfinite(n):
        return [GateRow(check, name, fmt(base), fmt(new), "worse", "finite in the baseline, not now")]
    if rule.worse(b, n, t):
        return [GateRow(check, name, fmt(base), fmt(new), "worse", f"{rule.better} is better; tolerance "
                        f"rtol={rule.rtol:g}" + (f", threshold {fmt(t)}" if t is not None else ""))]
    if rule.worse(n, b, t):  # the baseline would have been a regression of the new run: it improved
        return [GateRow(check, name, fmt(base), fmt(new), "better")]
    return []


_RANK = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.FAIL: 2}


def _compare_check(base, new) -> list[GateRow]:
    rows = []
    if base.verdict == Verdict.PASS and new.verdict != Verdict.PASS:
        rows.append(GateRow(base.id, "verdict", "pass", new.verdict.value, "worse", new.message[:80]))
    elif _RANK[new.verdict] < _RANK[base.verdict]:
        rows.append(GateRow(base.id, "verdict", base.verdict.value, new.verdict.value, "better"))
    elif base.verdict != new.verdict:
        rows.append(GateRow(base.id, "verdict", base.verdict.value, new.verdict.value, "changed",
                            "not gated: baseline did not pass"))
    else:
        rows.append(GateRow(base.id, "verdict", base.verdict.value, new.verdict.value, "same"))
    for name, value in base.metrics.items():
        rule = gate_rule(name)
        if rule is None:
            continue
        if name not in new.metrics:
            rows.append(GateRow(base.id, name, fmt(value), "missing", "worse", "gated metric disappeared"))
            continue
        tname = threshold_name(name, new.thresholds)
        rows += _compare_value(base.id, name, rule, value, new.metrics[name], new.thresholds[tname] if tname else None)
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
        elif b.verdict == Verdict.PASS:
            rows.append(GateRow(b.id, "verdict", "pass", "missing", "worse", "check not run"))
        else:
            rows.append(GateRow(b.id, "verdict", b.verdict.value, "missing", "changed",
                                "not gated: baseline did not pass"))
    rows += [GateRow(c.id, "verdict", "-", c.verdict.value, "new") for cs in pending.values() for c in cs]
    return GateOutcome(rows=tuple(rows), notes=tuple(_config_notes(base, new)))
