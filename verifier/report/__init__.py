"""Reports: results -> one self-contained HTML file, and the terminal summary table."""

from __future__ import annotations

from pathlib import Path

from ..paths import atomic_write_text
from ..results import RunResults
from .html import render_html
from .summary import summary_table


def write_report(results: RunResults, path: str | Path) -> None:
    """Render and write the HTML report atomically (readers never see half a file)."""
    atomic_write_text(path, render_html(results))


__all__ = ["render_html", "summary_table", "write_report"]
