"""Text for people: numbers, lists, the key metric of a check and the threshold it is judged against.

The key metric of a check is, in order: the metric named by ``evidence["key_metric"]``; else, among the
numeric metrics (numbers or flat lists of numbers), the first with a threshold of the same name, then the first
with a threshold named by the rule of :func:`threshold_name` (the name with a ``max_``/``min_`` prefix or a
``_max``/``_min``/``_tol`` suffix, or without its own ``max_``/``min_`` prefix), then the first; else the
first metric. A ``max`` (``min``) token in the threshold's name, else in the metric's, makes it an upper (lower)
bound, shown as ``<= t`` (``>= t``); other thresholds are shown as ``threshold t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..checks.result import CheckResult, Verdict
from ..results import RunResults

MEANING = {
    Verdict.PASS: "The measurements agree with the claim on this problem.",
    Verdict.FAIL: "The measurements contradict the claim on this problem.",
    Verdict.INCONCLUSIVE: "The run could not decide the claim (solver failure, crash, or not applicable).",
}
MAX_TEXT = 120


def fmt(value: Any, limit: int = MAX_TEXT) -> str:
    """A metric value as short text: 3 significant digits, long lists elided, never longer than ``limit``."""
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.3g}" if math.isfinite(value) else str(value)
    elif isinstance(value, (list, tuple)):
        items = [fmt(v, limit) for v in value]
        if len(items) > 6:
            items = items[:3] + ["..."] + items[-2:] + [f"({len(value)} values)"]
        text = "[" + ", ".join(items) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {fmt(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_key(value: Any) -> str:
    """A key metric: a number as :func:`fmt`; a list of numbers as ``first -> last (n)`` (e.g. along a ladder)."""
    if isinstance(value, (list, tuple)) and len(value) > 2 and not any(isinstance(v, (list, dict)) for v in value):
        return f"{fmt(value[0])} -> {fmt(value[-1])} ({len(value)})"
    return fmt(value, 40)


def threshold_name(metric: str, thresholds: dict[str, Any]) -> str | None:
    """The threshold that judges ``metric``, by the naming rule in the module docstring."""
    base = metric[4:] if metric[:4] in ("max_", "min_") else metric
    for cand in (metric, f"max_{metric}", f"min_{metric}", f"{metric}_max", f"{metric}_min", f"{metric}_tol",
                 base, f"{base}_tol"):
        if cand in thresholds:
            return cand
    return None


def relation(metric: str, threshold: str) -> str:
    """"<=" for an upper bound, ">=" for a lower one (from a max/min token in the threshold's name, else in
    the metric's), else "threshold"."""
    for name in (threshold, metric):
        tokens = name.lower().split("_")
        if "max" in tokens or "maximum" in tokens:
            return "<="
        if "min" in tokens or "minimum" in tokens:
            return ">="
    return "threshold"


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in ("nan", "inf", "-inf")


def _numeric(value: Any) -> bool:
    """A number, or a flat list of numbers (one per alpha): what a key metric should be."""
    return bool(value) and all(map(_number, value)) if isinstance(value, list) else _number(value)


@dataclass(frozen=True)
class KeyMetric:
    name: str
    value: Any
    threshold: str | None
    limit: Any

    def text(self) -> str:
        """e.g. ``drift = 3.1e-12 (<= 1e-08)``."""
        out = f"{self.name} = {fmt_key(self.value)}"
        if self.threshold is not None:
            out += f" ({relation(self.name, self.threshold)} {fmt_key(self.limit)})"
        return out


def key_metric(result: CheckResult) -> KeyMetric | None:
    metrics, thresholds = result.metrics, result.thresholds
    named = result.evidence.get("key_metric")
    if isinstance(named, str) and named in metrics:
        name = named
    else:
        numeric = [m for m in metrics if _numeric(metrics[m])]
        exact = [m for m in numeric if m in thresholds]
        paired = [m for m in numeric if threshold_name(m, thresholds) is not None]
        name = (exact or paired or numeric or [next(iter(metrics), None)])[0]
    if name is None:
        return None
    tname = threshold_name(name, thresholds)
    return KeyMetric(name, metrics[name], tname, thresholds.get(tname) if tname else None)


def _as_dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _as_text(x: Any) -> str:
    return x if isinstance(x, str) else ("" if x is None else str(x))


def normalized(results: RunResults) -> RunResults:
    """Results as the report and the gate expect them: objects where the schema has objects, text where it has
    text, a number for the duration. results.json only validates ids, verdicts and metrics; a stored file may
    hold anything else, and a report must still render it."""
    run = _as_dict(results.run)
    run = {**run, "config": _as_dict(run.get("config")), "provenance": _as_dict(run.get("provenance"))}
    checks = tuple(
        replace(c, id=_as_text(c.id), claim=_as_text(c.claim), message=_as_text(c.message),
                metrics=_as_dict(c.metrics), thresholds=_as_dict(c.thresholds), evidence=_as_dict(c.evidence),
                config=_as_dict(c.config), provenance=_as_dict(c.provenance),
                duration_s=c.duration_s if isinstance(c.duration_s, (int, float)) else math.nan)
        for c in results.checks)
    return RunResults(run=run, checks=checks)


def verdict_counts(results) -> dict[str, int]:
    counts = {v.value: 0 for v in Verdict}
    for c in results:
        counts[c.verdict.value] += 1
    return counts
