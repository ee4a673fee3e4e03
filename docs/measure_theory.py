"""The measurements quoted in docs/THEORY.md, one section per claim: ``python docs/measure_theory.py NAME``.

flat-cost        work of the exact flow (Rodas4) and of an explicit method (scipy RK45) against log(1/alpha)
threshold-bias   delay of a fixed threshold on |beta_i| against the crossing rule of flow.py
taylor-orders    fitted Taylor order of the gradient (definition-3.1) for smooth and ReLU networks
discrete-law     Lemma 4.1's discrete law under GD, SGD, momentum, weight decay and Adam (lemma-4.1)
short-ladder     theorem-4.5 on a one-stage problem the thorough property run found, on a short and a long ladder
leaving-noise    assumption-4.4 on Pesme-Flammarion's 2-D example, and how long a leaving coordinate with
                 u^2 - v^2 = lambda stays left (the saddle escape the Figure 10 noise starts)
theta-floor      issue 25's false fail: the flow of theta against the lifted flow at 1e-32, 1e-64, 1e-128 (§8.1)
rank-increments  the check on the problems of THEORY.md §8.5's table (minutes)
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from scipy.integrate import solve_ivp

from verifier import data as D
from verifier.checks import run_check
from verifier.config import OptimizerConfig, RunConfig, SolverConfig, parse_alphas
from verifier.context import Context
from verifier.dynamics.flow import ReducedFlow, solve_flow
from verifier.limit import algorithm1
from verifier.models import DiagAttention, DiagLinear, DiagTransformer
from verifier.presets import build_model, frozen_feedforward

F64 = torch.float64


def correlated_linear() -> DiagLinear:
    """tests/test_flow.py's problem: N = 20 Gaussian samples, p = 4, teacher (1.5, -1, 0, 0.7)."""
    X = D.gaussian_design(20, 4, D.generator(11))
    return DiagLinear(X, X @ torch.tensor([1.5, -1.0, 0.0, 0.7], dtype=F64))


def flat_cost() -> None:
    model = correlated_linear()
    theta0 = model.init_params(1.0, torch.Generator().manual_seed(0))[None]
    horizon, solver = 4.0, SolverConfig()
    print("Algorithm 1 stage times:", [round(s.T, 4) for s in algorithm1(model).stages[1:]], "horizon", horizon)
    Ls = [math.log(1e4), math.log(1e16), math.log(1e64), math.log(1e256), 1e4]
    tr = solve_flow(model, theta0.expand(len(Ls), -1), Ls, horizon, solver)
    print(f"{'log(1/alpha)':>12} {'Rodas4 nfev':>11} {'njev':>5} {'RK45 nfev':>10} {'|eig J| at end':>14}")
    for j, L in enumerate(Ls):
        flow = ReducedFlow.from_init(model, theta0, [L], solver.atol)
        idx = torch.zeros(1, dtype=torch.long)
        S_end = (tr.b[j, -1] * L)[None]
        stiff = float(torch.linalg.eigvals(flow.jac(S_end, idx)[0]).abs().max())
        with np.errstate(all="ignore"):  # RK45's trial steps overflow exp(2S) at small alpha; it rejects them
            sol = solve_ivp(lambda t, S: flow.rhs(torch.from_numpy(S)[None], idx)[0].numpy(), (0.0, horizon),
                            np.zeros(model.p), method="RK45", rtol=solver.rtol, atol=solver.atol)
        rk = f"{sol.nfev}" if sol.success else "failed"
        print(f"{L:>12.4g} {int(tr.nfev[j]):>11} {int(tr.njev[j]):>5} {rk:>10} {stiff:>14.3g}  {tr.status[j].value}")


def threshold_bias() -> None:
    """Orthogonal design (g = beta - beta*): coordinate i activates at 1 / |beta*_i| in the limit."""
    beta_star = torch.tensor([2.0, -1.25, 0.8], dtype=F64)
    theta0 = torch.tensor([0.9, -0.4, 1.3, 0.2, 0.7, -0.6], dtype=F64)
    X = D.orthogonal_design(12, 3, D.generator(3))
    model = DiagLinear(X, X @ beta_star)
    w = torch.where(beta_star > 0, theta0[:3] + theta0[3:], theta0[:3] - theta0[3:])  # u0 + v0 or u0 - v0
    Ls = [math.log(1e8), math.log(1e32), math.log(1e128)]
    tr = solve_flow(model, theta0.expand(len(Ls), -1), Ls, 2.0, n_out=8001)
    print(f"{'L':>7} {'i':>2} {'theta':>6} {'L|G|(tau_theta - T)':>20} {'(1/2)log(4theta/w^2)':>21} "
          f"{'log(theta)':>10} {'L|G|(crossing - T)':>19}")
    for j, L in enumerate(Ls):
        for i in range(3):
            G, T = abs(float(beta_star[i])), 1 / abs(float(beta_star[i]))
            logb = tr.beta[j, :, i].abs().log()
            for theta in (1e-3, 1e-2):
                k = int(torch.nonzero(logb >= math.log(theta))[0])
                x0, x1 = float(logb[k - 1]), float(logb[k])  # log|beta| is linear in tau while it grows
                t = float(tr.tau[k - 1]) + (math.log(theta) - x0) / (x1 - x0) * float(tr.tau[k] - tr.tau[k - 1])
                derived = 0.5 * math.log(4 * theta / float(w[i]) ** 2)
                cross = L * G * (float(tr.crossing_tau[j, i]) - T)
                print(f"{L:>7.4g} {i:>2} {theta:>6g} {L * G * (t - T):>20.4f} {derived:>21.4f} {math.log(theta):>10.4f} "
                      f"{cross:>19.2e}")


def taylor_orders_table() -> None:
    """definition-3.1 for seeds 0..9 (each seed draws other probes) on tests/test_definition31.py's models."""
    gen = D.generator(5)
    X = D.gaussian_tokens(40, 4, 3, gen)
    A, B = frozen_feedforward(1, 3, 8, gen)
    Y = D.gaussian_tokens(40, 4, 3, gen)
    gen1 = D.generator(1)
    Xa = D.gaussian_tokens(20, 4, 5, gen1)
    models = {"diag-linear (preset)": build_model("diag-linear"),
              "toy head d=5": DiagAttention(Xa, D.gaussian_tokens(20, 4, 5, gen1), temperature=5**-0.5)}
    for act in ("gelu", "relu"):
        models[f"transformer, {act}"] = DiagTransformer(X, Y, ff_in=A, ff_out=B, heads=1, temperature=3**-0.5,
                                                        activation=act)
    for name, model in models.items():
        runs = [run_check("definition-3.1", Context(RunConfig(seed=s), model=model, argv=["measure"]))
                for s in range(10)]
        orders = [o for r in runs for o in r.values["taylor_orders"]]
        passed = sum(r.verdict.value == "pass" for r in runs)
        print(f"{name:>22}: {passed}/10 seeds pass; probe orders min {min(orders):.4g}, max {max(orders):.4g}; "
              f"probes with order in [1.5, 2.5]: {sum(1.5 <= o <= 2.5 for o in orders)}/{len(orders)}")


def discrete_law() -> None:
    model = build_model("diag-linear")
    cases = {"gd": {"name": "gd"}, "sgd (batch 10)": {"name": "sgd", "batch_size": 10},
             "gd + momentum 0.9": {"name": "gd", "momentum": 0.9}, "gd + weight decay 0.01": {"name": "gd",
             "weight_decay": 0.01}, "adam": {"name": "adam"}}
    for label, kw in cases.items():
        cfg = RunConfig(preset="diag-linear", log_inv_alphas=(math.log(100.0),),
                        optimizer=OptimizerConfig(lr=0.01, steps=500, **kw))
        r = run_check("lemma-4.1", Context(cfg, model=model, argv=["measure"]))
        law = r.metrics["max_law_error"]
        print(f"{label:>24}: {r.verdict.value:>4}  law error {law.value:.3g} (threshold {law.threshold:.3g})")


def short_ladder() -> None:
    """The problem of the failing example of properties/test_limit_properties.py under the thorough profile
    (X rounded to 4 decimals, the one-entry teacher beta*_0 = 0.5844): one stage, horizon 1.25 T_1."""
    X = torch.tensor([[-2.3104, -0.3733, -1.0608, 0.9995], [-0.884, -1.2755, -0.6232, -0.8664],
                      [0.2387, 0.7335, -1.3219, 1.3148], [-1.4875, -0.7136, 0.52, -0.9529],
                      [0.6749, 1.0469, 0.1543, -0.7499], [-0.7234, 0.0864, -1.7464, 1.041]], dtype=F64)
    model = DiagLinear(X, X @ torch.tensor([0.5844, 0.0, 0.0, 0.0], dtype=F64))
    for alphas in ("1e-8,1e-16,1e-32", "1e-8,1e-16,1e-32,1e-64,1e-128,1e-256"):
        ctx = Context(RunConfig(preset=None, model="diag-linear", log_inv_alphas=parse_alphas(alphas)), model=model,
                      argv=["measure"])
        r = run_check("theorem-4.5", ctx)
        print(f"alphas {alphas}: {r.verdict.value}; stage times {[round(s.T, 4) for s in ctx.stages.stages]}, "
              f"horizon {ctx.horizon:.4g}; beta_error {', '.join(f'{e:.3g}' for e in r.values['beta_error'])}; "
              f"fitted rate {r.values['rate']['beta_error']:.3g}")


def pesme_flammarion(beta0: float = -0.2) -> DiagLinear:
    """X = chol(R diag(1, 25) R^T), R a rotation by 150 degrees, y = X beta*, beta* = (beta0, 2)
    (tests/test_assumption44.py)."""
    th = math.radians(150)
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=F64)
    X = torch.linalg.cholesky(R @ torch.diag(torch.tensor([1.0, 25.0], dtype=F64)) @ R.T)
    return DiagLinear(X, X @ torch.tensor([beta0, 2.0], dtype=F64))


def leaving_noise() -> None:
    """The check on the 2-D example (and with beta*_0 = -2e-5, where beta^3 is 2.3e-5 from beta^2); then stage 2
    from beta^1 with beta[1] at 1e-4, balanced except for u_0^2 - v_0^2 = s beta_0: the time beta[0] crosses 0
    and how long the run stays within 1e-2 (relative) of beta^2, against log(1/|lambda|) / |G_0|, the plain
    time of Algorithm 1's re-entry (Delta = 2 / |G_0| in units of log(1/alpha), alpha^2 = |lambda|)."""
    from verifier.dynamics.flow import integrate

    for beta0 in (-0.2, -2e-5):
        model = pesme_flammarion(beta0)
        ctx = Context(RunConfig(preset=None, model="diag-linear"), model=model, argv=["measure"])
        r = run_check("assumption-4.4", ctx)
        print(f"beta* = ({beta0:g}, 2): {r.verdict.value}; judged max_spread {r.values['max_spread']:.3g}, "
              f"Figure 10 balanced ratio {r.values['max_endpoint_ratio']:.3g}, independent "
              f"{r.values['max_endpoint_ratio_independent']:.3g}")
        for d in r.values["protocol_differences"]:
            print(f"  {d['part']}: {d['mechanism']} {d['coordinates']}, imbalance {d['imbalance']}, endpoint "
                  f"{d['endpoint']} (Algorithm 1 stage {d['algorithm1_stage']}), balanced twin {d['twin_endpoint']}, "
                  f"{d['endpoints_distance']:.3g} apart")
    model = pesme_flammarion()
    seq = algorithm1(model).stages
    beta = seq[1].beta.clone()
    beta[1] = 1e-4
    G0 = abs(float(seq[2].grad[0]))
    fractions = [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8]
    lam = torch.tensor(fractions, dtype=F64) * beta[0]
    a = (2 * beta[0] + torch.sqrt(4 * beta[0] ** 2 + lam**2)).sqrt()  # a^2 - c^2 = 4 beta_0, a c = lambda
    U = torch.stack([torch.stack([(a[n] + lam[n] / a[n]) / 2, beta[1].sqrt()]) for n in range(len(lam))])
    V = torch.stack([torch.stack([(a[n] - lam[n] / a[n]) / 2, beta[1].sqrt()]) for n in range(len(lam))])
    T = 60.0 / G0
    traj = integrate(ReducedFlow.from_uv(model, U, V, [T] * len(lam), 1e-9), 1.0,
                     SolverConfig(rtol=1e-9, atol=1e-9), n_out=20001)
    t = traj.tau * T
    near = (traj.beta - seq[2].beta).norm(dim=-1) / seq[2].beta.norm() <= 1e-2
    print(f"|G_0| at beta^2 = {G0:.4g}: predicted slope of the residence time against log(1/|lambda|): "
          f"1/|G_0| = {1 / G0:.4g}")
    rows = []
    for n, f in enumerate(fractions):
        cross = float(t[torch.nonzero(traj.beta[n, :, 0] < 0)[0, 0]])
        inside = t[near[n]]
        rows.append((math.log(1 / abs(float(lam[n]))), float(inside[-1] - inside[0])))
        print(f"  lambda = {float(lam[n]):.3g}: beta[0] crosses 0 at t = {cross:.4g}; within 1e-2 of beta^2 for "
              f"t in [{float(inside[0]):.4g}, {float(inside[-1]):.4g}], {rows[-1][1]:.4g} long; ends at "
              f"({float(traj.beta[n, -1, 0]):.4g}, {float(traj.beta[n, -1, 1]):.4g})")
    x, y = np.array(rows[2:]).T  # |lambda| <= 1e-3 beta_0: the asymptotic regime
    print(f"fitted slope for |lambda| <= 1e-3 beta_0: {np.polyfit(x, y, 1)[0]:.4g} (predicted {1 / G0:.4g})")


def _two_layer():
    """examples/two_layer_linear.py, imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "two_layer_linear.py"
    spec = importlib.util.spec_from_file_location("two_layer_linear_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def theta_floor() -> None:
    """The same network, the same theta0: jump times (half the plateau value) and the model-free gaps of the
    flow of theta (DOP853, rtol 1e-8) and of the lifted flow, at alphas past float64's floor."""
    from verifier.checks import rank_increments as R
    from verifier.limit.pairs import full_limit

    model = _two_layer().make()
    limit = full_limit(model)
    theta0 = model.init_params(1.0, torch.Generator().manual_seed(1000003))
    L = parse_alphas("1e-32,1e-64,1e-128")
    print("limit jump times", [round(s.T, 4) for s in limit.stages[1:]])
    for path in ("theta", "lifted"):
        if path == "theta":
            traj = R.theta_run(model, theta0, L, 3.2, 1.5 * limit.last_T)
            m = R._measured(R.RankMeasurement(model.product_names(), traj, torch.zeros(3), ((),) * 3, 3.2,
                                              float(traj.tau[-1]), tuple(L), "theta", limit=limit), [], 0)
        else:
            m = R.measure(model, theta0, L, limit=limit)
        jumps = [[round(t, 4) for t in j.taus] for j in m.jumps]
        gaps = [(round(g.limit, 4) if g.limit is not None else None) for g in R.gaps(m)]
        print(f"{path}: jump times per jump (1e-32, 1e-64, 1e-128) {jumps}; model-free gaps extrapolated {gaps}; "
              f"model-free verdict {R.judge_model_free(m).verdict.value}; gradient evaluations {m.traj.nfev.tolist()}")


def rank_increments_table() -> None:
    from verifier.checks import rank_increments as R

    ex = _two_layer()
    problems = [("issue 25's network", ex.make, None), ("issue 25's network", ex.make, "1e-32,1e-64,1e-128"),
                ("issue 25's network", ex.make, "1e-4,exp(-100),exp(-1000),exp(-10000)"),
                ("target 2, 2, 1", ex.tied, None), ("target 2, 1.9, 1", ex.near_tie, None),
                ("linear-attention", lambda: build_model("linear-attention"), None),
                ("full-attention", lambda: build_model("full-attention"), None)]
    for name, make, alphas in problems:
        r = run_check(R.ID, Context(RunConfig(log_inv_alphas=parse_alphas(alphas)), model=make(), argv=["measure"]))
        v = r.values
        print(f"{name} [{alphas or 'default'}]: {r.verdict.value} {r.reason or ''}; alphas {v['alphas']}; "
              f"error {v.get('jump_time_error_at_smallest_alpha')} (tolerance "
              f"{r.metrics['jump_time_error_at_smallest_alpha'].threshold if 'jump_time_error_at_smallest_alpha' in r.metrics else None}); "
              f"fitted {v.get('max_fitted_jump_time_error')}; plateau {v.get('plateau_error_at_smallest_alpha')}; "
              f"rungs {[x['alpha'] for x in v.get('rungs_added') or []]}; gaps {[g['gaps'] for g in v['gaps']]}; "
              f"nfev {v['nfev']}; {r.duration_s:.0f} s")


SECTIONS = {"flat-cost": flat_cost, "threshold-bias": threshold_bias, "taylor-orders": taylor_orders_table,
            "discrete-law": discrete_law, "short-ladder": short_ladder, "leaving-noise": leaving_noise,
            "theta-floor": theta_floor, "rank-increments": rank_increments_table}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(SECTIONS):
        print(f"== {name}")
        SECTIONS[name]()
