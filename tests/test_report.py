"""The HTML report and the terminal summary, on fake results (no checks are run here)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier.results import CheckResult, Metric, Verdict
from verifier.cli import main
from verifier.report import render_html, summary_table, write_report
from verifier.report.figures import render_figure
from verifier.report.format import fmt, key_metric
from verifier.results import RunResults, write_results

TAU = [k * 0.05 for k in range(241)]
LOSS_FIG = {
    "id": "loss-vs-tau", "title": "Loss against rescaled time", "kind": "line",
    "xlabel": "tau = t / log(1/alpha)", "ylabel": "loss", "xscale": "linear", "yscale": "log",
    "series": [{"label": f"alpha=1e-{e}", "x": TAU, "y": [math.exp(-t * (1 + e / 32)) + 1e-4 * (t < 5) for t in TAU],
                "style": "-"} for e in (4, 16, 64)],
    "vlines": [{"x": 5.0, "label": "T_1"}], "caption": "Loss drops in steps at the stage times.",
}
MESSY_FIG = {  # every defect the renderer must survive: log axes with non-positive values, NaN strings,
    "title": "Costs $5 <b>bold</b>", "xscale": "log", "yscale": "log",  # unequal lengths, junk series
    "series": [{"label": "mixed", "x": [-1, 0, 1, 2, 3, 4], "y": [1, "nan", None, "inf", 0.5, 0.25]},
               {"label": "short", "x": [1, 2, 3], "y": [1, 2]}, {"y": "oops"}, {"label": "no y"}, 5],
    "vlines": [{"x": -3}, {"x": 2, "label": "T_1"}], "hlines": "not a list",
}
SCATTER_FIG = {"id": "spectra", "kind": "scatter", "title": "Hessian spectra per stage", "yscale": "log",
               "series": [{"label": f"stage {k}", "x": [k] * 4, "y": [10.0 ** (j - k) for j in range(4)]}
                          for k in (1, 2, 3)]}
HOSTILE = "<script>alert('x')</script> & <img src=http://evil.example/x.png>"


def fake_results() -> RunResults:
    checks = (
        CheckResult("lemma-4.1", "u^2 - v^2 is conserved along gradient flow (Lemma 4.1)", Verdict.PASS,
                    "drift 3e-12 within tolerance", metrics={"max_drift": Metric.at_most(3e-12, 1e-8),
                                                             "nfev": Metric.lower([10, 20, 30])},
                    key_metric="max_drift", evidence={"figures": [LOSS_FIG]}, duration_s=1.5),
        CheckResult("theorem-4.5", "beta follows Algorithm 1 as alpha -> 0 (Theorem 4.5)", Verdict.FAIL, HOSTILE,
                    metrics={"transition_time_error": Metric.lower([0.5, 0.4, 0.35, 0.3]), "rate": Metric.info("nan")},
                    key_metric="transition_time_error", settings={"rate_min": 0.5},
                    evidence={"figures": [MESSY_FIG, SCATTER_FIG], "alphas": ["1e-4", "1e-8"]}),
        CheckResult("assumption-4.3", "strict local minima (Assumption 4.3)", Verdict.INCONCLUSIVE,
                    "the check raised RuntimeError: boom", evidence={"traceback": "Traceback\nRuntimeError: boom"}),
    )
    prov = {"command": f"verifier run --preset toy-attention {HOSTILE}", "seed": 0, "init_seed": 1000003,
            "versions": {"torch": "2.x", "verifier": "0.1.0"}, "device": "cpu", "dtype": "float64",
            "git_sha": "0123abc", "tolerances": {"rtol": 1e-8, "atol": 1e-7}}
    return RunResults(run={"model": "toy-attention", "config": {"preset": "toy-attention", "seed": 0},
                           "provenance": prov}, checks=checks)


class Page(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


@pytest.fixture(scope="module")
def html() -> str:
    return render_html(fake_results())


def test_report_shows_every_check_verdict_and_figure(html):
    page = Page(html)
    sections = {a["id"]: a["class"] for a in page.find("section")}
    assert sections == {"check-lemma-4-1": "check pass", "check-theorem-4-5": "check fail",
                        "check-assumption-4-3": "check inconclusive"}
    assert len(page.find("svg")) == 3  # one inline SVG per figure spec
    badges = [a["class"] for a in page.find("span") if a.get("class", "").startswith("badge ")]
    assert badges.count("badge pass") == 2 and badges.count("badge fail") == 3  # summary + section (+ overall)
    text = " ".join(page.text)
    for needle in ("Loss against rescaled time", "Hessian spectra per stage", "T_1", "max_drift = 3e-12 (<= 1e-08)",
                   "0123abc", "float64", "RuntimeError: boom", "1000003"):
        assert needle in text
    assert "$5" in text  # a dollar in a label is drawn literally, not as mathtext


def test_report_is_self_contained_and_escapes_data(html):
    page = Page(html)
    assert page.find("script") == [] and page.find("link") == [] and page.find("img") == []
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in ("src", "href", "xlink:href"):
                assert value.startswith("#"), (tag, name, value)
    assert "url(http" not in html and "@import" not in html
    assert "&lt;script&gt;alert(" in html  # the hostile message and command line are text, not markup
    ids = [a["id"] for _, a in page.tags if "id" in a]
    assert len(ids) == len(set(ids))  # figure ids are namespaced per figure


def test_messy_figure_spec_is_drawn_and_explained():
    fig = render_figure(MESSY_FIG, "t")
    assert fig.svg.startswith("<svg") and "<metadata>" not in fig.svg
    notes = "\n".join(fig.notes)
    assert "mixed: 2 non-positive x value(s) hidden on the log x axis" in notes
    assert "short: 3 x values and 2 y values; cut to 2" in notes
    assert "series 2: no finite points to draw" in notes  # y="oops" parses to NaN
    assert "no y: no 'y' values; skipped" in notes and "series 4 is not an object; skipped" in notes
    assert "'hlines' is not a list; ignored" in notes and "v-line {'x': -3} has no drawable x; skipped" in notes
    empty = render_figure("not a dict", "u")
    assert empty.notes[:2] == ("the figure spec is not an object", "no 'series' list in the figure spec")
    assert "no finite data to draw" in empty.svg
    allneg = render_figure({"yscale": "log", "series": [{"y": [-1, 0, -2]}]}, "v")  # log axis, nothing positive
    assert "series 0: 3 non-positive y value(s) hidden on the log y axis" in allneg.notes
    assert "no finite data to draw" in allneg.svg


def test_long_series_are_thinned():
    fig = render_figure({"series": [{"label": "long", "y": list(range(5000))}]}, "w")
    assert fig.notes == ("long: 5000 points thinned to 2000",)


def test_key_metric_is_the_declared_one_with_its_declared_relation():
    metrics = {"a": Metric.info(1.0), "err": Metric.at_most(2e-3, 1e-2), "margin": Metric.at_least(0.3, 0.01),
               "b": Metric.lower([1, 2, 3, 4])}
    text = lambda key: key_metric(CheckResult("c", "", Verdict.PASS, "", metrics=metrics, key_metric=key)).text()  # noqa: E731
    assert text("err") == "err = 0.002 (<= 0.01)"
    assert text("margin") == "margin = 0.3 (>= 0.01)"  # the direction is declared, not read off the name
    assert text("b") == "b = 1 -> 4 (4)"
    assert key_metric(CheckResult("c", "", Verdict.PASS, "", metrics=metrics)) is None  # none named, none guessed
    assert fmt(list(range(10))) == "[0, 1, 2, ..., 8, 9, (10 values)]"
    assert fmt(float("nan")) == "nan" and fmt(None) == "-" and fmt(True) == "true"


def test_summary_table_fits_the_screen():
    table = summary_table(fake_results(), width=100)
    lines = table.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[2].split()[:2] == ["lemma-4.1", "PASS"] and "max_drift = 3e-12 (<= 1e-08)" in lines[2]
    assert lines[3].split()[:2] == ["theorem-4.5", "FAIL"] and "0.5 -> 0.3 (4)" in lines[3]
    assert lines[4].split()[:2] == ["assumption-4.3", "INCONCLUSIVE"]
    assert lines[-1] == "overall: FAIL (1 pass, 1 fail, 1 inconclusive)"


def test_write_report_is_atomic(tmp_path):
    path = tmp_path / "sub" / "report.html"
    write_report(fake_results(), path)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left behind


def test_cli_report_rerenders_stored_results(tmp_path, capsys):
    write_results(fake_results(), tmp_path / "results.json")
    assert main(["report", str(tmp_path / "results.json"), "-o", str(tmp_path / "out.html")]) == 0
    assert len(Page((tmp_path / "out.html").read_text(encoding="utf-8")).find("svg")) == 3


@pytest.mark.parametrize("content, says", [
    ("{not json", "not readable JSON"),
    (json.dumps({"schema_version": 1, "run": {}, "checks": [{"id": "x", "verdict": "maybe"}]}),
     "checks[0].verdict is 'maybe', allowed: pass, fail, inconclusive"),
    (json.dumps([1, 2]), "top level must be an object"),
])
def test_cli_report_on_malformed_results_exits_2(tmp_path, capsys, content, says):
    bad = tmp_path / "results.json"
    bad.write_text(content, encoding="utf-8")
    assert main(["report", str(bad), "-o", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("verifier: error: ") and says in err and str(bad) in err
    assert not (tmp_path / "out.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    write_report(fake_results(), page)
    proc = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,2400", "--enable-logging=stderr", "--v=0",
                           f"--screenshot={png}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert png.exists() and png.stat().st_size > 50_000, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["nan", "inf", "-inf", "1e-300", "x", "$", "<b>", ""]))
_values = st.one_of(_scalar, st.lists(_scalar, max_size=30))
_series = st.one_of(_scalar, st.fixed_dictionaries({}, optional={
    "label": _scalar, "x": _values, "y": _values, "style": st.sampled_from(["-", "--", "o", "x:", "bogus", "", None])}))
_spec = st.one_of(_scalar, st.fixed_dictionaries({}, optional={
    "id": _scalar, "title": _scalar, "kind": st.sampled_from(["line", "scatter", "bar", "pie", None]),
    "xscale": st.sampled_from(["linear", "log", "symlog", None]), "yscale": st.sampled_from(["linear", "log", 3]),
    "xlabel": _scalar, "ylabel": _scalar, "caption": _scalar, "series": st.one_of(_scalar, st.lists(_series, max_size=4)),
    "vlines": st.one_of(_scalar, st.lists(st.one_of(_scalar, st.fixed_dictionaries({"x": _scalar, "label": _scalar})),
                                          max_size=3)),
    "hlines": st.lists(st.fixed_dictionaries({"y": _scalar}), max_size=2)}))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_spec)
def test_any_figure_spec_renders_without_raising(spec):
    fig = render_figure(spec, "h")
    assert fig.svg.startswith("<svg") and fig.svg.rstrip().endswith("</svg>")


_junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
                     lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c, max_size=3)),
                     max_leaves=8)
_check_json = st.fixed_dictionaries(
    {"id": st.text(max_size=6), "verdict": st.sampled_from(["pass", "fail", "inconclusive"])},
    optional={"claim": _junk, "message": _junk, "thresholds": _junk, "evidence": _junk, "config": _junk,
              "provenance": _junk, "duration_s": _junk,
              "metrics": st.dictionaries(st.sampled_from(["err", "max_err", "drift", "margin", "x"]), _junk)})
_declared = st.one_of(  # schema version 2: metrics are declarations with a value of any kind
    st.fixed_dictionaries({"value": _junk}),
    st.fixed_dictionaries({"value": _junk, "better": st.sampled_from(["lower", "higher"])},
                          optional={"threshold": _junk, "gate": st.fixed_dictionaries(
                              {"factor": st.floats(1, 100), "atol": st.floats(0, 1)})}))
_check_json_v2 = st.fixed_dictionaries(
    {"id": st.text(max_size=6), "verdict": st.sampled_from(["pass", "fail", "inconclusive"])},
    optional={"claim": _junk, "message": _junk, "settings": _junk, "evidence": _junk, "config": _junk,
              "provenance": _junk, "duration_s": _junk, "key_metric": st.sampled_from(["err", "x", "nope"]),
              "metrics": st.dictionaries(st.sampled_from(["err", "max_err", "drift", "margin", "x"]), _declared)})
_run = st.dictionaries(st.sampled_from(["model", "config", "provenance", "notes"]), _junk)
_results_json = st.one_of(
    st.fixed_dictionaries({"schema_version": st.just(1), "checks": st.lists(_check_json, max_size=3), "run": _run}),
    st.fixed_dictionaries({"schema_version": st.just(2), "checks": st.lists(_check_json_v2, max_size=3), "run": _run}))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(a=_results_json, b=_results_json)
def test_any_readable_results_file_renders_and_gates(tmp_path, a, b):
    """read_results validates ids, verdicts and metrics; whatever else a stored file holds must not break
    the report, the summary or the gate."""
    from verifier.gate import compare
    from verifier.results import read_results

    (tmp_path / "a.json").write_text(json.dumps(a), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(b), encoding="utf-8")
    ra, rb = read_results(tmp_path / "a.json"), read_results(tmp_path / "b.json")
    sections = Page(render_html(ra)).find("section")
    assert [s["class"] for s in sections] == [f"check {c.verdict.value}" for c in ra.checks]
    assert summary_table(ra, width=90).splitlines()[-1].startswith("overall: ")
    assert compare(ra, rb).table().splitlines()[-1].startswith("gate: ")


def test_narrow_log_axis_gets_readable_ticks_and_repeated_line_labels_are_written_once():
    fig = render_figure({"yscale": "log", "series": [{"label": "eig", "x": [1, 2, 3], "y": [0.9, 1.0, 1.3]}],
                         "vlines": [{"x": 1.5, "label": "perturbed"}, {"x": 2.5, "label": "perturbed"}]}, "n")
    assert ">1.1<" in fig.svg and ">1.2<" in fig.svg  # evenly placed ticks under one decade
    assert fig.svg.count(">perturbed<") == 1
