"""A new claim is one new file and one line (docs/ADDING_A_CLAIM.md): a copy of the package with the page's
``origin_saddle.py`` added and its import line appended, and nothing else changed, runs the claim through
``verifier run`` (the suite, its declared option, its report note), ``verifier survey``, a hunt and
``verifier report``. The code under test is the page's own text, so the page cannot go stale."""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "ADDING_A_CLAIM.md"


def _block(heading: str) -> str:
    """The first python block under ``## heading`` of the page."""
    text = PAGE.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()
            and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A copy of verifier/ with the new file and the one line; returns the folder to put on PYTHONPATH."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(ROOT / "verifier", src / "verifier", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "verifier" / "checks" / "origin_saddle.py").write_text(_block("The file"))
    init = src / "verifier" / "checks" / "__init__.py"
    init.write_text(init.read_text() + _block("The line"))
    before, after = _tree(ROOT / "verifier"), _tree(src / "verifier")
    assert set(after) - set(before) == {"checks/origin_saddle.py"} and set(before) <= set(after)
    changed = [name for name in before if before[name] != after[name]]
    assert changed == ["checks/__init__.py"]
    diff = [line for line in difflib.unified_diff(before[changed[0]].splitlines(), after[changed[0]].splitlines(),
                                                   lineterm="", n=0) if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert diff == ["+from . import origin_saddle  # noqa: E402,F401"]
    return src


def _verifier(package: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package), "VERIFIER_WORKERS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "verifier", *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=900)


def _python(package: Path, cwd: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)


def test_the_new_claim_runs_through_run_its_option_and_the_report(package, tmp_path):
    out = _verifier(package, tmp_path, "checks")
    assert out.returncode == 0 and re.search(r"^origin-saddle +Stage 0 of Algorithm 1", out.stdout, re.M), out.stderr
    # its declared option is accepted with it, and still refused with a check that does not use it
    run = _verifier(package, tmp_path, "run", "--preset", "diag-linear", "--checks", "origin-saddle", "--alphas",
                    "1e-4,1e-8", "--out", "ok", "--no-progress")
    assert run.returncode == 0, run.stderr
    [check] = json.loads((tmp_path / "ok" / "results.json").read_text())["checks"]
    assert check["id"] == "origin-saddle" and check["verdict"] == "pass" and check["reason"] is None
    T1 = check["metrics"]["first_transition_time"]["value"]
    assert check["metrics"]["max_grad_at_zero"]["value"] == pytest.approx(1 / T1)
    assert check["metrics"]["escape_time"]["value"] == pytest.approx({"0.0001": np.log(1e4) * T1,
                                                                      "1e-08": np.log(1e8) * T1})
    refused = _verifier(package, tmp_path, "run", "--preset", "diag-linear", "--checks", "definition-3.1",
                        "--alphas", "1e-4", "--out", "no", "--no-progress")
    assert refused.returncode == 2 and refused.stderr.startswith("verifier: error: --alphas: ")
    assert "origin-saddle" in refused.stderr and not (tmp_path / "no").exists()
    # the counterexample it must flag: a zero teacher; the report explains the failure kind with its note
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "zero.npz", X=rng.standard_normal((20, 4)), y=np.zeros(20))
    fail = _verifier(package, tmp_path, "run", "--model", "diag-linear", "--data", "zero.npz", "--checks",
                     "origin-saddle", "--out", "zero", "--no-progress")
    assert fail.returncode == 1, fail.stderr
    [check] = json.loads((tmp_path / "zero" / "results.json").read_text())["checks"]
    assert check["verdict"] == "fail" and check["reason"] == "origin-stationary"
    note = "A stationary origin is not a violation of a later assumption"
    assert note in (tmp_path / "zero" / "report.html").read_text()
    again = _verifier(package, tmp_path, "report", "zero/results.json", "-o", "again.html")
    assert again.returncode == 0 and note in (tmp_path / "again.html").read_text()


def test_the_new_claim_runs_in_the_suite_the_survey_and_a_hunt(package, tmp_path):
    survey = _verifier(package, tmp_path, "survey", "--preset", "diag-linear", "--n", "2", "--checks",
                       "origin-saddle", "--out", "s", "--no-progress")
    assert survey.returncode == 0, survey.stderr
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    outcomes = [d["checks"]["origin-saddle"] for d in saved["draws"]]
    assert len(outcomes) == 2 and all(o["verdict"] == "pass" and o["metric"] == "max_grad_at_zero" for o in outcomes)
    code = """
        import verifier, torch
        from hypothesis import HealthCheck, settings
        from verifier.checks import REGISTRY, resolve_ids
        from verifier.checks.registry import integrating_flow
        from verifier.config import RunConfig
        from verifier.context import Context
        from verifier.survey.hunt import HUNTED, SIZES, hunt, problems

        assert verifier.__file__.startswith({root!r}), verifier.__file__
        ctx = Context(RunConfig(preset="diag-linear"), argv=["t"])
        assert "origin-saddle" in resolve_ids(None, ctx.model)  # in the default suite of the models it applies to
        assert integrating_flow(["origin-saddle", "theorem-4.5"], ctx.config) == ["theorem-4.5"]
        assert "origin-saddle" in HUNTED
        found = hunt("origin-saddle", problems("diag-linear", SIZES["ci"]["diag-linear"]),
                     settings(max_examples=2, derandomize=True, database=None, deadline=None,
                              suppress_health_check=list(HealthCheck)), device="cpu")
        assert found is None  # a sparse nonzero teacher never has a stationary origin
        print("ok")
    """.replace("{root!r}", repr(str(package)))
    out = _python(package, tmp_path, code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
