"""The regression gate: verdict regressions, gated metric tolerances, and the CLI's three exit codes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from verifier.cli import main
from verifier.gate import compare
from verifier.results import (HIGHER, LOWER, CheckResult, Gate, Metric, RunResults, Verdict, read_results,
                              write_results)

P, F, I = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE


def check(id, verdict=P, metrics=None):
    return CheckResult(id, f"claim of {id}", verdict, f"message of {id}", metrics=metrics or {})


def runs(*checks, seed=0):
    return RunResults(run={"config": {"preset": "toy-attention", "seed": seed}}, checks=tuple(checks))


def statuses(outcome):
    return {(r.check, r.item): r.status for r in outcome.rows}


def test_identical_runs_pass():
    base = runs(check("a", metrics={"max_drift": Metric.at_most(1e-12, 1e-7)}), check("b", F))
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


@pytest.mark.parametrize("better, base, worse, within", [
    (LOWER, 0.1, 0.1 * 1.5 * 1.01, 0.1 * 1.5 * 0.99),  # factor 1.5 up is the edge for lower-is-better
    (HIGHER, 0.3, 0.3 / 1.5 * 0.99, 0.3 / 1.5 * 1.01),  # and factor 1.5 down for higher-is-better
    (LOWER, -0.2, -0.2 + 0.5 * 0.2 * 1.01, -0.2 + 0.5 * 0.2 * 0.99),  # a negative base moves by (factor-1)|base|
])
def test_declared_direction_and_factor_decide(better, base, worse, within):
    decl = lambda v: {"m": Metric(v, None, better, Gate(factor=1.5))}  # noqa: E731
    assert statuses(compare(runs(check("t", metrics=decl(base))), runs(check("t", metrics=decl(worse)))))[("t", "m")] == "worse"
    assert compare(runs(check("t", metrics=decl(base))), runs(check("t", metrics=decl(within)))).ok


def test_atol_is_the_rounding_floor_and_a_loose_factor_tolerates_noise():
    base = runs(check("l", metrics={"max_drift": Metric.at_most(1e-15, 1e-7, Gate(factor=5.0, atol=1e-14))}))
    new = lambda v: runs(check("l", metrics={"max_drift": Metric.at_most(v, 1e-7, Gate(5.0, 1e-14))}))  # noqa: E731
    assert compare(base, new(1e-14)).ok  # 10x, but below the floor: rounding
    assert not compare(base, new(2e-14)).ok  # beyond 5 x 1e-15 + 1e-14


def test_the_baselines_declarations_decide_not_the_names():
    """A metric named like an error but declared ungated is not compared; one named like nothing is, when declared."""
    base = runs(check("t", metrics={"some_error": Metric.info(0.1), "zeta": Metric.lower(1.0)}))
    new = runs(check("t", metrics={"some_error": Metric.info(9.0), "zeta": Metric.lower(2.0)}))
    s = statuses(compare(base, new))
    assert ("t", "some_error") not in s and s[("t", "zeta")] == "worse"


def test_lists_nan_missing_and_ungated_metrics():
    base = runs(check("t", metrics={"beta_error": Metric.lower([0.4, 0.2, 0.1]), "b_error": Metric.at_most(0.3, 1.0),
                                     "rate": Metric.info(1.0), "nfev": Metric.lower(100)}))
    new = runs(check("t", metrics={"beta_error": Metric.lower([0.4, 0.2, 0.5]), "b_error": Metric.at_most("nan", 1.0),
                                    "rate": Metric.info(0.1), "nfev": Metric.lower(90)}))
    s = statuses(compare(base, new))
    assert s[("t", "beta_error[2]")] == "worse" and ("t", "beta_error[0]") not in s
    assert s[("t", "b_error")] == "worse"  # finite in the baseline, NaN now
    assert ("t", "rate") not in s  # not gated: declared as information
    assert ("t", "nfev") not in s  # 10% fewer evaluations is within tolerance
    renamed = compare(base, runs(check("t", metrics={"beta_error": Metric.lower([0.4, 0.2]), "b_err": Metric.lower(0.3),
                                                      "rate": Metric.info(1.0), "nfev": Metric.lower(100)})))
    s = statuses(renamed)
    assert s[("t", "beta_error")] == "not compared" and s[("t", "b_error")] == "worse"  # renamed: it disappeared


def test_margin_is_higher_is_better():
    base = runs(check("m", metrics={"min_margin": Metric.at_least(0.2, 0.01)}))
    assert not compare(base, runs(check("m", metrics={"min_margin": Metric.at_least(0.05, 0.01)}))).ok
    better = compare(base, runs(check("m", metrics={"min_margin": Metric.at_least(0.5, 0.01)})))
    assert statuses(better)[("m", "min_margin")] == "better"


def test_declarations_are_validated():
    with pytest.raises(ValueError, match="direction"):
        Metric(1.0, threshold=2.0)
    with pytest.raises(ValueError, match="better"):
        Metric(1.0, better="sideways")
    with pytest.raises(ValueError, match="factor"):
        Gate(factor=0.5)
    with pytest.raises(TypeError, match="Metric declarations"):
        CheckResult("x", "", P, "", metrics={"raw": 1.0})
    with pytest.raises(ValueError, match="key_metric"):
        CheckResult("x", "", P, "", metrics={"a": Metric.info(1)}, key_metric="b")


def test_the_gate_catches_a_ten_times_worse_key_metric_of_every_check_of_the_baseline():
    """The committed baseline: for every check, its key metric made 10x worse in its declared direction fails
    the gate, and the baseline against itself passes."""
    from importlib.resources import files

    base = read_results(files("verifier") / "baselines" / "default.json")
    assert compare(base, base).ok
    for k, c in enumerate(base.checks):
        assert c.key_metric is not None and c.metrics[c.key_metric].gate is not None, c.id
        m = c.metrics[c.key_metric]
        worse_value = m.value * 10 if m.better == LOWER else m.value / 10
        worse = replace(c, metrics={**c.metrics, c.key_metric: replace(m, value=worse_value)})
        new = RunResults(base.run, base.checks[:k] + (worse,) + base.checks[k + 1:])
        out = compare(base, new)
        assert not out.ok and statuses(out)[(c.id, c.key_metric)] == "worse", c.id


def test_version_1_files_are_read_with_the_rules_they_implied(tmp_path):
    v1 = {"schema_version": 1, "run": {"config": {}}, "checks": [
        {"id": "t", "verdict": "pass", "message": "", "evidence": {"key_metric": "max_drift"},
         "metrics": {"max_drift": 1e-12, "min_stage_margin": 0.1, "stages": 6},
         "thresholds": {"max_drift": 1e-7, "min_stage_margin": 0.01, "noise": 0.1}}]}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1), encoding="utf-8")
    (c,) = read_results(path).checks
    assert c.key_metric == "max_drift" and c.settings == {"noise": 0.1}
    assert (c.metrics["max_drift"].better, c.metrics["max_drift"].threshold) == (LOWER, 1e-7)
    assert (c.metrics["min_stage_margin"].better, c.metrics["min_stage_margin"].threshold) == (HIGHER, 0.01)
    assert c.metrics["stages"].gate is None and c.metrics["max_drift"].gate is not None


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
    (json.dumps({"schema_version": 99, "run": {}, "checks": []}), "schema_version is 99, allowed: 1, 2, 3"),
    (json.dumps({"schema_version": True, "run": {}, "checks": []}), "schema_version is True, allowed: 1, 2, 3"),
    (json.dumps({"schema_version": 2, "run": {}, "checks": [{"verdict": "pass"}]}), "checks[0] must be an object"),
    (json.dumps({"schema_version": 2, "run": {}, "checks": [{"id": "a", "verdict": "pass", "metrics": {"m": 3}}]}),
     "checks[0].metrics.m must be an object with a 'value'"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
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
