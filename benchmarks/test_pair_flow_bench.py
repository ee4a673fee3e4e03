"""Cost per alpha of the full-weight flow (issue 25): the lifted flow (dynamics/pair_flow.py, ROS34PW2 at the
tolerances rank-increments uses) side by side with today's flow of theta (dynamics/param_flow.py, DOP853 at
rtol 1e-8) on the two-layer linear network of examples/two_layer_linear.py, one trajectory per alpha to
tau = 1.4 (past its three jumps). Recorded in ``extra_info``: gradient evaluations and CPU seconds per alpha
and path, their ratio, and each path's third jump time (the closed form's is 0.9461). Asserted: the lifted
flow's work at exp(-10^4) is at most 1.5x its work at 1e-16 (flat in log(1/alpha)), while DOP853's grows at
least 2x from 1e-8 to 1e-32 (it grows like log(1/alpha): a plateau is stiff), never times.
"""

import importlib.util
import math
import time
from pathlib import Path

import torch

from verifier.config import SolverConfig
from verifier.dynamics.pair_flow import solve_lifted
from verifier.dynamics.param_flow import solve_param_flow

HORIZON = 1.4
LIFTED = {"1e-4": 4, "1e-8": 8, "1e-16": 16, "1e-32": 32, "1e-128": 128, "exp(-1000)": None, "exp(-10000)": None}
THETA = ("1e-4", "1e-8", "1e-16", "1e-32")  # beyond, DOP853's work keeps growing and its answer is rounding


def _L(name: str) -> float:
    return float(name[5:-1]) if name.startswith("exp") else math.log(10.0) * LIFTED[name]


def _network():
    path = Path(__file__).resolve().parent.parent / "examples" / "two_layer_linear.py"
    spec = importlib.util.spec_from_file_location("two_layer_linear_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make()


def _third_jump(tau, sv) -> float:
    above = (sv[:, 2] > 0.5).nonzero()
    return float(tau[int(above[0])]) if len(above) else math.nan


def test_cost_per_alpha_lifted_against_theta(benchmark, machine_info):
    model = _network()
    theta0 = model.init_params(1.0, torch.Generator().manual_seed(1000003))
    solver = SolverConfig(rtol=1e-6, atol=1e-6, method="ros34pw2")
    runs: dict = {}

    def both():
        for name in LIFTED:
            cpu = time.process_time()
            _, tr = solve_lifted(model, theta0, [_L(name)], HORIZON, solver, n_out=1401)
            runs.setdefault(name, {})["lifted"] = {
                "nfev": int(tr.nfev[0]), "cpu_seconds": round(time.process_time() - cpu, 2),
                "status": tr.status[0].value, "third_jump": _third_jump(tr.tau, tr.sv[0][0])}
        for name in THETA:
            cpu = time.process_time()
            tr = solve_param_flow(model, theta0, [_L(name)], HORIZON, rtol=1e-8, n_out=1401)
            sv = torch.linalg.svdvals(model.products(tr.theta)[0][0])
            runs[name]["theta"] = {"nfev": int(tr.nfev), "cpu_seconds": round(time.process_time() - cpu, 2),
                                   "status": tr.status.value, "third_jump": _third_jump(tr.tau, sv)}
            runs[name]["work_ratio_lifted_to_theta"] = round(runs[name]["lifted"]["nfev"] / tr.nfev, 3)

    benchmark.pedantic(both, rounds=1, iterations=1)
    machine_info.update({"horizon": HORIZON, "runs": runs})
    lifted = {n: r["lifted"]["nfev"] for n, r in runs.items()}
    assert all(r["lifted"]["status"] == "success" for r in runs.values()), runs
    assert lifted["exp(-10000)"] <= 1.5 * lifted["1e-16"], lifted
    assert runs["1e-32"]["theta"]["nfev"] >= 2 * runs["1e-8"]["theta"]["nfev"], runs
    assert abs(runs["exp(-10000)"]["lifted"]["third_jump"] - 0.9461) <= 2e-3, runs
