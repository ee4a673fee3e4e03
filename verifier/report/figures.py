"""Figure specs (plain data, see docs/ARCHITECTURE.md "Figures travel as data") -> inline SVG.

A spec is drawn as well as its data allows and never raises: missing keys take defaults, values that
are not numbers (None, "nan", "inf" strings from results.json, text) become NaN and leave gaps, series
of unequal length are cut to the shorter, and on a log axis non-positive values are hidden. Everything
that was dropped or changed is listed in the returned ``notes`` so the report says so under the figure.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # no pyplot: the user's backend and global figure state are left alone
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator, NullFormatter
from markupsafe import escape

KINDS = ("line", "scatter", "bar", "heatmap")
SCALES = ("linear", "log")
MAX_POINTS = 2000  # a longer series is strided down to this many points (the last one kept)
MAX_LEGEND = 12  # more series than this: no legend, a note instead

_RC = {
    "svg.fonttype": "none",  # text stays text (small, selectable), drawn in the page's sans-serif
    "svg.hashsalt": "verifier",  # deterministic ids
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
}


@dataclass(frozen=True)
class Rendered:
    """One drawn figure: the ``<svg>`` element as text, and what the renderer had to drop or change."""

    id: str
    title: str
    caption: str
    svg: str
    notes: tuple[str, ...]


def _text(value: Any, default: str = "") -> str:
    return default if value is None else str(value)


def _label(value: Any, default: str = "", width: int = 0) -> str:
    """Text from data drawn literally ("$" is a dollar sign, not mathtext), wrapped to ``width`` characters."""
    text = _text(value, default)
    if width and len(text) > width:
        text = "\n".join(textwrap.wrap(text, width))
    return text.replace("$", r"\$")


def as_floats(values: Any) -> np.ndarray:
    """A list of numbers as float64; anything that is not a finite-or-infinite number becomes NaN."""
    if isinstance(values, (int, float, str)) or values is None:
        values = [values]
    out = []
    for v in values if isinstance(values, (list, tuple, np.ndarray)) else []:
        try:
            f = float(v)  # also parses the strings "nan", "inf", "-inf" written by results.json
        except (TypeError, ValueError):
            f = math.nan
        out.append(f)
    return np.asarray(out, dtype=np.float64)


def _stride(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    idx = np.linspace(0, n - 1, MAX_POINTS).round().astype(int)
    return np.unique(idx)


def _mask_log(arr: np.ndarray, axis: str, notes: list[str], label: str) -> np.ndarray:
    bad = np.isfinite(arr) & (arr <= 0)
    if bad.any():
        notes.append(f"{label}: {int(bad.sum())} non-positive {axis} value(s) hidden on the log {axis} axis")
        arr = np.where(bad, np.nan, arr)
    return arr


def _scale(spec: dict, key: str, notes: list[str]) -> str:
    scale = _text(spec.get(key), "linear")
    if scale not in SCALES:
        notes.append(f"{key} {scale!r} is not one of {', '.join(SCALES)}; drawn linear")
        return "linear"
    return scale


def _series(spec: dict, xscale: str, yscale: str, notes: list[str]) -> list[tuple]:
    """The drawable series: (label, x, y, style, band) with NaN gaps (band: a half-width, or None); unusable
    series are named in ``notes``."""
    raw = spec.get("series")
    if not isinstance(raw, list):
        notes.append("no 'series' list in the figure spec")
        return []
    out = []
    for k, s in enumerate(raw):
        if not isinstance(s, dict):
            notes.append(f"series {k} is not an object; skipped")
            continue
        label = _label(s.get("label"), f"series {k}")
        if "y" not in s:
            notes.append(f"{label}: no 'y' values; skipped")
            continue
        y = as_floats(s.get("y"))
        x = as_floats(s["x"]) if "x" in s else np.arange(len(y), dtype=np.float64)
        if len(x) != len(y):
            notes.append(f"{label}: {len(x)} x values and {len(y)} y values; cut to {min(len(x), len(y))}")
            n = min(len(x), len(y))
            x, y = x[:n], y[:n]
        if xscale == "log":
            x = _mask_log(x, "x", notes, label)
        if yscale == "log":
            y = _mask_log(y, "y", notes, label)
        band = as_floats(s["band"]) if s.get("band") else None
        if band is not None and len(band) != len(y):
            notes.append(f"{label}: {len(band)} band values for {len(y)} points; band not drawn")
            band = None
        idx = _stride(len(y))
        if len(idx) < len(y):
            notes.append(f"{label}: {len(y)} points thinned to {len(idx)}")
        x, y, band = x[idx], y[idx], None if band is None else band[idx]
        if not (np.isfinite(x) & np.isfinite(y)).any():
            notes.append(f"{label}: no finite points to draw")
        out.append((label, x, y, _text(s.get("style"), ""), band))
    return out


def _plot(ax, kind: str, label: str, x: np.ndarray, y: np.ndarray, style: str, band, notes: list[str]) -> None:
    if band is not None and kind == "line":
        ax.fill_between(x, y - band, y + band, alpha=0.18, linewidth=0)
    if kind == "bar":
        ax.bar(x, y, label=label, alpha=0.8)
        return
    fmt = style or ("o" if kind == "scatter" else "-")
    finite = np.isfinite(x) & np.isfinite(y)
    if not (finite[1:] & finite[:-1]).any() and not any(m in fmt for m in "o.sx+^v*dDph"):
        fmt += "o"  # no two neighbouring points: a line alone would draw nothing
    try:
        ax.plot(x, y, fmt, label=label, markersize=3.5, linewidth=1.4)
    except ValueError:
        notes.append(f"{label}: style {style!r} is not a matplotlib format string; drawn as a line")
        ax.plot(x, y, "-", label=label, linewidth=1.4)


def _lines(ax, spec: dict, key: str, scale: str, notes: list[str]) -> None:
    """vlines/hlines: [{"x" or "y": value, "label": text}]. A label repeated along the list is written once;
    successive labels are staggered over three rows so close lines stay readable."""
    coord = "x" if key == "vlines" else "y"
    items = spec.get(key) or []
    if not isinstance(items, list):
        notes.append(f"'{key}' is not a list; ignored")
        return
    written: set[str] = set()
    for item in items:
        value = as_floats(item.get(coord) if isinstance(item, dict) else None)[0]
        if not math.isfinite(value) or (scale == "log" and value <= 0):
            notes.append(f"{key[0]}-line {item!r} has no drawable {coord}; skipped")
            continue
        label = _label(item.get("label")) if isinstance(item, dict) else ""
        (ax.axvline if coord == "x" else ax.axhline)(value, color="0.45", linestyle=":", linewidth=1.0)
        if not label or label in written:
            continue
        row = len(written) % 3
        written.add(label)
        if coord == "x":
            ax.annotate(label, (value, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3 - 11 * row),
                        textcoords="offset points", va="top", ha="left", fontsize=8, color="0.3")
        else:
            ax.annotate(label, (1.0, value), xycoords=("axes fraction", "data"), xytext=(-2, 2 + 11 * row),
                        textcoords="offset points", ha="right", fontsize=8, color="0.3")


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


class _LogTicks(LogFormatter):
    """Log-axis tick labels as plain text (10⁻⁴, 0.5): matplotlib's default typesets each one as mathtext,
    which costs most of the rendering time."""

    def _num_to_string(self, x, vmin, vmax):
        exponent = math.log10(x)
        if abs(exponent - round(exponent)) < 1e-9:
            return "1" if round(exponent) == 0 else "10" + str(round(exponent)).translate(_SUPERSCRIPT)
        return f"{x:.3g}"


_ID = re.compile(r'\bid="([^"]+)"')


def _namespace_ids(svg: str, prefix: str) -> str:
    """Prefix every id (and its url(#..)/href="#.." references) so figures inlined in one page never clash."""
    for name in set(_ID.findall(svg)):
        new = f"{prefix}-{name}"
        svg = svg.replace(f'id="{name}"', f'id="{new}"').replace(f"url(#{name})", f"url(#{new})")
        svg = svg.replace(f'href="#{name}"', f'href="#{new}"')
    return svg


def _inline(svg: str, prefix: str, title: str) -> str:
    """matplotlib's standalone SVG document -> one ``<svg>`` element fit for an HTML page."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = _namespace_ids(svg, prefix)
    # Scale with the page: keep the aspect ratio from viewBox, let CSS set the width.
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1', svg, count=1)
    return svg.replace("<svg", f'<svg role="img" aria-label="{escape(title)}"', 1)


def _log_axis(ax, which: str, scale: str) -> None:
    """Log scale with plain-text ticks; under one decade, five evenly placed ticks (a log locator gives one or two)."""
    if scale != "log":
        return
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    if hi < 10 * lo:
        axis.set_major_locator(MaxNLocator(5))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_formatter(_LogTicks())
        axis.set_minor_formatter(_LogTicks(minor_thresholds=(2, 0.4)))


def _heatmap(fig, ax, series: list[tuple], zlabel: str, notes: list[str]) -> bool:
    """One row per series (its label on the left), one column per distinct x; a missing cell is blank.
    Returns whether any cell is finite."""
    columns = np.unique(np.concatenate([x[np.isfinite(x)] for _, x, *_ in series] or [np.empty(0)]))
    grid = np.full((len(series), len(columns)), np.nan)
    for r, (_, x, y, *_) in enumerate(series):
        ok = np.isfinite(x)
        grid[r, np.searchsorted(columns, x[ok])] = y[ok]
    if not np.isfinite(grid).any():
        return False
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.92")
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, interpolation="nearest")
    ax.grid(False)
    ax.set_xticks(range(len(columns)), [f"{c:g}" for c in columns], fontsize=8)
    ax.set_yticks(range(len(series)), [label for label, *_ in series], fontsize=7 if len(series) > 12 else 8)
    if grid.size <= 150:  # the values written in the cells, dark on the bright end of the scale
        lo, hi = np.nanmin(grid), np.nanmax(grid)
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                bright = hi > lo and (v - lo) / (hi - lo) > 0.6
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7, color="black" if bright else "white")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(_label(zlabel, width=40))
    return True


def render_figure(spec: Any, prefix: str) -> Rendered:
    """Draw one figure spec; ``prefix`` makes its SVG ids unique in the page. Never raises on bad data."""
    notes: list[str] = []
    if not isinstance(spec, dict):
        spec = {}
        notes.append("the figure spec is not an object")
    title = _text(spec.get("title"), _text(spec.get("id"), "figure"))
    kind = _text(spec.get("kind"), "line")
    if kind not in KINDS:
        notes.append(f"kind {kind!r} is not one of {', '.join(KINDS)}; drawn as lines")
        kind = "line"
    xscale, yscale = _scale(spec, "xscale", notes), _scale(spec, "yscale", notes)
    heatmap = kind == "heatmap"
    if heatmap:
        xscale = yscale = "linear"
    series = _series(spec, xscale, yscale, notes)
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(7.0, max(3.6, 1.2 + 0.22 * len(series)) if heatmap else 3.6))
        ax = fig.subplots()
        if heatmap:
            drawable = _heatmap(fig, ax, series, _text(spec.get("zlabel")), notes)
        else:
            for label, x, y, style, band in series:
                _plot(ax, kind, label, x, y, style, band, notes)
            drawable = any((np.isfinite(x) & np.isfinite(y)).any() for _, x, y, *_ in series)
            _lines(ax, spec, "vlines", xscale, notes)
            _lines(ax, spec, "hlines", yscale, notes)
        if drawable:  # a log axis with nothing positive on it cannot be set up: it stays linear
            _log_axis(ax, "x", xscale)
            _log_axis(ax, "y", yscale)
        else:
            ax.text(0.5, 0.5, "no finite data to draw", transform=ax.transAxes, ha="center", va="center",
                    color="0.4")
        ax.set_xlabel(_label(spec.get("xlabel"), width=100))
        ax.set_ylabel(_label(spec.get("ylabel"), width=40))
        ax.set_title(_label(title, width=80), fontsize=11, loc="left")
        labels = [] if heatmap else [s[0] for s in series]
        if 1 <= len(labels) <= MAX_LEGEND:
            ax.legend(fontsize=8, frameon=False, loc="best")
        elif len(labels) > MAX_LEGEND:
            notes.append(f"{len(labels)} series: legend omitted")
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    svg = _inline(buf.getvalue(), prefix, title)
    return Rendered(id=_text(spec.get("id"), prefix), title=title, caption=_text(spec.get("caption")),
                    svg=svg, notes=tuple(notes))
