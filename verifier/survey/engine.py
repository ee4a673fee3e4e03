"""Run a survey: draw the problems, run the checks on each (the same code path as ``verifier run``, so a
listed draw re-run alone gives the same verdict), and collect a :class:`SurveyResults`.

The draws run on any ``concurrent.futures.Executor`` (None: in this process, one after another): tasks of one
draw (or ``batch`` draws whose ladders share a solve) are submitted, collected as they complete, journalled
(:mod:`.journal`) and ordered by draw index. A task whose worker died is run once more (alone, on another
worker); when its worker dies again, its draws are recorded as inconclusive (reason ``worker-died``).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from ..checks import REGISTRY, resolve_ids
from ..context import Context, git_sha, versions
from ..errors import InputError
from ..results import CheckResult, Metric, Verdict
from ..runner import run_checks
from .config import SurveyConfig
from .journal import Journal
from .results import USER_CODE_ERROR, WORKER_DIED, Draw, Outcome, SurveyResults
from .stacked import prefill_ladders
from .workers import (DrawTask, LocalPool, describe_executor, failed_draw, is_worker_death, run_task, user_code_error,
                      worker_name)

SEED_RULE = ("draw i uses seed int.from_bytes(sha256(f'verifier-survey:{S}:{i}')[:4], 'big'), "
             "S the survey seed (verifier.survey.config.draw_seed)")
ACCELERATOR_BATCH = 16  # draws per batched flow solve on an accelerator (on a CPU: 1, bit-exact reproduction)
TRIES = 2  # a task whose worker dies runs once more, then its draws are recorded as worker-died


def outcome(result: CheckResult) -> Outcome:
    """A check result reduced to its verdict, reason, message and declared key metric (value, threshold,
    direction; a key metric that is not one number, e.g. a list along the ladder, keeps its name only)."""
    name = result.key_metric
    return metric_outcome(result.verdict, result.message, name, result.metrics.get(name) if name else None,
                          result.duration_s, getattr(result, "reason", None))


def metric_outcome(verdict: Verdict, message: str, name: str | None, metric: Metric | None,
                   duration_s: float = 0.0, reason: str | None = None) -> Outcome:
    def number(x) -> float | None:
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    if metric is None:
        return Outcome(verdict, message, name, duration_s=duration_s, reason=reason)
    return Outcome(verdict, message, name, number(metric.value), number(metric.threshold), metric.better, duration_s,
                   reason)


def batch_size(config: SurveyConfig) -> int:
    if config.batch is not None:
        return config.batch
    return 1 if config.torch_device.type == "cpu" else ACCELERATOR_BATCH


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


def _context(config: SurveyConfig, index: int) -> Context:
    return Context(config.run_config(index), argv=shlex.split(config.command(index)))


def survey_checks(config: SurveyConfig) -> list[str]:
    """The check ids, resolved on the first draw whose problem builds (a model file's factory may raise for
    some seeds: those draws are recorded as user-code errors, not refused). Bad input raises InputError."""
    if config.model_file is None:
        return check_ids_for(config, _context(config, 0))
    _require_seed_parameter(config.model_file)
    first = None
    for i in range(config.n):
        try:
            return check_ids_for(config, _context(config, i))
        except InputError as exc:
            if exc.field != "--model-file":
                raise
            first = first or exc
        except SystemExit as exc:
            first = first or InputError("--model-file", user_code_error(config, i, exc))
    raise InputError("--model-file", f"no draw's problem could be built; the first: {first}")


def run_draws(config: SurveyConfig, indices, ids: list[str], worker: str) -> list[Draw]:
    """Run draws ``indices`` in this process (what a worker does with a task). A draw whose model-file factory
    raises or calls sys.exit is recorded as inconclusive (reason ``user-code-error``), never a crash of the
    survey; KeyboardInterrupt still stops it."""
    contexts, draws = {}, {}
    for i in indices:
        t0 = time.perf_counter()
        try:
            contexts[i] = _context(config, i)
        except (InputError, SystemExit) as exc:
            if config.model_file is None or (isinstance(exc, InputError) and exc.field != "--model-file"):
                raise
            draws[i] = failed_draw(config, i, ids, user_code_error(config, i, exc), USER_CODE_ERROR, worker,
                                   time.perf_counter() - t0)
    if len(contexts) > 1:
        prefill_ladders(list(contexts.values()), ids)
    for i, ctx in contexts.items():
        t0 = time.perf_counter()
        try:
            results = run_checks(ctx, ids, progress=False)
        except (InputError, SystemExit) as exc:  # the user's code refused or exited while a check ran it
            if config.model_file is None:
                raise
            draws[i] = failed_draw(config, i, ids, user_code_error(config, i, exc), USER_CODE_ERROR, worker,
                                   time.perf_counter() - t0)
            continue
        outcomes = {c.id: outcome(c) for c in results.checks}
        draws[i] = Draw(i, config.draw_seed(i), config.command(i), outcomes, time.perf_counter() - t0, worker)
    return [draws[i] for i in indices]


class _Collector:
    """Takes finished draws: journals them, prints failures as they come, moves the progress bar."""

    def __init__(self, config: SurveyConfig, done: list[Draw], journal: Journal | None, progress: bool):
        self.config, self.journal, self.progress = config, journal, progress
        self.draws = {d.index: d for d in done}
        self.counts = {Verdict.FAIL: 0, Verdict.INCONCLUSIVE: 0}
        self.bar = tqdm(total=config.n, initial=len(done), desc=f"survey {config.family}", unit="draw",
                        file=sys.stderr, disable=not progress, leave=False, smoothing=0.1)

    def add(self, draws: list[Draw]) -> None:
        for d in draws:
            if self.journal is not None:
                self.journal.append(d)
            self.draws[d.index] = d
            for check, o in d.outcomes.items():
                if o.verdict in self.counts:
                    self.counts[o.verdict] += 1
                if o.verdict is Verdict.FAIL and self.progress:  # as it happens: a long survey shows failures early
                    self.bar.write(f"FAIL draw {d.index}: {d.command} --checks {check}: {o.message[:300]}",
                                   file=sys.stderr)
            self.bar.update(1)
        self.bar.set_postfix_str(f"{self.counts[Verdict.FAIL]} fail, {self.counts[Verdict.INCONCLUSIVE]} inconclusive")


def _collect(executor: cf.Executor, tasks: list[DrawTask], sink: _Collector) -> None:
    """Submit every task, collect as they complete. A task whose worker died runs once more, alone (so that
    a second death is its own, not a neighbour's); when that worker dies too, its draws are recorded as
    worker-died. A local pool that broke is restarted (:meth:`LocalPool.restart`): the tasks it was running
    (their marker files) are the suspects, the others go back as they were. Dask names the task whose worker
    died (KilledWorker, after the scheduler's own retries)."""
    pending = {executor.submit(run_task, t): t for t in tasks}
    try:
        _drain(executor, tasks, pending, sink)
    except BaseException:  # an interrupt or an error: what has not started is not started
        for fut in pending:
            fut.cancel()
        raise


def _drain(executor: cf.Executor, tasks: list[DrawTask], pending: dict, sink: _Collector) -> None:
    """:func:`_collect`'s loop; ``pending`` (future -> task) is kept current so that the caller can cancel."""
    while pending:
        finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        suspects, lost, death = [], [], None
        for fut in finished:
            task = pending.pop(fut)
            exc = fut.exception()
            if exc is None:
                sink.add(fut.result())
            elif not is_worker_death(exc):
                raise exc
            else:
                (lost if isinstance(exc, cf.BrokenExecutor) else suspects).append(task)
                death = exc
        resubmit = []
        if lost:  # the whole local pool is gone, with every task it held
            if not hasattr(executor, "restart"):
                raise death
            lost += pending.values()
            pending.clear()
            running = _running(tasks[0].markers)
            for task in lost:
                (suspects if running is None or task.indices[0] in running else resubmit).append(task)
            executor.restart()
        for task in suspects:  # one at a time, alone on a fresh worker: a death now is its own
            again = _run_alone(executor, task)
            sink.add(again if isinstance(again, list) else _died(task, death, again))
        pending.update({executor.submit(run_task, t): t for t in resubmit})


def _running(markers: str | None) -> set[int] | None:
    """The first draw index of each task a broken local pool was running (None: no markers kept), and
    the markers cleared for the restarted pool."""
    if markers is None:
        return None
    out = set()
    for p in Path(markers).iterdir():
        out.add(int(p.name))
        p.unlink(missing_ok=True)
    return out


def _run_alone(executor: cf.Executor, task: DrawTask) -> list[Draw] | BaseException:
    """The task's second try, with nothing else submitted: its draws, or the worker death that ended it."""
    fut = executor.submit(run_task, task)
    cf.wait([fut])
    exc = fut.exception()
    if exc is None:
        return fut.result()
    if not is_worker_death(exc):
        raise exc
    if isinstance(exc, cf.BrokenExecutor):
        _running(task.markers)
        executor.restart()
    return exc


def _died(task: DrawTask, first: BaseException, second: BaseException) -> list[Draw]:
    """The draws of a task whose worker died on both tries, as inconclusive draws that say so."""
    def why(exc):
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]

    message = (f"the worker running this draw died on both tries (first: {why(first)}; then: {why(second)}): "
               "a killed process (out of memory?) or a crash in native code; re-run the draw alone to see")
    return [failed_draw(task.config, i, task.checks, message, WORKER_DIED) for i in task.indices]


def run_survey(config: SurveyConfig, executor: cf.Executor | None = None, progress: bool = True,
               argv: list[str] | None = None, journal: Journal | None = None, done: list[Draw] = (),
               checks: list[str] | None = None, executor_info: dict | None = None) -> SurveyResults:
    """Draw ``config.n`` problems and run the checks on each, on ``executor`` (None: in this process); flows
    of ``batch_size`` draws at a time share one batched solve (:func:`~verifier.survey.stacked.prefill_ladders`).
    ``journal`` receives each finished draw; ``done``: draws already journalled (a resume), not run again.
    Interrupted (KeyboardInterrupt), it returns the draws that finished, with ``survey["interrupted"]``
    saying so."""
    start, started = time.perf_counter(), _dt.datetime.now(_dt.timezone.utc)
    sha = git_sha()  # the code that runs: taken now, a long survey may outlive the checkout's HEAD
    device = config.torch_device
    size = batch_size(config)
    ids = checks if checks is not None else survey_checks(config)
    have = {d.index for d in done}
    missing = [i for i in range(config.n) if i not in have]
    sink = _Collector(config, list(done), journal, progress)
    markers = tempfile.mkdtemp(prefix="verifier-survey-") if isinstance(executor, LocalPool) else None
    threads = executor.threads if isinstance(executor, LocalPool) else 1 if executor is not None else None
    tasks = [DrawTask(config, tuple(missing[k:k + size]), tuple(ids), threads, markers)
             for k in range(0, len(missing), size)]
    interrupted = None
    try:
        if executor is None:
            for task in tasks:
                sink.add(run_draws(config, task.indices, ids, worker_name()))
        else:
            _collect(executor, tasks, sink)
    except KeyboardInterrupt:  # keep what finished: a long survey can be stopped and still reported
        if isinstance(executor, LocalPool):
            executor.shutdown(wait=False)  # its running draws are stopped, not waited for
        interrupted = (f"interrupted after {len(sink.draws)} of {config.n} draws: the rates are over the "
                       f"{len(sink.draws)} draws that finished")
    finally:
        sink.bar.close()
        if markers:
            shutil.rmtree(markers, ignore_errors=True)
    survey = {
        "config": config.as_dict(), "batch_used": size, "seed_rule": SEED_RULE,
        "command": shlex.join(argv) if argv is not None else shlex.join(sys.argv),
        "device": str(device), "dtype": "float64", "versions": versions(), "git_sha": sha,
        "machine": _machine(device), "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - start, 1), "checks": ids,
        "executor": executor_info or describe_executor(executor),
    } | ({"resumed": {"journal": str(journal.path) if journal else None, "draws_from_journal": len(have),
                      "draws_run_now": len(sink.draws) - len(have)}} if have else {}) \
      | ({"interrupted": interrupted} if interrupted else {})
    draws = tuple(sink.draws[i] for i in sorted(sink.draws))
    return SurveyResults(survey=survey, claims={i: REGISTRY[i].claim for i in ids}, draws=draws)


def _machine(device) -> str:
    """e.g. '2 CPU cores (x86_64, Linux)' or 'NVIDIA H200 (cuda), 16 CPU cores (...)'."""
    import os
    import platform

    import torch

    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()})"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda), {cpu}"
    return cpu
