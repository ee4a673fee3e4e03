"""results -> one self-contained HTML page (jinja2, autoescape on; figures as inline SVG; no URLs).

Only the SVG drawn by :mod:`.figures` is marked safe; every string from results (claims, messages,
labels, metric names, command lines) goes through autoescape.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jinja2
from markupsafe import Markup

from ..figures import Figure
from ..results import RunResults
from .figures import render_figure
from .format import MEANING, fmt, key_metric, normalized, verdict_counts

MAX_FIGURE_RESULTS = 3  # results of one check id beyond this are listed without their figures
MAX_EVIDENCE_CHARS = 4000

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("verifier.report", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _anchor(check_id: str, seen: set[str]) -> str:
    base = "check-" + (re.sub(r"[^a-z0-9]+", "-", check_id.lower()).strip("-") or "x")
    anchor, k = base, 2
    while anchor in seen:
        anchor, k = f"{base}-{k}", k + 1
    seen.add(anchor)
    return anchor


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts -> ("a.b", text) rows, for provenance and config tables."""
    if not isinstance(d, dict):
        return [(prefix or "value", fmt(d, 400))]
    rows = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        rows.extend(_flatten(v, key) if isinstance(v, dict) and v else [(key, fmt(v, 400))])
    return rows


def _metric_rows(metrics: dict) -> list[dict]:
    """One row per declared metric: value, threshold with its relation, direction, and the gate tolerance."""
    rows = []
    for name, m in metrics.items():
        gate = "" if m.gate is None else f"x{m.gate.factor:g}" + (f" + {m.gate.atol:g}" if m.gate.atol else "")
        rows.append({"name": name, "value": fmt(m.value, 300),
                     "threshold": f"{m.relation} {fmt(m.threshold)}" if m.threshold is not None else "",
                     "better": m.better or "", "gate": gate})
    return rows


def _evidence_text(evidence: dict) -> str:
    rest = {k: v for k, v in evidence.items() if k not in ("figures", "traceback")}
    if not rest:
        return ""
    text = json.dumps(rest, indent=1, default=str)
    return text if len(text) <= MAX_EVIDENCE_CHARS else text[:MAX_EVIDENCE_CHARS] + f"\n... ({len(text)} characters)"


def report_note(check_id: str, reason: str | None):
    """The :class:`~verifier.checks.registry.ReportNote` check ``check_id`` declares for ``reason`` (None if
    none). The registry is read only for a result with a reason, so a report of passes imports no torch."""
    if reason is None:
        return None
    from ..checks import REGISTRY  # the check modules declare their notes (@register(..., notes=...))

    spec = REGISTRY.get(check_id)
    return spec.note(reason) if spec is not None else None


def _corner(c, results: RunResults) -> dict | None:
    """The explanation of a corner-case failure kind (the check's ``ReportNote``) and the companion check's
    verdict on the same run: from this run's results if it ran, else as the check recorded it."""
    note = report_note(c.id, c.reason)
    if note is None:
        return None
    if note.companion is None:
        return {"text": note.text, "check": "", "verdict": "", "reason": "", "message": ""}
    ran = next((r for r in results.checks if r.id == note.companion), None)
    if ran is not None:
        verdict, reason, message = ran.verdict.value, ran.reason, ran.message
    else:
        metric = note.recorded_in
        rec = c.metrics[metric].value if metric in c.metrics and isinstance(c.metrics[metric].value, dict) else {}
        verdict, reason, message = str(rec.get("verdict", "not run")), rec.get("reason"), str(rec.get("message", ""))
    return {"text": note.text, "check": note.companion, "verdict": verdict, "reason": reason or "", "message": message}


def _section(k: int, c, anchor: str, draw: bool, run_prov: dict, run_config: dict) -> dict:
    """The view of one check result; provenance and config are shown where they differ from the run's."""
    ev = c.evidence
    specs = ev.get("figures") if isinstance(ev.get("figures"), list) else []
    figures = [render_figure(s.to_dict() if isinstance(s, Figure) else s, f"f{k}-{j}")
               for j, s in enumerate(specs)] if draw else []
    km = key_metric(c)
    prov = c.provenance
    own_prov = {kk: v for kk, v in prov.items()
                if run_prov.get(kk) != v and kk not in ("timestamp", "test", "test_outcome")}
    own_config = {kk: v for kk, v in c.config.items() if run_config.get(kk) != v}
    return {
        "anchor": anchor, "id": c.id, "claim": c.claim, "verdict": c.verdict.value, "reason": c.reason or "",
        "message": c.message,
        "meaning": MEANING[c.verdict], "key": km.text() if km else "-",
        "figures": [{"title": f.title, "caption": f.caption, "notes": f.notes, "svg": Markup(f.svg)} for f in figures],
        "figures_omitted": 0 if draw else len(specs),
        "metrics": _metric_rows(c.metrics), "settings": [{"name": n, "value": fmt(v, 300)} for n, v in c.settings.items()],
        "traceback": str(ev.get("traceback", "")), "evidence": _evidence_text(ev),
        "provenance": _flatten(own_prov) if own_prov else [], "config": _flatten(own_config) if own_config else [],
        "test": str(prov.get("test", "")), "test_outcome": str(prov.get("test_outcome", "")),
        "duration": fmt(float(c.duration_s)),
    }


def _summary_rows(sections: list[dict]) -> list[dict]:
    """One row per result; a claim repeated from the row above is left blank (a test session repeats checks)."""
    rows, previous = [], None
    for s in sections:
        test = s["test"].split("::", 1)[-1] + (f" ({s['test_outcome']})" if s["test_outcome"] else "")
        rows.append({**s, "claim": "" if s["claim"] == previous else s["claim"], "test": test})
        previous = s["claim"]
    return rows


def _problem(problem) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The run's problem (``run["problem"]``): table rows, and (title, source text) of any code it names."""
    if not isinstance(problem, dict):
        return [], []
    code, rows = [], {}
    for key, value in problem.items():
        if isinstance(value, dict) and isinstance(value.get("code"), str):
            code.append((f"Source of {value.get('name', key)} ({value.get('file', '?')})", value["code"]))
            rows[key] = value.get("name", "?")
        else:
            rows[key] = value
    return _flatten(rows), code


def render_html(results: RunResults) -> str:
    """The whole report as one HTML string (no external resources)."""
    results = normalized(results)
    run, prov, config = results.run, results.run["provenance"], results.run["config"]
    seen: set[str] = set()
    drawn: dict[str, int] = {}
    sections = []
    for k, c in enumerate(results.checks):
        drawn[c.id] = drawn.get(c.id, 0) + 1
        sections.append({**_section(k, c, _anchor(c.id, seen), drawn[c.id] <= MAX_FIGURE_RESULTS, prov, config),
                         "corner": _corner(c, results)})
    title_bits = list(dict.fromkeys(str(v) for v in (run.get("model"), config.get("preset")) if v))
    problem, problem_code = _problem(run.get("problem"))
    return _ENV.get_template("report.html").render(
        title="Verifier report" + (f": {' / '.join(title_bits)}" if title_bits else ""),
        verdict=results.verdict.value, counts=verdict_counts(results.checks), sections=sections,
        provenance=_flatten(prov), config=_flatten(config),
        notes=[str(n) for n in run.get("notes", [])] if isinstance(run.get("notes"), list) else [],
        command=str(prov.get("command", "")), timestamp=str(prov.get("timestamp", "")),
        claims=_summary_rows(sections), has_tests=any(s["test"] for s in sections),
        problem=problem, problem_code=problem_code,
    )
