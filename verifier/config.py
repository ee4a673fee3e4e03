"""Small immutable configuration objects, normalised once at the boundary (CLI, pytest plugin, API)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .errors import InputError

OPTIMIZERS = ("flow", "gd", "sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
# Theorem 4.5's default ladder, as log(1/alpha): alpha = 1e-4, 1e-8, ..., 1e-256.
DEFAULT_LOG_INV_ALPHAS = tuple(math.log(10.0) * e for e in (4, 8, 16, 32, 64, 128, 256))


@dataclass(frozen=True)
class SolverConfig:
    """Error control of the exact gradient flow (reduced coordinates, THEORY.md §3).

    The local error of S = -int g is held below atol + rtol * |S| per coordinate (RMS norm); an error in
    S of e is a relative error of 2e in beta, so atol is the relative accuracy of active weights.
    """

    rtol: float = 1e-8
    atol: float = 1e-7
    max_steps: int = 5000

    def __post_init__(self):
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise InputError(f"--{name}", f"{v!r} is not in (0, 1)", "a float in (0, 1)")


@dataclass(frozen=True)
class OptimizerConfig:
    """Discrete training on (u, v) as in the paper's experiments (GD, minibatch SGD, Adam).

    ``lr`` is the step size eta; ``steps`` the number of updates; momentum and weight decay apply to
    GD/SGD (both break Lemma 4.1, which the check reports).
    """

    name: str = "flow"
    lr: float = 0.01
    steps: int = 2000
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise InputError("--optimizer", f"unknown optimizer {self.name!r}", ", ".join(OPTIMIZERS))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError("--lr", f"{self.lr!r} must be a positive number", "lr > 0")
        if self.steps < 1:
            raise InputError("--steps", f"{self.steps!r} must be >= 1", "an integer >= 1")
        if self.batch_size < 1:
            raise InputError("--batch-size", f"{self.batch_size!r} must be >= 1", "an integer >= 1")
        if not 0 <= self.momentum < 1:
            raise InputError("--momentum", f"{self.momentum!r} is not in [0, 1)", "0 <= momentum < 1")
        if self.weight_decay < 0:
            raise InputError("--weight-decay", f"{self.weight_decay!r} is negative", "weight_decay >= 0")


def parse_alphas(text: str | None) -> tuple[float, ...] | None:
    """'1e-4,1e-16,exp(-10000)' -> the values L = log(1/alpha), which is how alphas travel everywhere:
    exp(-10^4) underflows a float, but its L does not. Every alpha must lie in (0, 1)."""
    if text is None:
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            if item.startswith("exp(") and item.endswith(")"):
                L = -float(item[4:-1])
            else:
                val = float(item)
                L = -math.log(val) if val > 0 else float("nan")
        except (ValueError, OverflowError):
            raise InputError("--alphas", f"{item!r} is not a number", "comma-separated floats in (0, 1)") from None
        if not (L > 0 and math.isfinite(L)):
            raise InputError("--alphas", f"alpha={item} is not in (0, 1)", "0 < alpha < 1, e.g. 1e-4,1e-16")
        out.append(L)
    return tuple(out)


def format_alpha(L: float) -> str:
    """The alpha with log(1/alpha) = L, as text ('1e-16', or 'exp(-10000)' where it underflows)."""
    a = math.exp(-L)
    return f"{a:.3g}" if a > 1e-300 else f"exp(-{L:.6g})"


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise InputError("--device", f"unknown device {name!r}", ", ".join(DEVICES))
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but torch.cuda.is_available() is False", "auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run of checks depends on; recorded verbatim in results.json."""

    preset: str | None = "toy-attention"
    model: str | None = None
    data: str | None = None
    model_file: str | None = None  # PATH.py:FACTORY (then preset, model and data are None)
    loss: str = "square"
    seed: int = 0
    device: str = "cpu"
    log_inv_alphas: tuple[float, ...] | None = None
    horizon: float | None = None
    solver: SolverConfig = field(default_factory=SolverConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    noise: float = 0.1
    negligible: float = 1e-3
    perturb_epochs: int = 1000
    n_perturb: int = 4

    def as_dict(self) -> dict:
        d = asdict(self)
        d["alphas"] = None if self.log_inv_alphas is None else [format_alpha(L) for L in self.log_inv_alphas]
        return d
