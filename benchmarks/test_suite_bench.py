"""The default suite (``verifier run`` with no arguments: every check on ``toy-attention``) as one benchmark:
``extra_info`` records wall and CPU seconds, each check's duration and verdict, and Algorithm 1's and the
ladder's share (issue 11's target: <= 150 s on a 2-core CPU). Asserts the verdicts, never the time."""

import time

import pytest

from verifier.checks import resolve_ids, run_check
from verifier.config import RunConfig
from verifier.context import Context


def test_default_suite(benchmark, machine_info):
    out = {}

    def suite():
        wall, cpu = time.perf_counter(), time.process_time()
        ctx = Context(RunConfig(), argv=["pytest", "benchmarks"])
        laps = {}
        for name, run in (("algorithm-1", lambda: ctx.stages), ("ladder", lambda: ctx.ladder)):
            start = time.perf_counter()
            run()
            laps[name] = round(time.perf_counter() - start, 1)
        out["results"] = [run_check(i, ctx) for i in resolve_ids(None, ctx.model)]
        out["laps"] = laps
        out["wall"], out["cpu"] = time.perf_counter() - wall, time.process_time() - cpu

    benchmark.pedantic(suite, rounds=1, iterations=1)
    machine_info.update({"seconds": round(out["wall"], 1), "cpu_seconds": round(out["cpu"], 1),
                         "shared": out["laps"],
                         "checks": {r.id: {"verdict": r.verdict.value, "seconds": round(r.duration_s, 1)}
                                    for r in out["results"]}})
    assert all(r.verdict.value == "pass" for r in out["results"]), [(r.id, r.message) for r in out["results"]]


def _suite_seconds(preset: str, workers: int) -> tuple[float, float, list]:
    """(wall s, this process's CPU s, results) of ``run_checks`` on ``preset``'s paper suite, every process at
    one torch thread (what a worker gets on 2 cores; a thread count changes values at rounding level)."""
    import torch

    from verifier.runner import run_checks

    own = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        ctx = Context(RunConfig(preset=preset), argv=["pytest", "benchmarks"])
        res = run_checks(ctx, resolve_ids(None, ctx.model), progress=False, workers=workers)
        return time.perf_counter() - wall, time.process_time() - cpu, res.checks
    finally:
        torch.set_num_threads(own)


@pytest.mark.parametrize("preset", ["toy-attention", "diag-transformer"])
def test_suite_in_worker_processes(benchmark, machine_info, preset):
    """One process and two (``verifier run --workers``), one after the other in this run, one torch thread
    each: the ratio of wall times, and the same verdicts and metrics (tests/test_runner.py)."""
    out = {}

    def both():
        out[1] = _suite_seconds(preset, 1)
        out[2] = _suite_seconds(preset, 2)

    benchmark.pedantic(both, rounds=1, iterations=1)
    machine_info.update({"preset": preset, "wall_1_worker": round(out[1][0], 1), "wall_2_workers": round(out[2][0], 1),
                         "ratio": round(out[1][0] / out[2][0], 2),
                         "checks_2_workers": {r.id: round(r.duration_s, 1) for r in out[2][2]}})
    assert [(r.id, r.verdict) for r in out[1][2]] == [(r.id, r.verdict) for r in out[2][2]]
    assert [r.to_dict()["metrics"] for r in out[1][2]] == [r.to_dict()["metrics"] for r in out[2][2]]
