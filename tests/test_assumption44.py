"""assumption-4.4 passes on a generic diagonal linear network (every stage B ends at Algorithm 1's beta^k
from any eps and perturbation), flags a flat valley, where the endpoint depends on the perturbation, and on
Pesme-Flammarion's 2-D example, where a coordinate leaves at a positive loss, tells the paper's Figure 10
noise (independent on u and v: the leaving coordinate crosses zero) from a failure of the assumption
(THEORY.md §5.5)."""

import math

import pytest
import torch

from verifier.checks import Verdict, run_check
from verifier.checks import _perturb as P
from verifier.checks import assumption44 as A44
from verifier.config import RunConfig
from verifier.context import Context
from verifier.models import DiagLinear
from verifier.presets import build_model

F64 = torch.float64


def pesme_flammarion(beta0: float = -0.2) -> DiagLinear:
    """Pesme-Flammarion's 2-D example: X = chol(R diag(1, 25) R^T), R a rotation by 150 degrees, y = X beta*,
    beta* = (beta0, 2). Algorithm 1: beta[0] enters (+), beta[1] enters and beta[0] leaves at a positive
    loss, beta[0] re-enters (-) and the flow ends at beta*."""
    th = math.radians(150)
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=F64)
    X = torch.linalg.cholesky(R @ torch.diag(torch.tensor([1.0, 25.0], dtype=F64)) @ R.T)
    return DiagLinear(X, X @ torch.tensor([beta0, 2.0], dtype=F64))


@pytest.fixture(scope="module")
def generic(generic_linear_context):
    ctx = generic_linear_context
    return ctx, run_check("assumption-4.4", ctx)


@pytest.fixture(scope="module")
def leaving():
    ctx = Context(RunConfig(preset=None, model="diag-linear"), model=pesme_flammarion(), argv=["test"])
    return ctx, run_check("assumption-4.4", ctx)


def test_generic_linear_stage_b_is_robust(generic):
    ctx, res = generic
    assert res.verdict is Verdict.PASS, res.message
    n_stages = len(ctx.stages.stages) - 1
    runs = res.values["limit_level"]["runs"]
    assert len(runs) == 3 * n_stages  # eps 1e-4 under both protocols, eps 1e-8 clean, per stage
    assert {r["run"] for r in runs} == {"eps=0.0001, independent", "eps=0.0001, balanced", "eps=1e-08"}
    # sign-constrained least squares on a positive-definite support has one minimiser: all runs find it
    assert res.values["max_spread"] < 1e-6 and res.values["max_spread_independent"] < 1e-6
    assert all(r["grad_support"] < 1e-6 and r["outcome"] == "returned" and r["located"] for r in runs)
    # located to Newton precision: the runs' limits are beta^k itself, not merely within a tolerance of it
    assert all(r["limit_distance"] <= r["resolution"] <= 1e-8 for r in runs)
    assert res.values["protocol_differences"] == []


def test_generic_linear_onsets_agree_at_the_endpoints(generic):
    ctx, res = generic
    runs = res.values["figure10"]["runs"]
    n_stages = len(ctx.stages.stages) - 1  # one onset per stage: no coordinate leaves here
    assert [r["protocol"] for r in runs] == ["independent"] * n_stages + ["balanced"] * n_stages
    for r in runs:
        # perturbed just after crossing the threshold: |beta_i| within one output step of 1e-3
        assert ctx.config.negligible < abs(r["beta_i"]) < 2 * ctx.config.negligible
        assert r["d0"] > 1e-3
        assert r["return_ratio"] < 1e-3
    ids = {f.id for f in res.evidence["figures"]}
    assert {"stage-b-spread", "figure10-endpoints"} <= ids


def test_flat_valley_stage_b_depends_on_the_perturbation(valley_context):
    ctx = valley_context
    res = run_check("assumption-4.4", ctx)
    assert res.verdict is Verdict.FAIL and res.reason == "stage-b-not-robust"  # the first failing part's
    rows = {(r["k"], r["run"]): r for r in res.values["limit_level"]["runs"]}
    # Unperturbed runs keep beta_0 = beta_1 and land on the hand-built beta^k ...
    assert rows[(1, "eps=1e-08")]["distance"] < 1e-6
    assert rows[(2, "eps=1e-08")]["distance"] < 1e-6
    # ... perturbed ones, balanced or not, land elsewhere in the valley, at a genuine stationary point (gradient
    # ~ 0) that Newton cannot locate: the restricted Hessian is singular.
    for k in (1, 2):
        for protocol in ("balanced", "independent"):
            row = rows[(k, f"eps=0.0001, {protocol}")]
            assert row["distance"] > 1e-3 and row["grad_support"] < 1e-6
            assert row["outcome"] == "elsewhere" and not row["located"]
    assert "stage B ends at another stationary point: stage 1 (eps=0.0001, balanced): endpoint" in res.message
    assert "stage 2 (eps=0.0001, balanced): endpoint" in res.message
    # the independent runs differ without a sign change: not the conservation law
    assert {d["mechanism"] for d in res.values["protocol_differences"]} == {"unexplained"}
    # On the run itself both duplicates switch on together and the perturbed endpoint stays displaced.
    assert "Figure 10: independent noise at the onset of beta[" in res.message
    assert "balanced noise at the onset of beta[" in res.message
    assert res.values["max_endpoint_ratio"] > 0.1


def test_pesme_flammarion_leaving_coordinate_crosses_zero_under_independent_noise(leaving):
    """The Must-show case: stage 2 sends beta[0] to 0 at a positive loss. Balanced runs and the unperturbed one
    end at Algorithm 1's beta^2; the Figure 10 noise gives beta[0] u^2 - v^2 != 0, it crosses zero and the run
    ends at beta* (Algorithm 1's beta^3). By THEORY.md §5.5's rule that is not evidence against Assumption 4.4:
    the check passes and names the mechanism, the coordinate, both endpoints and their distance."""
    ctx, res = leaving
    stages = ctx.stages.stages
    assert [s.coordinate for s in stages[1:]] == [0, 1, 0] and stages[2].left == (0,) and stages[2].loss > 0.01
    assert res.verdict is Verdict.PASS, res.message
    runs = res.values["limit_level"]["runs"]
    assert all(r["outcome"] == "returned" for r in runs if r["protocol"] != "independent")
    (diff,) = [d for d in res.values["protocol_differences"] if d["part"] == "limit level"]
    beta2 = stages[2].beta
    x1, y = ctx.model.X[:, 1], ctx.model.Y
    assert float(beta2[1]) == pytest.approx(float(x1 @ y / (x1 @ x1)), rel=1e-9)  # least squares on column 1
    assert diff["k"] == 2 and diff["mechanism"] == "leaving-coordinate-crossed-zero"
    assert diff["coordinates"] == ["beta[0]"] and diff["outcome"] == "elsewhere"
    assert diff["endpoint"]["beta[0]"] == pytest.approx(-0.2, abs=1e-6)  # beta*: the loss is 0 there
    assert diff["endpoint"]["beta[1]"] == pytest.approx(2.0, abs=1e-6)
    assert abs(diff["twin_endpoint"]["beta[0]"]) < 1e-6  # the balanced twin: beta[0] left, beta^2
    assert diff["twin_endpoint"]["beta[1]"] == pytest.approx(float(beta2[1]), rel=1e-6)
    star = torch.tensor([-0.2, 2.0], dtype=F64)
    assert diff["endpoints_distance"] == pytest.approx(float((star - beta2).norm() / beta2.norm()), rel=1e-5)
    assert diff["algorithm1_stage"] == 3
    assert abs(diff["imbalance"]["beta[0]"]) > 1e-3  # the noise broke u^2 - v^2 = 0
    assert "leaving-coordinate-crossed-zero: beta[0]" in res.message
    assert "not evidence against Assumption 4.4" in res.message
    # Figure 10 on the run at alpha = 1e-256: the onset of beta[1] crosses beta[0] the same way
    fig = [d for d in res.values["protocol_differences"] if d["part"] == "Figure 10"]
    assert [(d["onset"], d["mechanism"], d["coordinates"]) for d in fig] == [
        ("beta[1]", "leaving-coordinate-crossed-zero", ["beta[0]"])]
    assert res.values["max_endpoint_ratio"] < P.RETURN_RATIO < res.values["max_endpoint_ratio_independent"]
    ids = {f.id for f in res.evidence["figures"]}
    assert {"stage-b-spread", "stage-b-crossing", "figure10-endpoints"} <= ids


def test_a_second_minimum_closer_than_the_convergence_tolerance_is_told_apart():
    """beta* = (-2e-5, 2): beta^3 lies 2.3e-5 from beta^2, inside the 1e-4 within which a run counts as
    converged. The independent run that crosses zero ends there, and locating both stationary points (Newton)
    separates them: the result names it instead of calling it beta^2."""
    ctx = Context(RunConfig(preset=None, model="diag-linear"), model=pesme_flammarion(-2e-5), argv=["test"])
    res = run_check("assumption-4.4", ctx)
    assert res.verdict is Verdict.PASS, res.message
    stages = ctx.stages.stages
    gap = float((stages[3].beta - stages[2].beta).norm() / stages[2].beta.norm())
    assert 1e-6 < gap < A44.SPREAD_TOL
    (row,) = [r for r in res.values["limit_level"]["runs"] if r["k"] == 2 and r["protocol"] == "independent"]
    assert row["outcome"] == "elsewhere" and row["distance"] < A44.SPREAD_TOL
    assert row["limit_distance"] == pytest.approx(gap, rel=1e-6) and row["resolution"] < 1e-3 * gap
    assert row["crossing"]["mechanism"] == "leaving-coordinate-crossed-zero"
    assert row["crossing"]["algorithm1_stage"] == 3



@pytest.mark.slow
def test_diag_transformer_draw_where_a_coordinate_leaves_at_a_positive_loss():
    """Example 3.2, ``verifier run --preset diag-transformer --seed 3 --checks assumption-4.4``: failed
    stage-b-not-robust while both protocols were one. At stage 7 a q*k coordinate leaves at a positive loss; the
    independent-noise run crosses it through zero and settles at a second minimum beyond SPREAD_TOL, the balanced
    twin returns to beta^7. The limit level alone (several minutes of Algorithm 1 on 2 cores: slow)."""
    ctx = Context(RunConfig(preset="diag-transformer", seed=3), argv=["test"])
    m = A44.measure_limit_level(ctx)
    j = A44.judge_limit_level(m)
    assert j.verdict is Verdict.PASS, j.message
    assert all(r.outcome is A44.Outcome.RETURNED for r in m.runs if r.protocol.judged)
    diffs = [r for r in m.runs if r.crossing is not None]
    assert diffs and all(r.crossing.mechanism is A44.Mechanism.LEAVING_CROSSED_ZERO for r in diffs)
    names, stages = ctx.model.coordinate_names(), ctx.stages.stages
    for r in diffs:
        # a distinct located stationary point, beyond the old tolerance: what made the check fail before
        assert r.outcome is A44.Outcome.ELSEWHERE and r.limit_distance > max(r.resolution, A44.SPREAD_TOL)
        for c in r.crossing.coordinates:
            i = names.index(c)
            assert i in stages[r.k].left and abs(float(stages[r.k].grad[i])) > ctx.stages.gtol  # positive loss
            assert r.crossing.endpoint[c] * float(stages[r.k - 1].beta[i]) < 0  # the opposite sign
            assert abs(r.crossing.twin_endpoint[c]) < 1e-6 * float(stages[r.k].beta.norm())  # left
    assert "leaving-coordinate-crossed-zero" in j.message

def _run(k, protocol, outcome, crossing=None):
    return A44.StageBRun(k, protocol, 1e-4, 0.3 if outcome == A44.Outcome.ELSEWHERE else 1e-8, 1e-8, True,
                         0.3 if outcome == A44.Outcome.ELSEWHERE else 0.0, 1e-9, 1e-8, outcome, crossing)


@pytest.mark.parametrize("mechanism, verdict", [(A44.Mechanism.LEAVING_CROSSED_ZERO, Verdict.PASS),
                                                (A44.Mechanism.CROSSED_ZERO, Verdict.PASS),
                                                (A44.Mechanism.UNEXPLAINED, Verdict.FAIL)])
def test_rule_an_independent_run_elsewhere_is_judged_by_its_mechanism(mechanism, verdict):
    """THEORY.md §5.5: balanced runs judge; an independent run elsewhere passes only when a sign crossing (the
    broken conservation law) explains it."""
    crossed = ("beta[0]",) if mechanism is not A44.Mechanism.UNEXPLAINED else ()
    crossing = A44.Crossing(mechanism, crossed, {c: 0.5 for c in crossed}, {"beta[0]": -0.2}, {"beta[0]": 0.0}, 0.3)
    runs = [_run(1, A44.Protocol.UNPERTURBED, A44.Outcome.RETURNED),
            _run(1, A44.Protocol.BALANCED, A44.Outcome.RETURNED),
            _run(1, A44.Protocol.INDEPENDENT, A44.Outcome.ELSEWHERE, crossing)]
    j = A44.judge_limit_level(A44.LimitLevel(RunConfig(), 2, "", runs=runs))
    assert j.verdict is verdict
    assert j.reason == (None if verdict is Verdict.PASS else "stage-b-not-robust")
    assert mechanism.value in j.message


def test_a_balanced_run_elsewhere_fails_whatever_the_independent_one_does():
    runs = [_run(1, A44.Protocol.UNPERTURBED, A44.Outcome.RETURNED),
            _run(1, A44.Protocol.BALANCED, A44.Outcome.ELSEWHERE),
            _run(1, A44.Protocol.INDEPENDENT, A44.Outcome.RETURNED)]
    j = A44.judge_limit_level(A44.LimitLevel(RunConfig(), 2, "", runs=runs))
    assert j.verdict is Verdict.FAIL and j.reason == "stage-b-not-robust"
    assert "stage 1 (eps=0.0001, balanced)" in j.message


def test_balanced_twin_keeps_the_conservation_law_and_the_draw():
    """perturb_both draws what perturb draws (assumption-4.3's Figure 9 is unchanged); its balanced twin has
    the independent run's products and the unperturbed u^2 - v^2, also for unbalanced and negative weights."""
    gen = torch.Generator().manual_seed(7)
    u = torch.randn(6, generator=gen, dtype=F64)
    v = torch.randn(6, generator=gen, dtype=F64)
    u[4], v[4] = 0.7, 0.7  # balanced, beta > 0
    u[5], v[5] = 0.5, -0.5  # balanced, beta < 0
    mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    (ui, vi), (ub, vb) = P.perturb_both(u, v, mask, 0.3, torch.Generator().manual_seed(3))
    assert torch.equal(torch.stack(P.perturb(u, v, mask, 0.3, torch.Generator().manual_seed(3))), torch.stack((ui, vi)))
    assert torch.allclose(ub * vb, ui * vi, rtol=1e-14, atol=1e-15)
    assert torch.allclose((ub + vb) * (ub - vb), (u + v) * (u - v), rtol=1e-13, atol=1e-15)
    assert ub[2] == u[2] and vb[2] == v[2]  # outside the mask: untouched
    assert float(ub[4] - vb[4]) == 0.0 and float(ub[5] + vb[5]) == 0.0  # balanced stays exactly balanced
    assert not torch.allclose((ui + vi) * (ui - vi), (u + v) * (u - v))  # the independent noise breaks it


def test_full_attention_is_not_applicable():
    model = build_model("full-attention")
    res = run_check("assumption-4.4", Context(RunConfig(preset="full-attention"), model=model, argv=["test"]))
    assert res.verdict is Verdict.INCONCLUSIVE and res.reason == "not-applicable"
    assert res.message.startswith("not applicable")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pesme_flammarion_on_cuda_gives_the_cpu_result(leaving):
    """Both protocols, the Newton location and the diagnosis on the GPU: the CPU's verdict and mechanism."""
    _, cpu = leaving
    model = pesme_flammarion().to_device("cuda")
    gpu = run_check("assumption-4.4", Context(RunConfig(preset=None, model="diag-linear", device="cuda"),
                                              model=model, argv=["test"]))
    assert "raised" not in gpu.message, gpu.message
    assert gpu.verdict is cpu.verdict is Verdict.PASS
    key = [(d["part"], d["mechanism"], d["coordinates"], d["algorithm1_stage"])
           for d in cpu.values["protocol_differences"]]
    assert [(d["part"], d["mechanism"], d["coordinates"], d["algorithm1_stage"])
            for d in gpu.values["protocol_differences"]] == key


def test_a_reference_run_without_onsets_is_inconclusive_no_plateau_not_a_crash():
    """--negligible above every coordinate: the Figure-10 part has no onset epoch to perturb, so the check says
    inconclusive ``no-plateau`` naming the threshold (the limit level is still judged), never check-raised."""
    ctx = Context(RunConfig(preset=None, model="diag-linear", negligible=100.0), model=pesme_flammarion(),
                  argv=["test"])
    res = run_check("assumption-4.4", ctx)
    assert res.verdict is Verdict.INCONCLUSIVE and res.reason == P.NO_PLATEAU, res.message
    assert res.message.startswith("Figure 10: no coordinate crosses 100 on the run at alpha=")
    assert "limit level: 3 stages" in res.message
