"""Named problems: a model family, a data set and a teacher, fixed by a seed. Every default is here.

``build_model`` is the one boundary where a preset or a user's ``.npz`` becomes a :class:`Model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Callable

import torch

from . import data as D
from .choices import LOSSES, resolve_device
from .errors import InputError
from .models import DiagAttention, DiagLinear, DiagTransformer, FullAttention, LinearAttention, Model
from .models.attention import attention

FAMILIES = ("diag-linear", "toy-attention", "diag-transformer", "full-attention")


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0, loss: str = "square", device: str | torch.device = "cpu") -> Model:
        """Data and teacher from the generator seeded with ``seed + defaults.get("seed_offset", 0)``."""
        gen = D.generator(seed + self.defaults.get("seed_offset", 0))
        return _BUILDERS[self.family](self.defaults, gen, loss).to_device(device)


def _linear(c, gen, loss) -> DiagLinear:
    X = D.gaussian_design(c["N"], c["p"], gen)
    beta_star = D.sparse_vector(c["p"], c["r"], c["scale"], gen)
    y = X @ beta_star
    if loss == "logistic":
        y = torch.where(y >= 0, 1.0, -1.0).to(D.F64)
    return DiagLinear(X, y, loss=loss)


def _toy_attention(c, gen, loss) -> DiagAttention:
    d = c["d"]
    X = D.gaussian_tokens(c["N"], c["n"], d, gen)
    qk = D.sparse_vector(d, c["r"], c["scale"], gen)
    vo = D.sparse_vector(d, c["r"], c["scale"], gen)
    teacher = DiagAttention(X, X, temperature=d**-0.5)
    return DiagAttention(X, teacher.predict_beta(torch.cat([qk, vo])), loss=loss, temperature=d**-0.5)


def frozen_feedforward(layers: int, d: int, width: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random feedforward weights A [L, d, m], B [L, m, d] with variance 1/fan_in (frozen, Example 3.2)."""
    A = torch.randn(layers, d, width, generator=gen, dtype=D.F64) / d**0.5
    B = torch.randn(layers, width, d, generator=gen, dtype=D.F64) / width**0.5
    return A, B


def head_projections(layers: int, heads: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Frozen random orthogonal projections P [L, H, d, d], one per head (Q of the QR of a Gaussian matrix)."""
    return torch.linalg.qr(torch.randn(layers, heads, d, d, generator=gen, dtype=D.F64))[0]


def _transformer(c, gen, loss, X=None, Y=None) -> DiagTransformer:
    d = c["d"] if X is None else X.shape[-1]
    if X is None:
        X = D.gaussian_tokens(c["N"], c["n"], d, gen)
    A, B = frozen_feedforward(c["layers"], d, c["width"], gen)
    P = head_projections(c["layers"], c["heads"], d, gen) if c.get("projections") else None
    kw = dict(ff_in=A, ff_out=B, head_proj=P, heads=c["heads"], temperature=d**-0.5,
              activation=c.get("activation", "gelu"))
    if Y is None:
        teacher = DiagTransformer(X, X, **kw)
        beta = head_teacher(c, gen) if "teacher_heads" in c else D.sparse_vector(teacher.p, c["r"], c["scale"], gen)
        Y = teacher.predict_beta(beta)
    return DiagTransformer(X, Y, loss=loss, **kw)


def head_teacher(c, gen: torch.Generator) -> torch.Tensor:
    """beta of a teacher whose ``teacher_heads`` randomly chosen heads each have one nonzero q*k and one
    nonzero vv*o entry (sizes in ``scale``, random signs): every teacher head changes the output."""
    L, H, d = c["layers"], c["heads"], c["d"]
    beta = torch.zeros(L * H, 2, d, dtype=D.F64)
    for head in torch.randperm(L * H, generator=gen)[: c["teacher_heads"]].tolist():
        for kind in (0, 1):
            beta[head, kind] = D.sparse_vector(d, 1, c["scale"], gen)
    return beta.reshape(-1)


def _full_attention(c, gen, loss) -> FullAttention:
    d, r = c["d"], c["r"]
    X = D.gaussian_tokens(c["N"], c["n"], d, gen)

    def low_rank():
        U, _ = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=D.F64))
        V, _ = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=D.F64))
        lo, hi = c["scale"]
        s = lo + (hi - lo) * torch.rand(r, generator=gen, dtype=D.F64)
        return U @ torch.diag(s) @ V.T

    Y = attention(X, low_rank(), low_rank(), d**-0.5)
    return FullAttention(X, Y, loss=loss, temperature=d**-0.5)


def _linear_attention(c, gen, loss) -> LinearAttention:
    """Lambda = R diag(eigenvalues) R^T with R a random rotation (the seed's): the eigenbasis is not the
    coordinate basis, so nothing about the weights' entries is special."""
    dim = len(c["eigenvalues"])
    R, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=D.F64))
    Lam = R @ torch.diag(torch.tensor(c["eigenvalues"], dtype=D.F64)) @ R.T
    return LinearAttention.build((Lam + Lam.T) / 2, heads=c["heads"], context=c["context"])

_BUILDERS: dict[str, Callable[..., Model]] = {
    "diag-linear": _linear,
    "toy-attention": _toy_attention,
    "diag-transformer": _transformer,
    "full-attention": _full_attention,
    "linear-attention": _linear_attention,
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("diag-linear", "diag-linear",
               "Diagonal linear network on a correlated Gaussian design, sparse teacher y = X beta*.",
               dict(N=100, p=10, r=4, scale=(0.5, 2.0))),
        Preset("toy-attention", "toy-attention",
               "The paper's toy (Appendix A): one head with diagonal weights, N=1000 sequences of n=10 "
               "isotropic Gaussian tokens in d=50, teacher head with r=3 nonzero q*k and r=3 nonzero v*o "
               "entries of size 1-2, softmax temperature 1/sqrt(d), square loss. seed_offset=1: like the "
               "paper's toy, no coordinate ever leaves the support (six stages, v*o first); with "
               "--seed -1 (generator seed 0) a spurious q*k coordinate enters and leaves at the zero-loss last "
               "stage with G = 0, which violates Assumption 4.2(c) as stated.",
               dict(N=1000, n=10, d=50, r=3, scale=(1.0, 2.0), seed_offset=1)),
        Preset("diag-transformer", "diag-transformer",
               "Example 3.2: 2 layers x 2 heads with diagonal attention, residuals, frozen random GELU "
               "feedforward of width 16; each head reads the stream through its own frozen random orthogonal "
               "projection P (Wq Wk^T = P diag(q*k) P^T), so heads are not exchangeable; tokens n=6 in d=8, "
               "N=200, teacher of the same architecture in which 3 of the 4 heads each have one nonzero q*k and "
               "one nonzero v*o entry of size 1-2. seed_offset=10: a draw in which no coordinate leaves (six "
               "stages, one head each); with 8 of generator seeds 0-12 a spurious q*k coordinate leaves at the "
               "zero-loss last stage with G = 0 (the corner case Assumption 4.2c excludes).",
               dict(N=200, n=6, d=8, layers=2, heads=2, width=16, teacher_heads=3, scale=(1.0, 2.0),
                    projections=True, seed_offset=10)),
        Preset("diag-transformer-symmetric", "diag-transformer",
               "A named counterexample: diag-transformer without the per-head projections, so the heads of a "
               "layer have the same functional form and are exchangeable: their coordinates tie exactly "
               "(Assumption 4.2b), a flat direction follows (4.3), and Algorithm 1 is undefined after the tie.",
               dict(N=200, n=6, d=8, layers=2, heads=2, width=16, r=3, scale=(1.0, 2.0))),
        Preset("full-attention", "full-attention",
               "One head with full d x d weights (outside the theory), N=200, n=6, d=8, teacher with rank-2 "
               "Wq Wk^T and Wv Wo^T (singular values 1-2).",
               dict(N=200, n=6, d=8, r=2, scale=(1.0, 2.0))),
        Preset("linear-attention", "linear-attention",
               "Linear attention on in-context linear regression (Zhang, Singh, Latham & Saxe, ICML 2025): 4 heads, "
               "each with a rank-one key and query in D=4 (value frozen), context N=16, tokens x ~ N(0, Lambda) "
               "with Lambda's eigenvalues 1.6, 1.2, 0.8, 0.4 in a random basis, task w ~ N(0, I), population "
               "loss. The merged key-query product K Q^T gains one singular value per plateau (principal component "
               "regression in context) at T_i = 1/lambda_i^2; plateau losses and values are closed-form.",
               dict(eigenvalues=(1.6, 1.2, 0.8, 0.4), heads=4, context=16)),
    ]
}


DEFAULT_PRESET = "toy-attention"


def resolve_problem(preset: str | None, family: str | None, data, loss: str,
                    model_file: str | None = None) -> tuple[str | None, str | None]:
    """Validate the choice of problem: ``(preset, family)``, the default preset when neither a preset nor a
    model family is given. A family without ``data`` is allowed here (the model object may be supplied);
    :func:`build_model` needs the file. A ``model_file`` (PATH.py:FACTORY, an existing file) excludes the
    others and gives (None, None); :func:`build_model` imports it."""
    if model_file is not None:
        if preset is not None or family is not None or data is not None:
            raise InputError("--model-file", "give either --model-file or --preset/--model/--data, not both")
        from .model_file import parse_spec

        parse_spec(model_file)
        return None, None
    if loss not in LOSSES:
        raise InputError("--loss", f"unknown loss {loss!r}", ", ".join(LOSSES))
    if preset is not None and (family is not None or data is not None):
        raise InputError("--preset", "give either --preset or --model with --data, not both")
    if data is not None and family is None:
        raise InputError("--model", "--data needs the model family of the data", ", ".join(FAMILIES))
    if data is not None and (not isinstance(data, (str, PathLike)) or "\x00" in str(data)):
        raise InputError("--data", f"{data!r} is not a path", "a .npz file")
    if preset is None and family is None:
        preset = DEFAULT_PRESET
    if preset is not None:
        if preset not in PRESETS:
            raise InputError("--preset", f"unknown preset {preset!r}", ", ".join(PRESETS))
        family = PRESETS[preset].family
    elif family not in FAMILIES:  # families a data file can hold (linear-attention is a preset only)
        raise InputError("--model", f"unknown model {family!r}", ", ".join(FAMILIES))
    if loss == "logistic" and family != "diag-linear":
        raise InputError("--loss", f"logistic loss is defined for diag-linear only, not {family}", "square")
    return preset, family


def place(model: Model, device: str | torch.device, keep_unmovable: bool | None = None) -> Model:
    """``model`` on ``device`` (a name: auto, cpu, cuda; or a torch.device). A model that cannot move (a user's
    loss holds its own tensors) stays where it is when ``keep_unmovable`` (default: the name is ``auto``); on
    any other device it must be its own."""
    if (device == "auto" if keep_unmovable is None else keep_unmovable) and not model.movable:
        return model
    return model.to_device(resolve_device(device) if isinstance(device, str) else device)


def build_model(preset: str | None = None, family: str | None = None, data: str | None = None,
                loss: str = "square", seed: int = 0, device: str | torch.device = "cpu",
                model_file: str | None = None, keep_unmovable: bool | None = None) -> Model:
    """Normalise the user's choice (a preset, a model family with an .npz file, or ``--model-file``
    PATH.py:FACTORY) into a Model on ``device`` (a torch.device or a name; ``keep_unmovable``: see
    :func:`place`). A run passes its config's resolved device (``RunConfig.torch_device``)."""
    preset, family = resolve_problem(preset, family, data, loss, model_file)
    if model_file is not None:
        from .model_file import load_model_file

        return place(load_model_file(model_file, seed), device, keep_unmovable)
    if isinstance(device, str):
        device = resolve_device(device)
    if preset is not None:
        return PRESETS[preset].build(seed=seed, loss=loss, device=device)
    if data is None:
        raise InputError("--data", "--model needs a data file", "a .npz with X and Y")
    X, Y = D.load_npz(data, family)
    if loss == "logistic" and not bool(((Y == 1) | (Y == -1)).all()):
        raise InputError("--data y", "logistic loss needs labels in {-1, +1}", "-1, +1")
    d = X.shape[-1]
    if family == "diag-linear":
        model: Model = DiagLinear(X, Y, loss=loss)
    elif family == "toy-attention":
        model = DiagAttention(X, Y, temperature=d**-0.5)
    elif family == "full-attention":
        model = FullAttention(X, Y, temperature=d**-0.5)
    else:
        model = _transformer(PRESETS["diag-transformer"].defaults, D.generator(seed), loss, X=X, Y=Y)
    return model.to_device(device)
