"""A survey's report: one self-contained HTML page (the run report's style and figure renderer) and the
terminal table. Per check: verdict rates with Wilson intervals, the key metric's histogram against its
threshold, the closest passes and every failure with its reproducing command."""

from __future__ import annotations

import io
import math
import statistics

import jinja2
import matplotlib
import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure as MplFigure  # no pyplot: the user's global figure state is left alone
from matplotlib.ticker import MaxNLocator

from ..report.figures import _RC, Rendered, _inline, _log_axis
from ..report.format import fmt
from ..results import Verdict
from .results import DRAW_ERRORS, VERDICTS, CheckSummary, SurveyResults
from .stats import INTERVAL

_ENV = jinja2.Environment(
    loader=jinja2.ChoiceLoader([jinja2.PackageLoader("verifier.survey", "templates"),
                                jinja2.PackageLoader("verifier.report", "templates")]),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
COLOURS = {Verdict.PASS: "#4c9a6a", Verdict.FAIL: "#c0504d", Verdict.INCONCLUSIVE: "#9a9a9a"}


def render_histogram(s: CheckSummary, prefix: str) -> Rendered:
    """The key metric's histogram: filled bars over the bin edges, stacked per verdict (pass, then fail, then
    inconclusive; drawable on a log axis), a count axis with whole-number ticks, and the threshold as a
    vertical line. The report's figure style (verifier.report.figures)."""
    h = s.histogram
    scaled = s.threshold is None and s.thresholds is not None
    at = 1.0 if scaled else s.threshold
    missing = sum(h.not_finite.values())
    title = f"{s.id}: {s.histogram_of} over the draws"
    caption = (f"Histogram of the key metric, bars stacked by verdict ({max(len(h.edges) - 1, 0)} bins"
               + (", evenly spaced in log10" if h.log else "") + ")"
               + (f"; {missing} draw(s) without a finite value are not drawn" if missing else "")
               + ". A failure on the passing side of the threshold failed through another part of the check "
                 "(its message says which).")
    with matplotlib.rc_context(_RC):
        fig = MplFigure(figsize=(7.0, 3.2))
        ax = fig.subplots()
        edges = np.asarray(h.edges, dtype=float)
        bottom = np.zeros(max(len(edges) - 1, 0))
        for verdict in VERDICTS:
            counts = np.asarray(h.counts.get(verdict.value) or (), dtype=float)
            if not counts.size or not counts.any():
                continue
            ax.bar(edges[:-1], counts, width=np.diff(edges), bottom=bottom, align="edge", color=COLOURS[verdict],
                   edgecolor="white", linewidth=0.6, label=f"{verdict.value} ({int(counts.sum())})")
            bottom = bottom + counts
        if at is not None:
            ax.axvline(at, color="0.2", linestyle="--", linewidth=1.0,
                       label=f"pass needs {_relation(s.better)} " + ("its threshold" if scaled else f"{at:g}"))
        if bottom.size and bottom.any():
            _log_axis(ax, "x", "log" if h.log else "linear")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of draws: whole numbers
            ax.set_ylim(0, max(1.0, float(bottom.max())) * 1.08)
            ax.legend(fontsize=8, frameon=False, loc="best")
        else:
            ax.text(0.5, 0.5, "no finite value to draw", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xlabel(str(s.histogram_of))
        ax.set_ylabel("draws")
        ax.set_title(title, fontsize=11, loc="left")
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    return Rendered(id=f"hist-{s.id}", title=title, caption=caption, svg=_inline(buf.getvalue(), prefix, title),
                    notes=())


def _threshold_text(s: CheckSummary) -> str:
    """e.g. ``>= 0.01``, or ``<= per draw, 0.0125 to 0.0196`` when the draws declare different thresholds."""
    if s.thresholds is None:
        return "-"
    if s.threshold is not None:
        return f"{_relation(s.better)} {fmt(s.threshold)}".strip()
    return f"{_relation(s.better)} per draw, {fmt(s.thresholds[0])} to {fmt(s.thresholds[1])}".strip()


def _relation(better: str | None) -> str:
    return {"lower": "<=", "higher": ">="}.get(better or "", "")


def _values(results: SurveyResults, check: str) -> list[float]:
    return [o.value for d in results.draws if (o := d.outcomes.get(check)) is not None and o.value is not None]


def _spread(values: list[float]) -> str:
    """median [min, max] of the finite values, and how many are not finite (e.g. an infinite Taylor order
    where the gradient is exactly linear)."""
    finite = [v for v in values if math.isfinite(v)]
    other = sorted({str(v) for v in values if not math.isfinite(v)})
    text = f"{fmt(statistics.median(finite))} [{fmt(min(finite))}, {fmt(max(finite))}]" if finite else ""
    if other:
        text += ("; " if text else "") + f"{', '.join(other)} in {len(values) - len(finite)} draw(s)"
    return text or "-"


def render_survey_html(results: SurveyResults) -> str:
    sv = results.survey
    config = sv.get("config", {})
    sections = []
    for k, cid in enumerate(results.check_ids):
        s = results.summary(cid)
        fig = render_histogram(s, f"h{k}")
        sections.append({
            "id": cid, "anchor": f"check-{k}", "claim": s.claim, "metric": s.metric or "-",
            "threshold": _threshold_text(s),
            "rates": {v.value: s.rates[v].text() for v in VERDICTS}, "spread": _spread(_values(results, cid)),
            "reasons": _reason_rows(s),
            "figure": {"svg": Markup(fig.svg), "caption": fig.caption, "notes": fig.notes},
            "closest": [_row(x) for x in s.closest_passes], "failures": [_row(x) for x in s.failures],
            "inconclusive": [_row(x) for x in s.inconclusive],
        })
    interrupted = sv.get("interrupted")
    return _ENV.get_template("survey.html").render(
        title=f"Survey: {config.get('preset') or config.get('model_file') or '?'}, {len(results.draws)} draws", sections=sections,
        interval=INTERVAL, command=str(sv.get("command", "")), machine=str(sv.get("machine", "")),
        seed_rule=str(sv.get("seed_rule", "")), interrupted=interrupted, executor=_executor_text(sv.get("executor")),
        meta=[(k, fmt(v, 400)) for k, v in sv.items() if k not in ("config", "command", "seed_rule")]
        + [(f"config.{k}", fmt(v, 400)) for k, v in config.items()] + _draw_times(results))


def _draw_times(results: SurveyResults) -> list[tuple[str, str]]:
    """Per-draw wall time (median [min, max]) and how many workers ran draws: what a cluster's user sizes
    the next survey by."""
    times = [d.duration_s for d in results.draws if d.duration_s > 0]
    workers = {d.worker for d in results.draws if d.worker}
    out = [("draw wall time, s", _spread(times))] if times else []
    return out + ([("workers that ran draws", str(len(workers)))] if workers else [])


def _executor_text(info) -> str:
    """e.g. ``local-processes, 2 workers`` or ``dask, 8 workers (tcp://10.0.0.1:8786)``; files of schema 1: unknown."""
    if not isinstance(info, dict):
        return "not recorded"
    text = f"{info.get('kind', '?')}, {info.get('workers', '?')} worker(s)"
    return text + (f" ({info['scheduler']})" if info.get("scheduler") else "")


def _row(x) -> dict:
    return {"index": x.index, "seed": x.seed, "value": fmt(x.outcome.value), "reason": x.outcome.reason or "-",
            "headroom": "-" if x.outcome.headroom is None else f"{fmt(x.outcome.headroom)}x",
            "message": x.outcome.message, "command": x.command}


def _reason_rows(s: CheckSummary) -> list[tuple[str, str, str]]:
    """(verdict, reason, rate) for every failure reason seen: the fail and inconclusive rates broken down."""
    return [(v.value, r, rate.text()) for v, rates in s.reasons.items() for r, rate in rates.items()]


def survey_table(results: SurveyResults, failures_shown: int = 10) -> str:
    """The terminal summary: per check the rates with intervals and the key metric's median [min, max];
    then the commands of the first failures."""
    rows = [("check", "pass", "fail", "inconclusive", "key metric: median [min, max]")]
    notes: list[list[str]] = [[]]  # under each check: its fail and inconclusive rates by reason
    for cid in results.check_ids:
        s = results.summary(cid)
        rows.append((cid, *(s.rates[v].text() for v in VERDICTS),
                     f"{s.metric} = {_spread(_values(results, cid))} ({_threshold_text(s)})"))
        by: dict[str, list[str]] = {}
        for verdict, reason, rate in _reason_rows(s):
            by.setdefault(verdict, []).append(f"{reason} {rate}")
        notes.append([f"  {verdict} by reason: {'; '.join(parts)}" for verdict, parts in by.items()])
    widths = [max(len(r[j]) for r in rows) for j in range(4)]
    lines = []
    for row, under in zip(rows, notes):
        lines += ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4], *under]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"rates over {len(results.draws)} draws with the {INTERVAL}")
    fails = [x for cid in results.check_ids for x in results.summary(cid).failures]
    for x in fails[:failures_shown]:
        lines.append(f"FAIL draw {x.index}: {x.command}")
    if len(fails) > failures_shown:
        lines.append(f"... {len(fails) - failures_shown} more failures in the report")
    errors = [d for d in results.draws if d.outcomes and all(o.reason in DRAW_ERRORS for o in d.outcomes.values())]
    for d in errors[:failures_shown]:  # draws that gave no check result: user code that raised, a worker lost
        lines.append(f"ERROR draw {d.index}: {next(iter(d.outcomes.values())).message}")
    if len(errors) > failures_shown:
        lines.append(f"... {len(errors) - failures_shown} more draws without a result in the report")
    return "\n".join(lines)
