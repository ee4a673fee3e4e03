"""A survey's report: one self-contained HTML page (the run report's style and figure renderer) and the
terminal table. Per check: verdict rates with Wilson intervals, the key metric's histogram against its
threshold, the closest passes and every failure with its reproducing command."""

from __future__ import annotations

import math
import statistics

import jinja2
from markupsafe import Markup

from ..figures import Figure, Mark, Series
from ..report.figures import render_figure
from ..report.format import fmt
from ..results import Verdict
from .results import VERDICTS, CheckSummary, SurveyResults
from .stats import INTERVAL

_ENV = jinja2.Environment(
    loader=jinja2.ChoiceLoader([jinja2.PackageLoader("verifier.survey", "templates"),
                                jinja2.PackageLoader("verifier.report", "templates")]),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
STYLES = {Verdict.PASS: "-", Verdict.FAIL: "--", Verdict.INCONCLUSIVE: ":"}


def histogram_figure(s: CheckSummary) -> Figure:
    """The key metric's histogram per verdict as outlines (a staircase over the bin edges, drawable on a
    log axis), with the threshold as a vertical line."""
    h = s.histogram
    series = []
    for verdict in VERDICTS:
        counts = h.counts.get(verdict.value)
        if not counts or not any(counts):
            continue
        x, y = [h.edges[0]], [0]
        for j, c in enumerate(counts):
            x += [h.edges[j], h.edges[j + 1]]
            y += [c, c]
        series.append(Series(f"{verdict.value} ({sum(counts)})", x + [h.edges[-1]], y + [0], STYLES[verdict]))
    missing = sum(h.not_finite.values())
    scaled = s.threshold is None and s.thresholds is not None
    at = 1.0 if scaled else s.threshold
    label = f"pass needs {_relation(s.better)} " + ("its threshold" if scaled else f"{at:g}")
    marks = () if at is None else (Mark(at, label),)
    return Figure(
        id=f"hist-{s.id}", title=f"{s.id}: {s.histogram_of} over the draws", kind="line", xlabel=str(s.histogram_of),
        ylabel="draws", series=tuple(series), xscale="log" if h.log else "linear", vlines=marks,
        caption=f"Histogram of the key metric per verdict ({max(len(h.edges) - 1, 0)} bins"
                + (", evenly spaced in log10" if h.log else "") + ")"
                + (f"; {missing} draw(s) without a finite value are not drawn" if missing else "")
                + ". A failure on the passing side of the threshold failed through another part of the check "
                  "(its message says which).")


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
        fig = render_figure(histogram_figure(s).to_dict(), f"h{k}")
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
        seed_rule=str(sv.get("seed_rule", "")), interrupted=interrupted,
        meta=[(k, fmt(v, 400)) for k, v in sv.items() if k not in ("config", "command", "seed_rule")]
        + [(f"config.{k}", fmt(v, 400)) for k, v in config.items()])


def _row(x) -> dict:
    return {"index": x.index, "seed": x.seed, "value": fmt(x.outcome.value),
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
    return "\n".join(lines)
