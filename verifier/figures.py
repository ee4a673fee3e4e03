"""Typed figure specs: what a check wants drawn, as data (the report draws them; docs/ARCHITECTURE.md).

A check builds ``Figure(...)`` objects (a misspelt field is a TypeError, a wrong kind or scale a ValueError,
so a typo fails the check's tests instead of vanishing from the report) and puts them in
``evidence["figures"]``; results.json stores ``Figure.to_dict()``; :mod:`verifier.report.figures` draws a
stored dict leniently (a stored file may hold anything). No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

KINDS = ("line", "scatter", "bar", "heatmap")
SCALES = ("linear", "log")


def _floats(values: Iterable[Any]) -> tuple[float, ...]:
    if hasattr(values, "tolist"):  # tensors and arrays: one conversion, not one per element
        values = values.tolist()
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Series:
    """One curve (or set of points, or bars; in a heatmap, one row: ``x`` the columns, ``y`` the cells' values):
    ``x`` and ``y`` of equal length; ``style`` a matplotlib format string ("-", "o-", "k:"), empty for the
    kind's default; ``band`` (optional, as long as ``y``) a half-width drawn as a shaded band y ± band (a
    standard deviation)."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    style: str = ""
    band: tuple[float, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "x", _floats(self.x))
        object.__setattr__(self, "y", _floats(self.y))
        object.__setattr__(self, "band", _floats(self.band))
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.label!r}: {len(self.x)} x values and {len(self.y)} y values")
        if self.band and len(self.band) != len(self.y):
            raise ValueError(f"series {self.label!r}: {len(self.band)} band values and {len(self.y)} y values")

    def to_dict(self) -> dict[str, Any]:
        d = {"label": self.label, "x": list(self.x), "y": list(self.y), "style": self.style}
        return {**d, "band": list(self.band)} if self.band else d


@dataclass(frozen=True)
class Mark:
    """A vertical (at x) or horizontal (at y) reference line with a label."""

    at: float
    label: str = ""

    def __post_init__(self):
        object.__setattr__(self, "at", float(self.at))


@dataclass(frozen=True)
class Figure:
    id: str
    title: str
    kind: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    xscale: str = "linear"
    yscale: str = "linear"
    vlines: tuple[Mark, ...] = ()
    hlines: tuple[Mark, ...] = ()
    caption: str = ""
    zlabel: str = ""  # a heatmap's colour scale

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"figure {self.id!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for axis in ("xscale", "yscale"):
            if getattr(self, axis) not in SCALES:
                raise ValueError(f"figure {self.id!r}: {axis} {getattr(self, axis)!r} is not one of {', '.join(SCALES)}")
        for name, cls in (("series", Series), ("vlines", Mark), ("hlines", Mark)):
            items = tuple(getattr(self, name))
            if not all(isinstance(s, cls) for s in items):
                raise TypeError(f"figure {self.id!r}: {name} must be {cls.__name__} objects")
            object.__setattr__(self, name, items)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "kind": self.kind, "xlabel": self.xlabel, "ylabel": self.ylabel,
                "xscale": self.xscale, "yscale": self.yscale, "series": [s.to_dict() for s in self.series],
                "vlines": [{"x": m.at, "label": m.label} for m in self.vlines],
                "hlines": [{"y": m.at, "label": m.label} for m in self.hlines], "caption": self.caption,
                **({"zlabel": self.zlabel} if self.zlabel else {})}
