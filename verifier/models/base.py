"""The common interface of every model: a loss of the parameters theta, and, for diagonal networks
(Definition 3.1), the same loss as a function Lb(beta) of beta = u * v.

Everything is float64. Batched evaluation goes through ``torch.func.vmap`` so that a leading batch
dimension (alphas, seeds, perturbations) costs one call, not a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch.func import grad, vjp, vmap

def square_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 / 2N) sum_samples ||pred - target||^2, summed over every output entry of a sample."""
    return 0.5 * (pred - target).pow(2).sum() / pred.shape[0]


def logistic_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 / N) sum log(1 + exp(-y * pred)) for labels y in {-1, +1}."""
    return torch.nn.functional.softplus(-target * pred).mean()


@dataclass(frozen=True, eq=False)
class Model:
    """A trainable network with parameters theta (flat vector of length ``n_params``).

    Subclasses implement :meth:`loss_params`; diagonal networks also implement :meth:`loss_beta`.
    ``X`` and ``Y`` are the data set the loss averages over.
    """

    X: torch.Tensor
    Y: torch.Tensor
    loss: str = "square"

    # -- identity -------------------------------------------------------------------------------
    family = "model"
    diagonal = False
    movable = True  # to_device works; a user's loss function holds its own tensors and cannot move (models/user.py)

    @property
    def device(self) -> torch.device:
        return self.X.device

    @property
    def n_params(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_device(self, device: str | torch.device) -> "Model":
        """The same model with every tensor field on ``device`` (float64 kept)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def _loss(self, pred: torch.Tensor) -> torch.Tensor:
        return square_loss(pred, self.Y) if self.loss == "square" else logistic_loss(pred, self.Y)

    def loss_params(self, theta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """L(theta): the loss of the network evaluated the way it is built (from its weight matrices)."""
        raise NotImplementedError

    def conserved(self, theta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The Lemma 4.1 quantities of theta (flattened), constant along gradient flow."""
        raise NotImplementedError

    def conserved_scale(self, theta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The size rounding errors in :meth:`conserved` are relative to (same shape)."""
        raise NotImplementedError

    def init_params(self, alpha: float, generator: torch.Generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def grad_params(self, theta: torch.Tensor) -> torch.Tensor:
        """grad L(theta), batched over leading dimensions."""
        return _batched(grad(self.loss_params), theta)


@dataclass(frozen=True, eq=False)
class DiagonalModel(Model):
    """A network with diagonal weights (Definition 3.1): f(x; u, v) = h(x; u * v).

    theta = (u, v) in R^{2p}; ``loss_beta`` is Lb(beta) and ``loss_params`` evaluates the network from
    (u, v) the way its weights are built, so tests can compare the two parametrizations.
    """

    diagonal = True

    @property
    def p(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return 2 * self.p

    def coordinate_names(self) -> list[str]:
        return [f"beta[{i}]" for i in range(self.p)]

    def coordinate_structure(self) -> list[tuple[str, str, int]]:
        """(group, pair, index) per coordinate: which weights of which part of the network it is (one group,
        one pair here); limit/symmetry.py exchanges groups or indices entry by entry."""
        return [("", "beta", i) for i in range(self.p)]

    def predict_beta(self, beta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_uv(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def loss_beta(self, beta: torch.Tensor) -> torch.Tensor:
        """Lb(beta) for one beta of shape [p]."""
        return self._loss(self.predict_beta(beta))

    def loss_params(self, theta: torch.Tensor) -> torch.Tensor:
        return self._loss(self.predict_uv(theta[: self.p], theta[self.p :]))

    def conserved(self, theta: torch.Tensor) -> torch.Tensor:
        """Lemma 4.1: u_i^2 - v_i^2."""
        u, v = theta[..., : self.p], theta[..., self.p :]
        return u * u - v * v

    def conserved_scale(self, theta: torch.Tensor) -> torch.Tensor:
        u, v = theta[..., : self.p], theta[..., self.p :]
        return u * u + v * v

    def init_params(self, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """alpha * theta0 with theta0 = (u0, v0) i.i.d. standard Gaussian (u0 != +-v0 almost surely)."""
        theta0 = torch.randn(2 * self.p, generator=generator, dtype=torch.float64)
        return alpha * theta0.to(self.device)

    # -- derivatives of Lb, batched over leading dimensions ----------------------------------------
    def loss_b(self, beta: torch.Tensor) -> torch.Tensor:
        return _batched(self.loss_beta, beta)

    def grad_b(self, beta: torch.Tensor) -> torch.Tensor:
        """g(beta) = grad Lb(beta)."""
        return _batched(grad(self.loss_beta), beta)

    def hessian_columns(self, beta: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """H(beta)[:, columns] for beta [B, p] and an index tensor ``columns`` [K]: returns [B, p, K].

        H is symmetric, so its columns are its rows e_j^T H: one reverse pass through the gradient per beta
        (``vjp``), pulled back along the K one-hot cotangents at once (``vmap``), every beta in one batched
        call. Cost ~K gradient-like passes, so callers ask only for the columns they need. Measured against
        forward-over-reverse (``jvp`` of the gradient, vmapped the same way): 1.4-1.8x faster on
        examples/attention_head.py and 1.1-1.4x on the diag-transformer preset (benchmarks/README.md).
        """
        g = grad(self.loss_beta)
        columns = torch.as_tensor(columns, device=beta.device)
        cotangents = torch.zeros(len(columns), self.p, dtype=beta.dtype, device=beta.device)
        cotangents[torch.arange(len(columns), device=beta.device), columns] = 1.0

        def rows(b):
            _, pull = vjp(g, b)
            return vmap(lambda c: pull(c)[0])(cotangents)  # [K, p]

        out = vmap(rows)(beta.reshape(-1, self.p))  # [B, K, p]
        return out.transpose(-1, -2).reshape(*beta.shape[:-1], self.p, len(columns))

    def hessian(self, beta: torch.Tensor) -> torch.Tensor:
        """The full Hessian of Lb, [..., p, p]."""
        cols = torch.arange(self.p, device=beta.device)
        return self.hessian_columns(beta, cols)


def _batched(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-sample function over any leading dimensions of ``x``."""
    if x.dim() == 1:
        return fn(x)
    flat = x.reshape(-1, x.shape[-1])
    out = vmap(fn)(flat)
    return out.reshape(*x.shape[:-1], *out.shape[1:])
