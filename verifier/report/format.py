"""Text for people: numbers, lists, and the key metric of a check against its threshold.

The key metric is the one the check names (``CheckResult.key_metric``); its threshold and direction are the
metric's own declaration (``Metric.threshold``, ``Metric.better``): shown as ``<= t`` or ``>= t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..results import CheckResult, Metric, RunResults, Verdict

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


@dataclass(frozen=True)
class KeyMetric:
    name: str
    metric: Metric

    def text(self) -> str:
        """e.g. ``drift = 3.1e-12 (<= 1e-08)``."""
        out = f"{self.name} = {fmt_key(self.metric.value)}"
        if self.metric.threshold is not None:
            out += f" ({self.metric.relation} {fmt_key(self.metric.threshold)})"
        return out


def key_metric(result: CheckResult) -> KeyMetric | None:
    name = result.key_metric
    return KeyMetric(name, result.metrics[name]) if name in result.metrics else None


def _as_dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _as_text(x: Any) -> str:
    return x if isinstance(x, str) else ("" if x is None else str(x))


def normalized(results: RunResults) -> RunResults:
    """Results as the report and the gate expect them: objects where the schema has objects, text where it has
    text, a number for the duration. :func:`verifier.results.read_results` validates ids, verdicts and
    metric declarations; a stored file may hold anything else, and a report must still render it."""
    run = _as_dict(results.run)
    run = {**run, "config": _as_dict(run.get("config")), "provenance": _as_dict(run.get("provenance"))}
    checks = tuple(
        replace(c, id=_as_text(c.id), claim=_as_text(c.claim), message=_as_text(c.message),
                settings=_as_dict(c.settings), evidence=_as_dict(c.evidence),
                config=_as_dict(c.config), provenance=_as_dict(c.provenance),
                duration_s=c.duration_s if isinstance(c.duration_s, (int, float)) else math.nan)
        for c in results.checks)
    return RunResults(run=run, checks=checks)


def verdict_counts(results) -> dict[str, int]:
    counts = {v.value: 0 for v in Verdict}
    for c in results:
        counts[c.verdict.value] += 1
    return counts
