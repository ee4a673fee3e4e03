"""Failure kinds: every check registers its own Reason enum (kebab-case str values), documented in
docs/THEORY.md §5.0; a reason a check did not declare is refused by the registry (the result says so)."""

import re
from enum import Enum
from pathlib import Path

import pytest

from verifier.checks import REGISTRY, CheckResult, CommonReason, Verdict, run_check
from verifier.checks.registry import CheckSpec
from verifier.config import RunConfig
from verifier.context import Context
from verifier.models import DiagLinear

THEORY = (Path(__file__).resolve().parents[1] / "docs" / "THEORY.md").read_text()


@pytest.mark.parametrize("check_id", sorted(REGISTRY))
def test_every_check_declares_documented_kebab_case_reasons(check_id):
    spec = REGISTRY[check_id]
    assert spec.reasons is not CommonReason, f"{check_id} registers no Reason enum of its own"
    for value in spec.reason_values():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", value)
        assert f"`{value}`" in THEORY, f"{check_id}: reason {value!r} is not documented in docs/THEORY.md §5.0"


def test_an_undeclared_reason_is_refused(monkeypatch):
    class Mine(str, Enum):
        KNOWN = "known"

    def check(ctx):
        return CheckResult("probe", "a probe", Verdict.FAIL, "bad", reason="unknown-kind")

    monkeypatch.setitem(REGISTRY, "probe", CheckSpec("probe", "a probe", check, Mine, diagonal_only=False))
    import torch

    model = DiagLinear(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    r = run_check("probe", Context(RunConfig(preset=None, model="diag-linear"), model=model, argv=["test"]))
    assert r.verdict is Verdict.INCONCLUSIVE and r.reason == "check-raised"
    assert "reason 'unknown-kind' is not one of probe's declared reasons (known, check-raised" in r.message


def _zero_loss_results(with_theorem: bool):
    from verifier.results import Metric, RunResults

    a42 = CheckResult("assumption-4.2", "claim", Verdict.FAIL, "(c) stage 7: qk[14] left ...",
                      reason="zero-loss-last-stage", metrics={"theorem_45_on_this_run": Metric.info(
                          {"verdict": "pass", "reason": None, "message": "recorded by 4.2"})})
    t45 = CheckResult("theorem-4.5", "claim", Verdict.PASS, "ran in this run")
    run = {"config": {}, "provenance": {}}
    return RunResults(run, (a42, t45) if with_theorem else (a42,))


def test_summary_report_and_gate_show_the_reason():
    from verifier.gate import RowStatus, compare
    from verifier.report import render_html, summary_table
    from verifier.results import RunResults

    results = _zero_loss_results(with_theorem=False)
    assert "FAIL (zero-loss-last-stage)" in summary_table(results, width=160)
    html = render_html(results)
    assert "zero-loss-last-stage" in html and "The zero-loss last stage" in html and "recorded by 4.2" in html
    # with theorem-4.5 in the same run, the report shows that result beside 4.2's
    assert "ran in this run" in render_html(_zero_loss_results(with_theorem=True))
    base = RunResults({"config": {}, "provenance": {}}, (CheckResult("assumption-4.2", "c", Verdict.PASS, "ok"),))
    (row,) = [r for r in compare(base, results).rows if r.item == "verdict"]
    assert row.status is RowStatus.WORSE and row.new == "fail (zero-loss-last-stage)"
