"""Run a list of checks on one problem (the CLI writes the outputs: :mod:`verifier.outputs`).

In this process, one check after the other, or (``workers`` > 1) in worker processes: the checks are split
into groups that read no cached computation in common (:func:`share_groups`: the alpha ladder, the reference
run), each group runs in order in one spawned process on a Context rebuilt from the run's config. Algorithm 1's
stages, which most checks read, are computed once here and handed over; the groups that do not read them run
meanwhile. The results are the same, value for value, as in one process at the same torch thread count
(tests/test_runner.py; a thread count, like any torch run's, moves values at rounding level only); only
``duration_s`` differs. docs/ARCHITECTURE.md, "Parallel checks".
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import sys
from dataclasses import dataclass

from tqdm import tqdm

from .checks import run_check
from .config import RunConfig
from .context import Context
from .errors import InputError
from .pool import LocalPool, threads_per_worker
from .results import RunResults


def run_checks(ctx: Context, ids: list[str], progress: bool = True, workers: int = 1) -> RunResults:
    """The checks ``ids`` on ``ctx``; ``workers`` > 1 runs groups of them in that many processes where
    :func:`can_split` allows (else here, one after the other)."""
    groups = share_groups(ids)
    count = min(workers, len(groups))
    parallel = count > 1 and can_split(ctx) is None
    ctx.provenance["workers"] = count if parallel else 1
    results = _run_in_workers(ctx, ids, groups, count, progress) if parallel else _run_here(ctx, ids, progress)
    run = {"config": ctx.config.as_dict(), "provenance": ctx.provenance, "model": ctx.model.family,
           "problem": ctx.problem, "checks": ids}
    return RunResults(run=run, checks=tuple(results))


def _run_here(ctx: Context, ids: list[str], progress: bool) -> list:
    results = []
    bar = tqdm(ids, desc="verifier", unit="check", file=sys.stderr, disable=not progress, leave=False)
    for check_id in bar:
        bar.set_postfix_str(check_id)
        if progress:
            ctx.progress = _postfix(bar, check_id)
        results.append(run_check(check_id, ctx))
    return results


def _postfix(bar, check_id: str):
    """A ``Context.progress`` that shows what the running check is doing after its id on the bar."""
    def show(label: str, fraction: float | None = None) -> None:
        bar.set_postfix_str(f"{check_id}: {label}" + ("" if fraction is None else f" {min(fraction, 1.0):.0%}"))

    return show


# What the parent computes once and hands to every worker (the other cached computations stay in one group).
HANDED_OVER = frozenset({"stages"})


def share_groups(ids: list[str]) -> list[list[str]]:
    """``ids`` split into groups that read no cached Context computation in common (``CheckSpec.reads``, less
    :data:`HANDED_OVER`), each in the given order. Largest group first (it is started first), then in the
    order of their first check."""
    from .checks.registry import REGISTRY

    groups: list[tuple[set[str], list[str]]] = []
    for check_id in ids:
        reads = set(REGISTRY[check_id].reads) - HANDED_OVER if check_id in REGISTRY else set()
        joined = [g for g in groups if g[0] & reads]
        merged = (reads.union(*(g[0] for g in joined)), [i for g in joined for i in g[1]] + [check_id])
        groups = [g for g in groups if not any(g is j for j in joined)] + [merged]
    ordered = [sorted(g[1], key=ids.index) for g in groups]
    return sorted(ordered, key=lambda g: (-len(g), ids.index(g[0])))


def reads_stages(group: list[str]) -> bool:
    from .checks.registry import REGISTRY

    return any("stages" in REGISTRY[i].reads for i in group if i in REGISTRY)


def can_split(ctx: Context) -> str | None:
    """None when the checks of ``ctx`` may run in worker processes, else why not: the workers rebuild the
    problem from the run's config, so a model object handed in (tests, the pytest plugin) stays here; and a
    GPU is one device that one process already fills."""
    if ctx.model_given:
        return "the model was handed in as an object"
    if ctx.device.type != "cpu":
        return f"the run is on {ctx.device.type}"
    return None


@dataclass(frozen=True)
class GroupTask:
    """What a worker needs: the run's config and provenance, the checks in order, Algorithm 1's stages, and
    the parent model's :func:`fingerprint`."""

    config: RunConfig
    provenance: dict
    ids: tuple[str, ...]
    stages: object | None
    fingerprint: tuple[float, ...] | None = None


class ModelDiffers(Exception):
    """A worker could not rebuild the parent's model from the config: the user's code raised, exited or changed
    the directory there, or the model differs (a model file that draws its data or weights without a seed).
    The group runs in the parent instead, where the model is the one every other check sees."""


# Losses at FINGERPRINT_PROBES seeded points that agree to this relative tolerance are the same model (a rebuilt
# model differs at rounding level at most; other data or weights differ at O(1)).
FINGERPRINT_PROBES, FINGERPRINT_RTOL = 3, 1e-9


def fingerprint(model) -> tuple[float, ...] | None:
    """L(theta) at FINGERPRINT_PROBES points 0.5 N(0, 1) of a fixed generator (None where the loss raises:
    the checks then report that error themselves)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    thetas = 0.5 * torch.randn(FINGERPRINT_PROBES, model.n_params, generator=gen, dtype=torch.float64)
    try:
        with torch.no_grad():
            return tuple(float(model.loss_params(t.to(model.device))) for t in thetas)
    except Exception:
        return None


def run_group(task: GroupTask) -> list:
    """The worker's side: a Context rebuilt from the config (a model file is imported again, under the same
    guard) and checked against the parent's fingerprint, the parent's provenance and stages, then the group's
    checks in order."""
    import math

    try:
        ctx = Context(task.config)
    except InputError as exc:  # the model file's code, which ran in the parent, refused here
        raise ModelDiffers(f"rebuilding the model in a worker failed ({exc})") from None
    if task.fingerprint is not None:
        mine = fingerprint(ctx.model)
        if mine is None or not all(math.isclose(a, b, rel_tol=FINGERPRINT_RTOL, abs_tol=0.0) or a == b
                                   for a, b in zip(mine, task.fingerprint)):
            raise ModelDiffers("the model rebuilt in a worker differs from this process's (does the model file "
                               "draw its data or weights without a seed?)")
    ctx.provenance = task.provenance
    if task.stages is not None:
        ctx.__dict__["stages"] = task.stages  # the cached_property's slot
    return [run_check(check_id, ctx) for check_id in task.ids]


def _stages(ctx: Context, bar) -> None:
    """Algorithm 1's stages, computed once here (cached on ``ctx``); where computing them raises, the workers
    meet the same error inside each check that reads them, a result as in one process."""
    bar.set_postfix_str("Algorithm 1")
    try:
        ctx.stages
    except InputError:
        raise
    except Exception:
        pass


def _ready() -> None:
    """A worker's first task: import what the checks need (while Algorithm 1 runs here)."""
    from . import checks  # noqa: F401


WORKER_DIED = "a worker process died"


def _run_in_workers(ctx: Context, ids: list[str], groups: list[list[str]], count: int, progress: bool) -> list:
    """Groups of checks in ``count`` worker processes. A group whose worker died, at whatever moment (before
    its group was handed over, while Algorithm 1 ran here, mid-check), or whose worker rebuilt another model
    (:class:`ModelDiffers`) runs here instead, and ``provenance.ran_here`` says why. An interrupt or an
    error stops every worker at once."""
    import torch

    from .checks.registry import notify

    bar = tqdm(total=len(ids), desc="verifier", unit="check", file=sys.stderr, disable=not progress, leave=False)
    threads, own = threads_per_worker(count), torch.get_num_threads()
    torch.set_num_threads(threads)  # Algorithm 1 here runs beside a worker: the cores are shared out alike
    pool = None
    done: dict = {}

    def take(results) -> None:
        for result in results:
            done[result.id] = result
            notify(result)
            bar.update(1)

    def here(group: list[str], why: str) -> None:
        ctx.provenance.setdefault("ran_here", []).append({"checks": list(group), "why": why})
        take([run_check(check_id, ctx) for check_id in group])

    try:
        pool = LocalPool(count, threads, field="workers")
        futures, orphans = {}, []
        for _ in range(count):  # the workers start (and import torch) while Algorithm 1 runs here
            with contextlib.suppress(cf.BrokenExecutor):
                pool.submit(_ready)
        bar.set_postfix_str(f"{count} worker processes")
        probe = fingerprint(ctx.model)
        # Groups that do not read Algorithm 1 start now, beside it; the others once its stages are here.
        tried = False
        for g in sorted(groups, key=reads_stages):
            if reads_stages(g) and not tried:
                _stages(ctx, bar)
                tried = True
                bar.set_postfix_str(f"{count} worker processes")
            task = GroupTask(ctx.config, ctx.provenance, tuple(g), ctx.__dict__.get("stages"), probe)
            try:
                futures[pool.submit(run_group, task)] = g
            except cf.BrokenExecutor:  # a worker died before this group was handed over
                orphans.append(g)
        for future in cf.as_completed(futures):
            try:
                results = future.result()
            except cf.BrokenExecutor:  # its worker died (killed, out of memory): the group runs here
                here(futures[future], WORKER_DIED)
            except ModelDiffers as exc:  # its worker's model is not this one
                here(futures[future], str(exc))
            else:
                take(results)
        for g in orphans:
            here(g, WORKER_DIED)
    except BaseException:  # an interrupt, a worker's InputError: stop the others now
        if pool is not None:
            pool.shutdown(wait=False)
        raise
    finally:
        bar.close()
        torch.set_num_threads(own)
    pool.shutdown()
    return [done[i] for i in ids]


def run_suite(config: RunConfig, ids: list[str] | None = None, argv: list[str] | None = None,
              progress: bool = True, workers: int = 1) -> RunResults:
    """Library entry point: the checks ``ids`` (default: every check that applies) on ``config``, in
    ``workers`` processes (:func:`run_checks`)."""
    from .checks import resolve_ids

    ctx = Context(config, argv=argv)
    return run_checks(ctx, ids if ids is not None else resolve_ids(None, ctx.model), progress=progress,
                      workers=workers)
