"""Surveys: the ladders of several draws in one stacked solve (verifier.survey.stacked) against each draw's
own solve, side by side in one benchmark (``extra_info``: seconds of each, the ratio, gradient evaluations).
Asserts the work counts agree (the stacked rows take the steps each draw takes alone), never a time."""

import time

import pytest

from verifier.context import Context
from verifier.survey import SurveyConfig
from verifier.survey.stacked import prefill_ladders

DRAWS = 4


@pytest.mark.parametrize("preset", ["diag-linear"])
def test_stacked_ladders_vs_one_solve_per_draw(benchmark, machine_info, preset):
    config = SurveyConfig(preset=preset, n=DRAWS, device="cpu")
    alone = [Context(config.run_config(i)) for i in range(DRAWS)]
    stacked = [Context(config.run_config(i)) for i in range(DRAWS)]
    for a, s in zip(alone, stacked):
        s.stages = a.stages  # Algorithm 1 is not part of the comparison
    seconds = {}

    def both():
        start = time.perf_counter()
        for c in alone:
            c.ladder
        seconds["alone"] = time.perf_counter() - start
        start = time.perf_counter()
        prefill_ladders(stacked, ["theorem-4.5"])
        seconds["stacked"] = time.perf_counter() - start

    benchmark.pedantic(both, rounds=1, iterations=1)
    nfev = {k: int(sum(c.ladder.nfev.sum() for c in cs)) for k, cs in (("alone", alone), ("stacked", stacked))}
    machine_info.update({"draws": DRAWS, "seconds": {k: round(v, 2) for k, v in seconds.items()},
                         "speedup": seconds["alone"] / seconds["stacked"], "nfev": nfev})
    assert abs(nfev["stacked"] - nfev["alone"]) <= 0.02 * nfev["alone"], nfev


THROUGHPUT_DRAWS = 16
THROUGHPUT_CHECKS = ("definition-3.1", "lemma-4.1", "assumption-4.2")


def test_survey_throughput_one_vs_two_workers(benchmark, machine_info):
    """``verifier survey --preset diag-linear --n 16`` (three checks) in this process, then on two local worker
    processes (``--workers 2``, pool start-up included), side by side; the load average before and after
    each is recorded (a shared machine). Asserts the two give the same draws bit for bit, never a time."""
    import os

    from verifier.survey import run_survey
    from verifier.pool import LocalPool, threads_per_worker

    config = SurveyConfig(preset="diag-linear", n=THROUGHPUT_DRAWS, checks=THROUGHPUT_CHECKS, device="cpu")
    seconds, load, results = {}, {}, {}

    def both():
        for name, workers in (("workers_1", 1), ("workers_2", 2)):
            load[name] = [round(x, 2) for x in os.getloadavg()]
            start = time.perf_counter()
            pool = LocalPool(workers, threads_per_worker(workers)) if workers > 1 else None
            try:
                results[name] = run_survey(config, pool, progress=False)
            finally:
                if pool is not None:
                    pool.shutdown()
            seconds[name] = time.perf_counter() - start
            load[name].append([round(x, 2) for x in os.getloadavg()])

    benchmark.pedantic(both, rounds=1, iterations=1)
    machine_info.update({"draws": THROUGHPUT_DRAWS, "checks": list(THROUGHPUT_CHECKS), "cores": os.cpu_count(),
                         "seconds": {k: round(v, 1) for k, v in seconds.items()},
                         "speedup": seconds["workers_1"] / seconds["workers_2"], "loadavg_before_after": load})

    def key(res):
        return [(d.index, {c: (o.verdict, o.value) for c, o in d.outcomes.items()}) for d in res.draws]

    assert key(results["workers_1"]) == key(results["workers_2"])
