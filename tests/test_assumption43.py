"""assumption-4.3 passes on a generic diagonal linear network (eigenvalues equal to those of X_A^T X_A / N)
and flags the known counterexamples: a flat valley (duplicated columns) and logistic loss on separable
data (no finite minimiser)."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from verifier.checks import Verdict, run_check
from verifier.cli import main
from verifier.config import RunConfig
from verifier.context import Context
from verifier.presets import build_model


@pytest.fixture(scope="module")
def generic(generic_linear_context):
    ctx = generic_linear_context
    return ctx, run_check("assumption-4.3", ctx)


def test_generic_linear_passes_with_the_analytic_spectrum(generic):
    ctx, res = generic
    assert res.verdict is Verdict.PASS, res.message
    X, N = ctx.model.X.numpy(), ctx.model.X.shape[0]
    stages = [s for s in ctx.stages.stages if s.support]
    assert len(res.values["stages"]) == len(stages) >= 3
    for row, s in zip(res.values["stages"], stages):
        A = list(s.support)
        eigs = np.linalg.eigvalsh(X[:, A].T @ X[:, A] / N)  # the Hessian of the square loss, exactly
        assert row["lambda_min"] == pytest.approx(eigs[0], rel=1e-10)
        assert row["lambda_max"] == pytest.approx(eigs[-1], rel=1e-10)
        assert row["newton_step"] < 1e-8


def test_generic_linear_runs_return_to_the_plateau(generic):
    _, res = generic
    runs = res.values["figure9"]["runs"]
    assert len(runs) == 4
    for r in runs:
        assert r["d0"] > 1e-3  # the perturbation moved the point
        assert r["return_ratio"] < 1e-3  # exp(-lambda t) with lambda ~ 0.5 |beta| and t = 10
    ids = {f.id for f in res.evidence["figures"]}
    assert {"hessian-spectra", "figure9-return", "figure9-epochs"} <= ids


def test_flat_valley_fails_naming_the_eigenvalue(valley_context):
    ctx = valley_context
    res = run_check("assumption-4.3", ctx)
    assert res.verdict is Verdict.FAIL and res.reason == "not-strict-minimum"
    lam = [r["lambda_min"] for r in res.values["stages"]]
    assert all(abs(v) < 1e-12 for v in lam)  # x0 - x0 = 0: the direction e0 - e1 is exactly flat
    assert re.search(r"stage 1: smallest eigenvalue -?[0-9.e+-]+ of the Hessian on A_1 = \{beta\[0\], beta\[1\]\}",
                     res.message)
    assert "a flat direction" in res.message
    # The run itself sits in the valley too (both duplicates grow together), and does not come back.
    assert "a flat direction the run sits in" in res.message
    assert "stalled: the run does not return" in res.message
    assert res.values["max_return_ratio"] > 0.1


def test_logistic_on_separable_data_has_no_finite_minimiser(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    y = np.sign(X @ np.array([1.0, -0.5, 0.3]))
    np.savez(tmp_path / "separable.npz", X=X, y=y)
    out = tmp_path / "out"
    rc = main(["run", "--model", "diag-linear", "--data", str(tmp_path / "separable.npz"), "--loss", "logistic",
               "--checks", "assumption-4.3", "--out", str(out), "--no-progress"])
    assert rc == 1
    res = json.loads((out / "results.json").read_text())["checks"][0]
    assert res["verdict"] == "fail" and res["reason"] == "weights-diverge"
    assert "no finite minimiser exists (weights diverge)" in res["message"]
    for probe in res["metrics"]["existence"]["value"]:
        loss, growth = probe["loss"], probe["growth_per_decade"]
        assert all(b < a for a, b in zip(loss, loss[1:]))
        assert min(growth) > 1.0  # |beta| gains a steady amount per decade of t: log t growth


def test_full_attention_is_not_applicable():
    model = build_model("full-attention")
    res = run_check("assumption-4.3", Context(RunConfig(preset="full-attention"), model=model, argv=["test"]))
    assert res.verdict is Verdict.INCONCLUSIVE and res.reason == "not-applicable"
    assert res.message.startswith("not applicable")


@pytest.mark.slow
def test_toy_attention_passes(tmp_path):
    """The paper reports Assumptions 4.3 and 4.4 hold on its toy (Appendix A); several minutes on 2 cores."""
    rc = main(["run", "--preset", "toy-attention", "--checks", "assumption-4.3,assumption-4.4",
               "--out", str(tmp_path), "--no-progress"])
    checks = {c["id"]: c for c in json.loads((tmp_path / "results.json").read_text())["checks"]}
    assert rc == 0, {k: c["message"] for k, c in checks.items()}
    m43, m44 = ({k: m["value"] for k, m in checks[c]["metrics"].items()} for c in ("assumption-4.3", "assumption-4.4"))
    assert m43["min_rel_eig"] > 1e-3 and m43["max_return_ratio"] < 0.1
    assert m44["max_spread"] < 1e-4 and m44["max_endpoint_ratio"] < 0.1


def test_figure9_perturbs_only_plateaus_that_outlast_the_perturbed_run():
    """Draw 5 of the diag-linear survey (docs/SURVEYS.md): its plateau epoch tau = 0.628 lies 10 units of plain
    time before the next transition (T_2 = 0.641 at L = 589), the perturbed run's whole time, so it took part in
    that transition and 'failed' to return. Such epochs are no longer chosen; every chosen one is followed by
    PLATEAU_ROOM x the run's time without a transition, and the draw passes."""
    from verifier.checks import _perturb as P
    from verifier.checks.assumption43 import PLATEAU_ROOM

    ctx = Context(RunConfig(preset="diag-linear", seed=3533508198), argv=["test"])
    ref = P.reference_run(ctx)
    T = P.perturb_time(ctx.config)
    every = P.plateau_epochs(ref, ctx.config.negligible)
    lasting = P.lasting_epochs(ref, every, ctx.config.negligible, PLATEAU_ROOM * T, ctx.stages.stages[-1].T)
    crossings = ref.traj.crossing_tau[0][ref.traj.crossing_tau[0].isfinite()]
    def gap(j):  # plain time from epoch j to the next transition (inf after the last)
        ahead = crossings[crossings > ref.traj.tau[j]] - ref.traj.tau[j]
        return float(ahead.min()) * ref.L if len(ahead) else float("inf")

    gap = {j: gap(j) for j in every}
    assert set(lasting) < set(every) and any(g <= PLATEAU_ROOM * T for g in gap.values())
    assert all(gap[j] > PLATEAU_ROOM * T for j in lasting)
    assert [j for j in every if gap[j] > PLATEAU_ROOM * T] == lasting  # nothing else is dropped here
    res = run_check("assumption-4.3", ctx)
    assert res.verdict is Verdict.PASS, res.message


def test_figure9_without_a_lasting_plateau_is_inconclusive_not_a_pass():
    """The run stops (horizon) before the last stage of Algorithm 1 and the perturbed runs (1000 time units)
    are longer than any plateau before it (the whole run at alpha = 1e-256 is about 400): their return cannot
    be judged, so Figure 9 says so instead of passing or failing on it."""
    config = RunConfig(preset="diag-linear", seed=3533508198, perturb_epochs=10**5)
    T_last = Context(config, argv=["test"]).stages.stages[-1].T
    ctx = Context(replace(config, horizon=0.99 * T_last), argv=["test"])
    res = run_check("assumption-4.3", ctx)
    assert res.verdict is Verdict.INCONCLUSIVE, res.message
    assert "so their return was not judged" in res.message and res.reason == "no-lasting-plateau"
    assert all(r["lambda_min"] > 0 for r in res.values["figure9"]["runs"])
