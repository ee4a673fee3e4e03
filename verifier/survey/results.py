"""A survey's record: per draw and check the verdict and the key metric; per check the summary
(rates with intervals, a histogram of the key metric, the closest passes and every failure).

{"schema": "verifier-survey", "schema_version": 2, "survey": {...}, "summary": [...], "draws": [...]}
The summary is derived from the draws (recomputed when a file is read back). Version 2 adds each outcome's
failure ``reason`` and each draw's ``worker``; version 1 files still read (reasons None). Torch-free.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..results import Verdict
from .stats import INTERVAL, Histogram, Rate, histogram, wilson

SCHEMA = "verifier-survey"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
VERDICTS = tuple(Verdict)
NO_REASON = "unspecified"  # a fail or inconclusive outcome whose check gave no reason (older files)
USER_CODE_ERROR = "user-code-error"  # a draw whose --model-file factory raised or exited for its seed
WORKER_DIED = "worker-died"  # a draw whose worker died on both tries
DRAW_ERRORS = (USER_CODE_ERROR, WORKER_DIED)  # reasons of a draw that produced no check result at all
CLOSEST = 5  # closest passes listed per check


class SurveyFormatError(ValueError):
    """A survey results file that cannot be read or does not follow the schema."""


@dataclass(frozen=True)
class Outcome:
    """One check on one draw: its verdict and message, and its key metric with the threshold it is judged
    against and which side is better (``"lower"`` or ``"higher"``; None when the check declares none), and
    the check's machine-readable failure ``reason`` (None for a pass, or from a check or file without one)."""

    verdict: Verdict
    message: str
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None
    better: str | None = None
    duration_s: float = 0.0
    reason: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "verdict", Verdict(self.verdict))

    @property
    def headroom(self) -> float | None:
        """How far the key metric is from its threshold, as a ratio >= 1 on the good side: threshold / value
        for ``lower``, value / threshold for ``higher`` (inf for a zero value below a threshold). None when
        there is no threshold, direction or positive number to compare."""
        v, t = self.value, self.threshold
        if v is None or t is None or self.better not in ("lower", "higher") or not (t > 0 and math.isfinite(v)):
            return None
        if self.better == "lower":
            return math.inf if v == 0 else (t / v if v > 0 else None)
        return v / t if v > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "reason": self.reason, "message": self.message, "metric": self.metric,
                "value": _num(self.value), "threshold": _num(self.threshold), "better": self.better,
                "duration_s": round(self.duration_s, 3)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Outcome":
        return cls(verdict=d["verdict"], message=str(d.get("message", "")), metric=d.get("metric"),
                   value=_float(d.get("value")), threshold=_float(d.get("threshold")), better=d.get("better"),
                   duration_s=float(d.get("duration_s") or 0.0), reason=d.get("reason"))


def outcome(result) -> Outcome:
    """A check's result (``verifier.results.CheckResult``) reduced to its verdict, reason, message and
    declared key metric (value, threshold, direction; a key metric that is not one number, e.g. a list along
    the ladder, keeps its name only)."""
    name = result.key_metric
    return metric_outcome(result.verdict, result.message, name, result.metrics.get(name) if name else None,
                          result.duration_s, getattr(result, "reason", None))


def metric_outcome(verdict: Verdict, message: str, name: str | None, metric, duration_s: float = 0.0,
                   reason: str | None = None) -> Outcome:
    """An :class:`Outcome` from a verdict and a declared ``verifier.results.Metric`` (or None)."""
    def number(x) -> float | None:
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    if metric is None:
        return Outcome(verdict, message, name, duration_s=duration_s, reason=reason)
    return Outcome(verdict, message, name, number(metric.value), number(metric.threshold), metric.better, duration_s,
                   reason)


@dataclass(frozen=True)
class Draw:
    """Draw ``index``: its seed, the command that re-runs it alone, an :class:`Outcome` per check, its wall
    time and the worker that ran it (``host:pid``; None in files of version 1)."""

    index: int
    seed: int
    command: str
    outcomes: dict[str, Outcome]
    duration_s: float = 0.0
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "seed": self.seed, "command": self.command, "duration_s": round(self.duration_s, 3),
                "worker": self.worker, "checks": {k: o.to_dict() for k, o in self.outcomes.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Draw":
        return cls(index=int(d["index"]), seed=int(d["seed"]), command=str(d["command"]),
                   outcomes={k: Outcome.from_dict(o) for k, o in d["checks"].items()},
                   duration_s=float(d.get("duration_s") or 0.0), worker=d.get("worker"))


@dataclass(frozen=True)
class Listed:
    """A draw listed under a check (a close pass or a failure): what to show and how to reproduce it."""

    index: int
    seed: int
    outcome: Outcome
    command: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "seed": self.seed, "command": self.command, "value": _num(self.outcome.value),
                "headroom": _num(self.outcome.headroom), "reason": self.outcome.reason, "message": self.outcome.message}


@dataclass(frozen=True)
class CheckSummary:
    """Per check over the draws. ``thresholds``: the smallest and largest threshold the draws declared (a
    check may scale its threshold to the problem, e.g. theorem-4.5 to the shortest stage); when they differ,
    ``histogram`` counts value / threshold (judged against 1) and ``threshold`` is None. ``reasons``: for fail
    and inconclusive, the rate of each failure reason over all draws (``unspecified`` where none was given)."""

    id: str
    claim: str
    metric: str | None
    threshold: float | None
    thresholds: tuple[float, float] | None
    better: str | None
    rates: dict[Verdict, Rate]
    reasons: dict[Verdict, dict[str, Rate]]
    histogram: Histogram
    closest_passes: tuple[Listed, ...]
    failures: tuple[Listed, ...]
    inconclusive: tuple[Listed, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "claim": self.claim, "key_metric": self.metric, "threshold": _num(self.threshold),
                "thresholds": None if self.thresholds is None else [_num(t) for t in self.thresholds],
                "histogram_of": self.histogram_of, "better": self.better, "interval": INTERVAL, "rates": {k.value: r.to_dict() for k, r in self.rates.items()},
                "rates_by_reason": {k.value: {r: x.to_dict() for r, x in v.items()} for k, v in self.reasons.items()},
                "histogram": self.histogram.to_dict(),
                "closest_passes": [x.to_dict() for x in self.closest_passes],
                "failures": [x.to_dict() for x in self.failures],
                "inconclusive": [x.to_dict() for x in self.inconclusive]}

    @property
    def histogram_of(self) -> str | None:
        """What the histogram counts: the key metric, or the key metric over each draw's own threshold."""
        if self.metric is None:
            return None
        return self.metric if self.threshold is not None or self.thresholds is None else f"{self.metric} / threshold"


@dataclass(frozen=True)
class SurveyResults:
    """``survey``: the configuration, the rule that derives seeds, provenance (machine, versions, command,
    timings); ``claims``: check id -> the claim it tests; ``draws`` in index order."""

    survey: dict[str, Any]
    claims: dict[str, str]
    draws: tuple[Draw, ...] = field(default_factory=tuple)

    @property
    def check_ids(self) -> list[str]:
        return list(self.claims)

    def summary(self, check: str) -> CheckSummary:
        rows = [(d, d.outcomes[check]) for d in self.draws if check in d.outcomes]
        n = len(rows)
        rates = {v: wilson(sum(1 for _, o in rows if o.verdict is v), n) for v in VERDICTS}
        reasons = {}
        for v in (Verdict.FAIL, Verdict.INCONCLUSIVE):
            kinds = [o.reason or NO_REASON for _, o in rows if o.verdict is v]
            reasons[v] = {r: wilson(kinds.count(r), n) for r in sorted(set(kinds), key=lambda r: (-kinds.count(r), r))}
        declared = next((o for _, o in rows if o.metric is not None), Outcome(Verdict.PASS, ""))
        limits = sorted({o.threshold for _, o in rows if o.threshold is not None})
        if len(limits) > 1:  # thresholds scaled to each draw: count value / threshold, judged against 1
            hist = histogram([(o.verdict.value, o.value / o.threshold if o.value is not None and o.threshold else None)
                              for _, o in rows], 1.0)
        else:
            hist = histogram([(o.verdict.value, o.value) for _, o in rows], limits[0] if limits else None)

        def listed(d: Draw, o: Outcome) -> Listed:
            return Listed(d.index, d.seed, o, _with_check(d.command, check))

        passes = [(d, o) for d, o in rows if o.verdict is Verdict.PASS and o.headroom is not None]
        passes.sort(key=lambda r: (r[1].headroom, r[0].index))
        return CheckSummary(
            id=check, claim=self.claims[check], metric=declared.metric,
            threshold=limits[0] if len(limits) == 1 else None,
            thresholds=(limits[0], limits[-1]) if limits else None, better=declared.better, rates=rates,
            reasons=reasons, histogram=hist,
            closest_passes=tuple(listed(d, o) for d, o in passes[:CLOSEST]),
            failures=tuple(listed(d, o) for d, o in rows if o.verdict is Verdict.FAIL),
            inconclusive=tuple(listed(d, o) for d, o in rows if o.verdict is Verdict.INCONCLUSIVE))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "survey": self.survey, "claims": self.claims,
                "summary": [self.summary(c).to_dict() for c in self.check_ids],
                "draws": [d.to_dict() for d in self.draws]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)


def _with_check(command: str, check: str) -> str:
    """A draw's command (which names no checks) narrowed to one check: re-running only what is listed is
    faster, and check ids need no shell quoting."""
    return f"{command} --checks {check}"


NON_FINITE_TEXT = ("inf", "-inf", "nan")  # JSON has no inf/nan: the strings _num writes them as (as in results.json)
_INF, _NEG_INF, _NAN = NON_FINITE_TEXT


def _num(x: float | None) -> float | str | None:
    """JSON has no inf/nan: they travel as the strings of :data:`NON_FINITE_TEXT` (as in results.json)."""
    if x is None or math.isfinite(x):
        return x
    return _NAN if math.isnan(x) else (_INF if x > 0 else _NEG_INF)


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def read_survey(path: str | Path) -> SurveyResults:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SurveyFormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SurveyFormatError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA or raw.get("schema_version") not in READABLE_VERSIONS:
        raise SurveyFormatError(f"{path}: not a survey results file (schema {SCHEMA!r}, version "
                                f"{' or '.join(map(str, READABLE_VERSIONS))})")
    try:
        draws = tuple(Draw.from_dict(d) for d in raw["draws"])
        return SurveyResults(survey=dict(raw["survey"]), claims=dict(raw["claims"]), draws=draws)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SurveyFormatError(f"{path}: malformed survey ({type(exc).__name__}: {exc})") from None
