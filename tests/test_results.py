"""Results as data: the light core imports no torch, figures are typed, verdicts combine one way, and
results.json round-trips the declarations."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from verifier.figures import Figure, Mark, Series
from verifier.results import (CheckResult, CommonReason, Gate, Judgement, Metric, ResultsFormatError, RunResults,
                              Verdict, jsonable, parse_results, results_json)


@pytest.mark.parametrize("module", ["verifier", "verifier.results", "verifier.gate", "verifier.report",
                                    "verifier.figures", "verifier.pytest_plugin"])
def test_the_light_core_imports_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_pytest_session_with_verifier_installed_loads_no_torch(tmp_path):
    (tmp_path / "test_x.py").write_text("import sys\n\ndef test_x():\n    assert 'torch' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_x.py")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_figures_are_typed_a_typo_fails():
    with pytest.raises(TypeError):
        Figure("f", "t", "line", "x", "y", series=(), ylabl="oops")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="kind 'lines'"):
        Figure("f", "t", "lines", "x", "y", series=())
    with pytest.raises(ValueError, match="yscale 'logarithmic'"):
        Figure("f", "t", "line", "x", "y", series=(), yscale="logarithmic")
    with pytest.raises(TypeError, match="Series objects"):
        Figure("f", "t", "line", "x", "y", series=({"label": "a", "x": [1], "y": [2]},))
    with pytest.raises(ValueError, match="2 x values and 1 y values"):
        Series("a", [1, 2], [3])
    fig = Figure("f", "t", "bar", "x", "y", series=[Series("a", range(3), [1, 2, math.nan], "o")],
                 vlines=[Mark(1, "T_1")], hlines=(Mark(0.5),))
    d = jsonable(fig)
    assert d["series"] == [{"label": "a", "x": [0.0, 1.0, 2.0], "y": [1.0, 2.0, "nan"], "style": "o"}]
    assert d["vlines"] == [{"x": 1.0, "label": "T_1"}] and d["hlines"] == [{"y": 0.5, "label": ""}]


def test_verdicts_combine_one_way():
    P, I = Verdict.PASS, Verdict.INCONCLUSIVE
    assert Verdict.worst([P, P]) is P and Verdict.worst([P, I]) is I
    assert Verdict.worst([]) is I  # nothing measured is never a pass


def test_judgements_compose_one_way():
    """The worst verdict; messages failures first, then inconclusive ones, then passes (stable within each); the
    reason of the first part with the worst verdict; nothing judged is inconclusive, never a pass."""
    a, b = Judgement.passed("a"), Judgement.inconclusive(CommonReason.SOLVER_FAILED, "b")
    c, d = Judgement.failed("tie", "c"), Judgement.failed("other", "d")
    assert Judgement.compose([a, b, c, d]) == Judgement(Verdict.FAIL, "tie", "c | d | b | a")
    assert Judgement.compose([b, a], "; ") == Judgement(Verdict.INCONCLUSIVE, "solver-failed", "b; a")
    assert Judgement.compose([a, Judgement.passed("")]) == Judgement.passed("a")
    assert Judgement.compose([]) == Judgement.inconclusive("nothing-to-test", "nothing was judged")
    assert type(b.reason) is str  # an enum member is stored as its value


def test_a_judgement_is_well_formed_or_refused():
    with pytest.raises(ValueError, match="a pass has no failure reason"):
        Judgement(Verdict.PASS, "tie", "m")
    with pytest.raises(ValueError, match="needs a kebab-case reason"):
        Judgement(Verdict.FAIL, None, "m")
    with pytest.raises(ValueError, match="needs a kebab-case reason"):
        Judgement.inconclusive("Not Kebab", "m")
    with pytest.raises(TypeError, match="must be a Verdict"):
        Judgement("pass", None, "m")
    with pytest.raises(TypeError, match="must be a str"):
        Judgement.passed(None)
    r = CheckResult.judged("x", "claim", Judgement.failed(CommonReason.SOLVER_FAILED, "why"), key_metric="m",
                           metrics={"m": Metric.info(1)})
    assert (r.verdict, r.reason, r.message, r.key_metric) == (Verdict.FAIL, "solver-failed", "why", "m")


def test_reason_is_kebab_case_and_only_for_fail_or_inconclusive():
    assert CheckResult("x", "c", Verdict.FAIL, "m", reason=CommonReason.SOLVER_FAILED).reason == "solver-failed"
    assert type(CheckResult("x", "c", Verdict.FAIL, "m", reason=CommonReason.SOLVER_FAILED).reason) is str
    with pytest.raises(ValueError, match="a pass has no failure reason"):
        CheckResult("x", "c", Verdict.PASS, "m", reason="tie")
    with pytest.raises(ValueError, match="kebab-case"):
        CheckResult("x", "c", Verdict.FAIL, "m", reason="Not Kebab")


def test_reasons_round_trip_in_schema_3_and_older_versions_read_without_one():
    c = CheckResult("x", "claim", Verdict.FAIL, "why", reason="zero-loss-last-stage")
    raw = json.loads(results_json(RunResults({"config": {}}, (c,))))
    assert raw["checks"][0]["reason"] == "zero-loss-last-stage"
    assert parse_results(raw).checks[0].reason == "zero-loss-last-stage"
    for version in (1, 2):  # a reason key in an old file is not part of its schema: ignored
        old = {**raw, "schema_version": version}
        assert parse_results(old).checks[0].reason is None
    bad = {**raw, "checks": [{**raw["checks"][0], "verdict": "pass"}]}
    with pytest.raises(ResultsFormatError, match="reason"):
        parse_results(bad)


def test_results_json_round_trips_the_declarations():
    c = CheckResult("x", "claim", Verdict.PASS, "ok",
                    metrics={"err": Metric.at_most(0.01, 0.05, Gate(2.0, 1e-9)), "n": Metric.info([1, 2]),
                             "margin": Metric.at_least(math.inf, 0.1, None)},
                    key_metric="err", settings={"noise": 0.1}, evidence={"figures": [
                        Figure("f", "t", "line", "x", "y", series=(Series("s", [0, 1], [1, 0]),))]})
    raw = json.loads(results_json(RunResults({"config": {}}, (c,))))
    assert raw["schema_version"] == 3 and raw["checks"][0]["reason"] is None
    assert raw["checks"][0]["metrics"]["err"] == {"value": 0.01, "threshold": 0.05, "better": "lower",
                                                  "gate": {"factor": 2.0, "atol": 1e-9}}
    assert raw["checks"][0]["metrics"]["margin"] == {"value": "inf", "threshold": 0.1, "better": "higher"}
    (back,) = parse_results(raw).checks
    assert back.metrics["err"] == c.metrics["err"] and back.key_metric == "err" and back.settings == {"noise": 0.1}
    assert back.metrics["n"] == Metric.info([1, 2]) and back.evidence["figures"][0]["id"] == "f"
