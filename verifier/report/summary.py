"""The one-screen terminal summary printed at the end of ``verifier run``."""

from __future__ import annotations

import shutil

from ..results import RunResults
from .format import key_metric, normalized, verdict_counts


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def summary_table(results: RunResults, width: int | None = None) -> str:
    """check | verdict (and failure reason) | key metric vs threshold | message; cut to the terminal width
    (default: detected)."""
    results = normalized(results)
    width = width or shutil.get_terminal_size((110, 24)).columns
    rows = [("check", "verdict", "key metric vs threshold", "message")]
    for c in results.checks:
        km = key_metric(c)
        rows.append((c.id, c.verdict.value.upper() + (f" ({c.reason})" if c.reason else ""), km.text() if km else "-",
                     c.message))
    w_id = min(max(len(r[0]) for r in rows), 24)
    w_v = min(max(len(r[1]) for r in rows), 36)
    w_m = min(max(len(r[2]) for r in rows), 48)
    w_msg = max(width - w_id - w_v - w_m - 6, 20)
    lines = []
    for k, (cid, verdict, metric, msg) in enumerate(rows):
        lines.append(f"{_cut(cid, w_id):<{w_id}}  {_cut(verdict, w_v):<{w_v}}  {_cut(metric, w_m):<{w_m}}  {_cut(msg, w_msg)}".rstrip())
        if k == 0:
            lines.append("-" * min(width, w_id + w_v + w_m + 6 + w_msg))
    counts = verdict_counts(results.checks)
    lines.append(f"overall: {results.verdict.value.upper()} ({counts['pass']} pass, {counts['fail']} fail, "
                 f"{counts['inconclusive']} inconclusive)")
    return "\n".join(lines)
