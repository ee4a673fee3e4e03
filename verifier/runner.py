"""Run a list of checks on one problem (the CLI writes the outputs: :mod:`verifier.outputs`)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from .checks import run_check
from .config import RunConfig
from .context import Context
from .results import RunResults


def run_checks(ctx: Context, ids: list[str], progress: bool = True) -> RunResults:
    results = []
    bar = tqdm(ids, desc="verifier", unit="check", file=sys.stderr, disable=not progress, leave=False)
    for check_id in bar:
        bar.set_postfix_str(check_id)
        if progress:
            ctx.progress = _postfix(bar, check_id)
        results.append(run_check(check_id, ctx))
    run = {"config": ctx.config.as_dict(), "provenance": ctx.provenance, "model": ctx.model.family,
           "problem": ctx.problem, "checks": ids}
    return RunResults(run=run, checks=tuple(results))


def _postfix(bar, check_id: str):
    """A ``Context.progress`` that shows what the running check is doing after its id on the bar."""
    def show(label: str, fraction: float | None = None) -> None:
        bar.set_postfix_str(f"{check_id}: {label}" + ("" if fraction is None else f" {min(fraction, 1.0):.0%}"))

    return show


def run_suite(config: RunConfig, ids: list[str] | None = None, argv: list[str] | None = None,
              progress: bool = True) -> RunResults:
    """Library entry point: the checks ``ids`` (default: every check that applies) on ``config``."""
    from .checks import resolve_ids

    ctx = Context(config, argv=argv)
    return run_checks(ctx, ids if ids is not None else resolve_ids(None, ctx.model), progress=progress)
