"""Issue 20 side by side, in one process each (pytest-benchmark; ``extra_info`` holds the figures, the asserts
are about outcomes and work, never times):

* Rodas4 against the W-method ROS34PW2 on one trajectory of the default ladder (toy-attention, alpha = 1e-8, to
  the run's horizon), at the run's tolerances and at the ladder's budget: CPU seconds, gradient and Hessian
  evaluations, and the error against a Rodas4 solve at rtol 1e-10, atol 1e-9 (transition times, relative beta);
* the alpha ladder at one tolerance for all (before) against the error budget (after: the smallest alpha at
  the run's tolerances, the others at LADDER_BUDGET, re-solved by theorem-4.5's hook where needed);
* Hessian columns of a generic model (examples/attention_head.py, the diag-transformer preset): forward-over-
  reverse (the seed's ``jvp`` of the gradient) against reverse-over-reverse (``models/base.py`` now).
"""

import importlib.util
import math
import time
from pathlib import Path

import pytest
import torch
from torch.func import grad, jvp, vmap

from verifier.checks import run_check
from verifier.config import RunConfig, SolverConfig
from verifier.context import Context
from verifier.dynamics.flow import solve_flow

ROOT = Path(__file__).resolve().parents[1]


def _cpu(fn):
    start = time.process_time()
    out = fn()
    return out, round(time.process_time() - start, 2)


def _errors(run, ref) -> dict:
    ct = (run.crossing_tau - ref.crossing_tau).abs()
    ct = ct[torch.isfinite(ct)]
    rel = ((run.beta - ref.beta).abs() / ref.beta.abs().clamp_min(1e-3)).nan_to_num(0.0)
    return {"crossing_error": float(ct.max()) if len(ct) else 0.0, "beta_rel_error": float(rel.max())}


def test_rodas4_against_w_method(benchmark, toy_context, machine_info):
    model, theta0, horizon = toy_context.model, toy_context.theta0(1), toy_context.horizon
    L = [8 * math.log(10.0)]
    settings = {"reference": ("rodas4", 1e-10, 1e-9)}
    for method in ("rodas4", "ros34pw2"):
        settings[f"{method} at the run's tolerances"] = (method, 1e-8, 1e-7)
        settings[f"{method} at the ladder budget"] = (method, 1e-8, 1e-4)
    runs = {}

    def every_setting():
        for name, (method, rtol, atol) in settings.items():
            runs[name] = _cpu(lambda: solve_flow(model, theta0, L, horizon,
                                                 SolverConfig(rtol=rtol, atol=atol, method=method)))

    benchmark.pedantic(every_setting, rounds=1, iterations=1)
    ref = runs["reference"][0]
    table = {name: {"cpu_seconds": cpu, "nfev": int(tr.nfev[0]), "njev": int(tr.njev[0]),
                    "status": tr.status[0].value, **_errors(tr, ref)} for name, (tr, cpu) in runs.items()}
    machine_info.update({"alpha": "1e-8", "horizon": horizon, "runs": table})
    assert all(r["status"] == "success" for r in table.values()), table
    for name, (tr, _) in runs.items():  # every setting finds the same activations
        assert [(i, s) for _, i, s in tr.first_crossings(0)] == [(i, s) for _, i, s in ref.first_crossings(0)], name
    assert table["ros34pw2 at the run's tolerances"]["njev"] < table["rodas4 at the run's tolerances"]["njev"]


def test_ladder_budget_against_one_tolerance(benchmark, machine_info):
    """The default ladder twice: every alpha at the run's tolerances (before), and the error budget (after)
    with theorem-4.5's re-solve hook; the check's verdict and errors side by side."""
    out = {}

    def ladder_and_check(ctx, uniform: bool):
        if uniform:  # what Context.ladder did before the budget
            ctx.ladder = solve_flow(ctx.model, ctx.theta0(1).expand(len(ctx.log_inv_alphas), -1),
                                    ctx.log_inv_alphas, ctx.horizon, ctx.config.solver)
        return run_check("theorem-4.5", ctx)

    def both():
        for name in ("one tolerance", "error budget"):
            ctx = Context(RunConfig(), argv=["pytest", "benchmarks"])
            ctx.stages  # noqa: B018 - Algorithm 1 outside the timing
            result, cpu = _cpu(lambda: ladder_and_check(ctx, name == "one tolerance"))
            out[name] = (cpu, result, ctx)

    benchmark.pedantic(both, rounds=1, iterations=1)
    table = {}
    for name, (cpu, result, ctx) in out.items():
        m = result.metrics
        table[name] = {"cpu_seconds": cpu, "verdict": result.verdict.value, "nfev": m["nfev"].value,
                       "njev": m["njev"].value, "atol": ctx.ladder.atol.tolist(),
                       **{k: m[k].value for k in ("beta_error", "b_error", "transition_time_error")}}
    machine_info.update({"ladders": table})
    assert table["one tolerance"]["verdict"] == table["error budget"]["verdict"] == "pass"
    assert sum(table["error budget"]["nfev"]) < sum(table["one tolerance"]["nfev"])
    for key in ("beta_error", "b_error", "transition_time_error"):  # the same values, to their resolution
        for a, b in zip(table["one tolerance"][key], table["error budget"][key]):
            assert abs(a - b) <= 0.1 * a + 1e-12, (key, a, b)


def _forward_over_reverse(model, beta, columns):
    """The seed's Hessian columns: jvp of the gradient along one-hot tangents, vmapped."""
    g = grad(model.loss_beta)
    tangents = torch.zeros(len(columns), model.p, dtype=beta.dtype)
    tangents[torch.arange(len(columns)), columns] = 1.0
    per_beta = vmap(lambda b, t: jvp(g, (b,), (t,))[1], in_dims=(None, 0))
    return vmap(per_beta, in_dims=(0, None))(beta, tangents).transpose(-1, -2)


def _attention_head():
    spec = importlib.util.spec_from_file_location("attention_head", ROOT / "examples" / "attention_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make()


@pytest.mark.parametrize("which", ["examples/attention_head.py", "diag-transformer"])
def test_generic_hessian_columns(benchmark, machine_info, which):
    model = _attention_head() if which.endswith(".py") else Context(
        RunConfig(preset=which), argv=["pytest", "benchmarks"]).model
    beta = 0.3 * torch.randn(4, model.p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cols = {"4 columns": torch.arange(4), "all columns": torch.arange(model.p)}
    repeats = 5
    out = {}

    def both():
        for name, c in cols.items():
            for how, fn in (("forward-over-reverse", _forward_over_reverse), ("reverse-over-reverse", None)):
                call = (lambda c=c: model.hessian_columns(beta, c)) if fn is None else (lambda c=c, fn=fn: fn(model, beta, c))
                call()  # warm up
                value, cpu = _cpu(lambda call=call: [call() for _ in range(repeats)][-1])
                out[(name, how)] = (value, cpu / repeats)
        _, out["gradient"] = _cpu(lambda: [model.grad_b(beta) for _ in range(repeats)])

    benchmark.pedantic(both, rounds=1, iterations=1)
    table = {f"{n} {h}": round(1e3 * t, 2) for (n, h), (_, t) in ((k, v) for k, v in out.items() if k != "gradient")}
    machine_info.update({"model": which, "p": model.p, "batch": 4, "ms_per_call": table,
                         "gradient_ms": round(1e3 * out["gradient"] / repeats, 2),
                         "speedup": {n: round(out[(n, "forward-over-reverse")][1] / out[(n, "reverse-over-reverse")][1], 2)
                                     for n in cols}})
    for n in cols:
        assert torch.allclose(out[(n, "forward-over-reverse")][0], out[(n, "reverse-over-reverse")][0], rtol=1e-10, atol=1e-12)


_THREAD_WORK = """
import json, os, time, torch
from verifier.config import RunConfig
from verifier.context import Context
from verifier.dynamics.flow import solve_flow
ctx = Context(RunConfig(), argv=["bench"])
x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
wall, cpu = time.perf_counter(), time.process_time()
s = [torch.linalg.svdvals(x) for _ in range(20)][-1]
svd = (time.perf_counter() - wall, time.process_time() - cpu)
wall, cpu = time.perf_counter(), time.process_time()
tr = solve_flow(ctx.model, ctx.theta0(1), [18.42], 0.8, ctx.config.solver)
flow = (time.perf_counter() - wall, time.process_time() - cpu)
print(json.dumps({"threads": torch.get_num_threads(), "svd20": svd, "flow": flow, "nfev": int(tr.nfev[0]),
                  "check": float(s.sum()) + float(tr.beta[0, -1].sum()), "load": os.getloadavg()[0]}))
"""


def test_thread_policies(benchmark, machine_info):
    """The same work (20 svdvals of 256 x 256; the toy's flow at alpha = 1e-8 to tau = 0.8: its first
    transitions) in fresh processes under each OpenMP policy, one after the other: wall and CPU seconds, and
    the load average at the end of each (the machine may be shared: say so with the figures)."""
    import json
    import os
    import subprocess
    import sys

    policies = {"1 thread": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
                "2 threads, active": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"},
                "2 threads, passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}}
    out = {}

    def every_policy():
        for name, env in policies.items():
            full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
            done = subprocess.run([sys.executable, "-c", _THREAD_WORK], env=full, capture_output=True, text=True,
                                  check=True, cwd=ROOT)
            out[name] = json.loads(done.stdout.strip().splitlines()[-1])

    benchmark.pedantic(every_policy, rounds=1, iterations=1)
    machine_info.update({"policies": out, "cores": os.cpu_count()})
    checks = [r["check"] for r in out.values()]
    assert max(checks) - min(checks) <= 1e-9 * abs(checks[0]), out  # threads change times, never results
