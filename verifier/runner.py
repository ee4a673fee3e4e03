"""Run a list of checks on one problem and write results.json (+ report.html) atomically."""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from .checks import run_check
from .config import RunConfig
from .context import Context
from .results import RunResults, write_results


def run_checks(ctx: Context, ids: list[str], progress: bool = True) -> RunResults:
    results = []
    bar = tqdm(ids, desc="verifier", unit="check", file=sys.stderr, disable=not progress, leave=False)
    for check_id in bar:
        bar.set_postfix_str(check_id)
        if progress:
            ctx.progress = _postfix(bar, check_id)
        results.append(run_check(check_id, ctx))
    run = {"config": ctx.config.as_dict(), "provenance": ctx.provenance, "model": ctx.model.family,
           "checks": ids}
    return RunResults(run=run, checks=tuple(results))


def _postfix(bar, check_id: str):
    """A ``Context.progress`` that shows what the running check is doing after its id on the bar."""
    def show(label: str, fraction: float | None = None) -> None:
        bar.set_postfix_str(f"{check_id}: {label}" + ("" if fraction is None else f" {min(fraction, 1.0):.0%}"))

    return show


def default_out_dir(root: str | Path = "reports") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / stamp


def write_outputs(results: RunResults, out_dir: Path, latest: Path | None = None) -> list[Path]:
    """results.json and report.html into out_dir (each written atomically); mirrored into ``latest``."""
    from .report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "report.html"]
    write_results(results, paths[0])
    write_report(results, paths[1])
    if latest is not None:
        tmp = latest.with_name(f".{latest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out_dir, tmp)
        shutil.rmtree(latest, ignore_errors=True)
        tmp.rename(latest)
    return paths


def run_suite(config: RunConfig, ids: list[str] | None = None, argv: list[str] | None = None,
              progress: bool = True) -> RunResults:
    """Library entry point: the checks ``ids`` (default: every check that applies) on ``config``."""
    from .checks import resolve_ids

    ctx = Context(config, argv=argv)
    return run_checks(ctx, ids if ids is not None else resolve_ids(None, ctx.model), progress=progress)
