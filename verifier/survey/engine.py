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
from ..pool import LocalPool, worker_name
from ..results import Verdict
from .config import SEED_RULE, SurveyConfig
from .journal import Journal
from .results import WORKER_DIED, Draw, SurveyResults
from .workers import (DrawTask, describe_executor, draw_context, failed_draw, is_worker_death, run_draws, run_task,
                      user_code_error)

ACCELERATOR_BATCH = 16  # draws per batched flow solve on an accelerator (on a CPU: 1, bit-exact reproduction)
TRIES = 2  # a task whose worker dies runs once more, then its draws are recorded as worker-died


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


def survey_checks(config: SurveyConfig) -> list[str]:
    """The check ids, resolved on the first draw whose problem builds (a model file's factory may raise for
    some seeds: those draws are recorded as user-code errors, not refused). Bad input raises InputError."""
    if config.model_file is None:
        return check_ids_for(config, draw_context(config, 0))
    _require_seed_parameter(config.model_file)
    first = None
    for i in range(config.n):
        try:
            return check_ids_for(config, draw_context(config, i))
        except InputError as exc:
            if exc.field != "--model-file":
                raise
            first = first or exc
        except SystemExit as exc:
            first = first or InputError("--model-file", user_code_error(config, i, exc))
    raise InputError("--model-file", f"no draw's problem could be built; the first: {first}")


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


class ExecutorLost(Exception):
    """The executor can run nothing more (a Dask scheduler that went away): the survey stops, and the journal
    keeps every draw that finished."""


LOST_POLL_S = 10.0  # how often a wait for results asks whether the executor is still there


def _lost(executor) -> str | None:
    lost = getattr(executor, "lost", None)
    return lost() if lost is not None else None


def _submit(executor: cf.Executor, task: DrawTask) -> cf.Future:
    """``executor.submit(run_task, task)``; a local pool that broke before it took the task gives a future
    that failed with that error, handled as any task of a broken pool."""
    try:
        return executor.submit(run_task, task)
    except cf.BrokenExecutor as exc:
        fut: cf.Future = cf.Future()
        fut.set_exception(exc)
        return fut


def _wait(executor: cf.Executor, futures) -> set:
    """The futures that finished (at least one), or ExecutorLost when the executor has been gone on two polls
    in a row (a client that reconnects within :data:`LOST_POLL_S` goes on)."""
    gone = None
    while True:
        finished, _ = cf.wait(futures, timeout=LOST_POLL_S, return_when=cf.FIRST_COMPLETED)
        if finished:
            return finished
        why = _lost(executor)
        if why is not None and gone is not None:
            raise ExecutorLost(why)
        gone = why


def _failure(executor: cf.Executor, fut: cf.Future) -> BaseException | None:
    """The exception a finished task ended with (None: it returned its draws). A task cancelled or failed
    because the executor went away is ExecutorLost."""
    exc = None if not fut.cancelled() else cf.CancelledError()
    if exc is None:
        exc = fut.exception()
    if exc is not None and not is_worker_death(exc):
        why = _lost(executor)
        if why is not None:
            return ExecutorLost(f"{why}; the task ended with {type(exc).__name__}")
    return exc


def _collect(executor: cf.Executor, tasks: list[DrawTask], sink: _Collector) -> None:
    """Submit every task, collect as they complete. A task whose worker died runs once more, alone (so that
    a second death is its own, not a neighbour's); when that worker dies too, its draws are recorded as
    worker-died. A local pool that broke (at whatever moment: while taking tasks, or running them) is
    restarted (:meth:`LocalPool.restart`): the tasks it was running (their marker files) are the suspects,
    the others go back as they were. Dask names the task whose worker died (KilledWorker, after the
    scheduler's own retries); a Dask scheduler that goes away stops the survey (ExecutorLost)."""
    pending: dict = {}
    try:
        for t in tasks:
            pending[_submit(executor, t)] = t
        _drain(executor, tasks, pending, sink)
    except BaseException:  # an interrupt or an error: what has not started is not started
        for fut in pending:
            fut.cancel()
        raise


def _drain(executor: cf.Executor, tasks: list[DrawTask], pending: dict, sink: _Collector) -> None:
    """:func:`_collect`'s loop; ``pending`` (future -> task) is kept current so that the caller can cancel."""
    while pending:
        finished = _wait(executor, pending)
        suspects, lost, death = [], [], None
        for fut in finished:
            task = pending.pop(fut)
            exc = _failure(executor, fut)
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
        for t in resubmit:
            pending[_submit(executor, t)] = t


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
    fut = _submit(executor, task)
    _wait(executor, [fut])
    exc = _failure(executor, fut)
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
               checks: list[str] | None = None) -> SurveyResults:
    """Draw ``config.n`` problems and run the checks on each, on ``executor`` (None: in this process); flows
    of ``batch_size`` draws at a time share one batched solve (:func:`~verifier.survey.stacked.prefill_ladders`).
    ``journal`` receives each finished draw; ``done``: draws already journalled (a resume), not run again.
    Interrupted (KeyboardInterrupt), it returns the draws that finished, with ``survey["interrupted"]``
    saying so; an executor that went away raises :class:`ExecutorLost` (the journal keeps what finished)."""
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
        "executor": describe_executor(executor),  # at the end: a local pool's restarts counted
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
