"""The hunting machinery (verifier.survey.hunt): problems of each family, the score hypothesis maximises, and
a planted violation found, shrunk and reproduced by its printed command."""

import json
import math
import shlex

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import data as D
from verifier.cli import main
from verifier.checks import Verdict, assumption43
from verifier.survey.hunt import SIZES, Problem, hunt, measure, problems, score
from verifier.survey.results import Outcome


@settings(max_examples=6, derandomize=True, database=None)
@given(st.sampled_from(["diag-linear", "toy-attention"]).flatmap(lambda f: problems(f, SIZES["ci"][f])))
def test_problems_build_the_model_the_cli_builds(tmp_path_factory, problem):
    sizes = SIZES["ci"][problem.family]
    ctx = problem.context(tmp_path_factory.mktemp("p"), device="cpu")
    assert np.array_equal(ctx.model.X.numpy(), problem.X) and np.array_equal(ctx.model.Y.numpy(), problem.Y)
    lo, hi = sizes["N"]
    assert lo <= problem.X.shape[0] <= hi
    if problem.family == "toy-attention":
        assert ctx.model.temperature == problem.X.shape[-1] ** -0.5 and problem.Y.shape == problem.X.shape
    assert ctx.config.seed == problem.seed


def test_score_grows_towards_and_past_the_threshold():
    def o(v, better="higher"):
        return Outcome("pass", "", "m", v, 0.01, better)

    assert score(o(1.0)) < score(o(0.1)) < score(o(0.011)) < 0 < score(o(0.001)) < score(o(-1.0))
    assert score(o(1e-12, "lower")) < score(o(1e-3, "lower")) < 0 < score(o(1.0, "lower"))
    assert score(o(0.0, "lower")) == -30.0 and not math.isnan(score(o(None)))


def tied(seed: int) -> Problem:
    """Orthogonal design, teacher with |beta*_0| = |beta*_1|: both activate at T = 1 (a tie, Assumption 4.2b)."""
    X = D.orthogonal_design(8, 3, D.generator(seed))
    return Problem("diag-linear", X.numpy(), (X @ torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)).numpy(), seed)


def test_hunt_finds_a_planted_tie_shrinks_it_and_its_command_fails_alone(tmp_path):
    found = hunt("assumption-4.2", st.builds(tied, st.integers(0, 3)),
                 settings(max_examples=3, derandomize=True, database=None), folder=tmp_path, device="cpu")
    assert found is not None and found.problem.seed == 0  # shrunk to the smallest seed
    assert found.outcome.metric == "min_stage_margin" and found.outcome.value < 0.01
    argv = shlex.split(found.command)
    assert argv[:2] == ["verifier", "run"] and "Reproduce: " + found.command in found.report()
    out = tmp_path / "rerun"
    assert main(argv[1:] + ["--out", str(out), "--no-progress"]) == 1
    (check,) = json.loads((out / "results.json").read_text())["checks"]
    assert check["verdict"] == "fail" and check["metrics"]["min_stage_margin"]["value"] == found.outcome.value
    assert "tie between" in check["message"]


def test_hunt_returns_none_when_nothing_crosses(tmp_path):
    calls = []

    def never(check, ctx):
        calls.append(ctx.config.seed)
        return Outcome("pass", "", "min_stage_margin", 0.5, 0.01, "higher")

    found = hunt("assumption-4.2", st.builds(tied, st.integers(0, 3)), settings(max_examples=4, database=None),
                 folder=tmp_path, measure_fn=never)
    assert found is None and 1 <= len(calls) <= 4 and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="hunts exist for"):
        hunt("theorem-4.5", st.builds(tied, st.integers(0, 3)))


def test_a_hunted_outcome_carries_the_judges_message_and_reason(valley_context):
    """The hunt's measurement of assumption-4.3 (restricted Hessians only) reports the judge's message and reason
    each in its place: it once unpacked the part judge's tuple in the wrong order, so a hunted 4.3 outcome
    carried the reason code where its message should be (and no message at all for a pass)."""
    o = measure("assumption-4.3", valley_context)
    judged = assumption43.judge_stages(assumption43.measure_stages(valley_context,
                                                                   valley_context.model.coordinate_names()))
    assert o.verdict is Verdict.FAIL and o.reason == "not-strict-minimum" == judged.reason
    assert o.message == judged.message and "not a strict minimum" in o.message
    assert o.metric == "min_rel_eig" and o.value < o.threshold
