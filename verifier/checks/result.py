"""Measurement and judgement of one claim: :class:`CheckResult` and its :class:`Verdict`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"

    @classmethod
    def worst(cls, verdicts) -> "Verdict":
        """fail beats inconclusive beats pass; an empty list is inconclusive (nothing was measured)."""
        vs = list(verdicts)
        if not vs:
            return cls.INCONCLUSIVE
        if cls.FAIL in vs:
            return cls.FAIL
        if cls.INCONCLUSIVE in vs:
            return cls.INCONCLUSIVE
        return cls.PASS


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome. ``metrics`` are measured values, ``thresholds`` the numbers they were judged
    against, ``evidence`` the (downsampled) series a report draws; all are plain JSON-able data."""

    id: str
    claim: str
    verdict: Verdict
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "claim": self.claim,
            "verdict": self.verdict.value,
            "message": self.message,
            "metrics": jsonable(self.metrics),
            "thresholds": jsonable(self.thresholds),
            "evidence": jsonable(self.evidence),
            "config": jsonable(self.config),
            "provenance": jsonable(self.provenance),
            "duration_s": round(float(self.duration_s), 3),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckResult":
        return cls(
            id=d["id"], claim=d.get("claim", ""), verdict=Verdict(d["verdict"]), message=d.get("message", ""),
            metrics=d.get("metrics", {}), thresholds=d.get("thresholds", {}), evidence=d.get("evidence", {}),
            config=d.get("config", {}), provenance=d.get("provenance", {}), duration_s=d.get("duration_s", 0.0),
        )


def jsonable(x: Any) -> Any:
    """Tensors, arrays, numpy scalars, tuples and enums to plain JSON values; non-finite floats to None
    would lose information, so they become the strings "inf", "-inf", "nan"."""
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return [jsonable(v) for v in x.tolist()] if x.ndim else jsonable(x.item())
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else ("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, Enum):
        return x.value
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x
