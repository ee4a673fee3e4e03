"""Issue 20, the diag-transformer preset's derivatives side by side in one process (pytest-benchmark;
``extra_info`` holds the figures, the asserts are about equal results and equal work, never times):

* before: DiagonalModel's generic derivatives (torch.func ``vmap`` over ``predict_beta``, one beta and one head
  at a time: what the preset ran until d537747);
* after: DiagTransformer's batched forward (heads fused, the first layer's views and pair products cached)
  for the loss and the gradient; Hessian columns are DiagonalModel's on both sides (the batched forward did not
  make them faster, benchmarks/README.md), so their ratio is the machine's noise;

at the preset's size (p = 64, N = 200), and for one flow of the preset.
"""

import math
import time
from dataclasses import fields

import pytest
import torch

from verifier.config import RunConfig, SolverConfig
from verifier.context import Context
from verifier.dynamics.flow import solve_flow
from verifier.models import DiagonalModel, DiagTransformer


class _PerBeta(DiagTransformer):
    """The same network with the generic derivatives of models/base.py (the code before the batched forward)."""

    loss_b = DiagonalModel.loss_b
    grad_b = DiagonalModel.grad_b
    hessian_columns = DiagonalModel.hessian_columns


@pytest.fixture(scope="module")
def preset() -> Context:
    return Context(RunConfig(preset="diag-transformer"), argv=["pytest", "benchmarks"])


def _both(model):
    return {"before": _PerBeta(**{f.name: getattr(model, f.name) for f in fields(model)}), "after": model}


def _cpu_per_call(fn, repeats):
    fn()  # warm up
    start = time.process_time()
    for _ in range(repeats):
        out = fn()
    return out, (time.process_time() - start) / repeats


def test_transformer_derivatives_before_after(benchmark, machine_info, preset):
    models = _both(preset.model)
    calls = {}
    for batch in (1, 4, 16):
        beta = 0.5 * torch.randn(batch, preset.model.p, generator=torch.Generator().manual_seed(batch),
                                 dtype=torch.float64)
        calls[f"loss, batch {batch}"] = (lambda m, beta=beta: m.loss_b(beta), 10)
        calls[f"gradient, batch {batch}"] = (lambda m, beta=beta: m.grad_b(beta), 10)
        if batch < 16:  # the same code on both sides (models/transformer.py): the noise of the machine
            calls[f"16 Hessian columns, batch {batch}"] = (lambda m, beta=beta: m.hessian_columns(beta, torch.arange(16)), 3)
    out = {}

    def run():
        for name, (call, repeats) in calls.items():
            for when, model in models.items():
                out[(name, when)] = _cpu_per_call(lambda: call(model), repeats)

    benchmark.pedantic(run, rounds=1, iterations=1)
    machine_info["ms_per_call"] = {name: {when: round(1e3 * out[(name, when)][1], 1) for when in models}
                                   for name in calls}
    machine_info["speedup"] = {name: round(out[(name, "before")][1] / out[(name, "after")][1], 2) for name in calls}
    for name in calls:
        before, after = out[(name, "before")][0], out[(name, "after")][0]
        assert float((after - before).abs().max()) <= 1e-12 * float(before.abs().max())


def test_transformer_flow_before_after(benchmark, machine_info, preset):
    """One flow of the preset (alpha = 1e-8, to the run's horizon, at the ladder's budget tolerances): the same
    steps, gradient and Hessian evaluations and trajectory, and the CPU seconds of each."""
    theta0, horizon = preset.theta0(1), preset.horizon
    solver = SolverConfig(rtol=1e-8, atol=1e-4)
    runs = {}

    def run():
        for when, model in _both(preset.model).items():
            start = time.process_time()
            runs[when] = solve_flow(model, theta0, [8 * math.log(10.0)], horizon, solver), time.process_time() - start

    benchmark.pedantic(run, rounds=1, iterations=1)
    (before, cpu_before), (after, cpu_after) = runs["before"], runs["after"]
    machine_info.update({"cpu_seconds": {"before": round(cpu_before, 2), "after": round(cpu_after, 2)},
                         "speedup": round(cpu_before / cpu_after, 2), "nfev": int(after.nfev[0]),
                         "njev": int(after.njev[0]), "horizon": horizon})
    assert (int(before.nfev[0]), int(before.njev[0])) == (int(after.nfev[0]), int(after.njev[0]))
    assert torch.allclose(after.beta, before.beta, rtol=1e-8, atol=1e-10)
