"""The pytest plugin: parametrize_with_checks ids and marks, --verifier-report, --verifier-device.

Fake checks are put in the registry for the length of a test (monkeypatch), so no slow check runs; the
inner pytest sessions run in-process (pytester) and see them.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from verifier.checks.registry import REGISTRY, CheckSpec
from verifier.config import RunConfig
from verifier.pytest_plugin import CheckFailed, Problem, parametrize_with_checks, record
from verifier.results import CheckResult, Metric, Verdict

pytest_plugins = ["pytester"]


def _fake(name: str, verdict: Verdict):
    def check(ctx):
        return CheckResult(name, "", verdict, f"fake {verdict.value} on {ctx.model.family}",
                           metrics={"context": Metric.info(id(ctx)), "p": Metric.at_most(ctx.model.p, 100)},
                           key_metric="p")
    return check


@pytest.fixture
def fake_checks(monkeypatch):
    for name, verdict in (("fake-pass", Verdict.PASS), ("fake-fail", Verdict.FAIL)):
        monkeypatch.setitem(REGISTRY, name, CheckSpec(name, f"claim {name}", _fake(name, verdict), order=-1))


SMALL = Problem("small", config=RunConfig(preset="diag-linear"), expected_failures={"fake-fail": "known counterexample"})
FULL = Problem("full", model=SimpleNamespace(diagonal=False, family="full-attention"))


def test_parametrize_ids_and_marks(fake_checks):
    mark = parametrize_with_checks([SMALL, FULL], checks=["fake-pass", "fake-fail"]).mark
    assert mark.args[0] == "problem, check"
    params = {p.id: p for p in mark.args[1]}
    assert list(params) == ["small-fake-pass", "small-fake-fail", "full-fake-pass", "full-fake-fail"]
    assert list(params["small-fake-pass"].marks) == []
    xfail = params["small-fake-fail"].marks[0]
    assert xfail.name == "xfail" and xfail.kwargs == {"reason": "known counterexample", "strict": True,
                                                      "raises": CheckFailed}
    skip = params["full-fake-pass"].marks[0]
    assert skip.name == "skip" and "needs a network with diagonal weights" in skip.kwargs["reason"]


def test_parametrize_rejects_unknown_ids_and_duplicate_names(fake_checks):
    with pytest.raises(ValueError, match="unknown check 'nope'"):
        parametrize_with_checks([Problem("x", model=FULL.model, expected_failures={"nope": "?"})])
    with pytest.raises(ValueError, match="must be unique"):
        parametrize_with_checks([FULL, FULL], checks=["fake-pass"])


def test_check_call_raises_unless_pass(fake_checks):
    from verifier.pytest_plugin import CheckCall

    assert SMALL.build() is SMALL.build()  # built once per pytest session

    assert CheckCall("fake-pass")(SMALL).verdict == Verdict.PASS
    with pytest.raises(CheckFailed, match="fake-fail on small: fail: fake fail on diag-linear"):
        CheckCall("fake-fail")(SMALL)


def test_record_outside_a_report_is_a_no_op_and_typed():
    r = CheckResult("x", "", Verdict.PASS, "")
    assert record(r) is r
    with pytest.raises(TypeError, match="takes a CheckResult"):
        record("not a result")


INNER = '''
from verifier.config import RunConfig
from verifier.results import CheckResult, Verdict
from verifier.pytest_plugin import Problem, parametrize_with_checks, record

SMALL = Problem("small", config=RunConfig(preset="diag-linear"),
                expected_failures={"fake-fail": "known counterexample"})
OTHER = Problem("other", config=RunConfig(preset="diag-linear", seed=1), checks=("fake-fail",))
STRICT = Problem("strict", config=RunConfig(preset="diag-linear"), checks=("fake-pass",),
                 expected_failures={"fake-pass": "wrongly expected to fail"})
FIG = {"title": "a property", "series": [{"label": "s", "x": [1, 2, 3], "y": [3, 2, 1]}]}


@parametrize_with_checks([SMALL, OTHER, STRICT], checks=["fake-pass", "fake-fail"])
def test_theory(problem, check):
    check(problem)


def test_property(verifier_record, verifier_device):
    assert verifier_device == "cpu"
    verifier_record(CheckResult("prop", "a property", Verdict.PASS, "held", evidence={"figures": [FIG]}))


def test_module_level_record():
    record(CheckResult("prop-2", "another property", Verdict.FAIL, "counterexample found"))
'''


def test_session_report_gathers_every_result(fake_checks, pytester):
    pytester.makepyfile(test_inner=INNER)
    out = pytester.runpytest("--verifier-report", "rep/report.html", "--verifier-device", "cpu", "-p", "no:randomly")
    out.assert_outcomes(passed=3, failed=2, xfailed=1)
    out.stdout.fnmatch_lines(["*fake-fail on other: fail: fake fail on diag-linear*",
                              "*XPASS(strict)*wrongly expected to fail*",
                              "*verifier report: rep*report.html (6 check results)*"])
    html = (pytester.path / "rep" / "report.html").read_text(encoding="utf-8")
    assert html.count("<svg") == 1 and "counterexample found" in html
    data = json.loads((pytester.path / "rep" / "report.json").read_text(encoding="utf-8"))
    got = [(c["id"], c["verdict"], c["provenance"]["test"], c["provenance"]["test_outcome"]) for c in data["checks"]]
    assert got == [
        ("fake-pass", "pass", "test_inner.py::test_theory[small-fake-pass]", "passed"),
        ("fake-fail", "fail", "test_inner.py::test_theory[small-fake-fail]", "xfailed"),
        ("fake-fail", "fail", "test_inner.py::test_theory[other-fake-fail]", "failed"),
        ("fake-pass", "pass", "test_inner.py::test_theory[strict-fake-pass]", "failed"),  # strict XPASS
        ("prop", "pass", "test_inner.py::test_property", "passed"),
        ("prop-2", "fail", "test_inner.py::test_module_level_record", "passed"),
    ]
    assert "test_inner.py::test_theory[small-fake-fail]</code>, which xfailed." in html
    small = [c for c in data["checks"][:2]]
    assert small[0]["metrics"]["context"] == small[1]["metrics"]["context"]  # one Context per problem
    assert small[0]["config"]["device"] == "cpu" and data["run"]["provenance"]["device"] == "cpu"
    assert data["checks"][2]["config"]["seed"] == 1


def test_no_report_without_the_option(fake_checks, pytester):
    pytester.makepyfile(test_inner=INNER)
    pytester.runpytest("--verifier-device", "cpu").assert_outcomes(passed=3, failed=2, xfailed=1)
    assert not list(pytester.path.glob("**/*.html"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="cuda is available here")
def test_verifier_device_cuda_without_cuda_is_a_usage_error(pytester):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    out = pytester.runpytest("--verifier-device", "cuda")
    assert out.ret == pytest.ExitCode.USAGE_ERROR
    out.stderr.fnmatch_lines(["*--verifier-device*cuda requested but torch.cuda.is_available() is False*"])


def test_many_results_are_capped_and_the_report_says_so(tmp_path):
    from verifier.pytest_plugin import MAX_PASSING_PER_CHECK, _Session, _session_results
    from verifier.report import render_html

    session = _Session(tmp_path / "r.html", "cpu", [])
    for k in range(MAX_PASSING_PER_CHECK + 5):
        session.add(CheckResult("prop", "", Verdict.PASS, f"example {k}"))
    session.add(CheckResult("prop", "", Verdict.FAIL, "counterexample"))
    assert [r.message for r in session.results][-2:] == [f"example {MAX_PASSING_PER_CHECK - 1}", "counterexample"]
    assert len(session.results) == MAX_PASSING_PER_CHECK + 1 and session.omitted == {"prop (pass)": 5}
    assert "5 more results of prop (pass) were recorded and left out of this report" in render_html(
        _session_results(session))


XDIST_INNER = '''
import pytest
from verifier.checks import register
from verifier.config import RunConfig
from verifier.pytest_plugin import Problem, parametrize_with_checks
from verifier.results import CheckResult, Metric, Verdict


@register("xdist-probe", "a probe check", order=-1)
def probe(ctx):
    return CheckResult("xdist-probe", "", Verdict.PASS, f"seed {ctx.config.seed}",
                       metrics={"seed": Metric.info(ctx.config.seed)})


PROBLEMS = [Problem(f"p{k}", config=RunConfig(preset="diag-linear", seed=k), checks=("xdist-probe",)) for k in range(4)]


@parametrize_with_checks(PROBLEMS)
def test_theory(problem, check):
    check(problem)
'''


def test_xdist_workers_results_gather_into_one_report(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_inner=XDIST_INNER)
    out = pytester.runpytest_subprocess("-n", "2", "--verifier-report", "rep/report.html", "-p", "no:randomly")
    out.assert_outcomes(passed=4)
    data = json.loads((pytester.path / "rep" / "report.json").read_text(encoding="utf-8"))
    got = sorted((c["provenance"]["test"], c["metrics"]["seed"]["value"]) for c in data["checks"])
    assert got == [(f"test_inner.py::test_theory[p{k}-xdist-probe]", k) for k in range(4)]
    assert {c["provenance"]["test_outcome"] for c in data["checks"]} == {"passed"}
    assert (pytester.path / "rep" / "report.html").read_text(encoding="utf-8").count('class="check pass"') == 4
