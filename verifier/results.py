"""What a run produced: each claim's :class:`Verdict` with its declared :class:`Metric` s, and results.json.

Measurement and judgement stay apart (docs/THEORY.md §5): a check measures values and declares, for each one,
the threshold it was judged against, which direction is better, and whether (and how loosely) the regression
gate watches it. The report and the gate read those declarations only; nothing is guessed from a name.

results.json, ``schema_version`` 3::

    {"schema_version": 3, "run": {...},
     "checks": [{"id", "claim", "verdict", "reason", "message", "key_metric",
                 "metrics": {"name": {"value": v, "threshold": t, "better": "lower", "gate": {"factor", "atol"}}},
                 "settings": {...}, "evidence": {"figures": [...], ...}, "config", "provenance", "duration_s"}]}

``reason`` (new in version 3): for a fail or an inconclusive verdict, the kind of failure, a kebab-case value of
the check's own ``Reason`` enum or of :class:`CommonReason` (docs/THEORY.md §5.0 lists them); null for a pass.
Version 2 files are version 3 without reasons (read with reason None). Version 1 files (values in ``metrics``,
thresholds beside them, directions implied by names) are still read: :func:`_from_v1` turns them into
declarations with the rules version 1 used. This module imports no torch.
"""

from __future__ import annotations

import json
import math
import re
import stat
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable

from .paths import atomic_write_text

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
LOWER, HIGHER = "lower", "higher"


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"

    @classmethod
    def worst(cls, verdicts: Iterable["Verdict"]) -> "Verdict":
        """fail beats inconclusive beats pass; an empty list is inconclusive (nothing was measured)."""
        vs = list(verdicts)
        if not vs:
            return cls.INCONCLUSIVE
        if cls.FAIL in vs:
            return cls.FAIL
        if cls.INCONCLUSIVE in vs:
            return cls.INCONCLUSIVE
        return cls.PASS


_SEVERITY = {Verdict.FAIL: 0, Verdict.INCONCLUSIVE: 1, Verdict.PASS: 2}


class CommonReason(str, Enum):
    """Failure kinds any check can have (a check's own ``Reason`` enum lists the rest; docs/THEORY.md §5.0)."""

    CHECK_RAISED = "check-raised"  # the check raised an exception (a defect or an unforeseen input): inconclusive
    NOT_APPLICABLE = "not-applicable"  # the check does not apply to this model family
    SOLVER_FAILED = "solver-failed"  # a flow the verdict needs did not reach its end
    ALGORITHM1_STOPPED = "algorithm1-stopped"  # Algorithm 1 stopped early: no limit path to judge against
    NOTHING_TO_TEST = "nothing-to-test"  # a vacuous case (zero gradient at 0, no stage, no coordinates)
    USER_CODE_ERROR = "user-code-error"  # a user's model code raised or returned something invalid


REASON_PATTERN = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Judgement:
    """What every judge returns: a verdict, the reason for a fail or an inconclusive verdict (a kebab-case value
    of the check's ``Reason`` enum or of :class:`CommonReason`, stored as its string; None for a pass, required
    otherwise) and a message a user can act on. Build with :meth:`passed`, :meth:`failed`, :meth:`inconclusive`;
    combine parts with :meth:`compose`."""

    verdict: Verdict
    reason: str | None
    message: str

    def __post_init__(self):
        if not isinstance(self.verdict, Verdict):
            raise TypeError(f"Judgement.verdict must be a Verdict, got {self.verdict!r}")
        reason = self.reason.value if isinstance(self.reason, Enum) else self.reason
        if self.verdict is Verdict.PASS:
            if reason is not None:
                raise ValueError(f"a pass has no failure reason (got {reason!r})")
        elif not (isinstance(reason, str) and REASON_PATTERN.fullmatch(reason)):
            raise ValueError(f"a {self.verdict.value} judgement needs a kebab-case reason, got {self.reason!r}")
        if not isinstance(self.message, str):
            raise TypeError(f"Judgement.message must be a str, got {type(self.message).__name__}")
        object.__setattr__(self, "reason", reason)

    @classmethod
    def passed(cls, message: str) -> "Judgement":
        return cls(Verdict.PASS, None, message)

    @classmethod
    def failed(cls, reason: Enum | str, message: str) -> "Judgement":
        return cls(Verdict.FAIL, reason, message)

    @classmethod
    def inconclusive(cls, reason: Enum | str, message: str) -> "Judgement":
        return cls(Verdict.INCONCLUSIVE, reason, message)

    @classmethod
    def compose(cls, parts: Iterable["Judgement"], sep: str = " | ") -> "Judgement":
        """The one way the judgements of a check's parts combine: the worst verdict (an empty list is
        inconclusive, reason ``nothing-to-test``); the parts' messages, failures first, then inconclusive
        ones, then passes (stable within each); the reason of the first part with the worst verdict."""
        parts = list(parts)
        if not parts:
            return cls.inconclusive(CommonReason.NOTHING_TO_TEST, "nothing was judged")
        ordered = sorted(parts, key=lambda j: _SEVERITY[j.verdict])
        verdict = ordered[0].verdict
        return cls(verdict, ordered[0].reason, sep.join(j.message for j in ordered if j.message))


@dataclass(frozen=True)
class Gate:
    """How the regression gate watches a metric: a new value is worse than the baseline's when it moved in
    the bad direction by more than ``factor`` allows, plus ``atol``::

        lower is better:   new > base + (factor - 1) |base| + atol
        higher is better:  new < base - (1 - 1/factor) |base| - atol

    (for a positive base: more than ``factor`` times larger, or smaller). ``factor`` says how much
    run-to-run variation the metric has (rounding-level metrics vary by a few x across machines; O(1)
    margins and errors by far less); ``atol`` is the floor below which changes are rounding."""

    factor: float = 1.5
    atol: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"Gate.factor must be a finite number >= 1, got {self.factor!r}")
        if not (isinstance(self.atol, (int, float)) and math.isfinite(self.atol) and self.atol >= 0):
            raise ValueError(f"Gate.atol must be a finite number >= 0, got {self.atol!r}")

    def worse(self, base: float, new: float, better: str) -> bool:
        if better == LOWER:
            return new > base + (self.factor - 1) * abs(base) + self.atol
        return new < base - (1 - 1 / self.factor) * abs(base) - self.atol


@dataclass(frozen=True)
class Metric:
    """One measured value and how it is judged.

    ``value``: a number, a list of numbers (one per alpha or stage), or other JSON data (a table of rows;
    never gated). ``threshold``: the number the check judged the value against (None if none);
    ``better``: "lower" or "higher" (required with a threshold or a gate); ``gate``: how the regression gate
    watches it (None: not gated)."""

    value: Any
    threshold: Any = None
    better: str | None = None
    gate: Gate | None = None

    def __post_init__(self):
        if self.better not in (None, LOWER, HIGHER):
            raise ValueError(f"Metric.better must be 'lower', 'higher' or None, got {self.better!r}")
        if self.better is None and (self.threshold is not None or self.gate is not None):
            raise ValueError("a Metric with a threshold or a gate must say which direction is better")

    @classmethod
    def at_most(cls, value, threshold, gate: Gate | None = Gate()) -> "Metric":
        """An upper-bounded measurement (an error, a drift): passes when value <= threshold."""
        return cls(value, threshold, LOWER, gate)

    @classmethod
    def at_least(cls, value, threshold, gate: Gate | None = Gate()) -> "Metric":
        """A lower-bounded measurement (a margin, an eigenvalue): passes when value >= threshold."""
        return cls(value, threshold, HIGHER, gate)

    @classmethod
    def lower(cls, value, gate: Gate | None = Gate()) -> "Metric":
        """Lower is better, no threshold of its own (a cost, the errors along a ladder)."""
        return cls(value, None, LOWER, gate)

    @classmethod
    def higher(cls, value, gate: Gate | None = Gate()) -> "Metric":
        """Higher is better, no threshold of its own."""
        return cls(value, None, HIGHER, gate)

    @classmethod
    def info(cls, value) -> "Metric":
        """A measurement that is reported, not judged nor gated (counts, tables, labels)."""
        return cls(value)

    @property
    def relation(self) -> str:
        """How the value relates to its threshold when it passes: "<=" or ">=" ("" without a direction)."""
        return {LOWER: "<=", HIGHER: ">="}.get(self.better, "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": jsonable(self.value)}
        if self.threshold is not None:
            out["threshold"] = jsonable(self.threshold)
        if self.better is not None:
            out["better"] = self.better
        if self.gate is not None:
            out["gate"] = {"factor": self.gate.factor, "atol": self.gate.atol}
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Metric":
        if not isinstance(d, dict) or "value" not in d:
            raise ResultsFormatError(f"{where} must be an object with a 'value'")
        gate = d.get("gate")
        try:
            if gate is not None:
                if not isinstance(gate, dict):
                    raise ValueError("'gate' must be an object with factor and atol")
                gate = Gate(factor=_finite(gate.get("factor", 1.5)), atol=_finite(gate.get("atol", 0.0)))
            return cls(d["value"], d.get("threshold"), d.get("better"), gate)
        except (TypeError, ValueError) as exc:
            raise ResultsFormatError(f"{where}: {exc}") from None


def _finite(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{x!r} is not a number")
    return float(x)


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: the verdict and message (judgement), the declared ``metrics`` (measurement),
    ``key_metric`` (the one the summary shows), ``settings`` (the protocol's constants that are not a
    metric's threshold: noise levels, eps, grid sizes), and ``evidence`` (figures and tables for the report).
    Everything is plain JSON-able data; figures are :class:`verifier.figures.Figure` objects or their dicts."""

    id: str
    claim: str
    verdict: Verdict
    message: str
    metrics: dict[str, Metric] = field(default_factory=dict)
    key_metric: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    reason: str | None = None

    def __post_init__(self):
        if self.reason is not None:
            reason = self.reason.value if isinstance(self.reason, Enum) else self.reason
            if not (isinstance(reason, str) and REASON_PATTERN.fullmatch(reason)):
                raise ValueError(f"{self.id}: reason must be a kebab-case string, got {self.reason!r}")
            if self.verdict is Verdict.PASS:
                raise ValueError(f"{self.id}: a pass has no failure reason (got {reason!r})")
            object.__setattr__(self, "reason", reason)
        bad = [k for k, m in self.metrics.items() if not isinstance(m, Metric)]
        if bad:
            raise TypeError(f"{self.id}: metrics must be Metric declarations, not raw values: {bad}")
        if self.key_metric is not None and self.key_metric not in self.metrics:
            raise ValueError(f"{self.id}: key_metric {self.key_metric!r} is not one of its metrics")

    @classmethod
    def judged(cls, id: str, claim: str, judgement: Judgement, **fields: Any) -> "CheckResult":
        """A result whose verdict, reason and message are ``judgement``'s; ``fields``: metrics, key_metric,
        settings, evidence (and what :func:`~verifier.checks.registry.run_check` stamps)."""
        return cls(id, claim, judgement.verdict, judgement.message, reason=judgement.reason, **fields)

    @property
    def values(self) -> dict[str, Any]:
        """The measured values by metric name."""
        return {k: m.value for k, m in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "claim": self.claim,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "message": self.message,
            "key_metric": self.key_metric,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "settings": jsonable(self.settings),
            "evidence": jsonable(self.evidence),
            "config": jsonable(self.config),
            "provenance": jsonable(self.provenance),
            "duration_s": round(float(self.duration_s), 3),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "check") -> "CheckResult":
        metrics = d.get("metrics", {})
        if not isinstance(metrics, dict):
            raise ResultsFormatError(f"{where}.metrics must be an object")
        key = d.get("key_metric")
        verdict = Verdict(d["verdict"])
        reason = d.get("reason")
        if reason is not None and (verdict is Verdict.PASS or not isinstance(reason, str)
                                   or not REASON_PATTERN.fullmatch(reason)):
            raise ResultsFormatError(f"{where}.reason is {reason!r}: a kebab-case string for a fail or an "
                                     "inconclusive verdict, null for a pass")
        return cls(
            id=d["id"], claim=_text(d.get("claim")), verdict=verdict, message=_text(d.get("message")), reason=reason,
            metrics={str(k): Metric.from_dict(m, f"{where}.metrics.{k}") for k, m in metrics.items()},
            key_metric=key if isinstance(key, str) and key in metrics else None,
            settings=_obj(d.get("settings")), evidence=_obj(d.get("evidence")), config=_obj(d.get("config")),
            provenance=_obj(d.get("provenance")),
            duration_s=float(d["duration_s"]) if isinstance(d.get("duration_s"), (int, float))
            and not isinstance(d.get("duration_s"), bool) else math.nan,
        )


def _obj(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _text(x: Any) -> str:
    return x if isinstance(x, str) else ("" if x is None else str(x))


@dataclass(frozen=True)
class RunResults:
    run: dict[str, Any]
    checks: tuple[CheckResult, ...]

    @property
    def verdict(self) -> Verdict:
        return Verdict.worst(c.verdict for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "run": jsonable(self.run), "checks": [c.to_dict() for c in self.checks]}


def jsonable(x: Any) -> Any:
    """Tensors, arrays, numpy scalars, tuples, enums and objects with ``to_dict`` (figures) to plain JSON
    values; non-finite floats become the strings "inf", "-inf", "nan" (None would lose information)."""
    if hasattr(x, "to_dict") and not isinstance(x, type):
        return jsonable(x.to_dict())
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # a tensor: torch is already loaded when one exists
    if type(x).__module__.split(".")[0] == "numpy":
        if hasattr(x, "tolist"):
            x = x.tolist()  # arrays and numpy scalars -> Python values
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, Enum):
        return x.value
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


# Called with every result of ``verifier.checks.run_check`` (the pytest plugin's --verifier-report records them
# this way); kept here so that registering an observer imports no check.
OBSERVERS: list[Callable[[CheckResult], None]] = []


class ResultsFormatError(ValueError):
    """A results file that cannot be read or does not follow the schema."""


def results_json(results: RunResults) -> str:
    return json.dumps(results.to_dict(), indent=1, allow_nan=False)


def write_results(results: RunResults, path: str | Path) -> None:
    atomic_write_text(path, results_json(results))


MAX_BYTES = 256 * 2**20  # a results file larger than this is refused before it is parsed


def _json_int(text: str) -> int:
    """An integer of results.json: every number in it must fit a float64 (the gate and the report compare and
    format them as floats); a larger one (a 400-digit integer) is refused, never an OverflowError later."""
    value = int(text)
    if len(text) > 308 and abs(value) > sys.float_info.max:
        raise ResultsFormatError(f"an integer of {len(text.lstrip('-'))} digits does not fit a float64")
    return value


def read_results(path: str | Path) -> RunResults:
    """Read and validate a results.json of any readable schema version; every problem is a
    :class:`ResultsFormatError` that names the file and the place (never another exception)."""
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end: refused, not read
            raise ResultsFormatError(f"{path}: {'is a folder, not a results file' if stat.S_ISDIR(st.st_mode) else 'not a regular file (a FIFO, socket or device)'}")
        if st.st_size > MAX_BYTES:
            raise ResultsFormatError(f"{path}: larger than {MAX_BYTES // 2**20} MiB")
        raw = json.loads(path.read_text(encoding="utf-8"), parse_int=_json_int)
    except ResultsFormatError as exc:
        if str(exc).startswith(f"{path}: "):
            raise
        raise ResultsFormatError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise ResultsFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ResultsFormatError(f"{path}: is a folder, not a results file") from None
    except RecursionError:
        raise ResultsFormatError(f"{path}: nested too deeply to be a results file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultsFormatError(f"{path}: not readable JSON ({type(exc).__name__}: {exc})") from None
    try:
        return parse_results(raw, str(path))
    except RecursionError:
        raise ResultsFormatError(f"{path}: nested too deeply to be a results file") from None


def parse_results(raw: Any, where: str = "results") -> RunResults:
    if not isinstance(raw, dict):
        raise ResultsFormatError(f"{where}: top level must be an object with schema_version, run, checks")
    version = raw.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ResultsFormatError(f"{where}: schema_version is {version!r}, allowed: "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
    if not isinstance(raw.get("run"), dict) or not isinstance(raw.get("checks"), list):
        raise ResultsFormatError(f"{where}: 'run' must be an object and 'checks' a list")
    checks = []
    for k, c in enumerate(raw["checks"]):
        at = f"{where}: checks[{k}]"
        if not isinstance(c, dict) or not isinstance(c.get("id"), str):
            raise ResultsFormatError(f"{at} must be an object with a string 'id'")
        if c.get("verdict") not in {v.value for v in Verdict}:
            raise ResultsFormatError(f"{at}.verdict is {c.get('verdict')!r}, "
                                     f"allowed: {', '.join(v.value for v in Verdict)}")
        if not isinstance(c.get("metrics", {}), dict):
            raise ResultsFormatError(f"{at}.metrics must be an object")
        if version < 3:
            c = {k: v for k, v in c.items() if k != "reason"}  # reasons came with version 3
        checks.append(CheckResult.from_dict(_from_v1(c) if version == 1 else c, at))
    return RunResults(run=raw["run"], checks=tuple(checks))


# -- schema version 1 -------------------------------------------------------------------------------------
# Version 1 stored raw values in "metrics" and numbers in "thresholds"; the gate matched metric names against
# these glob rules (the first match wins) and paired a metric with the threshold of the same name or with a
# max_/min_ prefix or _max/_min/_tol suffix. A version 1 file is read as the declarations it implied.
_V1_RULES = (("*nfev*", LOWER, 0.0), ("*error*", LOWER, 1e-12), ("*drift*", LOWER, 1e-12),
             ("*residual*", LOWER, 1e-12), ("*distance*", LOWER, 1e-12), ("*spread*", LOWER, 1e-12),
             ("*_ratio", LOWER, 1e-12), ("*mismatch*", LOWER, 1e-12), ("*condition*", LOWER, 0.0),
             ("*margin*", HIGHER, 1e-12), ("*lambda_min*", HIGHER, 1e-12), ("*min_eig*", HIGHER, 1e-12))


def _v1_threshold_name(metric: str, thresholds: dict) -> str | None:
    base = metric[4:] if metric[:4] in ("max_", "min_") else metric
    for cand in (metric, f"max_{metric}", f"min_{metric}", f"{metric}_max", f"{metric}_min", f"{metric}_tol",
                 base, f"{base}_tol"):
        if cand in thresholds:
            return cand
    return None


def _from_v1(c: dict) -> dict:
    import fnmatch

    thresholds = _obj(c.get("thresholds"))
    evidence = _obj(c.get("evidence"))
    metrics, used = {}, set()
    for name, value in _obj(c.get("metrics")).items():
        rule = next((r for r in _V1_RULES if fnmatch.fnmatchcase(str(name).lower(), r[0])), None)
        tname = _v1_threshold_name(str(name), thresholds)
        better = rule[1] if rule else None
        if better is None and tname is not None:
            tokens = f"{tname}_{name}".lower().split("_")
            better = LOWER if "max" in tokens else HIGHER if "min" in tokens else None
        decl: dict[str, Any] = {"value": value}
        if better is not None:
            decl["better"] = better
            if tname is not None:
                decl["threshold"] = thresholds[tname]
                used.add(tname)
        if rule is not None:
            decl["gate"] = {"factor": 1.5, "atol": rule[2]}  # v1: rtol 0.5, i.e. a factor of 1.5
        metrics[name] = decl
    key = evidence.get("key_metric")
    if not (isinstance(key, str) and key in metrics):
        key = next((m for m in metrics if "threshold" in metrics[m]), next(iter(metrics), None))
    return {**c, "metrics": metrics, "key_metric": key,
            "settings": {k: v for k, v in thresholds.items() if k not in used},
            "evidence": {k: v for k, v in evidence.items() if k != "key_metric"}}
