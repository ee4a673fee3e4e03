"""The regression gate: verdict regressions, gated metric tolerances, and the CLI's three exit codes."""

from __future__ import annotations

import json

import pytest

from verifier.checks.result import CheckResult, Verdict
from verifier.cli import main
from verifier.gate import GATED_METRICS, HIGHER, LOWER, compare, gate_rule
from verifier.results import RunResults, write_results

P, F, I = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE


def check(id, verdict=P, metrics=None, thresholds=None):
    return CheckResult(id, f"claim of {id}", verdict, f"message of {id}", metrics=metrics or {},
                       thresholds=thresholds or {})


def runs(*checks, seed=0):
    return RunResults(run={"config": {"preset": "toy-attention", "seed": seed}}, checks=tuple(checks))


def statuses(outcome):
    return {(r.check, r.item): r.status for r in outcome.rows}


def test_identical_runs_pass():
    base = runs(check("a", metrics={"max_drift": 1e-12}), check("b", F))
    out = compare(base, base)
    assert out.ok and set(statuses(out).values()) == {"same"}
    assert out.table().splitlines()[-1] == "gate: OK, nothing got worse"


@pytest.mark.parametrize("new_verdict", [F, I])
def test_pass_to_fail_or_inconclusive_is_a_regression(new_verdict):
    out = compare(runs(check("a"), check("b")), runs(check("a"), check("b", new_verdict)))
    assert not out.ok and statuses(out) == {("a", "verdict"): "same", ("b", "verdict"): "worse"}
    assert out.table().splitlines()[-1] == "gate: FAIL, 1 regression(s)"


def test_missing_check_new_check_and_improvements():
    base = runs(check("gone"), check("was-failing", F), check("failing-gone", F), check("flaky", I))
    new = runs(check("was-failing", P), check("flaky", F), check("added"))
    s = statuses(compare(base, new))
    assert s == {("gone", "verdict"): "worse", ("was-failing", "verdict"): "better",
                 ("failing-gone", "verdict"): "changed", ("flaky", "verdict"): "changed", ("added", "verdict"): "new"}
    assert compare(base, new).ok is False  # only "gone" counts: it passed in the baseline
    assert compare(runs(check("x", F)), runs()).ok  # a failing check that disappeared is not a regression


def test_error_metric_tolerance_relative_and_threshold_slack():
    rule = gate_rule("transition_time_error")
    assert rule.better == LOWER
    base = runs(check("t", metrics={"transition_time_error": 0.1}))
    grown = 0.1 * (1 + rule.rtol) * 1.01  # just beyond the relative tolerance
    within = 0.1 * (1 + rule.rtol) * 0.99
    assert not compare(base, runs(check("t", metrics={"transition_time_error": grown}))).ok
    assert compare(base, runs(check("t", metrics={"transition_time_error": within}))).ok
    # A drift far below its threshold may grow by orders of magnitude: rounding, not a regression.
    drift = runs(check("l", metrics={"max_drift": 1e-15}, thresholds={"max_drift_max": 1e-8}))
    assert compare(drift, runs(check("l", metrics={"max_drift": 5e-10}, thresholds={"max_drift_max": 1e-8}))).ok
    worse = compare(drift, runs(check("l", metrics={"max_drift": 5e-9}, thresholds={"max_drift_max": 1e-8})))
    assert not worse.ok and statuses(worse)[("l", "max_drift")] == "worse"


def test_lists_nan_missing_and_ungated_metrics():
    base = runs(check("t", metrics={"beta_error": [0.4, 0.2, 0.1], "b_error": 0.3, "rate": 1.0, "nfev": 100}))
    new = runs(check("t", metrics={"beta_error": [0.4, 0.2, 0.5], "b_error": "nan", "rate": 0.1, "nfev": 90}))
    s = statuses(compare(base, new))
    assert s[("t", "beta_error[2]")] == "worse" and ("t", "beta_error[0]") not in s
    assert s[("t", "b_error")] == "worse"  # finite in the baseline, NaN now
    assert ("t", "rate") not in s  # not gated: no rule matches "rate"
    assert ("t", "nfev") not in s  # 10% fewer evaluations is within tolerance
    relabelled = compare(base, runs(check("t", metrics={"beta_error": [0.4, 0.2], "rate": 1.0, "nfev": 100})))
    s = statuses(relabelled)
    assert s[("t", "beta_error")] == "not compared" and s[("t", "b_error")] == "worse"  # disappeared


def test_margin_is_higher_is_better():
    assert gate_rule("min_margin").better == HIGHER
    base = runs(check("m", metrics={"min_margin": 0.2}))
    assert not compare(base, runs(check("m", metrics={"min_margin": 0.05}))).ok
    assert statuses(compare(base, runs(check("m", metrics={"min_margin": 0.5}))))[("m", "min_margin")] == "better"


def test_every_rule_has_a_direction_and_nonnegative_tolerance():
    assert all(r.better in (LOWER, HIGHER) and r.rtol >= 0 and r.atol >= 0 for r in GATED_METRICS)


def test_config_differences_are_noted():
    out = compare(runs(check("a"), seed=0), runs(check("a"), seed=1))
    assert out.ok and out.notes == ("config seed differs: baseline 0, new 1",)


def _write(path, results):
    write_results(results, path)
    return str(path)


def test_cli_gate_exit_codes(tmp_path, capsys):
    base = _write(tmp_path / "base.json", runs(check("lemma-4.1"), check("theorem-4.5")))
    same = _write(tmp_path / "same.json", runs(check("lemma-4.1"), check("theorem-4.5")))
    regressed = _write(tmp_path / "new.json", runs(check("lemma-4.1"), check("theorem-4.5", F)))
    assert main(["gate", "--baseline", base, same]) == 0
    assert "gate: OK" in capsys.readouterr().out
    assert main(["gate", "--baseline", base, regressed]) == 1
    out = capsys.readouterr().out
    assert "theorem-4.5" in out and "WORSE" in out and "gate: FAIL, 1 regression(s)" in out


@pytest.mark.parametrize("content, says", [
    ("", "not readable JSON"),
    (json.dumps({"schema_version": 99, "run": {}, "checks": []}), "schema_version is 99, expected 1"),
    (json.dumps({"schema_version": 1, "run": {}, "checks": [{"verdict": "pass"}]}), "checks[0] must be an object"),
])
def test_cli_gate_malformed_results_exit_2(tmp_path, capsys, content, says):
    base = _write(tmp_path / "base.json", runs(check("a")))
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    assert main(["gate", "--baseline", base, str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("verifier: error: ") and says in err and "bad.json" in err
    assert main(["gate", "--baseline", str(tmp_path / "absent.json"), base]) == 2
    assert "absent.json: file not found" in capsys.readouterr().err
