"""CUDA (issue 11): every path run on a GPU gives the CPU's result: derivatives, the exact flow, GD/SGD/Adam,
Algorithm 1 and every check. Marked ``cuda``; skipped cleanly where ``torch.cuda.is_available()`` is False.

CPU and GPU sum in different orders, so a flow's step-size decisions may part after a rounding-level
difference: trajectories are compared to the integrator's tolerance, discrete runs and derivatives to
rounding, verdicts exactly."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import verifier

from verifier.checks import REGISTRY, Verdict, run_check
from verifier.config import OptimizerConfig, RunConfig
from verifier.context import Context
from verifier.dynamics.flow import solve_flow
from verifier.dynamics.optimizers import train
from verifier.limit import algorithm1
from verifier.presets import build_model
from verifier.survey.stacked import prefill_ladders

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

F64 = torch.float64


def _pair(preset: str, loss: str = "square"):
    cpu = build_model(preset, loss=loss)
    return cpu, cpu.to_device("cuda")


def _close(gpu: torch.Tensor, cpu: torch.Tensor, rtol: float, atol: float = 0.0) -> bool:
    return torch.allclose(gpu.cpu(), cpu, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("preset,loss", [("diag-linear", "square"), ("diag-linear", "logistic"),
                                         ("toy-attention", "square"), ("diag-transformer", "square")])
def test_derivatives_match_the_cpu(preset, loss):
    cpu, gpu = _pair(preset, loss)
    beta = 0.3 * torch.randn(3, cpu.p, generator=torch.Generator().manual_seed(0), dtype=F64)
    cols = torch.tensor([0, cpu.p // 2, cpu.p - 1])
    scale = float(cpu.grad_b(beta).abs().max())
    assert _close(gpu.loss_b(beta.cuda()), cpu.loss_b(beta), rtol=1e-12)
    assert _close(gpu.grad_b(beta.cuda()), cpu.grad_b(beta), rtol=1e-10, atol=1e-12 * scale)
    H = cpu.hessian_columns(beta, cols)
    assert _close(gpu.hessian_columns(beta.cuda(), cols.cuda()), H, rtol=1e-10, atol=1e-12 * float(H.abs().max()))


@pytest.mark.parametrize("preset,horizon", [("diag-linear", 6.0), ("toy-attention", 1.0)])
def test_flow_matches_the_cpu(preset, horizon):
    cpu, gpu = _pair(preset)
    theta0 = cpu.init_params(1.0, torch.Generator().manual_seed(1))[None].expand(3, -1)
    Ls = [math.log(1e4), math.log(1e16), 1e4]
    a = solve_flow(cpu, theta0, Ls, horizon)
    b = solve_flow(gpu, theta0.cuda(), Ls, horizon)
    assert a.status == b.status and all(b.ok)
    assert b.beta.device.type == "cpu"  # trajectories come back on the host
    assert (a.beta - b.beta).abs().max() <= 1e-5 * (1 + a.beta.abs().max())
    assert torch.equal(a.crossing_sign, b.crossing_sign)
    assert torch.allclose(a.crossing_tau, b.crossing_tau, atol=1e-5, equal_nan=True)
    assert ((a.nfev - b.nfev).abs() <= 0.1 * a.nfev).all(), (a.nfev, b.nfev)


@pytest.mark.parametrize("name", ["gd", "sgd", "adam"])
@pytest.mark.parametrize("preset", ["diag-linear", "toy-attention", "full-attention"])
def test_discrete_training_matches_the_cpu(name, preset):
    cpu, gpu = _pair(preset)
    theta = 1e-2 * torch.stack([cpu.init_params(1.0, torch.Generator().manual_seed(s)) for s in (1, 2)])
    opt = OptimizerConfig(name=name, lr=0.05, steps=30, batch_size=8)
    a, b = train(cpu, theta, opt, seed=3), train(gpu, theta.cuda(), opt, seed=3)
    assert a.status == b.status
    assert _close(b.theta, a.theta, rtol=1e-9, atol=1e-15)
    assert _close(b.predicted, a.predicted, rtol=1e-9, atol=1e-18)
    assert _close(b.loss, a.loss, rtol=1e-9)


@pytest.mark.parametrize("preset", ["diag-linear", "toy-attention"])
def test_algorithm1_matches_the_cpu(preset):
    cpu, gpu = _pair(preset)
    a, b = algorithm1(cpu), algorithm1(gpu)
    assert (a.status, len(a.stages)) == (b.status, len(b.stages))
    for s, t in zip(a.stages, b.stages):
        assert (s.coordinate, s.sign, s.support, s.left) == (t.coordinate, t.sign, t.support, t.left)
        assert math.isclose(s.T, t.T, rel_tol=1e-6, abs_tol=1e-9)
        assert t.beta.device.type == "cpu" and torch.allclose(s.beta, t.beta, rtol=1e-5, atol=1e-8)


def _numbers(result) -> dict[str, float]:
    """The scalar metric values of a result."""
    return {k: float(v) for k, v in result.values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _same_outcome(config: RunConfig, check_id: str):
    results = []
    for device in ("cpu", "cuda"):
        results.append(run_check(check_id, Context(replace(config, device=device), argv=["pytest", "cuda"])))
    cpu, gpu = results
    assert "raised" not in gpu.message, gpu.message
    assert gpu.verdict == cpu.verdict, (cpu.message, gpu.message)
    a, b = _numbers(cpu), _numbers(gpu)
    assert a.keys() == b.keys()
    for k in a:
        if math.isfinite(a[k]):
            assert math.isclose(a[k], b[k], rel_tol=1e-3, abs_tol=1e-9), (k, a[k], b[k])
    return cpu, gpu


@pytest.mark.parametrize("check_id", sorted(REGISTRY))
def test_every_check_gives_the_cpu_verdict_on_diag_linear(check_id):
    _same_outcome(RunConfig(preset="diag-linear"), check_id)


@pytest.mark.parametrize("optimizer,verdict", [("gd", "pass"), ("sgd", "pass"), ("adam", "fail")])
@pytest.mark.parametrize("preset", ["diag-linear", "toy-attention", "full-attention"])
def test_lemma41_discrete_on_cuda(preset, optimizer, verdict):
    """The issue's failure: ``--optimizer gd|sgd|adam`` was inconclusive on CUDA ("Expected all tensors to be
    on the same device")."""
    cpu, _ = _same_outcome(RunConfig(preset=preset, optimizer=OptimizerConfig(name=optimizer, steps=10)),
                           "lemma-4.1")
    assert cpu.verdict.value == verdict


def test_lemma41_flow_on_full_attention_on_cuda():
    _same_outcome(RunConfig(preset="full-attention"), "lemma-4.1")


def test_progress_on_cuda_needs_no_extra_synchronisation():
    """The ladder reports progress as plain floats on the host."""
    seen = []
    ctx = Context(RunConfig(preset="diag-linear", device="cuda"), argv=["pytest"],
                  progress=lambda label, f=None: seen.append((label, f)))
    assert all(ctx.ladder.ok)
    fractions = [f for label, f in seen if label == "alpha ladder"]
    assert fractions and all(isinstance(f, float) and 0 <= f <= 1 for f in fractions)


class _LinearUV(nn.Module):
    """A user's diagonal linear network X (u o v), written as a plain module."""

    def __init__(self, d):
        super().__init__()
        self.u, self.v = nn.Parameter(torch.ones(d, dtype=F64)), nn.Parameter(torch.ones(d, dtype=F64))

    def forward(self, X):
        return X @ (self.u * self.v)


def _user_model(device: str):
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(20, 4, generator=gen, dtype=F64)
    y = X @ torch.tensor([2.0, -1.0, 0.0, 0.5], dtype=F64)
    X, y = X.to(device), y.to(device)
    module = _LinearUV(4).to(device)
    return verifier.from_module(module, [("u", "v")], lambda m: 0.5 * (m(X) - y).pow(2).mean())


@pytest.mark.parametrize("check_id", ["definition-3.1", "lemma-4.1", "assumption-4.2"])
def test_a_user_module_on_cuda_gives_the_cpu_verdict(check_id):
    """from_module on a module and data the user put on the GPU (issue 10's models on issue 11's device)."""
    results = [run_check(check_id, Context(RunConfig(device=device), model=_user_model(device), argv=["pytest"]))
               for device in ("cpu", "cuda")]
    cpu, gpu = results
    assert "raised" not in gpu.message, gpu.message
    assert gpu.verdict == cpu.verdict == Verdict.PASS, (cpu.message, gpu.message)


def test_stacked_survey_ladders_on_cuda_match_the_cpu():
    """The survey's stacked ladders (two diag-linear draws in one solve) on the GPU equal the CPU's."""
    def contexts(device):
        return [Context(RunConfig(preset="diag-linear", seed=seed, device=device, log_inv_alphas=(math.log(1e8),)),
                        argv=["pytest"]) for seed in (0, 1)]

    cpu, gpu = contexts("cpu"), contexts("cuda")
    for group in (cpu, gpu):
        prefill_ladders(group, ["theorem-4.5"])
    for a, b in zip(cpu, gpu):
        ta, tb = a.__dict__["ladder"], b.__dict__["ladder"]
        assert ta.status == tb.status and all(tb.ok)
        assert (ta.beta - tb.beta).abs().max() <= 1e-5 * (1 + ta.beta.abs().max())
        assert torch.equal(ta.crossing_sign, tb.crossing_sign)


@pytest.mark.parametrize("preset", ["diag-linear", "toy-attention"])
def test_w_method_and_per_sample_tolerances_match_the_cpu(preset):
    """Issue 20's paths on the GPU: ROS34PW2 with Jacobian reuse and per-sample tolerances (the ladder's error
    budget), and the Hessian columns by reverse-over-reverse of a generic model."""
    from verifier.config import SolverConfig

    cpu, gpu = _pair(preset)
    theta0 = torch.randn(2, cpu.n_params, generator=torch.Generator().manual_seed(3), dtype=F64)
    L = [math.log(1e4), math.log(1e8)]
    tol = (torch.tensor([1e-8, 1e-8], dtype=F64), torch.tensor([1e-4, 1e-7], dtype=F64))
    solver = SolverConfig(method="ros34pw2")
    a = solve_flow(cpu, theta0, L, 1.0, solver, n_out=11, tolerances=tol)
    b = solve_flow(gpu, theta0.cuda(), L, 1.0, solver, n_out=11, tolerances=tuple(t.cuda() for t in tol))
    assert a.status == b.status
    assert _close(b.b, a.b, rtol=0, atol=1e-3)
    assert b.atol.tolist() == a.atol.tolist()


def test_generic_hessian_columns_match_the_cpu():
    """A user's loss (from_loss, the generic torch.func path): reverse-over-reverse Hessian columns on the GPU."""
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

    def make(data):
        return lambda beta: ((data * beta[:3]).sum(1).tanh() * beta[3:]).pow(2).mean()

    cpu = verifier.from_loss(make(x), 6)
    gpu = verifier.from_loss(make(x.cuda()), 6, device="cuda")
    beta = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    cols = torch.tensor([0, 4])
    assert _close(gpu.hessian_columns(beta.cuda(), cols.cuda()), cpu.hessian_columns(beta, cols), rtol=1e-10, atol=1e-12)


def test_lifted_flow_full_limit_and_rank_increments_match_the_cpu():
    """Full weights on the GPU (THEORY.md §8): the lifted flow's singular values to the integrator's tolerance,
    the closed-form and greedy limits, and rank-increments' verdict, on the linear-attention preset."""
    from verifier.config import SolverConfig
    from verifier.dynamics.pair_flow import solve_lifted
    from verifier.limit.pairs import full_limit, greedy_limit

    cpu, gpu = _pair("linear-attention")
    theta0 = cpu.init_params(1.0, torch.Generator().manual_seed(3))
    solver = SolverConfig(rtol=1e-6, atol=1e-6, method="ros34pw2")
    _, a = solve_lifted(cpu, theta0, [8 * math.log(10.0), 1e3], 8.0, solver, n_out=41)
    _, b = solve_lifted(gpu, theta0.cuda(), [8 * math.log(10.0), 1e3], 8.0, solver, n_out=41)
    assert a.ok and b.ok and _close(b.sv[0], a.sv[0], rtol=1e-4, atol=1e-6)
    assert [s.T for s in full_limit(gpu).stages] == pytest.approx([s.T for s in full_limit(cpu).stages], rel=1e-12)
    assert [s.T for s in greedy_limit(gpu).stages] == pytest.approx([s.T for s in greedy_limit(cpu).stages], rel=1e-7)
    verdicts = [run_check("rank-increments", Context(RunConfig(), model=m, argv=["t"])).verdict for m in (cpu, gpu)]
    assert verdicts == [Verdict.PASS, Verdict.PASS]
