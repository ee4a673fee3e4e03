"""Run a survey: draw the problems, run the checks on each (the same code path as ``verifier run``, so a
listed draw re-run alone gives the same verdict), and collect a :class:`SurveyResults`."""

from __future__ import annotations

import datetime as _dt
import shlex
import sys
import time

from tqdm import tqdm

from ..checks import REGISTRY, resolve_ids
from ..config import resolve_device
from ..context import Context, git_sha, versions
from ..errors import InputError
from ..results import CheckResult, Metric
from ..runner import run_checks
from .config import SurveyConfig
from .results import Draw, Outcome, SurveyResults
from .stacked import prefill_ladders

SEED_RULE = ("draw i uses seed int.from_bytes(sha256(f'verifier-survey:{S}:{i}')[:4], 'big'), "
             "S the survey seed (verifier.survey.config.draw_seed)")
ACCELERATOR_BATCH = 16  # draws per batched flow solve on an accelerator (on a CPU: 1, bit-exact reproduction)


def outcome(result: CheckResult) -> Outcome:
    """A check result reduced to its verdict, message and declared key metric (value, threshold, direction;
    a key metric that is not one number, e.g. a list along the ladder, keeps its name only)."""
    name = result.key_metric
    return metric_outcome(result.verdict.value, result.message, name, result.metrics.get(name) if name else None,
                          result.duration_s)


def metric_outcome(verdict: str, message: str, name: str | None, metric: Metric | None,
                   duration_s: float = 0.0) -> Outcome:
    def number(x) -> float | None:
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    if metric is None:
        return Outcome(verdict, message, name, duration_s=duration_s)
    return Outcome(verdict, message, name, number(metric.value), number(metric.threshold), metric.better, duration_s)


def batch_size(config: SurveyConfig) -> int:
    if config.batch is not None:
        return config.batch
    return 1 if resolve_device(config.device).type == "cpu" else ACCELERATOR_BATCH


def check_ids_for(config: SurveyConfig, ctx: Context) -> list[str]:
    """The survey's checks (default: every check that applies to the family); a named check that does not
    apply is bad input, refused before any draw runs."""
    ids = resolve_ids(None if config.checks is None else ",".join(config.checks), ctx.model)
    for i in ids:
        reason = REGISTRY[i].applies_to(ctx.model)
        if reason is not None:
            raise InputError("--checks", f"{i} does not apply to {config.family}: {reason}",
                             ", ".join(j for j in resolve_ids(None, ctx.model)))
    return ids


def _require_seed_parameter(spec: str) -> None:
    """A survey of a model file draws problem i as FACTORY(seed=draw_seed(S, i)); a factory without a seed
    would give the same problem n times."""
    from ..model_file import FIELD, load_factory, takes_seed

    file, name, make = load_factory(spec)
    if not takes_seed(make):
        raise InputError(FIELD, f"{file}:{name}() takes no seed argument, so every draw would be the same problem",
                         f"a factory with a parameter named seed, e.g. def {name}(seed): ...")


def run_survey(config: SurveyConfig, progress: bool = True, argv: list[str] | None = None) -> SurveyResults:
    """Draw ``config.n`` problems and run the checks on each; flows of ``batch_size`` draws at a time share
    one batched solve (:func:`~verifier.survey.stacked.prefill_ladders`). Interrupted (KeyboardInterrupt),
    it returns the draws that finished, with ``survey["interrupted"]`` saying so."""
    start, started = time.perf_counter(), _dt.datetime.now(_dt.timezone.utc)
    sha = git_sha()  # the code that runs: taken now, a long survey may outlive the checkout's HEAD
    device = resolve_device(config.device)
    size = batch_size(config)

    def context(i: int) -> Context:
        return Context(config.run_config(i), argv=shlex.split(config.command(i)))

    if config.model_file is not None:
        _require_seed_parameter(config.model_file)
    first = context(0)
    ids = check_ids_for(config, first)
    draws: list[Draw] = []
    failed = {"fail": 0, "inconclusive": 0}
    bar = tqdm(total=config.n, desc=f"survey {config.family}", unit="draw", file=sys.stderr,
               disable=not progress, leave=False)
    interrupted = None
    try:
        for g0 in range(0, config.n, size):
            group = [first if i == 0 else context(i) for i in range(g0, min(g0 + size, config.n))]
            if len(group) > 1:
                prefill_ladders(group, ids)
            for k, ctx in enumerate(group):
                i = g0 + k
                t0 = time.perf_counter()
                results = run_checks(ctx, ids, progress=False)
                outcomes = {c.id: outcome(c) for c in results.checks}
                draws.append(Draw(i, config.draw_seed(i), config.command(i), outcomes, time.perf_counter() - t0))
                for check, o in outcomes.items():
                    if o.verdict in failed:
                        failed[o.verdict] += 1
                    if o.verdict == "fail" and progress:  # as it happens: a long survey shows its failures early
                        bar.write(f"FAIL draw {i}: {config.command(i)} --checks {check}: {o.message[:300]}",
                                  file=sys.stderr)
                bar.update(1)
                bar.set_postfix_str(f"{failed['fail']} fail, {failed['inconclusive']} inconclusive")
    except KeyboardInterrupt:  # keep what finished: a long survey can be stopped and still reported
        interrupted = (f"interrupted after {len(draws)} of {config.n} draws: the rates are over the "
                       f"{len(draws)} draws that finished")
    bar.close()
    survey = {
        "config": config.as_dict(), "batch_used": size, "seed_rule": SEED_RULE,
        "command": shlex.join(argv) if argv is not None else shlex.join(sys.argv),
        "device": str(device), "dtype": "float64", "versions": versions(), "git_sha": sha,
        "machine": _machine(device), "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - start, 1), "checks": ids,
    } | ({"interrupted": interrupted} if interrupted else {})
    return SurveyResults(survey=survey, claims={i: REGISTRY[i].claim for i in ids}, draws=tuple(draws))


def _machine(device) -> str:
    """e.g. '2 CPU cores (x86_64, Linux)' or 'NVIDIA H200 (cuda), 16 CPU cores (...)'."""
    import os
    import platform

    import torch

    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda), {cpu}"
    return cpu

