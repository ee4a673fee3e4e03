"""Problems several test modules share, as fixtures (no test module imports another).

* ``leave_reenter_model``: a diagonal linear network on which Algorithm 1 makes a coordinate leave the
  support and re-enter with the opposite sign (docs/THEORY.md §4).
* ``generic_linear_context``: a correlated diagonal linear network on which Assumptions 4.3 and 4.4 hold;
  session-scoped, so Algorithm 1 and the reference run are computed once for both checks.
* ``valley_context``: duplicated features, the flat-valley counterexample of Assumptions 4.3 and 4.4.
* ``zero_loss_context``: a realisable teacher whose first coordinate to activate is not in its support: it
  leaves at the zero-loss last stage (assumption-4.2's ``zero-loss-last-stage``; THEORY.md §5.3), and
  theorem-4.5's beta error on the last plateau converges only like 1/log(1/alpha) (the adaptive ladder).
* ``comparable_run``, ``comparable_survey``: a results.json of ``verifier run`` / ``verifier survey`` without what
  differs between two runs of the same problem (times, the command, workers), to compare runs value for value.
* ``spawn_ranks``: runs a function in several spawned processes (torch.distributed tests), failing, never
  hanging, when they do not finish in minutes.
* ``two_layer``: examples/two_layer_linear.py (the two-layer linear network of issue 25 with ``make``, ``tied``,
  ``near_tie``), imported once.
"""

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

# `verifier run` picks its worker processes from the machine's load (cli.run_workers); the tests that run it in
# this process monkeypatch and count things, so they get one process unless a test asks for more (test_runner.py).
os.environ["VERIFIER_WORKERS"] = "1"

from verifier import data as D
from verifier.config import RunConfig
from verifier.context import Context
from verifier.limit import Stage, StageSequence
from verifier.models import DiagLinear

F64 = torch.float64

# A population covariance and teacher (found by a search over 3 x 3 correlations) under which beta[1]
# enters with sign -, leaves when beta[0] enters, and re-enters with sign + (y = X beta*, X^T X / N = SIGMA).
LEAVE_SIGMA = [[1.0, -0.7, 0.7], [-0.7, 1.0, -0.2], [0.7, -0.2, 1.0]]
LEAVE_BETA_STAR = [1.8, 0.4, -2.0]


@pytest.fixture(scope="session")
def leave_reenter_model() -> DiagLinear:
    """N = 12, X^T X / N = LEAVE_SIGMA exactly (an orthogonal design times chol(SIGMA)^T), y = X beta*
    (beta* is the ``leave_beta_star`` fixture)."""
    S = torch.tensor(LEAVE_SIGMA, dtype=F64)
    X = D.orthogonal_design(12, len(S), D.generator(0)) @ torch.linalg.cholesky(S).T
    return DiagLinear(X, X @ torch.tensor(LEAVE_BETA_STAR, dtype=F64))


@pytest.fixture(scope="session")
def leave_beta_star() -> list[float]:
    """The teacher of ``leave_reenter_model``: the last stage of Algorithm 1 reaches it."""
    return list(LEAVE_BETA_STAR)


@pytest.fixture(scope="session")
def generic_linear_context() -> Context:
    """N = 40 Gaussian samples, p = 5, teacher (1.5, -1, 0, 0.7, 0): a correlated design."""
    gen = D.generator(0)
    X = D.gaussian_design(40, 5, gen)
    return Context(RunConfig(preset=None, model="diag-linear"),
                   model=DiagLinear(X, X @ torch.tensor([1.5, -1.0, 0.0, 0.7, 0.0], dtype=F64)),
                   argv=["test"])


@pytest.fixture(scope="session")
def zero_loss_context() -> Context:
    """N = 20, p = 3: x2 = (x0 + x1) / sqrt(2) + 0.3 noise, y = x0 + x1 (beta* = (1, 1, 0)). Algorithm 1:
    beta[2] activates first (it correlates most with y), then beta[1], then beta[0], which brings the loss to 0
    and sends beta[2] back to 0. Default ladder."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(20, 2, generator=gen, dtype=F64)
    x2 = (X[:, 0] + X[:, 1]) / 2**0.5 + 0.3 * torch.randn(20, generator=gen, dtype=F64)
    X = torch.cat([X, x2[:, None]], 1)
    return Context(RunConfig(preset=None, model="diag-linear"),
                   model=DiagLinear(X, X @ torch.tensor([1.0, 1.0, 0.0], dtype=F64)), argv=["test"])


@pytest.fixture(scope="session")
def valley_context() -> Context:
    """Columns 0 and 1 identical: Lb depends on beta_0 + beta_1 only, a flat valley. The stages are
    stationary points built by hand (Algorithm 1 breaks the tie and never puts both in the support):
    least squares on [x0, x2] with the x0 coefficient split evenly between the duplicates."""
    gen = D.generator(1)
    x = D.gaussian_design(30, 2, gen)
    X = torch.stack([x[:, 0], x[:, 0], x[:, 1]], dim=1)
    model = DiagLinear(X, x @ torch.tensor([2.0, -0.8], dtype=F64))
    s1 = float(x[:, 0] @ model.Y / (x[:, 0] @ x[:, 0]))
    s2 = torch.linalg.lstsq(x, model.Y[:, None]).solution[:, 0]
    betas = [torch.zeros(3, dtype=F64), torch.tensor([s1 / 2, s1 / 2, 0.0], dtype=F64),
             torch.tensor([s2[0] / 2, s2[0] / 2, s2[1]], dtype=F64)]
    supports, coords = [(), (0, 1), (0, 1, 2)], [None, 0, 2]
    stages = []
    for k, beta in enumerate(betas):
        g = model.grad_b(beta)
        sign = 0 if coords[k] is None else (1 if float(beta[coords[k]]) > 0 else -1)
        stages.append(Stage(k, float(k), coords[k], sign, torch.sign(beta), beta, g, supports[k],
                            float(model.loss_b(beta)), None, ()))
    ctx = Context(RunConfig(preset=None, model="diag-linear", horizon=3.0), model=model, argv=["test"])
    ctx.__dict__["stages"] = StageSequence(tuple(stages), "complete", "hand-built valley stages", gtol=1e-8)
    return ctx


@pytest.fixture
def spawn_ranks():
    """``spawn_ranks(fn, args, world, minutes=10)`` runs ``fn(rank, *args)`` in ``world`` processes started with
    "spawn" (``fn`` at a test module's top level); a process that raises fails the test with its traceback (the
    others are stopped), and processes still running after ``minutes`` fail it too (stopped, never waited for)."""

    def run(fn, args: tuple, world: int, minutes: float = 10) -> None:
        import torch.multiprocessing as mp

        context = mp.start_processes(fn, args=args, nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + 60 * minutes
        try:
            while not context.join(timeout=5):
                if time.monotonic() > deadline:
                    pytest.fail(f"{getattr(fn, '__name__', fn)}: the {world} processes did not finish in "
                                f"{minutes:g} minutes")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()

    return run


@pytest.fixture(scope="session")
def comparable_run():
    """``comparable_run(path)``: the run's results.json without durations, check provenance and the run's
    timestamp, command, workers and ran_here."""

    def strip(path) -> dict:
        d = json.loads(Path(path).read_text())
        for c in d["checks"]:
            c.pop("duration_s")
            c.pop("provenance")
        for key in ("timestamp", "command", "workers", "ran_here"):
            d["run"]["provenance"].pop(key, None)
        return d

    return strip


@pytest.fixture(scope="session")
def comparable_survey():
    """``comparable_survey(path)``: the survey's summary, draws and claims, without durations and workers."""

    def strip(path) -> dict:
        raw = json.loads(Path(path).read_text())
        for d in raw["draws"]:
            d.pop("duration_s"), d.pop("worker")
            for o in d["checks"].values():
                o.pop("duration_s")
        return {"summary": raw["summary"], "draws": raw["draws"], "claims": raw["claims"]}

    return strip


@pytest.fixture(scope="session")
def two_layer():
    """The module examples/two_layer_linear.py: ``make()`` (target singular values 3, 2, 1, inputs not whitened),
    ``tied()`` (2, 2, 1, whitened), ``near_tie()`` (2, 1.9, 1, whitened), ``TwoLayer``."""
    path = Path(__file__).resolve().parent.parent / "examples" / "two_layer_linear.py"
    spec = importlib.util.spec_from_file_location("two_layer_linear_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
