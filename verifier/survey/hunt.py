"""Hunting violations of the assumptions with hypothesis (a search, where a survey samples).

A hunt draws problems of a family (teacher, data, initialisation; with a knob that can make two features
nearly collinear, the direction in which the assumptions are expected to break), measures the check's key
metric, steers the search towards the threshold with ``hypothesis.target`` and, when the metric crosses
it, lets hypothesis shrink the problem and returns it as a :class:`Counterexample` whose command re-runs
the full check on it: ``verifier run --model FAMILY --data FILE.npz --seed S --checks ID`` (the data and
teacher travel in the .npz, the initialisation in the seed).

What is measured per check is declared on its CheckSpec (``hunt=Hunt(metric, measure)``, checks/registry.py):
the key metric the search is steered by, and a cheaper measurement that declares and judges it (None: the whole
check). ``assumption-4.2``: the smallest argmin margin of Algorithm 1's stages (``min_stage_margin``);
``assumption-4.3``: the smallest relative eigenvalue of the restricted Hessians at Algorithm 1's stationary
points (``min_rel_eig``), both from Algorithm 1 alone (a crossing of either makes the full check fail);
``assumption-4.4``: the whole check, steered by its key metric ``max_spread`` (its Figure 10 part can fail with
``max_spread`` passing). A violation is a ``fail`` of that measurement.
"""

from __future__ import annotations

import hashlib
import io
import math
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from hypothesis import given, settings as Settings, strategies as st, target

from .. import testing as T
from ..checks import REGISTRY, run_check
from ..checks.registry import hunted
from ..config import RunConfig
from ..context import Context
from ..models import DiagAttention
from ..results import Verdict
from .results import Outcome, metric_outcome

HUNTED = tuple(hunted())  # the checks that declare a Hunt
# Sizes per hypothesis profile: `ci` small (seconds per example), `thorough` the paper's scale (the toy at
# N in the hundreds, d in the tens).
SIZES = {
    "ci": {"diag-linear": {"p": (3, 6), "N": (12, 40)}, "toy-attention": {"N": (8, 24), "n": (2, 4), "d": (2, 4)}},
    "thorough": {"diag-linear": {"p": (10, 40), "N": (100, 400)},
                 "toy-attention": {"N": (100, 500), "n": (5, 10), "d": (10, 30)}},
}
COUNTEREXAMPLES = Path(tempfile.gettempdir()) / "verifier-hunt"  # where found problems' .npz files are kept
MAX_COLLINEARITY = 1e4  # w in x_j <- (x_j + w x_k) / sqrt(1 + w^2): correlation w / sqrt(1 + w^2)


@dataclass(frozen=True, eq=False)
class Problem:
    """Data of a model family (``X``, ``Y`` as ``--data`` reads them) and the seed of the initialisation."""

    family: str
    X: np.ndarray
    Y: np.ndarray
    seed: int

    def npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, X=self.X, Y=self.Y)
        return buf.getvalue()

    def save(self, folder: str | Path) -> Path:
        """The data as ``folder/FAMILY-<sha256 of the file, 12 hex>.npz`` (the same problem, the same name)."""
        blob = self.npz()
        path = Path(folder) / f"{self.family}-{hashlib.sha256(blob).hexdigest()[:12]}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        return path

    def context(self, folder: str | Path, device: str = "auto") -> Context:
        """The Context ``verifier run --model FAMILY --data FILE --seed S`` builds (through the same loader)."""
        return Context(RunConfig(preset=None, model=self.family, data=str(self.save(folder)), seed=self.seed,
                                 device=device))


@dataclass(frozen=True)
class Counterexample:
    check: str
    problem: Problem
    outcome: Outcome
    command: str

    def report(self) -> str:
        o = self.outcome
        return (f"{self.check} fails on {self.problem.family} with X{list(self.problem.X.shape)}: {o.message}\n"
                f"Key metric {o.metric} = {o.value:.6g} (threshold {o.threshold:g}, {o.better} is better; a value on "
                f"the passing side means another part of the check failed).\nReproduce: {self.command}")


def measure(check: str, ctx: Context) -> Outcome:
    """What the check's :class:`~verifier.checks.registry.Hunt` measures on ``ctx`` (module docstring), as an
    :class:`Outcome` carrying its verdict, reason and message and the hunt's metric."""
    hunt_spec = REGISTRY[check].hunt
    result = run_check(check, ctx) if hunt_spec.measure is None else hunt_spec.measure(ctx)
    return metric_outcome(verdict=result.verdict, message=result.message, reason=result.reason,
                          name=hunt_spec.metric, metric=result.metrics.get(hunt_spec.metric),
                          duration_s=result.duration_s)


def score(o: Outcome) -> float:
    """What ``hypothesis.target`` maximises: decades of headroom, negated (a crossing scores above 0)."""
    h = o.headroom
    return 10.0 if h is None or h <= 0 else (-math.log10(h) if math.isfinite(h) else -30.0)


def _collinear(x: torch.Tensor, j: int, k: int, w: float) -> torch.Tensor:
    """Feature j of x (last axis) replaced by (x_j + w x_k) / sqrt(1 + w^2): unit variance kept, correlation
    with feature k w / sqrt(1 + w^2)."""
    x = x.clone()
    x[..., j] = (x[..., j] + w * x[..., k]) / math.sqrt(1 + w * w)
    return x


@st.composite
def problems(draw, family: str, sizes: dict) -> Problem:
    """A problem of ``family`` (diag-linear or toy-attention) with sizes in the ranges ``sizes`` (see SIZES),
    from the ``verifier.testing`` strategies: the preset's kind of teacher (sparse, entries of size 0.5-2 or
    1-2), Gaussian data whose features j, k are made collinear by the weight w in [0, MAX_COLLINEARITY], and
    an initialisation seed."""
    def size(name):
        lo, hi = sizes[name]
        return draw(st.integers(lo, hi), label=name)

    if family not in ("diag-linear", "toy-attention"):
        raise ValueError(f"hunts draw diag-linear or toy-attention problems, not {family!r}")
    if family == "diag-linear":
        p = size("p")
        X = draw(T.gaussian_designs(size("N"), p))
        teacher = draw(T.teachers(p, scale=(0.5, 2.0)))
    else:
        p = size("d")
        X = draw(T.tokens(size("N"), size("n"), p))
        teacher = torch.cat([draw(T.teachers(p, st.integers(0, p), (1.0, 2.0))),
                             draw(T.teachers(p, st.integers(1, p), (1.0, 2.0)))])
    j, k = draw(st.lists(st.integers(0, p - 1), min_size=2, max_size=2, unique=True), label="collinear pair")
    X = _collinear(X, j, k, draw(st.floats(0.0, MAX_COLLINEARITY), label="collinearity"))
    if family == "diag-linear":
        Y = X @ teacher
    else:
        Y = DiagAttention(X, X, temperature=p**-0.5).predict_beta(teacher)
    return Problem(family, X.numpy(), Y.numpy(), draw(T.seeds(), label="init seed"))


class _Violation(Exception):
    def __init__(self, problem: Problem, outcome: Outcome):
        super().__init__(f"{outcome.metric} = {outcome.value}")
        self.problem, self.outcome = problem, outcome


def hunt(check: str, strategy: st.SearchStrategy[Problem], settings: Settings | None = None,
         folder: str | Path | None = None, device: str = "auto",
         measure_fn: Callable[[str, Context], Outcome] = measure) -> Counterexample | None:
    """Search ``strategy`` for a problem on which ``check``'s key metric crosses its threshold; hypothesis
    shrinks what it finds. Returns the shrunk :class:`Counterexample` (its data saved in ``folder``, default
    ``COUNTEREXAMPLES``) or None when the budget of ``settings`` (default: the current profile) finds none."""
    if check not in REGISTRY or REGISTRY[check].hunt is None:
        raise ValueError(f"hunts exist for {', '.join(hunted())}, not {check!r}")
    folder = Path(folder) if folder is not None else COUNTEREXAMPLES
    work = Path(tempfile.mkdtemp(prefix="verifier-hunt-"))  # each example's .npz, removed at the end

    @(settings or Settings())
    @given(strategy)
    def search(problem: Problem) -> None:
        o = measure_fn(check, problem.context(work, device))
        target(score(o), label=f"{check} {o.metric}")
        if o.verdict is Verdict.FAIL:
            raise _Violation(problem, o)

    try:
        search()
    except _Violation as v:  # raised again by hypothesis on the shrunk example
        path = v.problem.save(folder)
        argv = ["verifier", "run", "--model", v.problem.family, "--data", str(path), "--seed", str(v.problem.seed),
                "--checks", check] + (["--device", device] if device != "auto" else [])
        return Counterexample(check, v.problem, v.outcome, shlex.join(argv))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return None
