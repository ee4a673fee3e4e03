"""The tracking checks on changes whose rank is known by construction, and a tiny ViT end to end."""

import json

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.results import Verdict
from verifier.cli import main
from verifier.tracking import GRADUAL, LOW_RANK, RankTracker, rank_checks

D = 32  # A, B are D x D: r = min(D, D, 2D) = 32, and A0 B0^T has stable rank about 4D/27 ~ 5


def _factors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    m = torch.nn.Module()
    m.A = torch.nn.Parameter(torch.randn(D, D, generator=gen) / D**0.5)
    m.B = torch.nn.Parameter(torch.randn(D, D, generator=gen) / D**0.5)
    return m, gen


def _train(update, steps=60, seed=0, loss=lambda t: 1.0 - t / 120):
    """Record A B^T while ``update(module, generator, t)`` changes the factors, with a falling loss."""
    m, gen = _factors(seed)
    tracker = RankTracker(m, {"ab": ("A", "B")})
    tracker.record(0, loss(0))
    with torch.no_grad():
        for t in range(1, steps + 1):
            update(m, gen, t)
            tracker.record(t, loss(t))
    return tracker


def _rank_one(directions=1):
    """A += 0.01 * sum_j u_j v_j^T every step: the change (A - A0) B^T has rank ``directions``."""
    def update(m, gen, t, uv={}):
        if not uv:
            uv["u"] = torch.linalg.qr(torch.randn(D, directions, generator=gen))[0]
            uv["v"] = torch.linalg.qr(torch.randn(D, directions, generator=gen))[0]
        m.A.add_(0.01 * uv["u"] @ uv["v"].T)
    return update


def _random_full_rank(m, gen, t):
    """Independent Gaussian steps of both factors: an unstructured, full-rank change."""
    m.A.add_(0.01 * torch.randn(D, D, generator=gen) / D**0.5)
    m.B.add_(0.01 * torch.randn(D, D, generator=gen) / D**0.5)


def _by_id(results):
    return {r.id: r for r in results}


def test_rank_one_change_passes_both_checks():
    results = _by_id(_train(_rank_one()).results())
    low, gradual = results[LOW_RANK], results[GRADUAL]
    assert low.verdict == Verdict.PASS, low.message
    assert gradual.verdict == Verdict.PASS, gradual.message
    history_ratio = low.values["median_rank_ratio"]
    assert low.metrics["median_rank_ratio"].threshold == 0.5 and low.metrics["median_rank_ratio"].better == "lower"
    assert low.values["max_rank_fraction"] == pytest.approx(1 / D, rel=1e-3)  # stable rank exactly 1
    assert 0.1 < history_ratio < 0.3  # 1 / stable rank of A0 B0^T
    assert gradual.values["max_step_fraction"] == pytest.approx(1 / D, rel=1e-3)
    assert "one init scale" in gradual.message


def test_random_full_rank_change_fails_both_checks():
    results = _by_id(_train(_random_full_rank).results())
    low, gradual = results[LOW_RANK], results[GRADUAL]
    assert low.verdict == Verdict.FAIL and gradual.verdict == Verdict.FAIL
    assert (low.reason, gradual.reason) == ("change-not-low-rank", "rank-jump")
    assert low.values["median_rank_ratio"] > 1.0  # more spread than the initial product
    assert gradual.values["median_step_ratio"] > 1.0  # all of it at the first judged record


def test_isotropic_change_fails_the_fraction_of_dimension():
    """A change with B fixed at the identity, A random-walking: an isotropic Gaussian change, stable rank ~ r/4
    (Marchenko-Pastur), above a fifth of r even where the initial product says nothing (B0 = I)."""
    def update(m, gen, t):
        m.A.add_(0.01 * torch.randn(D, D, generator=gen))

    m, gen = _factors()
    with torch.no_grad():
        m.B.copy_(torch.eye(D))
    tracker = RankTracker(m, {"ab": ("A", "B")})
    tracker.record(0)
    with torch.no_grad():
        for t in range(1, 41):
            update(m, gen, t)
            tracker.record(t)
    low = _by_id(tracker.results())[LOW_RANK]
    assert low.verdict == Verdict.FAIL and low.reason == "change-not-low-rank"
    assert low.values["max_rank_fraction"] > 0.2


def test_smaller_init_with_lower_rank_at_matched_loss_passes_and_reverse_fails():
    one, two = _train(_rank_one(1)).history(), _train(_rank_one(2)).history()
    rank_two = two.stable_rank()[-1, 0]  # constant in time: a fixed rank-2 direction pair, growing linearly
    assert 1.2 < rank_two <= 2.0
    ok = _by_id(rank_checks({1.0: two, 0.1: one}))[GRADUAL]
    assert ok.verdict == Verdict.PASS, ok.message
    assert ok.values["max_rank_ratio_smaller_init"] == pytest.approx(1 / rank_two, rel=1e-4)
    bad = _by_id(rank_checks({1.0: one, 0.1: two}))[GRADUAL]
    assert bad.verdict == Verdict.FAIL and bad.reason == "smaller-init-not-lower"
    assert bad.values["max_rank_ratio_smaller_init"] == pytest.approx(rank_two, rel=1e-4)


def test_no_common_loss_decrease_is_inconclusive_not_pass():
    flat = _train(_rank_one(), loss=lambda t: 1.0).history()
    falling = _train(_rank_one()).history()
    result = _by_id(rank_checks({1.0: falling, 0.1: flat}))[GRADUAL]
    assert result.verdict == Verdict.INCONCLUSIVE and result.reason == "no-common-loss"
    assert "reaches no common training loss level" in result.message
    assert result.values["matched_loss"] == {"0.1 vs 1": "no common loss decrease"}


def test_tiny_products_are_not_judged():
    """r = min(d1, d2, 2k) < 5: stable rank cannot tell rank one from noise; inconclusive, never pass."""
    m = torch.nn.Module()
    m.A = torch.nn.Parameter(torch.randn(2, 1))
    m.B = torch.nn.Parameter(torch.randn(2, 1))
    tracker = RankTracker(m, {"ab": ("A", "B")})
    tracker.record(0)
    with torch.no_grad():
        m.A.add_(1.0)
    tracker.record(1)
    assert {(r.verdict, r.reason) for r in tracker.results()} == {(Verdict.INCONCLUSIVE, "nothing-to-test")}


def test_verifier_track_tiny_vit(tmp_path):
    """The whole command on the tiny preset (seconds): both checks, the figures, the training record."""
    out = tmp_path / "run"
    code = main(["track", "--preset", "vit-digits-tiny", "--epochs", "1", "--out", str(out), "--no-progress"])
    data = json.loads((out / "results.json").read_text())
    assert code == {"pass": 0, "fail": 1, "inconclusive": 3}[min((c["verdict"] for c in data["checks"]),
                                                               key=["fail", "inconclusive", "pass"].index)]
    checks = {c["id"]: c for c in data["checks"]}
    assert set(checks) == {LOW_RANK, GRADUAL}
    training = data["run"]["training"]
    assert set(training) == {"1", "0.1"}
    for run in training.values():
        assert run["steps"] == 12  # ceil(1438 / 128) batches in one epoch
        assert run["records"] == 13  # the reference and one per step
        assert run["tracked_matrices"] == 8  # 2 layers x {qk, vo} x 2 heads
    figure_ids = [f["id"] for c in data["checks"] for f in c["evidence"]["figures"]]
    for scale in ("1", "0.1"):  # per scale: the heatmap, Figure 5, Figure 3 for a qk and a vo head, Figure 4 qk, vo
        assert {f"final-stable-rank-scale-{scale}", f"change-vs-initial-scale-{scale}",
                f"stable-rank-qk-scale-{scale}", f"stable-rank-vo-scale-{scale}"} <= set(figure_ids)
        spectra = [i for i in figure_ids if i.startswith("change-spectrum-") and i.endswith(f"-scale-{scale}")]
        assert [".qk[" in i for i in spectra] == [True, False] and ".vo[" in spectra[1]
    assert "stable-rank-vs-loss" in figure_ids
    html = (out / "report.html").read_text()
    assert html.count("<svg") == len(figure_ids) == 13
    problem = data["run"]["problem"]
    assert problem["init scale 0.1"]["records"] == 13 and "ms a record" in problem["init scale 0.1"]["record_time"]
    assert set(problem["tracked"]) == {"blocks.0.attn.qk", "blocks.0.attn.vo", "blocks.1.attn.qk", "blocks.1.attn.vo"}
    assert "blocks.1.attn.vo" in html and "ms a record" in html  # the Problem table: tracked modules, record time


@pytest.mark.parametrize("argv, field", [
    (["--init-scales", "1,-0.1"], "--init-scales"),
    (["--init-scales", "1,x"], "--init-scales"),
    (["--init-scales", "1,1"], "--init-scales"),
    (["--preset", "vit-imagenet"], "--preset"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--epochs", "0"], "--epochs"),
    (["--every", "0"], "--every"),
    (["--device", "tpu"], "--device"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--seed", "-1"], "--seed"),
])
def test_track_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, field):
    out = tmp_path / "never"
    assert main(["track", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and "allowed" in err[0]
    assert not out.exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_verifier_track_on_cuda(tmp_path):
    out = tmp_path / "run"
    main(["track", "--preset", "vit-digits-tiny", "--epochs", "1", "--device", "cuda", "--out", str(out),
          "--no-progress"])
    data = json.loads((out / "results.json").read_text())
    assert data["run"]["provenance"]["device"].startswith("cuda")
    assert all(run["records"] == 13 for run in data["run"]["training"].values())


def test_smoothed_loss_is_a_trailing_mean_ignoring_missing_losses():
    from verifier.tracking.judge import smoothed_loss

    history = _train(_rank_one(), steps=39, loss=lambda t: float(t)).history()  # 40 records: window of 2
    expected = np.r_[0.0, (np.arange(1, 40) + np.arange(0, 39)) / 2]
    np.testing.assert_allclose(smoothed_loss(history), expected)
    m, _ = _factors()
    tracker = RankTracker(m, {"ab": ("A", "B")})
    for t in range(3):
        tracker.record(t)
    assert np.isnan(smoothed_loss(tracker.history())).all()


@pytest.mark.parametrize("loss", [torch.ones(3), torch.ones(2, 1), "0.5", [0.5], True])
def test_record_refuses_a_loss_that_is_not_a_scalar(loss):
    """Refused at record time, naming the argument (not later, in results())."""
    tracker = RankTracker(_factors()[0], {"ab": ("A", "B")})
    with pytest.raises(InputError, match=r"record\(loss=...\).*allowed: a scalar"):
        tracker.record(0, loss)
    assert tracker.record(0, torch.ones(1)) and tracker.record(1, np.float32(0.5))
    np.testing.assert_array_equal(tracker.history().losses, [1.0, 0.5])


def test_record_refuses_steps_that_do_not_increase():
    tracker = RankTracker(_factors()[0], {"ab": ("A", "B")}, every=2)
    tracker.record(4)
    tracker.record(5)  # not a multiple of every: skipped, but it counts as the last step
    for bad in (5, 3, 4.0):
        with pytest.raises(InputError, match=r"record\(step\)"):
            tracker.record(bad)
    assert tracker.record(6)
    np.testing.assert_array_equal(tracker.history().steps, [4, 6])


@pytest.mark.parametrize("how", ["weights", "loss"])
def test_a_diverged_run_is_inconclusive_naming_the_step(how):
    """Non-finite weights (a NaN factor) or a non-finite loss at step 7: both checks inconclusive, naming it;
    a run that stays finite is judged."""
    def update(m, gen, t):
        m.A.add_(0.01 * torch.randn(D, 1, generator=gen) @ torch.randn(1, D, generator=gen))
        if how == "weights" and t == 7:
            m.A[0, 0] = float("inf")

    loss = (lambda t: float("nan") if t >= 7 else 1.0 - t / 120) if how == "loss" else (lambda t: 1.0 - t / 120)
    tracker = _train(update, steps=20, loss=loss)
    assert tracker.history().diverged_step == 7
    results = tracker.results()
    assert [(r.verdict, r.reason) for r in results] == [(Verdict.INCONCLUSIVE, "diverged")] * 2
    assert all("diverged (init scale 1 at step 7)" in r.message for r in results)
    finite = _train(lambda m, gen, t: update(m, gen, t) if t < 7 else None, steps=20)
    assert finite.history().diverged_step is None
    assert not any("diverged" in r.message for r in finite.results())


@pytest.mark.parametrize("argv", [["--lr", "1e6"], ["--init-scales", "1e300"]])
def test_verifier_track_that_diverges_is_a_result(tmp_path, argv):
    """A diverging run is a result (exit 3, inconclusive naming the step), never an internal error (4); the
    output set is written."""
    out = tmp_path / "run"
    code = main(["track", "--preset", "vit-digits-tiny", "--epochs", "1", *argv, "--out", str(out), "--no-progress"])
    data = json.loads((out / "results.json").read_text())
    assert code == 3 and (out / "report.html").exists()
    assert {(c["verdict"], c["reason"]) for c in data["checks"]} == {("inconclusive", "diverged")}
    steps = [run["diverged_step"] for run in data["run"]["training"].values()]
    assert all(isinstance(s, int) for s in steps)
    assert all(f"at step {steps[0]}" in c["message"] for c in data["checks"])
