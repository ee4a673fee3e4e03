"""Where a survey is written: ``--out`` checked before any draw runs; results.json and report.html."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from ..errors import InputError
from ..results import atomic_write_text
from .report import render_survey_html
from .results import SurveyResults

ROOT = Path("reports") / "surveys"
FILES = ("results.json", "report.html")


def check_out(out: str | None) -> Path:
    """The output folder: ``--out`` (new, empty, or holding only a previous survey's two files), else
    reports/surveys/<timestamp>."""
    if out is None:
        return ROOT / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(e.name not in FILES for e in path.iterdir())):
        raise InputError("--out", f"{path} is not a folder holding only {' and '.join(FILES)}",
                         "a new folder, an empty one, or a previous survey's")
    return path


def write_survey(results: SurveyResults, out: Path) -> list[Path]:
    paths = [out / name for name in FILES]
    atomic_write_text(paths[0], results.to_json())
    atomic_write_text(paths[1], render_survey_html(results))
    return paths
