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
