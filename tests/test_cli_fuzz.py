"""Hypothesis at the CLI boundary: random argument lists and malformed .npz / .json files.

Whatever comes in, ``verifier.cli.main`` (called in-process) exits 0, 1, 2 or 3 — never 4 (a bug) and never
with a traceback; exit 2 is one line naming a field; and the output set is whole or absent: every folder
that holds results.json or report.html holds both, nothing temporary is left behind, and files that were
there before a refused command are unchanged. Runs are kept cheap: ``--checks definition-3.1`` on a tiny
diag-linear problem; most examples are refused at the boundary. The ``ci`` profile (the default) runs a few
dozen examples; ``HYPOTHESIS_PROFILE=thorough`` runs hundreds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier.cli import main

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
FUZZ = settings(max_examples=300 if PROFILE == "thorough" else 25, deadline=None, derandomize=PROFILE != "thorough",
                suppress_health_check=[HealthCheck.too_slow], database=None)

NUMBERS = ["0", "-1", "1", "0.5", "1e-3", "2", "1e400", "-1e400", "nan", "inf", "-inf", "1e-400", "1e3", "3.5",
           "18446744073709551616", "9223372036854775807", "-9223372036854775809", "0x10", "", " ", "exp(-10000)",
           "exp(-5)", "exp(1)", "1e-4,exp(-50)", "1e-4,,1", "abc", "\x00", "\u00e9", "--", "-"]
NAMES = ["diag-linear", "nope", "flow", "gd", "sgd", "adam", "square", "logistic", "cpu", "auto", "cuda", "tpu",
         "definition-3.1", "lemma-4.1", "full-attention"]
RUN_OPTIONS = ["--alphas", "--horizon", "--optimizer", "--lr", "--steps", "--batch-size", "--momentum",
               "--weight-decay", "--rtol", "--atol", "--noise", "--negligible", "--perturb-epochs", "--seed",
               "--loss", "--device"]
PROBLEM_OPTIONS = ["--model", "--data", "--preset", "--loss", "--seed", "--device"]


def _write_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Valid and malformed inputs, made once: .npz data sets and results.json files."""
    d = tmp_path_factory.mktemp("fuzz-inputs")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 3))
    y = X @ np.array([1.0, -0.5, 0.0])
    out = {
        "tiny": _write_npz(d / "tiny.npz", X=X, y=y),
        "p0": _write_npz(d / "p0.npz", X=np.zeros((10, 0)), y=y),
        "n0": _write_npz(d / "n0.npz", X=np.zeros((0, 3)), y=np.zeros(0)),
        "complex": _write_npz(d / "complex.npz", X=X.astype(complex), y=y),
        "longdouble": _write_npz(d / "ld.npz", X=X.astype(np.longdouble), y=y),
        "huge": _write_npz(d / "huge.npz", X=X * 1e300, y=y * 1e300),
        "nan": _write_npz(d / "nan.npz", X=np.where(X > 1, np.nan, X), y=y),
        "attention": _write_npz(d / "att.npz", X=rng.standard_normal((4, 3, 2)), Y=rng.standard_normal((4, 3, 2))),
    }
    (d / "text.npz").write_text("X,y\n1,2\n")
    (d / "nested.json").write_text("[" * 50_000 + "]" * 50_000)
    (d / "a_file").write_text("not a folder\n")
    out.update(text=str(d / "text.npz"), nested=str(d / "nested.json"), missing=str(d / "missing.npz"),
               folder=str(d), a_file=str(d / "a_file"))
    valid = d / "valid"
    assert main(["run", "--model", "diag-linear", "--data", out["tiny"], "--checks", "definition-3.1",
                 "--no-progress", "--out", str(valid)]) == 0
    out["results"] = str(valid / "results.json")
    return out


def call(argv: list[str], work: Path) -> tuple[int, str, str]:
    """main(argv) with cwd = work, stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def assert_clean(argv: list[str], code: int, err: str, work: Path, before: dict) -> None:
    """The properties every command must have, whatever its input (see the module docstring)."""
    shown = f"argv={argv!r} exit={code} stderr={err[-800:]!r}"
    assert code in (0, 1, 2, 3), shown
    assert "Traceback" not in err, shown
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("verifier: error: "), shown
    for p in work.rglob("*"):
        assert not p.name.startswith("."), f"leftover {p}: {shown}"
        if p.is_dir() and not p.is_symlink() and ({"results.json", "report.html"} & {q.name for q in p.iterdir()}):
            assert (p / "results.json").is_file() and (p / "report.html").is_file(), f"half set in {p}: {shown}"
    if code == 2:
        now = snapshot(work)
        assert {k: v for k, v in now.items() if k in before} == before, f"changed by a refused command: {shown}"
        assert not any((work / k).is_file() for k in set(now) - set(before)), f"wrote although refused: {shown}"


def values(files: dict[str, str]):
    paths = st.sampled_from([files[k] for k in ("tiny", "p0", "n0", "complex", "longdouble", "huge", "nan",
                                                "attention", "text", "missing", "folder", "a_file")])
    return st.one_of(st.sampled_from(NUMBERS), st.sampled_from(NAMES), paths,
                     st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                     st.text(max_size=6))


def out_targets(work: Path):
    """--out / -o / --json places, relative to the work folder or absolute hostile ones."""
    return st.sampled_from(["o", "a/b", "existing", "busy", "prev", "/dev/null", "/proc/verifier-fuzz", "", "."])


def prepare(work: Path) -> None:
    (work / "existing").write_text("a file\n")
    (work / "busy").mkdir()
    (work / "busy" / "mine.txt").write_text("keep\n")
    (work / "prev").mkdir()
    (work / "prev" / "results.json").write_text("{}")
    (work / "prev" / "report.html").write_text("old")


@FUZZ
@given(data=st.data())
def test_run_with_random_options(files, data):
    """`verifier run` on a tiny problem with random (mostly hostile) options and data files."""
    problem = data.draw(st.sampled_from([["--model", "diag-linear", "--data", files["tiny"]],
                                         ["--preset", "diag-linear"], []]), label="problem")
    opts = data.draw(st.lists(st.tuples(st.sampled_from(RUN_OPTIONS + PROBLEM_OPTIONS), values(files)),
                              max_size=3), label="options")
    argv = ["run", *problem, *[f"{o}={v}" for o, v in opts]]
    if not any(a.startswith(("--preset", "--model")) for a in argv):
        argv += ["--model", "diag-linear"]  # never the default preset: it is slow
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work)
        if data.draw(st.booleans(), label="give --out"):
            argv += ["--out", data.draw(out_targets(work), label="out")]
        argv += ["--checks", "definition-3.1", "--no-progress"]
        before = snapshot(work)
        code, _, err = call(argv, work)
        assert_clean(argv, code, err, work, before)


@FUZZ
@given(data=st.data())
def test_random_tokens(files, data):
    """Unpaired tokens in random order (argparse's own errors) for every subcommand."""
    command = data.draw(st.sampled_from(["run", "limit", "report", "gate", "presets", "checks", "nope", "-h"]))
    tokens = data.draw(st.lists(st.one_of(st.sampled_from(RUN_OPTIONS + ["--json", "-o", "--baseline", "--out"]),
                                          values(files)), max_size=5), label="tokens")
    argv = [command, *tokens]
    if command in ("run", "limit"):
        argv += ["--preset", "nope"]  # the last --preset wins: whatever else parses, no suite runs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work)
        before = snapshot(work)
        code, _, err = call(argv, work)
        assert_clean(argv, code, err, work, before)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10)


@FUZZ
@given(data=st.data())
def test_report_and_gate_with_malformed_results(files, data):
    """results.json files: random JSON, a valid file with one field replaced, deep nesting, not JSON."""
    valid = json.loads(Path(files["results"]).read_text())
    kind = data.draw(st.sampled_from(["random", "mutated", "file"]), label="kind")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work)
        src = work / "in.json"
        if kind == "random":
            src.write_text(json.dumps(data.draw(JSON, label="json")))
        elif kind == "mutated":
            key = data.draw(st.sampled_from(["schema_version", "run", "checks"]), label="key")
            valid[key] = data.draw(JSON, label="value")
            src.write_text(json.dumps(valid))
        else:
            src = Path(data.draw(st.sampled_from([files["nested"], files["text"], files["missing"], files["results"],
                                                  files["tiny"]]), label="file"))
        if data.draw(st.booleans(), label="gate"):
            argv = ["gate", "--baseline", files["results"], str(src)]
        else:
            argv = ["report", str(src), "-o", data.draw(st.sampled_from(["r.html", "busy", "existing", "in.json",
                                                                       "/proc/verifier-fuzz.html", ""]))]
        before = snapshot(work)
        code, _, err = call(argv, work)
        assert_clean(argv, code, err, work, before)
