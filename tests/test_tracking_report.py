"""What the tracking report shows (issue 26 item 7), and the loss-rose rule (issue 29 item 6, THEORY.md §6):
figures built from a history whose values are known, the heads chosen for the spectra, the heatmap and band
figure kinds drawn by the report, and runs whose training loss rose judged inconclusive."""

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.figures import Figure, Series
from verifier.report.figures import render_figure
from verifier.results import Verdict
from verifier.tracking import GRADUAL, LOW_RANK, RankHistory, RankTracker, rank_checks
from verifier.tracking.figures import final_rank_heatmap, rank_vs_loss, shown_matrices, stable_rank_over_training
from verifier.tracking.judge import smoothed_loss

D, HEADS, K = 32, 4, 8


def _layers(loss=lambda t: 2.0 - 0.01 * t, steps=40, big=(1, "vo", 2)):
    """Two layers of 4-head attention (32 x 32 per head, head dim 8); every head's change is rank one; head
    ``big`` = (layer, product, head) gets a change 5x larger (the head that learned most)."""
    gen = torch.Generator().manual_seed(0)
    m = torch.nn.Module()
    products = {}
    for layer in range(2):
        for p in ("qk", "vo"):
            a = torch.nn.Parameter(torch.randn(D, HEADS * K, generator=gen) / K**0.5)
            b = torch.nn.Parameter(torch.randn(D, HEADS * K, generator=gen) / K**0.5)
            m.register_parameter(f"a{layer}{p}", a)
            m.register_parameter(f"b{layer}{p}", b)
            products[f"l{layer}.{p}"] = (f"a{layer}{p}", f"b{layer}{p}", HEADS)
    tracker = RankTracker(m, products)
    directions = {name: (torch.randn(D, 1, generator=gen), torch.randn(1, HEADS * K, generator=gen))
                  for name in products}
    tracker.record(0, loss(0))
    with torch.no_grad():
        for t in range(1, steps + 1):
            for name, (u, v) in directions.items():
                layer, p = int(name[1]), name[3:]
                step = 0.01 * u @ v
                if (layer, p) == big[:2]:
                    step[:, big[2] * K:(big[2] + 1) * K] *= 5
                getattr(m, f"a{layer}{p}").add_(step)
            tracker.record(t, loss(t))
    return tracker.history()


def test_heatmap_holds_the_final_stable_rank_of_every_head():
    h = _layers()
    figure = final_rank_heatmap(h, "1")
    assert figure.kind == "heatmap" and figure.zlabel
    assert [s.label for s in figure.series] == ["l0.qk", "l0.vo", "l1.qk", "l1.vo"]
    final = h.stable_rank()[-1]
    for row, series in enumerate(figure.series):
        assert series.x == (0.0, 1.0, 2.0, 3.0)
        np.testing.assert_allclose(series.y, final[row * HEADS:(row + 1) * HEADS])
    assert all(v == pytest.approx(1.0) for s in figure.series for v in s.y)  # rank-one changes


def test_figure4_is_the_mean_and_std_over_heads_per_kind():
    h = _layers()
    figures = stable_rank_over_training(h, "1")
    assert [f.id for f in figures] == ["stable-rank-qk-scale-1", "stable-rank-vo-scale-1"]
    sr = h.stable_rank()
    vo = figures[1]
    assert [s.label for s in vo.series] == ["l0.vo", "l1.vo"]
    cols = [i for i, n in enumerate(h.names) if n == "l1.vo"]
    np.testing.assert_allclose(vo.series[1].y[1:], sr[1:, cols].mean(axis=1))
    np.testing.assert_allclose(vo.series[1].band[1:], sr[1:, cols].std(axis=1))
    assert vo.series[1].band[0] == 0.0 and np.isnan(vo.series[1].y[0])  # the zero change has no rank


def test_spectra_show_the_heads_that_learned_most_or_the_ones_chosen():
    h = _layers(big=(1, "vo", 2))
    labels = h.labels
    default = [labels[i] for i in shown_matrices(h)]
    assert default[1] == "l1.vo[h2]" and default[0].startswith("l") and ".qk[" in default[0]
    results = {r.id: r for r in rank_checks({1.0: h})}
    ids = [f.id for f in results[GRADUAL].evidence["figures"]]
    assert "change-spectrum-l1.vo[h2]-scale-1" in ids
    chosen = {r.id: r for r in rank_checks({1.0: h}, heads=["l0.qk[h3]"])}
    ids = [f.id for f in chosen[GRADUAL].evidence["figures"] if f.id.startswith("change-spectrum")]
    assert ids == ["change-spectrum-l0.qk[h3]-scale-1"]
    figure5 = next(f for f in chosen[LOW_RANK].evidence["figures"] if f.id.startswith("change-vs-initial"))
    assert [s.label for s in figure5.series] == ["change l0.qk[h3]", "initial l0.qk[h3]"]
    with pytest.raises(InputError, match=r"^heads: 'l9.qk\[h0\]' is not a tracked head"):
        rank_checks({1.0: h}, heads=["l9.qk[h0]"])


def test_rank_vs_loss_overlays_the_scales_and_marks_the_compared_levels():
    big, small = _layers(), _layers(big=(0, "qk", 0))
    results = {r.id: r for r in rank_checks({1.0: big, 0.1: small})}
    overlay = next(f for f in results[GRADUAL].evidence["figures"] if f.id == "stable-rank-vs-loss")
    assert [s.label for s in overlay.series] == ["init scale 1", "init scale 0.1"]
    np.testing.assert_allclose(overlay.series[0].x, smoothed_loss(big))
    np.testing.assert_allclose(overlay.series[0].y[1:], np.nanmean(big.stable_rank()[1:], axis=1))
    levels = results[GRADUAL].values["matched_loss"]["0.1 vs 1"]["losses"]
    assert [m.at for m in overlay.vlines] == pytest.approx(list(levels))
    alone = rank_vs_loss({"1": _layers(loss=lambda t: float("nan"))})
    assert np.isnan(alone.series[0].x).all()  # no losses: drawn as "no finite data", never invented


def test_the_claims_say_what_the_checks_test():
    results = {r.id: r for r in rank_checks({1.0: _layers()})}
    assert "does not ask the stable rank to rise" in results[GRADUAL].claim
    assert "no record raises" in results[GRADUAL].claim and "matched" not in results[LOW_RANK].claim
    trend = results[GRADUAL].values["median_stable_rank_first_judged_and_final_per_scale"]["1"]
    assert len(trend) == 2 and all(np.isfinite(trend))
    assert "median stable rank from the first judged record to the last scale 1:" in results[GRADUAL].message


def test_heatmap_and_band_are_drawn_and_bad_specs_are_drawn_leniently():
    heat = Figure("h", "heat", "heatmap", "head", "product", (Series("a", [0, 1], [1.0, 2.0]),
                                                             Series("b", [1, 2], [3.0, float("nan")])),
                  zlabel="stable rank")
    drawn = render_figure(heat.to_dict(), "p")
    assert drawn.notes == () and "<svg" in drawn.svg and "stable rank" in drawn.svg and ">b<" in drawn.svg
    band = Figure("b", "band", "line", "x", "y", (Series("m", [0, 1, 2], [1.0, 2.0, 3.0], band=[0.1, 0.2, 0.3]),))
    assert band.to_dict()["series"][0]["band"] == [0.1, 0.2, 0.3]
    assert "band" not in Figure("c", "c", "line", "x", "y", (Series("m", [0], [1.0]),)).to_dict()["series"][0]
    assert render_figure(band.to_dict(), "q").notes == ()
    spec = band.to_dict()
    spec["series"][0]["band"] = [1.0]
    assert any("band not drawn" in n for n in render_figure(spec, "r").notes)
    empty = render_figure({"kind": "heatmap", "series": [{"label": "x", "x": [0], "y": ["nan"]}]}, "s")
    assert "no finite data to draw" in empty.svg
    with pytest.raises(ValueError, match="band values"):
        Series("m", [0, 1], [1.0, 2.0], band=[1.0])


# --- the training loss rose --------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss, rose", [
    (lambda t: 2.0 * 10 ** (t / 4), True),  # finite and exploding: 2 -> 2e10
    (lambda t: 2.0 + 0.01 * t, True),  # 2 -> 2.4 (20% up, beyond the 10% of noise)
    (lambda t: 2.0 + 0.002 * t, False),  # 4% up: flat within the rule's tolerance, judged
    (lambda t: 2.0 - 0.01 * t, False),  # falling
])
def test_a_run_whose_loss_rose_is_inconclusive_finite_or_not(loss, rose):
    h = _layers(loss=loss)
    assert h.finite.all()
    results = rank_checks({1.0: h})
    if rose:
        assert [(r.verdict, r.reason) for r in results] == [(Verdict.INCONCLUSIVE, "loss-rose")] * 2
        assert all(r.message.startswith("the training loss rose (init scale 1: 2 -> ") for r in results)
        start, end = results[0].values["loss_start_end_per_scale"]["1"]
        assert start == 2.0 and end > 2.2
    else:
        assert all(r.reason != "loss-rose" for r in results)
        assert results[0].verdict == Verdict.PASS  # rank-one changes: low rank


def test_one_rising_run_among_several_stops_the_comparison_naming_it():
    falling, rising = _layers(), _layers(loss=lambda t: 2.0 + 0.05 * t)
    results = rank_checks({1.0: falling, 0.1: rising})
    assert {(r.verdict, r.reason) for r in results} == {(Verdict.INCONCLUSIVE, "loss-rose")}
    assert "init scale 0.1: 2 -> " in results[0].message and "init scale 1:" not in results[0].message


def test_diverged_comes_before_loss_rose():
    h = _layers(loss=lambda t: float("inf") if t == 30 else 2.0 + 0.05 * t)
    assert {r.reason for r in rank_checks({1.0: h})} == {"diverged"}


def test_no_losses_recorded_are_judged_without_the_rule():
    h = _layers(loss=lambda t: None)
    assert all(r.reason != "loss-rose" for r in rank_checks({1.0: h}))
    assert isinstance(h, RankHistory)
