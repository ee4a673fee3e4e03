"""The command line: exit codes, one-line errors naming the field, nothing half-written."""

import json
import subprocess
import sys

import numpy as np
import pytest

from verifier.cli import main


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
    (["run", "--alphas", "0"], "--alphas", "0 < alpha < 1"),
    (["run", "--alphas", "1.5"], "--alphas", "0 < alpha < 1"),
    (["run", "--alphas=-1e-3"], "--alphas", "0 < alpha < 1"),
    (["run", "--alphas", "abc"], "--alphas", "floats"),
    (["run", "--optimizer", "lbfgs"], "--optimizer", "flow, gd, sgd, adam"),
    (["run", "--loss", "hinge"], "--loss", "square, logistic"),
    (["run", "--device", "tpu"], "--device", "auto, cpu, cuda"),
    (["run", "--lr", "-1"], "--lr", "lr > 0"),
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
    assert "file not found" in err and "cannot read" in err


def test_no_traceback_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "verifier", "run", "--alphas", "2"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "verifier: error: --alphas: alpha=2 is not in (0, 1) (allowed: 0 < alpha < 1, e.g. 1e-4,1e-16)"


def test_byo_linear_data_lemma41_gd_passes_and_adam_fails(tmp_path):
    path = _linear(tmp_path)
    base = ["run", "--model", "diag-linear", "--data", path, "--checks", "lemma-4.1", "--steps", "50", "--no-progress"]
    assert main(base + ["--optimizer", "gd", "--out", str(tmp_path / "gd")]) == 0
    assert main(base + ["--optimizer", "adam", "--out", str(tmp_path / "adam")]) == 1
    saved = json.loads((tmp_path / "adam" / "results.json").read_text())
    assert saved["schema_version"] == 2
    [check] = saved["checks"]
    assert check["id"] == "lemma-4.1" and check["verdict"] == "fail"
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
