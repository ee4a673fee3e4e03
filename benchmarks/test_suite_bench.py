"""The default suite (``verifier run`` with no arguments: every check on ``toy-attention``) as one benchmark:
``extra_info`` records wall and CPU seconds, each check's duration and verdict, and Algorithm 1's and the
ladder's share (issue 11's target: <= 150 s on a 2-core CPU). Asserts the verdicts, never the time."""

import time

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
