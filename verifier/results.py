"""results.json: a versioned record of one run, written atomically, read back with validation.

{"schema_version": 1, "run": {...}, "checks": [{"id", "verdict", "metrics", "message", ...}, ...]}
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checks.result import CheckResult, Verdict, jsonable

SCHEMA_VERSION = 1


class ResultsFormatError(ValueError):
    """A results file that cannot be read or does not follow the schema."""


@dataclass(frozen=True)
class RunResults:
    run: dict[str, Any]
    checks: tuple[CheckResult, ...]

    @property
    def verdict(self) -> Verdict:
        return Verdict.worst(c.verdict for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "run": jsonable(self.run), "checks": [c.to_dict() for c in self.checks]}


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(results: RunResults, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(results.to_dict(), indent=1, allow_nan=False))


def read_results(path: str | Path) -> RunResults:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsFormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsFormatError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ResultsFormatError(f"{path}: top level must be an object with schema_version, run, checks")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ResultsFormatError(f"{path}: schema_version is {raw.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    if not isinstance(raw.get("run"), dict) or not isinstance(raw.get("checks"), list):
        raise ResultsFormatError(f"{path}: 'run' must be an object and 'checks' a list")
    checks = []
    for k, c in enumerate(raw["checks"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), str):
            raise ResultsFormatError(f"{path}: checks[{k}] must be an object with a string 'id'")
        if c.get("verdict") not in {v.value for v in Verdict}:
            raise ResultsFormatError(f"{path}: checks[{k}].verdict is {c.get('verdict')!r}, "
                                     f"allowed: {', '.join(v.value for v in Verdict)}")
        if not isinstance(c.get("metrics", {}), dict):
            raise ResultsFormatError(f"{path}: checks[{k}].metrics must be an object")
        checks.append(CheckResult.from_dict(c))
    return RunResults(run=raw["run"], checks=tuple(checks))
