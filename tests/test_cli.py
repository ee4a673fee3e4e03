"""The command line: exit codes, one-line errors naming the field, nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from verifier.cli import main
from verifier.config import OptimizerConfig, RunConfig, SolverConfig, parse_alphas
from verifier.errors import InputError
from verifier.results import Verdict


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _linear(tmp_path, N=12, p=3, **over):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, p))
    arrays = {"X": X, "y": X @ np.array([1.0, -0.5, 0.0])[:p]}
    arrays.update(over)
    return _npz(tmp_path, **arrays)


BAD = [
    (["run", "--preset", "nope"], "--preset", "toy-attention"),
    (["run", "--checks", "nope"], "--checks", "lemma-4.1"),
    (["run", "--model", "nope", "--data", "x.npz"], "--model", "diag-linear"),
    (["run", "--alphas", "0"], "--alphas", "alphas in (0, 1)"),
    (["run", "--alphas", "1.5"], "--alphas", "alphas in (0, 1)"),
    (["run", "--alphas=-1e-3"], "--alphas", "alphas in (0, 1)"),
    (["run", "--alphas", "abc"], "--alphas", "floats such as 1e-4"),
    (["run", "--optimizer", "lbfgs"], "--optimizer", "flow, gd, sgd, adam"),
    (["run", "--loss", "hinge"], "--loss", "square, logistic"),
    (["run", "--device", "tpu"], "--device", "auto, cpu, cuda"),
    (["run", "--lr", "-1"], "--lr", "a float > 0"),
    (["run", "--preset", "toy-attention", "--loss", "logistic"], "--loss", "square"),
    (["run", "--model", "diag-linear"], "--data", ".npz"),
    (["run", "--bogus"], "usage", None),
]


@pytest.mark.parametrize("argv,field,allowed", BAD, ids=[" ".join(b[0][1:]) for b in BAD])
def test_bad_input_exits_2_with_one_line(argv, field, allowed, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(argv + ["--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"verifier: error: {field}")
    if allowed:
        assert allowed in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("arrays,field", [
    ({"X": np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]]), "y": np.ones(3)}, "--data X"),
    ({"X": np.ones((3, 2)), "y": np.array([1.0, np.inf, 0.0])}, "--data Y"),
    ({"X": np.ones((3, 2)), "y": np.ones(4)}, "--data"),
    ({"X": np.ones((3, 2, 2)), "y": np.ones(3)}, "--data"),
    ({"Z": np.ones((3, 2))}, "--data"),
    ({"X": np.array([["a", "b"]]), "y": np.ones(1)}, "--data X"),
])
def test_bad_data_files(arrays, field, tmp_path, capsys):
    path = _npz(tmp_path, **arrays)
    code = main(["run", "--model", "diag-linear", "--data", path, "--checks", "lemma-4.1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"verifier: error: {field}")
    assert not (tmp_path / "o").exists()


def test_attention_data_shapes(tmp_path, capsys):
    path = _npz(tmp_path, X=np.ones((4, 3, 2)), Y=np.ones((4, 3, 3)))
    assert main(["run", "--model", "toy-attention", "--data", path, "--out", str(tmp_path / "o")]) == 2
    assert "X [N, n, d] and Y [N, n, d]" in capsys.readouterr().err


def test_missing_and_corrupt_files(tmp_path, capsys):
    assert main(["run", "--model", "diag-linear", "--data", str(tmp_path / "missing.npz")]) == 2
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["run", "--model", "diag-linear", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "is not an .npz file" in err and "allow_pickle" not in err


def test_no_traceback_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "verifier", "run", "--alphas", "2"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("verifier: error: --alphas: alpha=2 is not in (0, 1) (allowed: comma-separated "
                                   "alphas in (0, 1): floats such as 1e-4, or exp(-x) with x > 0 for tiny ones)")


def test_byo_linear_data_lemma41_gd_passes_and_adam_fails(tmp_path):
    path = _linear(tmp_path)
    base = ["run", "--model", "diag-linear", "--data", path, "--checks", "lemma-4.1", "--steps", "50", "--no-progress"]
    assert main(base + ["--optimizer", "gd", "--out", str(tmp_path / "gd")]) == 0
    assert main(base + ["--optimizer", "adam", "--out", str(tmp_path / "adam")]) == 1
    saved = json.loads((tmp_path / "adam" / "results.json").read_text())
    assert saved["schema_version"] == 3
    [check] = saved["checks"]
    assert check["id"] == "lemma-4.1" and check["verdict"] == "fail" and check["reason"] == "conservation-broken"
    assert saved["run"]["provenance"]["seed"] == 0 and saved["run"]["provenance"]["dtype"] == "float64"
    assert (tmp_path / "adam" / "report.html").is_file()


def test_toy_attention_lemma41_adam_fails_and_gd_passes(tmp_path):
    base = ["run", "--preset", "toy-attention", "--checks", "lemma-4.1", "--steps", "10", "--no-progress"]
    assert main(base + ["--optimizer", "adam", "--out", str(tmp_path / "a")]) == 1
    assert main(base + ["--optimizer", "gd", "--out", str(tmp_path / "g")]) == 0


@pytest.mark.slow
def test_toy_attention_lemma41_flow_passes(tmp_path):
    assert main(["run", "--preset", "toy-attention", "--checks", "lemma-4.1", "--no-progress",
                 "--out", str(tmp_path)]) == 0


def test_presets_and_checks_listings(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("diag-linear", "toy-attention", "diag-transformer", "full-attention"):
        assert name in out
    assert "N=1000" in out
    assert main(["checks"]) == 0
    assert "lemma-4.1" in capsys.readouterr().out


def test_same_seed_same_verdict_and_metrics(tmp_path):
    path = _linear(tmp_path)
    runs = []
    for k in range(2):
        out = tmp_path / f"r{k}"
        main(["run", "--model", "diag-linear", "--data", path, "--checks", "lemma-4.1", "--optimizer", "sgd",
              "--steps", "30", "--batch-size", "4", "--seed", "7", "--no-progress", "--out", str(out)])
        runs.append(json.loads((out / "results.json").read_text())["checks"][0])
    assert runs[0]["verdict"] == runs[1]["verdict"]
    assert runs[0]["metrics"] == runs[1]["metrics"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_bad_input(tmp_path, capsys):
    assert main(["run", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "--device: cuda requested" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- one validation boundary: the library, the plugin and the CLI get the same errors -----------------------

SAME_ERRORS = [  # (CLI options, RunConfig keywords, the field named)
    (["--horizon", "inf"], dict(horizon=float("inf")), "--horizon"),
    (["--horizon", "0"], dict(horizon=0.0), "--horizon"),
    (["--noise", "nan"], dict(noise=float("nan")), "--noise"),
    (["--negligible", "inf"], dict(negligible=float("inf")), "--negligible"),
    (["--perturb-epochs", "0"], dict(perturb_epochs=0), "--perturb-epochs"),
    (["--seed", str(2**64)], dict(seed=2**64), "--seed"),
    (["--seed", str(-(2**63) - 1)], dict(seed=-(2**63) - 1), "--seed"),
    (["--weight-decay", "nan"], dict(optimizer=dict(weight_decay=float("nan"))), "--weight-decay"),
    (["--weight-decay", "inf"], dict(optimizer=dict(weight_decay=float("inf"))), "--weight-decay"),
    (["--lr", "inf"], dict(optimizer=dict(lr=float("inf"))), "--lr"),
    (["--steps", "0"], dict(optimizer=dict(steps=0)), "--steps"),
    (["--momentum", "1"], dict(optimizer=dict(momentum=1.0)), "--momentum"),
    (["--rtol", "nan"], dict(solver=dict(rtol=float("nan"))), "--rtol"),
    (["--atol", "0"], dict(solver=dict(atol=0.0)), "--atol"),
    (["--device", "tpu"], dict(device="tpu"), "--device"),
    (["--loss", "hinge"], dict(loss="hinge"), "--loss"),
    (["--optimizer", "gd", "--alphas", "exp(-10000)"], dict(optimizer=dict(name="gd"), log_inv_alphas=(1e4,)),
     "--alphas"),
]


def _library_config(kw):
    kw = dict(kw)
    if "optimizer" in kw:
        kw["optimizer"] = OptimizerConfig(**kw["optimizer"])
    if "solver" in kw:
        kw["solver"] = SolverConfig(**kw["solver"])
    return RunConfig(model="diag-linear", **kw)


@pytest.mark.parametrize("options,kw,field", SAME_ERRORS, ids=[" ".join(s[0]) for s in SAME_ERRORS])
def test_library_and_cli_give_the_same_error(options, kw, field, tmp_path, capsys):
    with pytest.raises(InputError) as lib:
        _library_config(kw)
    assert lib.value.field == field
    code = main(["run", "--model", "diag-linear", "--data", _linear(tmp_path), *options, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"verifier: error: {field}: ") and "allowed: " in err
    assert not (tmp_path / "o").exists()
    if field not in ("--alphas", "--device", "--loss"):  # text and float spell the value alike
        assert err == f"verifier: error: {lib.value}"


def test_text_is_converted_once_at_the_boundary():
    config = RunConfig(seed="-1", horizon="2.5", noise="0.2", optimizer=OptimizerConfig(lr="0.5", steps="7"))
    assert (config.seed, config.horizon, config.noise, config.optimizer.lr, config.optimizer.steps) == (-1, 2.5, 0.2,
                                                                                                        0.5, 7)
    assert RunConfig().preset == "toy-attention" and RunConfig(model="diag-linear").preset is None


def test_seed_range_is_int64_and_every_offset_fits_the_generator(tmp_path):
    """-1 (the preset docs' named counterexample) and both int64 ends run; the init seed seed + 1000003 and
    the preset's seed_offset stay inside torch.Generator's range [-2**63, 2**64)."""
    from verifier import seeds
    from verifier.context import Context
    from verifier.presets import PRESETS

    offsets = [v for k, v in vars(seeds).items() if k.isupper()] + [p.defaults.get("seed_offset", 0)
                                                                     for p in PRESETS.values()]
    assert offsets and all(isinstance(o, int) and 0 <= o < 2**63 for o in offsets)
    for seed in (-1, 2**63 - 1, -(2**63)):
        ctx = Context(RunConfig(preset="diag-linear", seed=seed))
        assert ctx.theta0(1).shape == (1, 20)
    path = _linear(tmp_path)
    assert main(["run", "--model", "diag-linear", "--data", path, "--checks", "definition-3.1", "--no-progress",
                 "--seed=-1", "--out", str(tmp_path / "o")]) == 0


def test_alphas_that_underflow_say_how_to_write_them(capsys):
    with pytest.raises(InputError, match=r"alpha=1e-400 underflows float64 .* write it as exp\(-921\.034\)"):
        parse_alphas("1e-400")
    assert parse_alphas("1e-4, exp(-10000)")[1] == 10000.0
    assert main(["run", "--alphas", "1e-4,1e-400"]) == 2
    assert "exp(-921.034)" in capsys.readouterr().err


def test_data_without_model_blames_model(tmp_path, capsys):
    assert main(["run", "--data", _linear(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("verifier: error: --model: --data needs the model family")


def test_an_option_value_that_starts_with_a_dash_is_explained(capsys):
    assert main(["run", "--alphas", "-1e-3"]) == 2
    assert "verifier: error: --alphas: expected a value (one that starts with '-' is written --alphas=VALUE)" in \
        capsys.readouterr().err


def test_no_arguments_prints_help_on_stdout_and_exits_0(capsys):
    assert main([]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: verifier") and captured.err == ""


def test_presets_prints_every_default(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("--seed", "--lr", "--steps", "--weight-decay", "--rtol", "--atol", "--noise", "--negligible",
                 "--perturb-epochs", "--alphas", "--horizon", "--optimizer", "SolverConfig.max_steps"):
        assert f"  {name} " in out
    assert "default 0.01; allowed: a float > 0" in out


# ---- data: empty, exotic or overflowing inputs are refused before any work ----------------------------------

@pytest.mark.parametrize("family,arrays,problem", [
    ("diag-linear", dict(X=np.zeros((5, 0)), y=np.zeros(5)), "an empty dimension"),
    ("toy-attention", dict(X=np.zeros((5, 0, 2)), Y=np.zeros((5, 0, 2))), "an empty dimension"),
    ("toy-attention", dict(X=np.zeros((5, 3, 0)), Y=np.zeros((5, 3, 0))), "an empty dimension"),
    ("diag-linear", dict(X=np.ones((5, 2), dtype=np.longdouble), y=np.ones(5)), "long double"),
    ("diag-linear", dict(X=np.ones((5, 2), dtype=complex), y=np.ones(5)), "complex"),
    ("diag-linear", dict(X=np.ones((5, 2)) * 1e300, y=np.ones(5)), "overflows"),
    ("diag-linear", dict(X=np.ones((5, 2)), y=np.ones(5) * 1e-300), "underflows"),
    ("diag-linear", dict(X=np.array([[{}, 1]] * 5, dtype=object), y=np.ones(5)), "Python objects"),
])
def test_data_refused_at_the_boundary(family, arrays, problem, tmp_path, capsys):
    path = _npz(tmp_path, **arrays)
    code = main(["run", "--model", family, "--data", path, "--checks", "definition-3.1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("verifier: error: --data") and problem in err
    assert "allow_pickle" not in err and not (tmp_path / "o").exists()


def test_p0_data_in_limit_is_bad_input(tmp_path, capsys):
    path = _npz(tmp_path, X=np.zeros((5, 0)), y=np.zeros(5))
    assert main(["limit", "--model", "diag-linear", "--data", path]) == 2
    assert "an empty dimension" in capsys.readouterr().err


def test_a_text_file_is_not_an_npz_and_pickles_are_never_suggested(tmp_path, capsys):
    text = tmp_path / "data.npz"
    text.write_text("X,y\n1,2\n")
    assert main(["run", "--model", "diag-linear", "--data", str(text)]) == 2
    err = capsys.readouterr().err
    assert "is not an .npz file" in err and "allow_pickle" not in err


# ---- checks never pass vacuously, never hang ----------------------------------------------------------------

def test_discrete_training_refuses_alphas_whose_square_underflows(tmp_path, capsys):
    path = _linear(tmp_path)
    for alphas in ("exp(-10000)", "1e-200"):
        assert main(["run", "--model", "diag-linear", "--data", path, "--checks", "lemma-4.1", "--optimizer", "gd",
                     "--alphas", alphas, "--out", str(tmp_path / "o")]) == 2
        assert "too small for --optimizer gd" in capsys.readouterr().err
    assert main(["run", "--model", "diag-linear", "--data", path, "--checks", "lemma-4.1", "--optimizer", "gd",
                 "--steps", "20", "--alphas", "1e-100", "--no-progress", "--out", str(tmp_path / "o")]) == 0
    [check] = json.loads((tmp_path / "o" / "results.json").read_text())["checks"]
    assert check["metrics"]["alphas"]["value"] == ["1e-100"] and check["metrics"]["max_law_error"]["value"] < 1e-12


def test_lemma41_flow_at_a_tiny_alpha_runs_at_a_bounded_cost_and_says_so(tmp_path):
    from verifier.checks.lemma41 import FLOW_MAX_LOG_INV_ALPHA

    path = _linear(tmp_path)
    assert main(["run", "--model", "diag-linear", "--data", path, "--checks", "lemma-4.1", "--alphas", "exp(-1e6)",
                 "--no-progress", "--out", str(tmp_path / "o")]) == 0
    [check] = json.loads((tmp_path / "o" / "results.json").read_text())["checks"]
    assert check["metrics"]["alphas"]["value"] == ["1e-08"] and FLOW_MAX_LOG_INV_ALPHA == pytest.approx(8 * np.log(10))
    assert check["message"].startswith("alpha=exp(-1e+06) is below what the parameter-space reference integrator")
    assert check["metrics"]["nfev"]["value"][0] < 5000  # the 1e-8 run, not one whose length grows with 1e6


def _definition31(model):
    from verifier.checks import run_check
    from verifier.context import Context

    return run_check("definition-3.1", Context(RunConfig(model="diag-linear"), model=model, argv=["test"]))


def test_definition31_overflow_is_inconclusive_not_a_kink():
    """Data built in-process (no .npz boundary) whose loss overflows: inconclusive with the reason."""
    import torch

    from verifier.models import DiagLinear

    X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e300
    res = _definition31(DiagLinear(X, X[:, 0]))
    assert res.verdict is Verdict.INCONCLUSIVE and "overflow" in res.message and "kink" not in res.message
    assert res.reason == "overflow"


def test_definition31_nan_is_never_hidden():
    import torch

    from verifier.models import DiagLinear

    X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    X[0, 0] = float("nan")
    res = _definition31(DiagLinear(X, torch.ones(8, dtype=torch.float64)))
    assert res.verdict is Verdict.INCONCLUSIVE and "not finite" in res.message and res.reason == "overflow"


def test_definition31_constant_loss_is_inconclusive():
    import torch

    from verifier.models import DiagLinear

    res = _definition31(DiagLinear(torch.zeros(8, 3, dtype=torch.float64), torch.ones(8, dtype=torch.float64)))
    assert res.verdict is Verdict.INCONCLUSIVE and "exactly zero" in res.message and res.reason == "nothing-to-test"


# ---- output sets: whole or absent ------------------------------------------------------------------------------

def _must_not_run(*_a, **_k):
    raise AssertionError("checks ran although --out was bad")


@pytest.mark.parametrize("out", ["a_file", "/dev/null", "/proc/verifier-test", "a_file/sub", "busy", "busy_html", ""])
def test_bad_out_is_refused_before_any_work(out, tmp_path, monkeypatch, capsys):
    import verifier.runner

    (tmp_path / "a_file").write_text("keep\n")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    (tmp_path / "busy_html" / "report.html").mkdir(parents=True)
    data = _linear(tmp_path / "busy")
    monkeypatch.setattr(verifier.runner, "run_check", _must_not_run)
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code = main(["run", "--model", "diag-linear", "--data", data, "--checks", "definition-3.1", f"--out={out}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("verifier: error: --out: ") and len(err.strip().splitlines()) == 1
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "a_file").read_text() == "keep\n"


def _cheap_run(tmp_path, *extra):
    return ["run", "--model", "diag-linear", "--data", _linear(tmp_path), "--checks", "definition-3.1",
            "--no-progress", *extra]


def test_a_previous_output_set_is_replaced_whole(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "report.html").write_text("old")
    assert main(_cheap_run(tmp_path, "--out", str(out))) == 0
    assert json.loads((out / "results.json").read_text())["checks"][0]["id"] == "definition-3.1"
    assert (out / "report.html").read_text() != "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "o"]  # no temporary folders left


@pytest.mark.parametrize("previous", [False, True])
def test_interrupt_while_writing_leaves_no_half_set(previous, tmp_path, monkeypatch, capsys):
    import verifier.report

    out = tmp_path / "o"
    if previous:
        out.mkdir()
        (out / "results.json").write_text("{}")
        (out / "report.html").write_text("old")

    def interrupted(_results):
        raise KeyboardInterrupt

    monkeypatch.setattr(verifier.report, "render_html", interrupted)
    assert main(_cheap_run(tmp_path, "--out", str(out))) == 130
    assert "interrupted" in capsys.readouterr().err
    if previous:
        assert (out / "results.json").read_text() == "{}" and (out / "report.html").read_text() == "old"
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"] + (["o"] if previous else [])


def test_runs_without_out_get_their_own_folders_and_latest_links_to_the_newest(tmp_path, monkeypatch):
    from verifier.outputs import OutputSet

    monkeypatch.chdir(tmp_path)
    sets = [OutputSet.for_out(None) for _ in range(3)]
    for s in sets:
        s.open()  # reserved in the same second: exclusive mkdir gives each its own folder
    assert len({s.target for s in sets}) == 3
    for s in sets:
        s.discard()
    assert not any((tmp_path / "reports").iterdir())
    assert main(_cheap_run(tmp_path)) == 0
    assert main(_cheap_run(tmp_path)) == 0
    runs = sorted(p for p in (tmp_path / "reports").iterdir() if p.name != "latest")
    assert len(runs) == 2 and all((p / "results.json").is_file() and (p / "report.html").is_file() for p in runs)
    latest = tmp_path / "reports" / "latest"
    assert latest.is_symlink() and latest.resolve() == runs[-1].resolve()


@pytest.mark.parametrize("blocker", ["file", "folder"])
def test_a_blocked_reports_latest_warns_after_writing_the_run(blocker, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    latest = tmp_path / "reports" / "latest"
    if blocker == "file":
        latest.parent.mkdir()
        latest.write_text("mine")
    else:
        latest.mkdir(parents=True)
        (latest / "notes.txt").write_text("mine")
    assert main(_cheap_run(tmp_path)) == 0
    err = capsys.readouterr().err
    assert "verifier: warning: reports/latest not updated" in err and "Traceback" not in err
    [run] = [p for p in (tmp_path / "reports").iterdir() if p.name != "latest"]
    assert (run / "results.json").is_file() and (run / "report.html").is_file()
    assert (latest.read_text() if blocker == "file" else (latest / "notes.txt").read_text()) == "mine"


def test_report_never_overwrites_its_input_and_checks_o_first(tmp_path, capsys):
    assert main(_cheap_run(tmp_path, "--out", str(tmp_path / "o"))) == 0
    results = tmp_path / "o" / "results.json"
    saved = results.read_bytes()
    (tmp_path / "dir").mkdir()
    for target in (str(results), str(tmp_path / "o" / ".." / "o" / "results.json"), str(tmp_path / "dir"),
                   "/proc/verifier-test.html", str(tmp_path / "d.npz" / "r.html")):
        assert main(["report", str(results), "-o", target]) == 2
        assert capsys.readouterr().err.startswith("verifier: error: -o: ")
    assert results.read_bytes() == saved
    assert main(["report", str(results), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!")


def test_limit_prints_the_full_weight_limit(tmp_path, capsys):
    """`verifier limit` on full weights: the saddle-to-saddle stages (linear attention's closed form), in JSON too."""
    out = tmp_path / "limit.json"
    assert main(["limit", "--preset", "linear-attention", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "closed-form (derived)" in text and "s4(K Q^T)" in text and "6.25" in text
    stages = json.loads(out.read_text())
    assert stages["kind"] == "closed-form" and [round(s["T"], 4) for s in stages["stages"]] == [0, 0.3906, 0.6944, 1.5625, 6.25]
    assert stages["stages"][-1]["singular_values"]["K Q^T"] == pytest.approx([1.4815, 0.9091, 0.6557, 0.5128], abs=1e-4)


def test_limit_json_is_checked_first(tmp_path, capsys):
    data = _linear(tmp_path)
    (tmp_path / "dir").mkdir()
    for target in (str(tmp_path / "dir"), "/proc/verifier-test.json", data):
        assert main(["limit", "--model", "diag-linear", "--data", data, "--json", target]) == 2
        assert capsys.readouterr().err.startswith("verifier: error: --json: ")
    assert main(["limit", "--model", "diag-linear", "--data", data, "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())
    # refused after --json was checked (full weights whose loss is not a function of the product: weight decay on
    # one factor has no saddle-to-saddle limit here): none of --json's missing folders is made
    model_file = tmp_path / "decayed.py"
    model_file.write_text(
        "import torch\nimport verifier\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.A = nn.Parameter(torch.ones(3, 2, dtype=torch.float64))\n"
        "        self.B = nn.Parameter(torch.ones(3, 2, dtype=torch.float64))\n\n"
        "def make():\n"
        "    X = torch.eye(3, dtype=torch.float64)\n"
        "    return verifier.from_module(Net(), [('A', 'B')], lambda m: ((X @ m.B @ m.A.T - X) ** 2).sum()"
        " + 0.1 * (m.A ** 2).sum())\n")
    nested = tmp_path / "new" / "deeper" / "s.json"
    assert main(["limit", "--model-file", f"{model_file}:make", "--json", str(nested)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("verifier: error: --model-file: ") and "only through U V^T" in err
    assert not (tmp_path / "new").exists()
    assert main(["limit", "--model", "diag-linear", "--data", data, "--json", str(nested)]) == 0
    assert json.loads(nested.read_text())


# ---- a crash is exit 4, one line, never a traceback, never exit 1 ------------------------------------------

def test_an_internal_error_exits_4_with_one_line(monkeypatch, capsys):
    import verifier.cli

    def broken():
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(verifier.cli, "_checks", broken)
    monkeypatch.delenv("VERIFIER_TRACEBACK", raising=False)
    assert main(["checks"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("verifier: internal error: RuntimeError: something broke") and "please report" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.setenv("VERIFIER_TRACEBACK", "1")
    assert main(["checks"]) == 4
    assert "Traceback" in capsys.readouterr().err


# ---- .ci/gate: a crash stops it, a stale results.json is never gated -----------------------------------------

GATE = Path(__file__).resolve().parents[1] / ".ci" / "gate"


@pytest.mark.parametrize("run_code,writes,expected", [(4, False, 4), (2, False, 2), (130, False, 130),
                                                      (1, True, 0), (3, True, 0), (0, False, 4)])
def test_ci_gate_exit_codes(run_code, writes, expected, tmp_path):
    """A stub `verifier` on PATH: `run` exits run_code (writing results.json or not), `gate` exits 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "verifier"
    stub.write_text(f"""#!/usr/bin/env bash
echo "$@" >> "{tmp_path}/calls"
if [ "$1" = run ]; then
  {'mkdir -p "$4" && echo {} > "$4/results.json"' if writes else ':'}
  exit {run_code}
fi
exit 0
""")
    stub.chmod(0o755)
    out = tmp_path / "ci"
    out.mkdir()
    (out / "results.json").write_text("{}")  # a previous run's: must never be gated
    proc = subprocess.run(["bash", str(GATE), str(out)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=60)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert proc.returncode == expected, proc.stderr
    assert calls[0].startswith("run ")
    assert any(c.startswith("gate ") for c in calls) == (expected == 0)


def test_sigterm_during_a_run_discards_the_output_set_and_exits_130(tmp_path):
    """SIGTERM (a CI job cancelled, `kill`) stops a run like Ctrl-C: no half-written set, no temporary folder
    left beside --out, exit 130 (not 1, the code of a failed check)."""
    import signal
    import time

    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "verifier", "run", "--preset", "toy-attention", "--checks",
                             "theorem-4.5", "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".o.*.tmp")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".o.*.tmp")), "the run never opened its output set"
    time.sleep(0.5)  # inside the checks now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_after_main_exits_130_and_later_ones_are_ignored(tmp_path):
    """The `verifier` command (cli.console): a Ctrl-C that lands after main's own handling, e.g. just after
    the output set was moved into place, exits 130 without a traceback; the process then ends with os._exit,
    signals ignored, so nothing at the interpreter's shutdown can interrupt it. Found by
    scripts/hostile_inputs.py (SIGINT while writing, 2 in 3 runs). In a process of its own: console() exits."""
    code = ("import os, signal, verifier.cli as cli\n"
            "def late_interrupt(argv=None):\n"
            "    raise KeyboardInterrupt\n"
            "cli.main = late_interrupt\n"
            "real = os._exit\n"
            "def check(code):\n"
            "    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN is signal.getsignal(signal.SIGTERM)\n"
            "    real(code if ignored else 99)\n"
            "os._exit = check\n"
            "cli.console()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "verifier: interrupted (nothing written)"
