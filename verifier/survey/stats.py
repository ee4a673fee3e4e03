"""The statistics of a survey: binomial rates with Wilson score intervals, and histograms of a metric.

Torch-free: a survey's results.json can be summarised and re-rendered without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
INTERVAL = "Wilson score interval, 95%"


@dataclass(frozen=True)
class Rate:
    """k of n draws, with the Wilson score interval [lo, hi] at ``CONFIDENCE`` (Wilson 1927).

    Unlike the normal-approximation (Wald) interval it never leaves [0, 1] and does not collapse to a
    point at k = 0 or k = n: 0 failures in 16 draws still allows a failure rate up to 19%.
    """

    k: int
    n: int
    lo: float
    hi: float

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else math.nan

    def text(self) -> str:
        """e.g. ``12/16 = 75% [51%, 90%]``."""
        if not self.n:
            return "0/0"
        return f"{self.k}/{self.n} = {100 * self.rate:.0f}% [{100 * self.lo:.0f}%, {100 * self.hi:.0f}%]"

    def to_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "rate": self.rate if self.n else None, "lo": self.lo, "hi": self.hi}


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> Rate:
    """p = k/n, z the two-sided normal quantile:
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). n = 0 gives the vacuous [0, 1]."""
    if not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(0, 0, 0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Rate(k, n, 0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


@dataclass(frozen=True)
class Histogram:
    """Counts of a metric per verdict over shared bins. ``log``: the edges are spaced evenly in log10
    (all values positive and spanning more than two decades). Values that are not finite numbers are
    counted apart in ``not_finite``."""

    edges: tuple[float, ...]
    counts: dict[str, tuple[int, ...]]
    log: bool
    not_finite: dict[str, int]

    def to_dict(self) -> dict:
        return {"edges": list(self.edges), "counts": {k: list(v) for k, v in self.counts.items()},
                "log": self.log, "not_finite": dict(self.not_finite)}


def histogram(values: list[tuple[str, float | None]], threshold: float | None = None) -> Histogram:
    """(verdict, value) pairs -> a :class:`Histogram` whose range includes the threshold; Rice's rule
    (2 n^(1/3) bins, 5 to 30) for the number of bins."""
    def is_finite(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    finite = [(v, float(x)) for v, x in values if is_finite(x)]
    verdicts = sorted({v for v, _ in values})
    not_finite = {v: sum(1 for w, x in values if w == v and not is_finite(x)) for v in verdicts}
    xs = [x for _, x in finite] + ([threshold] if threshold is not None and math.isfinite(threshold) else [])
    if not xs:
        return Histogram((), {v: () for v in verdicts}, False, not_finite)
    lo, hi = min(xs), max(xs)
    log = lo > 0 and hi > 100 * lo
    a, b = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
    if b == a:
        a, b = (a - 0.5, b + 0.5) if log or a == 0 else (a - abs(a) / 2, b + abs(b) / 2)
    bins = min(30, max(5, math.ceil(2 * len(finite) ** (1 / 3))))
    grid = [a + (b - a) * j / bins for j in range(bins + 1)]
    edges = tuple(10**g for g in grid) if log else tuple(grid)
    counts = {}
    for v in verdicts:
        c = [0] * bins
        for w, x in finite:
            if w == v:
                g = math.log10(x) if log else x
                c[min(bins - 1, max(0, int((g - a) / (b - a) * bins)))] += 1
        counts[v] = tuple(c)
    return Histogram(edges, counts, log, not_finite)
