#!/usr/bin/env python3
"""Hostile inputs against the ``verifier`` command, run as real processes; prints a table and a count.

Every case is one command line (with the files it needs made up front) and what a careful tool must do
with it: the allowed exit codes (0 pass, 1 fail, 2 bad input, 3 inconclusive), and for exit 2 one line on
stderr naming the field. Every case is also held to the rules that hold for all input: no traceback, no
timeout, and the output set (the ``--out`` folder, ``reports/``, ``-o``, ``--json``) either untouched
(exit 2) or complete (results.json and report.html) — never half-written, never a leftover temporary file.

    python scripts/hostile_inputs.py [--verifier PATH] [--timeout 120] [--jobs 2] [--only CLASS] [-k TEXT]

Needs only numpy (to write the .npz files), so it runs against any installed ``verifier`` (e.g. another
checkout's venv: ``--verifier /work/main/.venv/bin/verifier``). Exits 1 when any case was mishandled.

Besides the command line, the cases reach what users bring: ``--model-file`` files that exit, raise or
chdir (classes modelfile, options, size, library), ``survey`` and ``track`` (survey, track), the library's
``RankTracker`` and builders run by the ``python`` beside ``verifier`` (library), the pytest plugin (plugin),
odd names and readers (names, readers, npz) and the environment (env: HOME, TMPDIR, locale, full stdout).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

CHEAP = ["--checks", "definition-3.1", "--no-progress"]  # the cheapest check: a run that gets this far is fast
LIN = "{fx}/lin.npz"


@dataclass
class Case:
    cls: str
    name: str
    args: list[str]
    codes: set[int]
    field: str | None = None  # exit 2 must name this (the start of the one stderr line after "verifier: error: ")
    need: str | None = None  # stdout+stderr must contain this
    forbid: str | None = None  # stderr must not contain this
    target: str | None = None  # the output whose state is judged (default: --out, -o, --json or reports/)
    setup: Callable[[Path], None] | None = None
    custom: Callable[["Case", Path, dict], dict] | None = None  # several processes (races, signals)
    cmd: str = "verifier"  # or "python": args after the python beside verifier (-c CODE, -m pytest ...)
    env: dict | None = None  # environment changes (a value None removes the variable)
    limit_mib: int = 0  # peak_memory: the most resident memory the run may reach


@dataclass
class Row:
    case: Case
    code: int | None
    traceback: bool
    state: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---- fixtures ---------------------------------------------------------------------------------------------

def make_fixtures(fx: Path) -> None:
    fx.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3))
    y = X @ np.array([1.0, -0.5, 0.0])
    np.savez(fx / "lin.npz", X=X, y=y)
    np.savez(fx / "lin_p0.npz", X=np.zeros((12, 0)), y=y)
    np.savez(fx / "lin_n0.npz", X=np.zeros((0, 3)), y=np.zeros(0))
    np.savez(fx / "lin_n1.npz", X=X[:1], y=y[:1])
    np.savez(fx / "lin_p1.npz", X=X[:, :1], y=X[:, 0])
    np.savez(fx / "lin_longdouble.npz", X=X.astype(np.longdouble), y=y.astype(np.longdouble))
    np.savez(fx / "lin_complex.npz", X=X.astype(np.complex128), y=y)
    np.savez(fx / "lin_complex_y.npz", X=X, y=y.astype(np.complex128))
    np.savez(fx / "lin_f16.npz", X=X.astype(np.float16), y=y.astype(np.float16))
    np.savez(fx / "lin_f32.npz", X=X.astype(np.float32), y=y.astype(np.float32))
    np.savez(fx / "lin_int.npz", X=np.round(X * 3).astype(np.int64), y=np.round(y * 3).astype(np.int64))
    np.savez(fx / "lin_bigint.npz", X=(np.round(X * 3) * 2**60).astype(np.int64), y=np.zeros(12, dtype=np.int64))
    np.savez(fx / "lin_uint8.npz", X=np.abs(np.round(X * 3)).astype(np.uint8), y=y)
    np.savez(fx / "lin_bool.npz", X=X > 0, y=y)
    np.savez(fx / "lin_str.npz", X=np.array([["a", "b", "c"]] * 12), y=y)
    np.savez(fx / "lin_obj.npz", X=np.array([[{}, 1, 2]] * 12, dtype=object), y=y)
    np.savez(fx / "lin_nan.npz", X=np.where(X > 1, np.nan, X), y=y)
    np.savez(fx / "lin_inf.npz", X=X, y=np.where(y > 1, np.inf, y))
    for e in (150, 200, 300):
        np.savez(fx / f"lin_x1e{e}.npz", X=X * 10.0**e, y=y * 10.0**e)
    np.savez(fx / "lin_tiny.npz", X=X * 1e-300, y=y * 1e-300)
    np.savez(fx / "lin_y0.npz", X=X, y=np.zeros(12))
    np.savez(fx / "lin_x0.npz", X=np.zeros((12, 3)), y=y)
    np.savez(fx / "lin_yshape.npz", X=X, y=y[:5])
    np.savez(fx / "lin_y2d.npz", X=X, y=y[:, None])
    np.savez(fx / "lin_x1d.npz", X=X[:, 0], y=y)
    np.savez(fx / "lin_x3d.npz", X=X[:, :, None], y=y)
    np.savez(fx / "lin_scalar.npz", X=np.float64(1.0), y=np.float64(1.0))
    np.savez(fx / "lin_noX.npz", Z=X, y=y)
    np.savez(fx / "lin_lower.npz", x=X, y=y)
    np.savez(fx / "lin_labels.npz", X=X, y=np.where(y >= 0, 1.0, -1.0))
    T = rng.standard_normal((8, 4, 3))
    np.savez(fx / "att.npz", X=T, Y=T * 0.5)
    np.savez(fx / "att_n0.npz", X=np.zeros((8, 0, 3)), Y=np.zeros((8, 0, 3)))
    np.savez(fx / "att_d0.npz", X=np.zeros((8, 4, 0)), Y=np.zeros((8, 4, 0)))
    np.savez(fx / "att_N0.npz", X=np.zeros((0, 4, 3)), Y=np.zeros((0, 4, 3)))
    np.savez(fx / "att_shape.npz", X=T, Y=T[..., :2])
    np.savez(fx / "att_longdouble.npz", X=T.astype(np.longdouble), Y=T.astype(np.longdouble))
    np.savez(fx / "att_x1e300.npz", X=T * 1e300, Y=T * 1e300)
    np.save(fx / "plain.npy", X)
    (fx / "text.npz").write_text("X,y\n1,2\n3,4\n")
    (fx / "text.txt").write_text("hello, I am not an npz file\n")
    (fx / "empty.npz").write_bytes(b"")
    (fx / "garbage.npz").write_bytes(os.urandom(4096))
    (fx / "trunc.npz").write_bytes((fx / "lin.npz").read_bytes()[:200])
    (fx / "adir.npz").mkdir(exist_ok=True)
    # results files for report / gate
    (fx / "nested.json").write_text("[" * 200_000 + "]" * 200_000)
    (fx / "nested_obj.json").write_text('{"schema_version": 1, "run": ' + '{"a":' * 100_000 + "1" + "}" * 100_000
                                        + ', "checks": []}')
    (fx / "schema_true.json").write_text(json.dumps({"schema_version": True, "run": {}, "checks": []}))
    (fx / "schema_str.json").write_text(json.dumps({"schema_version": "1", "run": {}, "checks": []}))
    (fx / "schema_99.json").write_text(json.dumps({"schema_version": 99, "run": {}, "checks": []}))
    (fx / "toplist.json").write_text("[1, 2, 3]")
    (fx / "notjson.json").write_text("{'schema_version': 1")
    (fx / "empty.json").write_text("")
    (fx / "utf16.json").write_bytes(json.dumps({"schema_version": 1}).encode("utf-16"))
    (fx / "binary.json").write_bytes(os.urandom(2048))
    (fx / "bad_verdict.json").write_text(json.dumps(
        {"schema_version": 1, "run": {}, "checks": [{"id": "x", "verdict": "maybe"}]}))
    (fx / "bad_metrics.json").write_text(json.dumps(
        {"schema_version": 1, "run": {}, "checks": [{"id": "x", "verdict": "pass", "metrics": [1, 2]}]}))
    (fx / "bad_check.json").write_text(json.dumps({"schema_version": 1, "run": {}, "checks": [42]}))
    (fx / "no_checks.json").write_text(json.dumps({"schema_version": 1, "run": {}, "checks": []}))
    (fx / "nan_metric.json").write_text(
        '{"schema_version": 1, "run": {}, "checks": [{"id": "x", "verdict": "pass", "metrics": {"m": NaN}}]}')
    (fx / "huge_number.json").write_text(
        '{"schema_version": 1, "run": {}, "checks": [{"id": "x", "verdict": "pass", "metrics": {"m": 1e999}}]}')
    (fx / "a_file").write_text("I am a file\n")


def valid_results(fx: Path, verifier: str, timeout: float) -> None:
    """A real results.json from this verifier (the inputs of report/gate cases that should succeed)."""
    out = fx / "real"
    proc = subprocess.run([verifier, "run", "--model", "diag-linear", "--data", str(fx / "lin.npz"), *CHEAP,
                           "--out", str(out)], capture_output=True, text=True, timeout=timeout, cwd=fx)
    if not (out / "results.json").is_file():
        sys.exit(f"could not make a valid results.json with {verifier}: {proc.stderr[-2000:]}")
    shutil.copy(out / "results.json", fx / "valid.json")


# ---- the cases --------------------------------------------------------------------------------------------

def evil_pickle(case_dir: Path) -> None:
    """A checkpoint whose unpickling would create case_dir/PWNED (torch.load without weights_only runs it)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {case_dir / 'PWNED'}",))

    (case_dir / "evil.pt").write_bytes(pickle.dumps(Evil()))


HISTORY = """
import sys, torch
from pathlib import Path
from verifier.tracking import RankTracker
fx = Path(sys.argv[1])
torch.manual_seed(0)
m = torch.nn.MultiheadAttention(4, 1, dtype=torch.float64)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
x = torch.randn(8, 3, 4, dtype=torch.float64)
t = RankTracker(m)
t.record(0)
for step in range(1, 25):
    loss = m(x, x, x)[0].pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    t.record(step, loss.detach())
(fx / "run").mkdir()
t.history().save(fx / "run" / "rank-history.npz")
torch.save({"w": torch.ones(4, 4)}, fx / "whole.pt")
(fx / "truncated.pt").write_bytes((fx / "whole.pt").read_bytes()[:200])
"""


def valid_history(fx: Path, python: str, timeout: float) -> None:
    """fx/run/rank-history.npz: a real RankTracker history (24 records of one attention head), and
    fx/whole.pt, fx/truncated.pt: a checkpoint and its first 200 bytes (the inputs of recommend-lora and
    track-compare cases)."""
    proc = subprocess.run([python, "-c", HISTORY, str(fx)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"could not make a rank history with {python}: {proc.stderr[-2000:]}")


def run_lin(*extra, data=LIN, checks=CHEAP):
    return ["run", "--model", "diag-linear", "--data", data, *checks, *extra]


def bad(cls, name, args, field, **kw):
    return Case(cls, name, args, {2}, field=field, **kw)


def cases() -> list[Case]:
    C: list[Case] = []
    # --- alphas
    for text in ["0", "1", "1.5", "-1e-3", "nan", "inf", "-inf", "exp(inf)", "exp(-inf)", "exp(nan)", "exp(0)",
                 "exp(1)", "exp()", "exp(-10000", "", ",", "1e-4,,1e-8", "abc", "1e-4;1e-8", "1e-4,",
                 "exp(-1e400)", "0x1p-3"]:
        C.append(bad("alphas", f"--alphas {text!r}", run_lin("--alphas", text), "--alphas"))
    C.append(bad("alphas", "--alphas 1e-400 (underflows)", run_lin("--alphas", "1e-400"), "--alphas",
                 need="exp(-921"))
    flow41 = ["--checks", "lemma-4.1", "--no-progress"]  # a check that uses --alphas (definition-3.1 refuses it)
    C.append(Case("alphas", "--alphas 1e-323 (subnormal, valid)", run_lin("--alphas", "1e-323", checks=flow41), {0}))
    C.append(Case("alphas", "--alphas ' 1e-4 , exp(-50) '", run_lin("--alphas", " 1e-4 , exp(-50) ", checks=flow41),
                  {0}))
    # --- seeds
    for text in ["18446744073709551616", "99999999999999999999999", "-9223372036854775809",
                 "-18446744073709551615", "1e3", "", "0x10", "1.0"]:
        C.append(bad("seed", f"--seed {text}", run_lin("--seed", text), "--seed"))
    C.append(Case("seed", "--seed -1 (documented counterexample seed)", run_lin("--seed", "-1"), {0}))
    C.append(Case("seed", "--seed 9223372036854775807 (int64 max)", run_lin("--seed", "9223372036854775807"), {0}))
    C.append(Case("seed", "--seed -9223372036854775808 (int64 min)", run_lin("--seed=-9223372036854775808"), {0}))
    C.append(Case("seed", "limit --seed 9223372036854775807 (preset)",
                  ["limit", "--preset", "diag-linear", "--seed", "9223372036854775807"], {0}))
    C.append(bad("seed", "limit --seed 2**64", ["limit", "--preset", "diag-linear", "--seed", str(2**64)], "--seed"))
    # --- worker processes (verifier run --workers)
    for text in ["0", "-2", "1.5", "two", "", "1e3"]:
        C.append(bad("workers", f"--workers {text!r}", run_lin("--workers", text), "--workers"))
    C.append(bad("workers", "VERIFIER_WORKERS=two", run_lin(), "$VERIFIER_WORKERS", env={"VERIFIER_WORKERS": "two"}))
    both = ["--checks", "definition-3.1,lemma-4.1", "--no-progress"]  # two groups: two processes
    C.append(Case("workers", "--workers 64 (more than the groups: one per group)", run_lin("--workers", "64", checks=both),
                  {0}))
    # --- numeric options
    numeric = {
        "--horizon": ["0", "-1", "inf", "nan", "1e400", "abc"],
        "--noise": ["0", "-1", "inf", "nan"],
        "--negligible": ["0", "-1", "inf", "nan", "1e400"],
        "--perturb-epochs": ["0", "-1", "1e3", "99999999999999999999"],
        "--lr": ["0", "-1", "nan", "inf", "1e400"],
        "--steps": ["0", "-5", "1.5", "100000000000"],
        "--batch-size": ["0", "-1"],
        "--momentum": ["1", "-0.1", "nan", "inf"],
        "--weight-decay": ["nan", "inf", "-1"],
        "--rtol": ["0", "1", "nan", "-1", "inf"],
        "--atol": ["0", "nan", "2"],
    }
    for flag, values in numeric.items():
        for text in values:
            C.append(bad("numbers", f"{flag} {text}", run_lin(f"{flag}={text}"), flag))
    a42 = ["run", "--preset", "diag-linear", "--checks", "assumption-4.2", "--alphas", "1e-4,1e-8", "--no-progress"]
    C.append(bad("numbers", "--horizon inf on assumption-4.2 (hang?)", [*a42, "--horizon", "inf"], "--horizon"))
    C.append(Case("numbers", "--horizon 1e6 on assumption-4.2", [*a42, "--horizon", "1e6"], {0, 1, 3}))
    C.append(Case("numbers", "--lr 1e10 gd lemma-4.1 (diverges)",
                  run_lin("--optimizer", "gd", "--lr", "1e10", "--steps", "20", checks=["--checks", "lemma-4.1",
                                                                                         "--no-progress"]), {3}))
    C.append(Case("numbers", "--batch-size 1000000 sgd",
                  run_lin("--optimizer", "sgd", "--batch-size", "1000000", "--steps", "20",
                          checks=["--checks", "lemma-4.1", "--no-progress"]), {0}))
    # --- names
    for flag, text in [("--device", "tpu"), ("--device", "CPU"), ("--device", ""), ("--optimizer", "lbfgs"),
                       ("--optimizer", ""), ("--loss", "hinge"), ("--checks", ""), ("--checks", ","),
                       ("--checks", "nope"), ("--checks", "lemma-4.1,nope")]:
        C.append(bad("names", f"{flag} {text!r}", run_lin(f"{flag}={text}", checks=["--no-progress"]), flag))
    C.append(bad("names", "--device cuda without a GPU", run_lin("--device", "cuda"), "--device"))
    C.append(bad("names", "--preset nope", ["run", "--preset", "nope", "--no-progress"], "--preset"))
    C.append(bad("names", "--preset ''", ["run", "--preset=", "--no-progress"], "--preset"))
    C.append(bad("names", "--preset with --data", ["run", "--preset", "diag-linear", "--data", LIN, *CHEAP], "--preset"))
    C.append(bad("names", "--model without --data", ["run", "--model", "diag-linear", *CHEAP], "--data"))
    C.append(bad("names", "--data without --model", ["run", "--data", LIN, *CHEAP], "--model"))
    C.append(bad("names", "--model nope", ["run", "--model", "nope", "--data", LIN, *CHEAP], "--model"))
    C.append(bad("names", "--loss logistic on toy-attention", ["run", "--loss", "logistic", *CHEAP], "--loss"))
    C.append(bad("names", "--loss logistic with real-valued y", run_lin("--loss", "logistic"), "--data"))
    C.append(Case("names", "--loss logistic with +-1 labels", run_lin("--loss", "logistic", data="{fx}/lin_labels.npz"),
                  {0}))
    C.append(Case("names", "--checks lemma-4.1,lemma-4.1 (duplicate)",
                  run_lin("--optimizer", "gd", "--steps", "5", checks=["--checks", "lemma-4.1,lemma-4.1",
                                                                        "--no-progress"]), {0}))
    C.append(bad("names", "unknown command", ["frobnicate"], "usage"))
    C.append(bad("names", "run --bogus", ["run", "--bogus"], "usage"))
    C.append(Case("names", "no arguments", [], {0, 2}, need="usage"))
    C.append(Case("names", "--help", ["--help"], {0}, need="usage"))
    C.append(Case("names", "run --help", ["run", "--help"], {0}, need="--alphas"))
    # --- data files
    D = "data"
    for f, field_ in [("lin_p0", "--data"), ("lin_n0", "--data"), ("lin_longdouble", "--data"),
                      ("lin_complex", "--data"), ("lin_complex_y", "--data"), ("lin_bool", "--data"),
                      ("lin_str", "--data"), ("lin_obj", "--data"), ("lin_nan", "--data"), ("lin_inf", "--data"),
                      ("lin_yshape", "--data"), ("lin_y2d", "--data"), ("lin_x1d", "--data"), ("lin_x3d", "--data"),
                      ("lin_scalar", "--data"), ("lin_noX", "--data"), ("lin_lower", "--data"),
                      ("att", "--data"), ("plain", "--data"), ("empty", "--data"), ("garbage", "--data"),
                      ("trunc", "--data"), ("adir", "--data")]:
        path = "{fx}/" + f + (".npy" if f == "plain" else ".npz")
        C.append(bad(D, f"diag-linear {f}", run_lin(data=path), field_, forbid="allow_pickle"))
    for f in ("text.npz", "text.txt"):
        C.append(bad(D, f"diag-linear {f}", run_lin(data="{fx}/" + f), "--data", forbid="allow_pickle"))
    C.append(bad(D, "--data /dev/null", run_lin(data="/dev/null"), "--data"))
    C.append(bad(D, "--data missing", run_lin(data="{fx}/missing.npz"), "--data"))
    for fam, f in [("toy-attention", "att_n0"), ("toy-attention", "att_d0"), ("toy-attention", "att_N0"),
                   ("toy-attention", "att_shape"), ("toy-attention", "att_longdouble"), ("toy-attention", "lin"),
                   ("full-attention", "att_d0"), ("diag-transformer", "att_d0"), ("diag-transformer", "att_n0")]:
        C.append(bad(D, f"{fam} {f}", ["run", "--model", fam, "--data", "{fx}/" + f + ".npz", *CHEAP], "--data"))
    for f in ("lin_n1", "lin_p1", "lin_f16", "lin_f32", "lin_int", "lin_uint8", "lin_y0", "lin_x0"):
        C.append(Case(D, f"diag-linear {f} (valid)", run_lin(data="{fx}/" + f + ".npz"), {0, 3}))
    C.append(Case(D, "toy-attention att (valid)", ["run", "--model", "toy-attention", "--data", "{fx}/att.npz",
                                                   *CHEAP], {0}))
    # --- wrong verdicts: vacuous, overflow
    V = "verdict"
    C.append(Case(V, "x1e300 definition-3.1 (overflow)", run_lin(data="{fx}/lin_x1e300.npz"), {2, 3}))
    C.append(Case(V, "x1e200 definition-3.1", run_lin(data="{fx}/lin_x1e200.npz"), {0, 2, 3}))
    C.append(Case(V, "x1e150 definition-3.1", run_lin(data="{fx}/lin_x1e150.npz"), {0, 2, 3}))
    C.append(Case(V, "bigint data definition-3.1", run_lin(data="{fx}/lin_bigint.npz"), {0, 2, 3}))
    C.append(Case(V, "x1e-300 definition-3.1 (underflow)", run_lin(data="{fx}/lin_tiny.npz"), {2, 3}))
    C.append(Case(V, "attention x1e300 definition-3.1", ["run", "--model", "toy-attention", "--data",
                                                         "{fx}/att_x1e300.npz", *CHEAP], {2, 3}))
    l41 = ["--checks", "lemma-4.1", "--no-progress"]
    for opt in ("gd", "sgd", "adam"):
        C.append(Case(V, f"{opt} --alphas exp(-10000) lemma-4.1 (vacuous?)",
                      run_lin("--optimizer", opt, "--steps", "20", "--alphas", "exp(-10000)", checks=l41),
                      {2}, field="--alphas"))
    C.append(bad(V, "gd --alphas 1e-200 lemma-4.1 (alpha^2 underflows)",
                 run_lin("--optimizer", "gd", "--steps", "20", "--alphas", "1e-200", checks=l41), "--alphas"))
    C.append(Case(V, "gd --alphas 1e-100 lemma-4.1", run_lin("--optimizer", "gd", "--steps", "20", "--alphas", "1e-100",
                                                           checks=l41), {0}))
    C.append(Case(V, "gd --alphas 1e-4 lemma-4.1", run_lin("--optimizer", "gd", "--steps", "20", "--alphas", "1e-4",
                                                         checks=l41), {0}))
    C.append(Case(V, "adam lemma-4.1 (must fail)", run_lin("--optimizer", "adam", "--steps", "20", checks=l41), {1}))
    for text in ("exp(-10000)", "exp(-1e6)", "1e-300"):
        C.append(Case("hang", f"flow --alphas {text} lemma-4.1", run_lin("--alphas", text, checks=l41), {0, 3},
                      need="alpha="))
    # --- output locations
    O = "output"
    C.append(bad(O, "--out existing file", run_lin("--out", "{case}/a_file"), "--out",
                 setup=lambda d: (d / "a_file").write_text("keep me\n")))
    C.append(bad(O, "--out /dev/null", run_lin("--out", "/dev/null"), "--out"))
    C.append(bad(O, "--out /proc/version", run_lin("--out", "/proc/version"), "--out"))
    C.append(bad(O, "--out /proc/verifier-x", run_lin("--out", "/proc/verifier-x"), "--out"))
    C.append(bad(O, "--out under a file", run_lin("--out", "{case}/a_file/sub"), "--out",
                 setup=lambda d: (d / "a_file").write_text("keep me\n"), target="{case}/a_file"))
    C.append(bad(O, "--out ''", run_lin("--out="), "--out", target="{case}"))
    C.append(bad(O, "--out folder with report.html as a folder", run_lin("--out", "{case}/o"), "--out",
                 setup=lambda d: (d / "o" / "report.html").mkdir(parents=True)))
    C.append(bad(O, "--out folder with other files", run_lin("--out", "{case}/o"), "--out",
                 setup=lambda d: (d / "o").mkdir() or (d / "o" / "notes.txt").write_text("mine\n")))
    C.append(Case(O, "--out folder holding an older output set (replaced)", run_lin("--out", "{case}/o"), {0},
                  setup=lambda d: (d / "o").mkdir() or (d / "o" / "results.json").write_text("{}")
                  or (d / "o" / "report.html").write_text("old")))
    C.append(Case(O, "--out empty folder", run_lin("--out", "{case}/o"), {0}, setup=lambda d: (d / "o").mkdir()))
    C.append(Case(O, "--out new nested folder", run_lin("--out", "{case}/a/b/c"), {0}))
    C.append(Case(O, "no --out, reports/latest is a file", run_lin(), {0},
                  setup=lambda d: (d / "reports").mkdir() or (d / "reports" / "latest").write_text("blocker")))
    C.append(Case(O, "no --out, reports/latest is an old folder copy", run_lin(), {0},
                  setup=lambda d: (d / "reports" / "latest").mkdir(parents=True)
                  or (d / "reports" / "latest" / "results.json").write_text("{}")))
    C.append(Case(O, "no --out, reports is a file", run_lin(), {2}, field="--out",
                  setup=lambda d: (d / "reports").write_text("blocker"), target="{case}/reports"))
    C.append(Case(O, "two runs in the same second (4 at once)", run_lin(), {0}, custom=concurrent_runs))
    C.append(Case(O, "SIGINT while the output set is written", run_lin("--out", "{case}/o"), {0, 130},
                  custom=interrupt_while_writing))
    # report / gate / limit
    R = "report"
    for f in ("nested", "nested_obj", "schema_true", "schema_str", "schema_99", "toplist", "notjson", "empty",
              "utf16", "binary", "bad_verdict", "bad_metrics", "bad_check", "missing"):
        C.append(bad(R, f"report {f}.json", ["report", "{fx}/" + f + ".json", "-o", "{case}/r.html"], "RESULTS.json"))
        if f in ("nested", "schema_true", "bad_verdict", "binary"):
            C.append(bad(R, f"gate new={f}.json", ["gate", "--baseline", "{fx}/valid.json", "{fx}/" + f + ".json"],
                         "gate"))
    C.append(Case(R, "report nan_metric.json", ["report", "{fx}/nan_metric.json", "-o", "{case}/r.html"], {0, 2}))
    C.append(Case(R, "report huge_number.json", ["report", "{fx}/huge_number.json", "-o", "{case}/r.html"], {0, 2}))
    C.append(Case(R, "report no_checks.json", ["report", "{fx}/no_checks.json", "-o", "{case}/r.html"], {0, 2}))
    C.append(Case(R, "report valid", ["report", "{fx}/valid.json", "-o", "{case}/r.html"], {0}))
    C.append(bad(R, "report -o its own input", ["report", "{case}/r.json", "-o", "{case}/r.json"], "-o",
                 setup=lambda d: shutil.copy(d.parent.parent / "fx" / "valid.json", d / "r.json"),
                 target="{case}/r.json"))
    C.append(bad(R, "report -o a folder", ["report", "{fx}/valid.json", "-o", "{case}/dir"], "-o",
                 setup=lambda d: (d / "dir").mkdir()))
    C.append(bad(R, "report -o /proc/x", ["report", "{fx}/valid.json", "-o", "/proc/verifier-x.html"], "-o"))
    C.append(bad(R, "report -o under a file", ["report", "{fx}/valid.json", "-o", "{case}/a_file/r.html"], "-o",
                 setup=lambda d: (d / "a_file").write_text("x"), target="{case}/a_file"))
    C.append(Case(R, "gate valid vs itself", ["gate", "--baseline", "{fx}/valid.json", "{fx}/valid.json"], {0}))
    C.append(bad(R, "gate missing baseline", ["gate", "--baseline", "{fx}/missing.json", "{fx}/valid.json"], "gate"))
    L = "limit"
    C.append(bad(L, "limit p=0 data", ["limit", "--model", "diag-linear", "--data", "{fx}/lin_p0.npz"], "--data"))
    C.append(bad(L, "limit d=0 data", ["limit", "--model", "toy-attention", "--data", "{fx}/att_d0.npz"], "--data"))
    # full weights have a limit since issue 25 (the greedy saddle-to-saddle limit): printed, exit 0
    C.append(Case(L, "limit full-attention (full weights)", ["limit", "--preset", "full-attention"], {0}))
    C.append(bad(L, "limit --data without --model", ["limit", "--data", LIN], "--model"))
    C.append(bad(L, "limit --json a folder", ["limit", "--preset", "diag-linear", "--json", "{case}/dir"], "--json",
                 setup=lambda d: (d / "dir").mkdir()))
    C.append(bad(L, "limit --json /proc/x", ["limit", "--preset", "diag-linear", "--json", "/proc/verifier-x.json"],
                 "--json"))
    C.append(bad(L, "limit --json its --data", ["limit", "--model", "diag-linear", "--data", "{case}/d.npz", "--json",
                                                "{case}/d.npz"], "--json",
                 setup=lambda d: shutil.copy(d.parent.parent / "fx" / "lin.npz", d / "d.npz"), target="{case}/d.npz"))
    C.append(Case(L, "limit --json new file", ["limit", "--preset", "diag-linear", "--json", "{case}/s.json"], {0}))
    return C


# ---- what users bring: model files, surveys, tracking, the library, the plugin, the environment ----------

SQUARE = "import torch, verifier\n\n\ndef make(seed=None):\n    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), 3)\n"
MODEL_FILES = {
    "exit0_import": "import sys\nsys.exit(0)\n",
    "exit1_import": "import sys\nsys.exit(1)\n",
    "exit3_factory": "import sys\n\n\ndef make(seed=None):\n    sys.exit(3)\n",
    "exit0_factory": "import sys\n\n\ndef make(seed=None):\n    sys.exit(0)\n",
    "base_exc": "def make(seed=None):\n    raise GeneratorExit('odd')\n",
    "kbd": "def make(seed=None):\n    raise KeyboardInterrupt\n",
    "chdir_import": "import os\nos.chdir('/')\n" + SQUARE,
    "chdir_factory": SQUARE.replace("def make(seed=None):\n", "def make(seed=None):\n    import os\n    os.chdir('..')\n"),
    "returns_none": "def make(seed=None):\n    return None\n",
    "square": SQUARE,
    "constant": "import torch, verifier\n\n\ndef make(seed=None):\n    return verifier.from_loss(lambda b: (b * 0).sum() + 1.0, 3)\n",
    "detached": "import torch, verifier\nT = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)\n\n\ndef make(seed=None):\n"
                "    return verifier.from_loss(lambda b: (b.detach() - T).pow(2).sum(), 3)\n",
    "big": "import torch, verifier\n\n\ndef make(seed=None):\n    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), 10**6)\n",
    "p_true": "import verifier\n\n\ndef make(seed=None):\n    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), p=True)\n",
    "p_float": "import verifier\n\n\ndef make(seed=None):\n    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), p=3.0)\n",
    "device_tpu": "import verifier\n\n\ndef make(seed=None):\n    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), 3, device='tpu')\n",
    "meta": "import torch, verifier\n\n\nclass P(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.u = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))\n"
            "        self.v = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))\n\n\ndef make(seed=None):\n"
            "    with torch.device('meta'):\n        m = P()\n    return verifier.from_module(m, [('u', 'v')], lambda m: (m.u * m.v).sum())\n",
    "draw1_raises": "import torch, verifier\nfrom verifier.survey import draw_seed\n\n\ndef make(seed):\n"
                    "    if seed == draw_seed(0, 1):\n        raise RuntimeError(f'no data for seed {seed}')\n"
                    "    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), 3)\n",
    "draw1_exits": "import sys, torch, verifier\nfrom verifier.survey import draw_seed\n\n\ndef make(seed):\n"
                   "    if seed == draw_seed(0, 1):\n        sys.exit(0)\n"
                   "    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), 3)\n",
}
TRACKER = """
import sys, torch
from verifier.tracking import RankTracker
torch.manual_seed(0)
m = torch.nn.MultiheadAttention(4, 1, dtype=torch.float64)
t = RankTracker(m)
try:
    {body}
    t.results()
except (ValueError, TypeError) as exc:  # InputError is a ValueError: refused, naming the field
    print("refused:", exc)
    sys.exit(0)
print("accepted")
sys.exit(1)
"""
PLUGIN_TEST = "def test_ok():\\n    assert True\\n"
PROBLEM_TEST = ("from verifier.pytest_plugin import Problem, parametrize_with_checks\\n\\n\\n"
                "@parametrize_with_checks([Problem('a', model='not a model')])\\n"
                "def test_theory(problem, check):\\n    check(problem)\\n")


def make_user_fixtures(fx: Path) -> None:
    mf = fx / "mf"
    mf.mkdir(exist_ok=True)
    for name, text in MODEL_FILES.items():
        (mf / f"{name}.py").write_text(text)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3))
    y = X @ np.array([1.0, -0.5, 0.0])
    np.savez(fx / "lin_yY.npz", X=X, y=y, Y=y)
    with zipfile.ZipFile(fx / "lin_noext.npz", "w") as z:
        for name, a in (("X", X), ("y.npy", y)):
            buf = io.BytesIO()
            np.save(buf, a)
            z.writestr(name, buf.getvalue())
    with zipfile.ZipFile(fx / "lin_bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as z:  # 2 GiB unused
        for name, a in (("X.npy", X), ("y.npy", y)):
            buf = io.BytesIO()
            np.save(buf, a)
            z.writestr(name, buf.getvalue())
        with z.open("unused.npy", "w", force_zip64=True) as f:
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (2**28,)})
            f.write(head.getvalue())
            chunk = bytes(2**24)
            for _ in range(2**31 // 2**24):
                f.write(chunk)
    os.mkfifo(fx / "fifo")
    os.mkfifo(fx / "fifo.npz")
    os.mkfifo(fx / "fifo.py")
    # the files recommend-lora and track-compare read: rank histories and checkpoints
    (fx / "garbage.npz").write_bytes(b"garbage")
    (fx / "garbage_run").mkdir()
    (fx / "garbage_run" / "rank-history.npz").write_bytes(b"PK\x03\x04 not a zip")


def big_int_json(fx: Path) -> None:
    raw = json.loads((fx / "valid.json").read_text())
    name = next(iter(raw["checks"][0]["metrics"]))
    raw["checks"][0]["metrics"][name]["value"] = 10**400
    (fx / "bigint.json").write_text(json.dumps(raw))
    raw = json.loads((fx / "valid.json").read_text())
    raw["checks"] = []
    (fx / "nochecks_real.json").write_text(json.dumps(raw))


def user_cases() -> list[Case]:
    C: list[Case] = []
    MF = "{fx}/mf/"
    cheap = ["--checks", "definition-3.1", "--no-progress"]

    def run_mf(name, *extra, checks=cheap, out="{case}/o"):
        return ["run", "--model-file", MF + name + ".py:make", *checks, *extra, "--out", out]

    M = "modelfile"
    for name in ("exit0_import", "exit1_import", "exit3_factory", "exit0_factory", "base_exc", "chdir_import",
                 "returns_none"):
        C.append(bad(M, f"run --model-file {name}", run_mf(name), "--model-file"))
        C.append(bad(M, f"limit --model-file {name}", ["limit", "--model-file", MF + name + ".py:make"], "--model-file"))
    C.append(Case(M, "run --model-file chdir_factory, relative --out", run_mf("chdir_factory", out="rel"), {2},
                  field="--model-file", target="{case}/rel"))
    C.append(Case(M, "run --model-file raising KeyboardInterrupt", run_mf("kbd"), {130}))
    C.append(Case(M, "run --model-file square (valid)", run_mf("square"), {0}))
    C.append(Case(M, "theorem-4.5 on a constant loss (no OverflowError)",
                  run_mf("constant", checks=["--checks", "theorem-4.5", "--no-progress"]), {3}, forbid="OverflowError"))
    C.append(bad(M, "a loss cut off from autograd", run_mf("detached"), "--model-file", need="autograd"))
    O = "options"
    for extra, flag in ((["--loss", "logistic"], "--loss"), (["--loss", "hinge"], "--loss"),
                        (["--loss", "square"], "--loss"), (["--lr", "0.1"], "--lr"), (["--steps", "7"], "--steps"),
                        (["--momentum", "0.5", "--optimizer", "adam"], "--momentum"),
                        (["--batch-size", "3", "--optimizer", "gd"], "--batch-size"),
                        (["--noise", "0.2"], "--noise"), (["--alphas", "1e-4"], "--alphas")):
        C.append(bad(O, f"model file with {' '.join(extra)}", run_mf("square", *extra), flag))
    C.append(bad(O, "limit model file --loss logistic", ["limit", "--model-file", MF + "square.py:make", "--loss",
                                                         "logistic"], "--loss"))
    S = "size"
    C.append(bad(S, "limit from_loss p=10**6", ["limit", "--model-file", MF + "big.py:make"], "--model-file",
                 need="TiB"))
    C.append(bad(S, "run from_loss p=10**6 (flow checks)", run_mf("big", checks=["--no-progress"]), "--model-file"))
    C.append(Case(S, "run from_loss p=10**6 definition-3.1 (no flow)", run_mf("big"), {0}))
    LB = "library"
    for name in ("p_true", "p_float", "device_tpu", "meta"):
        C.append(bad(LB, f"builder {name}", run_mf(name), "--model-file"))
    for what, body in (("loss a vector", "t.record(0, loss=torch.ones(3))"),
                       ("non-monotone steps", "t.record(5); t.record(3)"),
                       ("loss a string", "t.record(0, loss='low')"),
                       ("step a float", "t.record(0.5)")):
        C.append(Case(LB, f"RankTracker.record {what}", ["-c", TRACKER.replace("{body}", body)], {0}, cmd="python",
                      need="refused"))
    SV = "survey"
    sv = ["--n", "2", "--checks", "definition-3.1", "--no-progress", "--out", "{case}/o"]
    C.append(Case(SV, "survey factory raising for draw 1", ["survey", "--model-file", MF + "draw1_raises.py:make", *sv],
                  {1, 3}, need="draw 1"))
    C.append(Case(SV, "survey factory sys.exit for draw 1", ["survey", "--model-file", MF + "draw1_exits.py:make", *sv],
                  {1, 3}))
    C.append(bad(SV, "survey --model-file exit0_import", ["survey", "--model-file", MF + "exit0_import.py:make", *sv],
                 "--model-file"))
    C.append(Case(SV, "survey --model-file square (valid)", ["survey", "--model-file", MF + "square.py:make", *sv], {0}))
    T = "track"
    tr = ["track", "--preset", "vit-digits-tiny", "--epochs", "1", "--no-progress", "--out", "{case}/o"]
    C.append(Case(T, "track --lr 1e6 (diverges)", [*tr, "--lr", "1e6"], {1, 3}))
    C.append(Case(T, "track --init-scales 1e300 (diverges)", [*tr, "--init-scales", "1e300"], {1, 3}))
    LC = "lora/compare"  # the files these two commands read (rank histories, checkpoints) and their options
    lora = ["recommend-lora"]
    C.append(bad(LC, "recommend-lora a garbage .npz", [*lora, "{fx}/garbage.npz"], "RUN"))
    C.append(bad(LC, "recommend-lora a run with a damaged history", [*lora, "{fx}/garbage_run"], "RUN"))
    C.append(bad(LC, "recommend-lora a foreign .npz (lin.npz)", [*lora, LIN], "RUN"))
    C.append(bad(LC, "recommend-lora a FIFO", [*lora, "{fx}/fifo.npz"], "RUN"))
    C.append(bad(LC, "recommend-lora /dev/zero", [*lora, "/dev/zero"], "RUN"))
    C.append(bad(LC, "recommend-lora an empty folder", [*lora, "{case}"], "RUN"))
    ckpt = [*lora, "--out", "{case}/o", "--before"]
    C.append(bad(LC, "--before a pickle that runs code (weights_only)", [*ckpt, "{case}/evil.pt", "--after",
                                                                          "{fx}/whole.pt"], "--before",
                 setup=evil_pickle, target="{case}/PWNED"))
    C.append(bad(LC, "--before a truncated checkpoint", [*ckpt, "{fx}/truncated.pt", "--after", "{fx}/whole.pt"],
                 "--before"))
    C.append(bad(LC, "--after a garbage file", [*ckpt, "{fx}/whole.pt", "--after", "{fx}/garbage.npz"], "--after"))
    C.append(bad(LC, "--before = --after (nothing changed)", [*ckpt, "{fx}/whole.pt", "--after", "{fx}/whole.pt"],
                 "--after"))
    C.append(bad(LC, "--after a FIFO", [*ckpt, "{fx}/whole.pt", "--after", "{fx}/fifo"], "--after"))
    for text in ["nan", "inf", "1.5", "0", "-0.5", "1e400", ""]:
        C.append(bad(LC, f"recommend-lora --energy {text!r}", [*lora, "{fx}/run", "--energy", text],
                     "--energy"))
    cmp = ["track-compare"]
    C.append(bad(LC, "track-compare one run", [*cmp, "{fx}/run:1"], None))
    C.append(bad(LC, "track-compare garbage .npz", [*cmp, "{fx}/run:1", "{fx}/garbage.npz:0.1"], None,
                 need="garbage.npz"))
    C.append(bad(LC, "track-compare a foreign .npz", [*cmp, "{fx}/run:1", LIN + ":0.1"], None, need="lin.npz"))
    C.append(bad(LC, "track-compare /dev/zero", [*cmp, "{fx}/run:1", "/dev/zero:0.1"], None,
                 need="/dev/zero"))
    C.append(bad(LC, "track-compare a FIFO", [*cmp, "{fx}/run:1", "{fx}/fifo.npz:0.1"], None,
                 need="fifo.npz"))
    for text in ["nan", "inf", "0", "-1", "x", "1e400", ""]:
        C.append(bad(LC, f"track-compare scale {text!r}", [*cmp, "{fx}/run:1", f"{{fx}}/run:{text}"], None,
                     need="scale"))
    C.append(bad(LC, "track-compare the same run twice at one scale", [*cmp, "{fx}/run:1", "{fx}/run:1"], None))
    C.append(Case(LC, "track-compare a run at two scales (valid)", [*cmp, "{fx}/run:1", "{fx}/run:0.1", "--out",
                                                                    "{case}/o"], {0, 1, 3}))
    C.append(Case(LC, "recommend-lora a real history (valid)", [*lora, "{fx}/run", "--out", "{case}/o"], {0, 1, 3}))
    C.append(Case(LC, "recommend-lora --energy 1 (all of the energy, valid)", [*lora, "{fx}/run", "--energy", "1",
                                                                             "--out", "{case}/o"], {0, 1, 3}))
    N = "names"
    long = "a" * 300
    C.append(bad(N, "--data 300-char name", run_lin(data="{case}/" + long + ".npz"), "--data"))
    C.append(bad(N, "--out 300-char name", run_lin("--out", "{case}/" + long), "--out"))
    C.append(bad(N, "report -o 300-char name", ["report", "{fx}/valid.json", "-o", "{case}/" + long + ".html"], "-o"))
    C.append(bad(N, "report 300-char input", ["report", "{case}/" + long + ".json", "-o", "{case}/r.html"],
                 "RESULTS.json"))
    C.append(bad(N, "limit --json 300-char name", ["limit", "--preset", "diag-linear", "--json",
                                                   "{case}/" + long + ".json"], "--json"))
    C.append(bad(N, "--model-file 300-char name", run_mf("x", out="{case}/o")[:2] + ["{case}/" + long + ".py:make",
                                                                                  *cheap], "--model-file"))
    C.append(Case(N, "--out legal 250-char name", run_lin("--out", "{case}/" + "b" * 250), {0}))
    C.append(Case(N, "--out with a non-UTF-8 byte", run_lin("--out", "{case}/r" + os.fsdecode(b"\xff\xfe")), {0}))
    C.append(Case(N, "--data with a non-UTF-8 name", run_lin(data="{case}/d" + os.fsdecode(b"\xff") + ".npz"), {0},
                  setup=lambda d: shutil.copy(d.parent.parent / "fx" / "lin.npz",
                                              os.fsencode(str(d)) + b"/d\xff.npz")))
    C.append(Case(N, "stdout on a full disk after the set is written", run_lin("--out", "{case}/o"), {0},
                  custom=full_stdout))
    RD = "readers"
    C.append(bad(RD, "report a 400-digit integer", ["report", "{fx}/bigint.json", "-o", "{case}/r.html"], "RESULTS.json"))
    C.append(bad(RD, "gate a 400-digit integer", ["gate", "--baseline", "{fx}/bigint.json", "{fx}/valid.json"], "gate"))
    C.append(bad(RD, "gate a baseline without checks", ["gate", "--baseline", "{fx}/nochecks_real.json",
                                                        "{fx}/valid.json"], "--baseline"))
    C.append(bad(RD, "report a FIFO", ["report", "{fx}/fifo", "-o", "{case}/r.html"], "RESULTS.json"))
    C.append(bad(RD, "gate a FIFO", ["gate", "--baseline", "{fx}/fifo", "{fx}/valid.json"], "gate"))
    C.append(bad(RD, "report /dev/zero", ["report", "/dev/zero", "-o", "{case}/r.html"], "RESULTS.json"))
    C.append(bad(RD, "--data a FIFO", run_lin(data="{fx}/fifo.npz"), "--data"))
    C.append(bad(RD, "--model-file a FIFO", run_mf("x")[:2] + ["{fx}/fifo.py:make", *cheap], "--model-file"))
    C.append(bad(RD, "--data /dev/zero", run_lin(data="/dev/zero"), "--data"))
    Z = "npz"
    C.append(Case(Z, "member X without .npy", run_lin(data="{fx}/lin_noext.npz"), {0}))
    C.append(bad(Z, "both y and Y", run_lin(data="{fx}/lin_yY.npz"), "--data"))
    C.append(Case(Z, "an unused 2 GiB array beside X, y", run_lin(data="{fx}/lin_bomb.npz", checks=cheap), {0},
                  custom=peak_memory, limit_mib=1500))
    P = "plugin"
    C.append(Case(P, "--verifier-report under an existing file",
                  ["-c", f"open('test_a.py', 'w').write('{PLUGIN_TEST}'); import pytest, sys; "
                         "open('a_file', 'w').write('x'); sys.exit(pytest.main(['-q', 'test_a.py', "
                         "'--verifier-report', 'a_file/r.html', '-p', 'no:cacheprovider']))"],
                  {4}, cmd="python", need="--verifier-report"))
    C.append(Case(P, "--verifier-report r.json (would overwrite the HTML)",
                  ["-c", f"open('test_a.py', 'w').write('{PLUGIN_TEST}'); import pytest, sys; "
                         "sys.exit(pytest.main(['-q', 'test_a.py', '--verifier-report', 'r.json', "
                         "'-p', 'no:cacheprovider']))"],
                  {4}, cmd="python", need="--verifier-report"))
    C.append(Case(P, "Problem('a', model='not a model')",
                  ["-c", f"open('test_p.py', 'w').write(\"{PROBLEM_TEST}\"); import pytest, sys; "
                         "sys.exit(pytest.main(['-q', 'test_p.py', '-p', 'no:cacheprovider']))"],
                  {2}, cmd="python", need="Problem.model", forbid="AttributeError"))
    E = "env"
    C.append(Case(E, "HOME unset", run_lin("--out", "{case}/o"), {0}, env={"HOME": None}))
    C.append(Case(E, "HOME not writable", run_lin("--out", "{case}/o"), {0}, env={"HOME": "/proc"}))
    C.append(Case(E, "TMPDIR missing", run_lin("--out", "{case}/o"), {0}, env={"TMPDIR": "/nonexistent/tmp"}))
    C.append(Case(E, "LC_ALL=C with a non-ASCII --out", run_lin("--out", "{case}/r\u00e9"), {0},
                  env={"LC_ALL": "C", "LANG": "C"}))
    C.append(Case(E, "PYTHONIOENCODING=ascii with a non-ASCII --out", run_lin("--out", "{case}/r\u00e9"), {0},
                  env={"PYTHONIOENCODING": "ascii"}))
    C.append(bad(E, "bad input under HOME unset", run_lin("--alphas", "2"), "--alphas", env={"HOME": None}))
    C.append(Case(E, "OMP_NUM_THREADS=garbage", run_lin("--out", "{case}/o"), {0}, env={"OMP_NUM_THREADS": "lots"}))
    return C


# ---- processes: workers, the journal, the scheduler, signals, standard streams (issue 29) ------------------

FACTORY = ("\nX = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)\n"
           "y = X @ torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)\n\n\n"
           "def make(seed=0):\n    return verifier.from_loss(lambda b: 0.5 * (X @ b - y).pow(2).mean(), 3)\n")
PROCESS_FILES = {
    "thread": "import threading, time, torch, verifier\nthreading.Thread(target=time.sleep, args=(3600,)).start()\n"
              + FACTORY,
    "child": "import multiprocessing, time, torch, verifier\nfrom pathlib import Path\n"
             "CHILD = multiprocessing.get_context('fork').Process(target=time.sleep, args=(3600,))\nCHILD.start()\n"
             "with open(Path.cwd() / 'children', 'a') as f:\n    f.write(f'{CHILD.pid}\\n')\n" + FACTORY,
    "forkpool": "import multiprocessing, torch, verifier\n" + FACTORY.replace(
        "def make(seed=0):\n", "def make(seed=0):\n    with multiprocessing.get_context('fork').Pool(2) as p:\n"
                               "        p.map(abs, [1, -2])\n"),
    "forkterm": "import multiprocessing, time, torch, verifier\n" + FACTORY.replace(
        "def make(seed=0):\n", "def make(seed=0):\n    c = multiprocessing.get_context('fork').Process(target=time.sleep, "
                               "args=(60,))\n    c.start(); time.sleep(0.5); c.terminate(); c.join()\n"),
    "killmid": "import multiprocessing, os, signal, torch, verifier\nCALLS = [0]\n" + FACTORY.replace(
        "def make(seed=0):\n    return verifier.from_loss(lambda b: 0.5 * (X @ b - y).pow(2).mean(), 3)\n",
        "def loss(b):\n    CALLS[0] += 1\n    if multiprocessing.parent_process() is not None and CALLS[0] == 40:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n    return 0.5 * (X @ b - y).pow(2).mean()\n\n\n"
        "def make(seed=0):\n    return verifier.from_loss(loss, 3)\n"),
}
LIBRARY = ("import sys\nfrom verifier.config import RunConfig\nfrom verifier.errors import InputError\n"
           "from verifier.runner import run_suite\ntry:\n    run_suite(RunConfig(preset='diag-linear'), "
           "['definition-3.1', 'lemma-4.1'], progress=False, workers=2)\nexcept InputError as exc:\n"
           "    print('refused:', exc)\n    sys.exit(0)\nprint('accepted')\nsys.exit(1)\n")
SURVEY_ARGS = ["survey", "--preset", "diag-linear", "--n", "3", "--checks", "definition-3.1", "--seed", "0",
               "--no-progress"]


def make_process_fixtures(fx: Path, verifier: str, timeout: float) -> None:
    """Model files of the process cases, and a real journal of this verifier (3 draws) to tamper with."""
    pf = fx / "pf"
    pf.mkdir(exist_ok=True)
    for name, text in PROCESS_FILES.items():
        (pf / f"{name}.py").write_text(text)
    (pf / "library.py").write_text(LIBRARY)
    out = fx / "journal"
    proc = subprocess.run([verifier, *SURVEY_ARGS, "--workers", "1", "--out", str(out)], capture_output=True,
                          text=True, timeout=timeout, cwd=fx)
    if not (out / "draws.jsonl").is_file():
        sys.exit(f"could not make a survey journal with {verifier}: {proc.stderr[-2000:]}")


def tampered(how):
    """A setup: the fixture journal copied to {case}/s, its lines (bytes, header first) changed by ``how``."""
    def setup(cdir: Path) -> None:
        src = cdir.parent.parent / "fx" / "journal" / "draws.jsonl"
        (cdir / "s").mkdir()
        lines = src.read_bytes().split(b"\n")[:-1]
        (cdir / "s" / "draws.jsonl").write_bytes(how(lines))
    return setup


def _replace(k: int, text: bytes):
    return lambda lines: b"\n".join(lines[:k] + [text] + lines[k + 1:]) + b"\n"


def _edit_draw(k: int, edit):
    def how(lines):
        d = json.loads(lines[k])
        edit(d)
        return _replace(k, json.dumps(d).encode())(lines)
    return how


def _edit_header(edit):
    def how(lines):
        h = json.loads(lines[0])
        edit(h)
        return _replace(0, json.dumps(h).encode())(lines)
    return how


def _with_streams(case: Case, cdir: Path, ctx: dict, close=(), full=(), files=False, preexec=None) -> Row:
    """The case with standard streams closed (``close``: fds) or on /dev/full (``full``), or written to files
    (``files``: a child of the user's code holding pipes open is its own business), ``preexec`` in the child."""
    argv = subst(case.args, ctx["fx"], cdir)
    target = target_of(case, argv, cdir)
    before = fingerprint(target) if target else None
    parent_before = listing(target.parent) if target else set()
    opened = []

    def stream(fd):
        if fd in close:
            return None
        if fd in full:
            opened.append(open("/dev/full", "w"))
            return opened[-1]
        if files:
            opened.append(open(cdir / f"fd{fd}.txt", "w"))
            return opened[-1]
        return subprocess.PIPE

    def child():
        for fd in close:
            os.close(fd)
        if preexec:
            preexec()

    try:
        proc = subprocess.run([ctx[case.cmd], *argv], cwd=cdir, env=case_env(case, ctx), text=True, errors="replace",
                              timeout=ctx["timeout"], stdin=subprocess.DEVNULL, stdout=stream(1), stderr=stream(2),
                              preexec_fn=child)
        code, out, err = proc.returncode, proc.stdout or "", proc.stderr or ""
    except subprocess.TimeoutExpired:
        code, out, err = None, "", ""
    finally:
        for f in opened:
            f.close()
    if files:
        out, err = ((cdir / f"fd{fd}.txt").read_text(errors="replace") if (cdir / f"fd{fd}.txt").exists() else ""
                    for fd in (1, 2))
    for pid in (cdir / "children").read_text().split() if (cdir / "children").exists() else []:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return judge(case, code, out, err, cdir, target, before, parent_before | {"fd1.txt", "fd2.txt", "children"})


def streams(**kw):
    return lambda case, cdir, ctx: _with_streams(case, cdir, ctx, **kw)


def _file_size_limit(size):
    """A preexec: no file of the process may grow beyond ``size()`` bytes (RLIMIT_FSIZE; Python ignores SIGXFSZ,
    so a write beyond it fails with EFBIG, as on a full disk)."""
    def limit():
        import resource

        n = size()
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return limit


def _journal_room(fx_journal: Path, draws: float):
    """A size for :func:`_file_size_limit`: the fixture journal's header and ``draws`` of its draw lines (the
    cases run the same survey, so their lines are as long, give or take a few digits of a duration)."""
    def size() -> int:
        lines = fx_journal.read_bytes().splitlines(keepends=True)
        whole = int(draws)
        return len(lines[0]) + sum(len(x) for x in lines[1:1 + whole]) + int((draws - whole) * len(lines[1 + whole]))
    return size


def stays_whole(folder: str, room: float, draws: int):
    """A custom: the case run with its files limited to the fixture journal's header and ``room`` draw lines (a
    disk that fills); the journal in {case}/``folder`` must then hold its header and ``draws`` whole draw lines,
    and the folder nothing else (no half line, no half set)."""
    def run(case: Case, cdir: Path, ctx: dict) -> Row:
        size = _journal_room(ctx["fx"] / "journal" / "draws.jsonl", room)
        row = _with_streams(case, cdir, ctx, preexec=_file_size_limit(size))
        journal = cdir / folder / "draws.jsonl"
        lines = journal.read_bytes().splitlines(keepends=True) if journal.exists() else []
        if len(lines) != 1 + draws or not all(x.endswith(b"\n") and json.loads(x) for x in lines):
            row.problems.append(f"the journal holds {len(lines)} lines (want {1 + draws} whole ones)")
        others = sorted(p.name for p in (cdir / folder).iterdir()) if (cdir / folder).is_dir() else []
        if others != ["draws.jsonl"]:
            row.problems.append(f"{folder}/ holds {others}")
        row.state = f"{max(0, len(lines) - 1)} draws kept"
        return row
    return run


def read_only(what: str):
    """A custom: {case}/s (what = "folder") or its journal (what = "journal") made read-only for real (chmod
    for a user, chattr +i for root), the case run, then undone."""
    def run(case: Case, cdir: Path, ctx: dict) -> Row:
        path = cdir / "s" / ("draws.jsonl" if what == "journal" else "")
        path = path if what == "journal" else cdir / "s"
        if os.geteuid() != 0:
            os.chmod(path, 0o555 if what == "folder" else 0o444)
            undo = lambda: os.chmod(path, 0o755 if what == "folder" else 0o644)  # noqa: E731
        else:
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
            undo = lambda: subprocess.run(["chattr", "-i", str(path)], capture_output=True)  # noqa: E731
        try:
            return _with_streams(case, cdir, ctx)
        finally:
            undo()
    return run


def interrupts(delays):
    """A custom: the command started ``len(delays)`` times, as from a terminal (its own process group; SIGINT to
    the group, as Ctrl-C sends it), interrupted ``delay`` s after its entry point started; each must end 130
    (or, having finished first, with its verdict and a whole set) without a traceback, leaving nothing half."""
    def run(case: Case, cdir: Path, ctx: dict) -> Row:
        started = ("import sys; from verifier.cli import console; sys.argv[0] = 'verifier'; "
                   "sys.stderr.write('started\\n'); sys.stderr.flush(); console()")
        problems, codes, tb = [], [], False
        for k, delay in enumerate(delays):
            argv = subst(case.args, ctx["fx"], cdir) + ["--out", str(cdir / f"o{k}")]
            before = listing(cdir)
            p = subprocess.Popen([ctx["python"], "-c", started, *argv], cwd=cdir, env=ctx["env"], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 start_new_session=True, errors="replace")
            try:
                if p.stderr.readline() != "started\n":
                    problems.append(f"{delay}s: did not start")
                time.sleep(delay)
                os.killpg(p.pid, signal.SIGINT)
                _, err = p.communicate(timeout=ctx["timeout"])
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                problems.append(f"{delay}s: timeout (hang)")
            codes.append(p.returncode)
            if "Traceback (most recent call last)" in err or "KeyboardInterrupt" in err:
                tb = True
                problems.append(f"{delay}s: traceback")
            out = cdir / f"o{k}"
            if p.returncode not in (130, 0, 1, 3):
                problems.append(f"{delay}s: exit {p.returncode}")
            if out.exists() and not complete_set(out) and sorted(x.name for x in out.iterdir()) not in ([],
                                                                                                ["draws.jsonl"]):
                problems.append(f"{delay}s: half-written output")
            problems += [f"{delay}s: leftover {n}" for n in leftovers(cdir, before)]
        return Row(case, max((c for c in codes if c is not None), default=None), tb,
                   f"exits {sorted(set(codes))}", problems)
    return run


def _serve(kind: str):
    """A TCP server on 127.0.0.1 that is not a Dask scheduler, in a thread of this script; its port."""
    import http.server
    import socket
    import threading

    if kind == "http":
        server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held = []

    def serve():
        while True:
            conn, _ = sock.accept()
            held.append(conn)
            if kind == "chatty":
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1]


def not_dask(kind: str):
    def run(case: Case, cdir: Path, ctx: dict) -> Row:
        port = _serve(kind)
        case.args = [a.replace("{port}", str(port)) for a in case.args]
        return _with_streams(case, cdir, ctx)
    return run


def scheduler_lost(case: Case, cdir: Path, ctx: dict) -> Row:
    """A real `dask scheduler` and one worker; the survey started on them; the scheduler SIGKILLed once a draw
    is journaled: exit 2 naming --scheduler and --resume, no traceback, every journaled line whole."""
    dask = Path(ctx["python"]).with_name("dask")
    if not dask.exists():
        return Row(case, 2, False, "no dask", [])
    procs = []
    env = ctx["env"]
    try:
        procs.append(subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                       "--scheduler-file", str(cdir / "sched.json")], cwd=cdir, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + ctx["timeout"]
        while not (cdir / "sched.json").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        address = json.loads((cdir / "sched.json").read_text())["address"]
        procs.append(subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--no-dashboard", "--host",
                                       "127.0.0.1"], cwd=cdir, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        out = cdir / "o"
        longer = ["survey", "--preset", "diag-linear", "--n", "12", "--checks", "definition-3.1,lemma-4.1", "--seed",
                  "0", "--no-progress"]  # draws one at a time on one worker: the scheduler dies mid-survey
        p = subprocess.Popen([ctx["verifier"], *longer, "--scheduler", address, "--out", str(out)], cwd=cdir,
                             env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, errors="replace")
        journal = out / "draws.jsonl"
        while p.poll() is None and time.monotonic() < deadline:
            if journal.exists() and len(journal.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.2)
        procs[0].kill()
        try:
            _, err = p.communicate(timeout=ctx["timeout"])
            code = p.returncode
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            code = None
        row = judge(case, code, "", err, cdir, None, None, set())
        lines = journal.read_bytes().splitlines(keepends=True) if journal.exists() else []
        if len(lines) < 2 or not all(x.endswith(b"\n") for x in lines):
            row.problems.append(f"journal holds {len(lines)} lines, not all whole")
        if code == 2 and "--resume" not in err:
            row.problems.append("the message does not say --resume finishes it")
        row.state = f"{max(0, len(lines) - 1)} draws kept"
        return row
    finally:
        for q in procs:
            q.kill()
            q.wait()


def process_cases() -> list[Case]:
    C: list[Case] = []
    PF = "{fx}/pf/"
    two = ["--checks", "definition-3.1,lemma-4.1", "--no-progress"]

    def run_pf(name, workers, checks=two):
        return ["run", "--model-file", PF + name + ".py:make", *checks, "--workers", workers, "--out", "{case}/o"]

    def survey_pf(name, workers):
        return ["survey", "--model-file", PF + name + ".py:make", "--n", "2", "--checks", "definition-3.1",
                "--no-progress", "--workers", workers, "--out", "{case}/o"]

    W = "workers"
    for text in ("2147483647", "99999999999", "1025"):
        C.append(bad(W, f"run --workers {text}", run_lin("--workers", text), "--workers"))
        C.append(bad(W, f"survey --workers {text}", [*SURVEY_ARGS, "--workers", text, "--out", "{case}/o"],
                     "--workers"))
    C.append(bad(W, "survey VERIFIER_WORKERS=99999999999", [*SURVEY_ARGS, "--out", "{case}/o"], "$VERIFIER_WORKERS",
                 env={"VERIFIER_WORKERS": "99999999999"}))
    C.append(bad(W, "survey --workers 2 with --scheduler", [*SURVEY_ARGS, "--workers", "2", "--scheduler",
                                                            "tcp://127.0.0.1:1", "--out", "{case}/o"], "--workers"))
    C.append(Case(W, "a worker SIGKILLed mid-check (its group runs here)", run_pf("killmid", "2"), {0}))
    for w in ("1", "2"):
        C.append(Case(W, f"run, a non-daemon thread at import, --workers {w}", run_pf("thread", w), {0}))
        C.append(Case(W, f"survey, a non-daemon thread at import, --workers {w}", survey_pf("thread", w), {0}))
        C.append(Case(W, f"run, a non-daemon child process at import, --workers {w}", run_pf("child", w), {0},
                      custom=streams(files=True)))
        C.append(Case(W, f"run, a factory with a fork Pool, --workers {w}", run_pf("forkpool", w), {0},
                      forbid="KeyboardInterrupt"))
    C.append(Case(W, "library workers=2 without a main guard", ["{fx}/pf/library.py"], {0}, cmd="python",
                  need="if __name__", forbid="bootstrapping"))
    C.append(Case(W, "Ctrl-C at 9 moments, run --workers 2", ["run", "--preset", "diag-linear", "--workers", "2",
                                                               "--no-progress"], {0, 1, 3, 130},
                  custom=interrupts([0.25, 0.4, 0.6, 0.8, 1.0, 1.5, 2.5, 4.0, 6.0])))
    C.append(Case(W, "Ctrl-C at 6 moments, survey --workers 2", [*SURVEY_ARGS, "--workers", "2"], {0, 1, 3, 130},
                  custom=interrupts([0.25, 0.5, 1.0, 2.0, 4.0, 8.0])))
    S = "signals"
    for w in ("1", "2"):
        C.append(Case(S, f"a factory that forks and terminates its child, --workers {w}", run_pf("forkterm", w), {0},
                      forbid="KeyboardInterrupt"))
    ST = "streams"
    cheap = run_lin("--out", "{case}/o")
    C.append(Case(ST, "run with stdout closed (>&-)", cheap, {0}, custom=streams(close=(1,))))
    C.append(Case(ST, "run with stderr closed (2>&-)", cheap, {0}, custom=streams(close=(2,))))
    C.append(Case(ST, "run with stdin, stdout, stderr closed", cheap, {0}, custom=streams(close=(0, 1, 2))))
    C.append(Case(ST, "run with stderr on a full disk", cheap, {0}, custom=streams(full=(2,))))
    C.append(Case(ST, "run --workers 2 with stdout and stderr closed",
                  run_lin("--out", "{case}/o", "--workers", "2", checks=two), {0}, custom=streams(close=(1, 2))))
    C.append(Case(ST, "survey with stdout closed", [*SURVEY_ARGS, "--out", "{case}/o"], {0}, custom=streams(close=(1,))))
    C.append(Case(ST, "checks with stdout closed (its only output)", ["checks"], {2}, field="stdout",
                  custom=streams(close=(1,))))
    J = "journal"
    resume = [*SURVEY_ARGS, "--workers", "1", "--out", "{case}/s", "--resume"]
    damaged = {
        "a garbage line": _replace(2, b"this is not a draw"),
        "a non-UTF-8 line": _replace(2, b'{"index": 1, "seed": "\xff\xfe"}'),
        "index 1e999": _edit_draw(2, lambda d: d.update(index="@")),
        "a line nested 100000 deep": _replace(2, b"[" * 100_000 + b"]" * 100_000),
        "duration_s Infinity": _edit_draw(2, lambda d: d.update(duration_s="@")),
        "a 2 MiB line": _replace(2, b'{"pad": "' + b"x" * (2 << 20) + b'"}'),
        "a line cut short at the end": lambda lines: b"\n".join(lines[:-1]) + b"\n" + lines[-1][:30],
        "a repeated draw": lambda lines: b"\n".join(lines + [lines[1]]) + b"\n",
    }
    for name, how in damaged.items():
        if name == "index 1e999":
            how = (lambda h: lambda lines: h(lines).replace(b'"index": "@"', b'"index": 1e999'))(how)
        if name == "duration_s Infinity":
            how = (lambda h: lambda lines: h(lines).replace(b'"duration_s": "@"', b'"duration_s": Infinity'))(how)
        C.append(Case(J, f"resume: {name} (skipped, reported)", resume, {0}, need="skipped" if "cut" not in name
                      else "cut short", setup=tampered(how)))
    seed1 = lambda d: d.update(seed=d["seed"] + 1)  # noqa: E731
    foreign = {
        "another survey's draw (seed)": ("seed", _edit_draw(2, seed1)),
        "another survey's draw (checks)": ("checks", _edit_draw(2, lambda d: d.update(
            checks={"lemma-4.1": d["checks"]["definition-3.1"]}))),
        "a draw beyond --n": ("index", _edit_draw(2, lambda d: d.update(index=7))),
        "a draw of another preset": ("command", _edit_draw(2, lambda d: d.update(
            command=d["command"].replace("diag-linear", "toy-attention")))),
    }
    for name, (fld, how) in foreign.items():
        C.append(Case(J, f"resume: {name} (refused)", resume, {2}, field="--resume", need=f"field {fld}",
                      setup=tampered(how)))
    header = {
        "a header without options": ("options", _edit_header(lambda h: h.pop("options"))),
        "a header with a list for options": ("options", _edit_header(lambda h: h.update(options=[1, 2]))),
        "a header of another seed rule": ("seed_rule", _edit_header(lambda h: h.update(seed_rule="S + i"))),
    }
    for name, (fld, how) in header.items():
        C.append(Case(J, f"resume: {name} (refused)", resume, {2}, field="--resume", need=f"line 1: field {fld}",
                      setup=tampered(how)))
    untouched = tampered(lambda lines: b"\n".join(lines[:-1]) + b"\n" + lines[-1][:30])
    C.append(Case(J, "resume: a read-only journal", resume, {2}, field="--out", setup=untouched,
                  custom=read_only("journal")))
    C.append(Case(J, "resume: a read-only survey folder", resume, {2}, field="--out", setup=untouched,
                  custom=read_only("folder")))
    C.append(Case(J, "run --out a read-only folder holding a previous set", run_lin("--out", "{case}/s"), {2},
                  field="--out", setup=lambda d: (d / "s").mkdir() or (d / "s" / "results.json").write_text("{}")
                  or (d / "s" / "report.html").write_text("old"), custom=read_only("folder")))
    C.append(Case(J, "resume: the journal meets its file-size limit (a full disk)", resume, {2}, field="--out",
                  need="--resume", target="{case}/none", setup=tampered(lambda lines: b"\n".join(lines[:-1]) + b"\n"),
                  custom=stays_whole("s", 2.5, draws=2)))
    C.append(Case(J, "new survey: no room for the journal's header", [*SURVEY_ARGS, "--out", "{case}/n"], {2},
                  field="--out", custom=streams(preexec=_file_size_limit(lambda: 100))))
    C.append(Case(J, "new survey: the journal meets its file-size limit mid-survey",
                  [*SURVEY_ARGS, "--workers", "1", "--out", "{case}/n"], {2}, field="--out", need="--resume",
                  target="{case}/none", custom=stays_whole("n", 1.5, draws=1)))
    SC = "scheduler"
    for kind in ("http", "silent", "chatty"):
        C.append(Case(SC, f"--scheduler at a {kind} TCP server (not Dask)",
                      [*SURVEY_ARGS, "--scheduler", "tcp://127.0.0.1:{port}", "--out", "{case}/o"], {2},
                      field="--scheduler", custom=not_dask(kind)))
    for address in ("tcp://127.0.0.1:1", "nonsense", "tcp://127.0.0.1:99999"):
        C.append(bad(SC, f"--scheduler {address}", [*SURVEY_ARGS, "--scheduler", address, "--out", "{case}/o"],
                     "--scheduler"))
    C.append(Case(SC, "the scheduler SIGKILLed after a draw is journaled", [], {2}, field="--scheduler",
                  custom=scheduler_lost))
    return C


# ---- running and judging -----------------------------------------------------------------------------------

def fingerprint(path: Path):
    """What is at ``path`` (recursively for folders), to tell 'unchanged' from 'changed'."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        try:
            return ("dir", tuple((p.name, fingerprint(p)) for p in sorted(path.iterdir())))
        except OSError:
            return ("dir?",)
    if stat.S_ISREG(st.st_mode):
        try:
            return ("file", hashlib.sha1(path.read_bytes()).hexdigest())
        except OSError:
            return ("file?", st.st_size)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    return ("special", st.st_mode, st.st_rdev)


def complete_set(folder: Path) -> bool:
    """A whole output set: results.json and report.html, or recommend-lora's lora-config.json,
    recommendation.json and report.html."""
    data = ("lora-config.json", "recommendation.json") if (folder / "lora-config.json").exists() else ("results.json",)
    try:
        for name in data:
            json.loads((folder / name).read_text())
        return (folder / "report.html").is_file() and (folder / "report.html").stat().st_size > 0
    except (OSError, ValueError):
        return False


def describe_reports(reports: Path) -> tuple[str, list[str]]:
    """State of a default reports/ tree: every run folder and latest complete?"""
    if not reports.is_dir():
        return "none", []
    problems, runs = [], []
    for p in sorted(reports.iterdir()):
        if p.name.startswith("."):
            problems.append(f"leftover {p.name}")
        elif p.name == "latest":
            if p.exists() and p.is_dir() and not complete_set(p):
                problems.append("latest incomplete")
        elif p.is_dir():
            runs.append(p)
            if not complete_set(p):
                problems.append(f"{p.name} incomplete")
    return (f"{len(runs)} run(s)" + (", latest" if (reports / "latest").exists() else "")), problems


def target_of(case: Case, argv: list[str], cdir: Path) -> Path | None:
    if case.target:
        return Path(case.target.replace("{case}", str(cdir)))
    for flag in ("--out", "-o", "--json"):
        for k, a in enumerate(argv):
            if a == flag and k + 1 < len(argv):
                return Path(argv[k + 1])
            if a.startswith(flag + "="):
                return Path(a.split("=", 1)[1] or ".")
    if argv and argv[0] == "run" and not {"-h", "--help"} & set(argv):
        return cdir / "reports"
    return None


def leftovers(parent: Path, before: set[str]) -> list[str]:
    try:
        now = {p.name for p in parent.iterdir()}
    except OSError:
        return []
    return sorted(n for n in now - before if n.startswith(".") and n not in (".hypothesis",))


def listing(parent: Path) -> set[str]:
    try:
        return {p.name for p in parent.iterdir()}
    except OSError:
        return set()


def judge(case: Case, code, out: str, err: str, cdir: Path, target: Path | None, before, parent_before) -> Row:
    tb = "Traceback (most recent call last)" in err
    problems = []
    if code is None:
        problems.append("timeout (hang)")
    elif code not in case.codes:
        problems.append(f"exit {code}, expected {'/'.join(map(str, sorted(case.codes)))}")
    if tb:
        problems.append("traceback")
    if code == 2 and case.cmd == "verifier":
        lines = err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("verifier: error: "):
            problems.append(f"stderr is {len(lines)} lines, not one 'verifier: error:' line")
        elif case.field and not lines[0].startswith(f"verifier: error: {case.field}"):
            problems.append(f"blames {lines[0][17:].split(':')[0]!r}, not {case.field}")
    if case.need and case.need not in out + err:
        problems.append(f"message lacks {case.need!r}")
    if case.forbid and case.forbid in out + err:
        problems.append(f"message mentions {case.forbid!r}")
    state = "-"
    if target is not None:
        now = fingerprint(target)
        kind = ("reports" if case.target is None and target == cdir / "reports" else
                "set" if case.target is None and case.args[0] in ("run", "survey", "track", "track-compare", "recommend-lora") else
                "file" if case.target is None else "other")
        if kind == "reports":
            state, probs = describe_reports(target)
            problems += probs
            if code == 2 and state != "none":
                problems.append("wrote reports/ although the input was bad")
            if code in (0, 1, 3) and not state.startswith("1 run"):
                problems.append(f"reports/ holds {state}")
        else:
            changed = now != before
            if now is None:
                state = "absent" if before is None else "REMOVED"
            elif not changed:
                state = "unchanged"
            elif now[0] == "dir":
                state = "complete" if complete_set(target) else "PARTIAL"
            else:
                state = "written"
            if code == 2 and changed:
                problems.append(f"output {state} although the input was bad")
            if code in (0, 1, 3) and kind == "set" and state != "complete":
                problems.append(f"output set {state} after exit {code}")
            if code == 0 and kind == "file" and state != "written":
                problems.append(f"output file {state} after exit 0")
            if state == "PARTIAL":
                problems.append("half-written output set")
        problems += [f"leftover {n}" for n in leftovers(target.parent, parent_before)]
    return Row(case, code, tb, state, problems)


def subst(args: list[str], fx: Path, cdir: Path) -> list[str]:
    return [a.replace("{fx}", str(fx)).replace("{case}", str(cdir)) for a in args]


def run_case(case: Case, k: int, ctx: dict) -> Row:
    cdir = ctx["work"] / "cases" / f"{k:03d}"
    cdir.mkdir(parents=True)
    if case.setup:
        case.setup(cdir)
    start = time.monotonic()
    if case.custom:
        row = case.custom(case, cdir, ctx)
    else:
        argv = subst(case.args, ctx["fx"], cdir)
        target = target_of(case, argv, cdir)
        before = fingerprint(target) if target else None
        parent_before = listing(target.parent) if target else set()
        try:
            proc = subprocess.run([ctx[case.cmd], *argv], capture_output=True, text=True, cwd=cdir,
                                  timeout=ctx["timeout"], env=case_env(case, ctx), stdin=subprocess.DEVNULL,
                                  errors="replace")
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code = None
            out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        row = judge(case, code, out, err, cdir, target, before, parent_before)
        row.err = err  # type: ignore[attr-defined]
    row.seconds = time.monotonic() - start
    return row


def case_env(case: Case, ctx: dict) -> dict:
    env = dict(ctx["env"])
    for k, v in (case.env or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def full_stdout(case: Case, cdir: Path, ctx: dict) -> Row:
    """stdout is /dev/full: the output set is written first, so the run keeps its verdict (and its set)."""
    argv = subst(case.args, ctx["fx"], cdir)
    target = target_of(case, argv, cdir)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([ctx["verifier"], *argv], stdout=full, stderr=subprocess.PIPE, text=True, cwd=cdir,
                              timeout=ctx["timeout"], env=ctx["env"], stdin=subprocess.DEVNULL)
    return judge(case, proc.returncode, "", proc.stderr, cdir, target, None, set())


def peak_memory(case: Case, cdir: Path, ctx: dict) -> Row:
    """The run's peak resident memory (VmHWM, polled) must stay below case.need MiB: an unused array in an
    .npz must never be inflated."""
    argv = subst(case.args, ctx["fx"], cdir)
    target = target_of(case, argv, cdir)
    p = subprocess.Popen([ctx["verifier"], *argv], cwd=cdir, env=ctx["env"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    peak, deadline = 0, time.monotonic() + ctx["timeout"]
    while p.poll() is None and time.monotonic() < deadline:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) // 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    if p.poll() is None:
        p.kill()
    out, err = p.communicate()
    row = judge(case, p.returncode, out, err, cdir, target, None, set())
    if peak > case.limit_mib:
        row.problems.append(f"peak memory {peak} MiB > {case.limit_mib} MiB")
    row.state += f" {peak}MiB"
    return row


def concurrent_runs(case: Case, cdir: Path, ctx: dict) -> Row:
    """Four identical runs without --out started together: four complete run folders, none lost."""
    argv = subst(case.args, ctx["fx"], cdir)
    procs = [subprocess.Popen([ctx["verifier"], *argv], cwd=cdir, env=ctx["env"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    codes, errs = [], ""
    for p in procs:
        try:
            _, e = p.communicate(timeout=ctx["timeout"] * 2)
            codes.append(p.returncode)
            errs += e
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(None)
    state, problems = describe_reports(cdir / "reports")
    runs = [p for p in (cdir / "reports").iterdir() if p.is_dir() and p.name != "latest" and not p.is_symlink()] \
        if (cdir / "reports").is_dir() else []
    if len(runs) != 4:
        problems.append(f"{len(runs)} run folders for 4 runs: results lost")
    if any(c != 0 for c in codes):
        problems.append(f"exit codes {codes}")
    tb = "Traceback (most recent call last)" in errs
    if tb:
        problems.append("traceback")
    return Row(case, max((c for c in codes if c is not None), default=None), tb, state, problems)


def interrupt_while_writing(case: Case, cdir: Path, ctx: dict) -> Row:
    """SIGINT as soon as a results.json appears anywhere under the case folder (in --out itself, or in a
    temporary folder beside it): the target must be absent, empty or complete afterwards, and nothing
    temporary may be left. (SIGINT is reset to its default in the child: a background shell ignores it.)"""
    argv = subst(case.args, ctx["fx"], cdir)
    target = Path(argv[argv.index("--out") + 1])
    before = listing(cdir)
    p = subprocess.Popen([ctx["verifier"], *argv], cwd=cdir, env=ctx["env"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + ctx["timeout"]
    sent = False
    while p.poll() is None and time.monotonic() < deadline:
        if any(cdir.rglob("results.json")):
            p.send_signal(signal.SIGINT)
            sent = True
            break
        time.sleep(0.002)
    try:
        _, err = p.communicate(timeout=ctx["timeout"])
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    problems = []
    state = ("absent" if not target.exists() else "complete" if complete_set(target) else
             "empty" if target.is_dir() and not any(target.iterdir()) else "PARTIAL")
    if state == "PARTIAL":
        problems.append("half-written output set after SIGINT")
    problems += [f"leftover {n}" for n in leftovers(cdir, before)]
    tb = "Traceback (most recent call last)" in err
    if tb:
        problems.append("traceback")
    if p.returncode not in case.codes:
        problems.append(f"exit {p.returncode}")
    if not sent:
        problems.append("no results.json ever appeared: the signal was not sent")
    return Row(case, p.returncode, tb, state, problems)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verifier", default=shutil.which("verifier") or "verifier")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per process (default 120)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="run only this class of cases")
    ap.add_argument("-k", help="run only cases whose name contains this text")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    fx = work / "fx"
    make_fixtures(fx)
    make_user_fixtures(fx)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}
    env.pop("VERIFIER_TRACEBACK", None)
    env.pop("VERIFIER_WORKERS", None)  # the defaults are what is tested
    python = Path(a.verifier).with_name("python")
    ctx = {"work": work, "fx": fx, "verifier": a.verifier, "timeout": a.timeout, "env": env,
           "python": str(python) if python.exists() else sys.executable}
    valid_results(fx, a.verifier, a.timeout)
    valid_history(fx, ctx["python"], a.timeout)
    big_int_json(fx)
    make_process_fixtures(fx, a.verifier, a.timeout)
    selected = [c for c in cases() + user_cases() + process_cases() if (a.only is None or c.cls == a.only) and (a.k is None or a.k in c.name)]
    rows: list[Row | None] = [None] * len(selected)
    with concurrent.futures.ThreadPoolExecutor(max(1, a.jobs)) as pool:
        futures = {pool.submit(run_case, c, k, ctx): k for k, c in enumerate(selected)}
        for fut in concurrent.futures.as_completed(futures):
            k = futures[fut]
            rows[k] = fut.result()
            r = rows[k]
            print(f"[{sum(x is not None for x in rows):3d}/{len(rows)}] {'ok ' if not r.problems else 'BAD'} "
                  f"{r.case.name} ({r.seconds:.0f}s)", file=sys.stderr, flush=True)
    print(f"{'#':>3} {'class':8} {'input':58} {'exit':>4} {'tb':3} {'output':16} {'expected':8} verdict")
    bad_rows = 0
    for k, r in enumerate(rows):
        assert r is not None
        exp = "/".join(map(str, sorted(r.case.codes)))
        code = "T/O" if r.code is None else str(r.code)
        verdict = "ok" if not r.problems else "MISHANDLED: " + "; ".join(r.problems)
        bad_rows += bool(r.problems)
        print(f"{k:3d} {r.case.cls:8} {r.case.name[:58]:58} {code:>4} {'yes' if r.traceback else 'no':3} "
              f"{r.state[:16]:16} {exp:8} {verdict}")
    print(f"\n{bad_rows} of {len(rows)} hostile inputs mishandled ({a.verifier})")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder: {work}")
    return 1 if bad_rows else 0


if __name__ == "__main__":
    sys.exit(main())
