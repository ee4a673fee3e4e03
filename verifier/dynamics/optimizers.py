"""Discrete training on theta = (u, v) as in the paper's experiments: GD, minibatch SGD, Adam.

Batched over a leading dimension (alphas, seeds) with ``torch.func.vmap``. Alongside the iterates we
accumulate what Lemma 4.1 predicts for a *plain gradient step* theta <- theta - eta * grad:

    C(theta_new) = C(theta) + eta^2 C(grad)          (exact; C is ``Model.conserved``)

because the O(eta) terms cancel (for diagonal weights this is (u^2 - v^2)(1 - eta^2 g^2), THEORY.md §2). The
identity uses the gradient actually drawn (full batch or minibatch), so it holds for GD and SGD and fails
for Adam, momentum and weight decay, whose updates are not gradient steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.func import grad, vmap

from ..config import OptimizerConfig
from ..models.base import Model
from .trajectory import Status, Trajectory, grid_crossings


@dataclass(frozen=True)
class DiscreteRun:
    """Iterates sampled every ``record_every`` steps, and the Lemma 4.1 bookkeeping per sample.

    ``conserved`` [B, T, m] is C(theta) on the grid; ``predicted`` [B, m] is C(theta_0) + eta^2 sum C(grad);
    ``scale`` [B, m] is the largest |C|-scale seen (u^2 + v^2 for diagonal weights), the size rounding
    errors are measured against."""

    steps: torch.Tensor
    theta: torch.Tensor
    loss: torch.Tensor
    conserved: torch.Tensor
    predicted: torch.Tensor
    scale: torch.Tensor
    status: tuple[Status, ...]


def train(model: Model, theta_init: torch.Tensor, opt: OptimizerConfig, seed: int = 0,
          n_record: int = 201) -> DiscreteRun:
    """Run ``opt`` from theta_init [B, n] (already scaled by alpha) for ``opt.steps`` updates."""
    theta = theta_init.to(model.device, torch.float64).clone()
    B = theta.shape[0]
    gen = torch.Generator().manual_seed(seed)
    conserved = lambda th: model.conserved(th)  # noqa: E731
    predicted = conserved(theta)
    scale = model.conserved_scale(theta)
    m1 = torch.zeros_like(theta)
    m2 = torch.zeros_like(theta)
    record_every = max(1, opt.steps // (n_record - 1))
    rec_steps, rec_theta, rec_loss = [], [], []
    alive = torch.ones(B, dtype=torch.bool, device=theta.device)
    for step in range(opt.steps + 1):
        if step % record_every == 0 or step == opt.steps:
            rec_steps.append(step)
            rec_theta.append(theta.clone())
            rec_loss.append(vmap(model.loss_params)(theta))
        if step == opt.steps:
            break
        batch_model = model
        if opt.name == "sgd" and opt.batch_size < model.X.shape[0]:
            idx = torch.randperm(model.X.shape[0], generator=gen)[: opt.batch_size].to(model.device)
            batch_model = replace(model, X=model.X[idx], Y=model.Y[idx])
        g = vmap(grad(batch_model.loss_params))(theta)
        predicted = predicted + opt.lr**2 * conserved(g)
        if opt.name == "adam":
            b1, b2 = opt.betas
            m1 = b1 * m1 + (1 - b1) * g
            m2 = b2 * m2 + (1 - b2) * g * g
            update = (m1 / (1 - b1 ** (step + 1))) / ((m2 / (1 - b2 ** (step + 1))).sqrt() + opt.eps)
        else:
            d = g + opt.weight_decay * theta
            m1 = opt.momentum * m1 + d
            update = m1
        theta = theta - opt.lr * update
        alive &= torch.isfinite(theta).all(dim=1)
        theta = torch.where(alive[:, None], theta, torch.nan)
        scale = torch.maximum(scale, model.conserved_scale(theta).nan_to_num(0.0))
    thetas = torch.stack(rec_theta, dim=1)
    return DiscreteRun(
        steps=torch.tensor(rec_steps), theta=thetas.cpu(), loss=torch.stack(rec_loss, dim=1).cpu(),
        conserved=model.conserved(thetas).cpu(), predicted=predicted.cpu(), scale=scale.cpu(),
        status=tuple(Status.SUCCESS if a else Status.DIVERGED for a in alive.tolist()),
    )


def as_trajectory(model, run: DiscreteRun, theta0: torch.Tensor, log_inv_alpha: float, lr: float,
                  method: str) -> Trajectory:
    """View a discrete run of a diagonal model (every sample started at the same alpha) in the flow's
    terms: tau = step * lr / L, beta = u * v and b = log|a / a(0)| / L with a = u + v (THEORY.md §3), so the
    checks read both alike. ``theta0`` [B, 2p] is the unit-scale initialisation."""
    p, B = model.p, run.theta.shape[0]
    L = float(log_inv_alpha)
    u, v = run.theta[..., :p], run.theta[..., p:]
    a0 = (theta0[:, :p] + theta0[:, p:]).cpu()
    b = (torch.log((u + v).abs()) - torch.log(a0.abs())[:, None, :] + L) / L
    tau = run.steps.to(torch.float64) * lr / L
    crossing_tau, crossing_sign = grid_crossings(tau, b)
    return Trajectory(
        method=method, log_inv_alpha=torch.full((B,), L, dtype=torch.float64), tau=tau, beta=u * v, b=b,
        loss=run.loss, nfev=torch.full((B,), int(run.steps[-1]), dtype=torch.long),
        njev=torch.zeros(B, dtype=torch.long), status=run.status, crossing_tau=crossing_tau,
        crossing_sign=crossing_sign,
    )
