"""RankTracker: the spectra of attention products and of their change during training (THEORY.md §6).

The paper (Section 5, App. B) tracks, per head, the learned change of the attention products
Delta(Wq Wk^T) = Wq Wk^T - (Wq Wk^T at init) and Delta(Wv Wo^T), whose rank stays low and grows
gradually. A product is M_h = A_h B_h^T with factors A_h [d1, k], B_h [d2, k] (k the head dimension).

Convention for ``torch.nn.MultiheadAttention`` (``products=None``): torch stores projections as
[out, in], q = x Wq^T for a row token x, with head h owning rows h*k:(h+1)*k of Wq, Wk, Wv and columns
h*k:(h+1)*k of ``out_proj.weight`` Wo. The head's score is x_t Wq_h^T Wk_h x_r^T and its output
contribution a Wv_h^T Wo[:, h]^T for an attention-weighted token a, so the tracked products are the
d_model x d_model matrices

    qk[h] = Wq_h^T Wk_h        (the paper's Wq Wk^T with its Wq = Wq_h^T)
    vo[h] = Wv_h^T Wo[:, h]^T  (the paper's Wv Wo^T)

without the 1/sqrt(k) softmax temperature; biases are not part of the products.

``record(step)`` computes every product's change at the module's device as
(A - A0) B^T + A0 (B - B0)^T (no cancellation of two O(1) products) and its singular values with one
batched ``torch.linalg.svdvals`` per shape; results stay on the device (no host sync) until
:meth:`RankTracker.history` moves them to the host once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from ..errors import InputError
from .spectra import NUMERICAL_RANK_RTOL, effective_rank, numerical_rank, stable_rank


@dataclass(frozen=True)
class Product:
    """M_h = A_h B_h^T of the parameters named ``a`` and ``b``, split into ``heads`` blocks of the shared
    inner dimension k. A parameter is stored [d, k] unless its ``*_transposed`` flag says [k, d] (the
    layout of an ``nn.Linear`` weight that projects into the head space: pass a_transposed=True for a
    query or value projection, b_transposed=True for a key projection; an output projection's weight
    is [d, k] already)."""

    a: str
    b: str
    heads: int = 1
    a_transposed: bool = False
    b_transposed: bool = False


def head_factors(weight: torch.Tensor, heads: int, transposed: bool) -> torch.Tensor:
    """A [d, k] weight (or [k, d] when ``transposed``) as per-head views [heads, d, k / heads]."""
    if transposed:
        k, d = weight.shape
        return weight.reshape(heads, k // heads, d).transpose(1, 2)
    d, k = weight.shape
    return weight.reshape(d, heads, k // heads).permute(1, 0, 2)


@dataclass(frozen=True)
class _Tracked:
    name: str
    heads: int
    factors: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # () -> A [heads, d1, k], B [heads, d2, k]


def _mha_products(module: torch.nn.Module) -> list[_Tracked]:
    """qk and vo of every ``nn.MultiheadAttention`` in ``module`` (see the module docstring)."""
    out = []
    for name, mha in module.named_modules():
        if not isinstance(mha, torch.nn.MultiheadAttention):
            continue
        H, E = mha.num_heads, mha.embed_dim
        prefix = name or "attention"

        def projections(mha=mha, E=E):
            if mha.in_proj_weight is not None:
                w = mha.in_proj_weight
                return w[:E], w[E : 2 * E], w[2 * E :]
            return mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight

        def qk(projections=projections, H=H):
            wq, wk, _ = projections()
            return head_factors(wq, H, True), head_factors(wk, H, True)

        def vo(projections=projections, mha=mha, H=H):
            _, _, wv = projections()
            return head_factors(wv, H, True), head_factors(mha.out_proj.weight, H, False)

        out += [_Tracked(f"{prefix}.qk", H, qk), _Tracked(f"{prefix}.vo", H, vo)]
    return out


def _named_products(module: torch.nn.Module, products: Mapping) -> list[_Tracked]:
    params = dict(module.named_parameters())
    allowed = "parameter names of the module, e.g. " + ", ".join(list(params)[:4])
    out = []
    for name, spec in products.items():
        if isinstance(spec, tuple) and len(spec) in (2, 3):
            spec = Product(*spec)
        if not isinstance(spec, Product):
            raise InputError(f"products[{name!r}]", f"{spec!r} is not (A, B), (A, B, heads) or a Product",
                             "(A_name, B_name[, heads]) or Product(...)")
        for pname in (spec.a, spec.b):
            if pname not in params:
                raise InputError(f"products[{name!r}]", f"no parameter named {pname!r}", allowed)
            if params[pname].ndim != 2:
                raise InputError(f"products[{name!r}]", f"{pname!r} has shape {tuple(params[pname].shape)}",
                                 "2-d weights")
        a, b = params[spec.a], params[spec.b]
        ka = a.shape[0] if spec.a_transposed else a.shape[1]
        kb = b.shape[0] if spec.b_transposed else b.shape[1]
        if ka != kb:
            raise InputError(f"products[{name!r}]", f"inner dimensions differ ({ka} vs {kb})",
                             "A [d1, k] and B [d2, k] (or set a_transposed/b_transposed)")
        if not (isinstance(spec.heads, int) and spec.heads >= 1 and ka % spec.heads == 0):
            raise InputError(f"products[{name!r}]", f"heads={spec.heads!r} does not divide k={ka}",
                             "a positive divisor of the inner dimension")

        def factors(a=a, b=b, spec=spec):
            return head_factors(a, spec.heads, spec.a_transposed), head_factors(b, spec.heads, spec.b_transposed)

        out.append(_Tracked(name, spec.heads, factors))
    return out


@dataclass(frozen=True)
class RankHistory:
    """What a tracker measured, on the host. P tracked matrices (one per product and head), T records.

    ``delta_spectra[t, i]`` are the singular values of matrix i's change at record t (descending, zero
    padded to the largest rank r), ``initial_spectra[i]`` those of the matrix at the first record. ``max_rank[i]`` = min(d1, d2, 2k), the largest rank the change
    (dA) B^T + A0 (dB)^T can have. ``losses`` are the losses passed to ``record`` (NaN where none was).
    """

    names: tuple[str, ...]  # product name per matrix, e.g. "blocks.0.attn.qk"
    heads: tuple[int, ...]
    max_rank: tuple[int, ...]
    product_rank: tuple[int, ...]  # min(d1, d2, k): the largest rank of the product itself
    steps: np.ndarray  # [T]
    losses: np.ndarray  # [T]
    delta_spectra: np.ndarray  # [T, P, r]
    initial_spectra: np.ndarray  # [P, r]

    @property
    def labels(self) -> list[str]:
        return [f"{n}[h{h}]" for n, h in zip(self.names, self.heads)]

    def stable_rank(self) -> np.ndarray:
        """[T, P] stable rank of the change (NaN at the first record, where it is zero)."""
        return stable_rank(self.delta_spectra)

    def effective_rank(self) -> np.ndarray:
        return effective_rank(self.delta_spectra)

    def numerical_rank(self, rtol: float = NUMERICAL_RANK_RTOL) -> np.ndarray:
        return numerical_rank(self.delta_spectra, rtol)

    def initial_stable_rank(self) -> np.ndarray:
        """[P] stable rank of each product at the first record."""
        return stable_rank(self.initial_spectra)


class RankTracker:
    """Snapshots of the spectra of attention products and of their change since the first record.

    ``products``: ``{name: (A_name, B_name)}``, ``(A_name, B_name, heads)`` or a :class:`Product`, tracking
    A_h B_h^T of the named parameters; ``None`` tracks qk and vo of every ``torch.nn.MultiheadAttention``
    (see the module docstring). ``every``: ``record(step)`` measures only when ``step % every == 0`` (and
    always at its first call, which fixes the reference weights). ``device``: where to compute (default:
    the device of the module's parameters).
    """

    def __init__(self, module: torch.nn.Module, products: Mapping | None = None, *, every: int = 1,
                 device: str | torch.device | None = None):
        if not (isinstance(every, int) and every >= 1):
            raise InputError("every", f"{every!r} is not a positive integer", "an integer >= 1")
        tracked = _mha_products(module) if products is None else _named_products(module, products)
        if not tracked:
            raise InputError("products", "the module has no torch.nn.MultiheadAttention to find",
                             "a mapping {name: (A_name, B_name)} of parameter names")
        self.module, self.every, self._tracked = module, every, tracked
        first = next(module.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self._reference: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._groups: dict[tuple[int, int], list[int]] = {}  # (d1, d2) -> indices into _tracked
        self._steps: list[int] = []
        self._losses: list[torch.Tensor | float] = []
        self._spectra: list[dict[tuple[int, int], torch.Tensor]] = []
        self._initial: dict[tuple[int, int], torch.Tensor] = {}

    def _factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [tuple(f.detach().to(self.device) for f in t.factors()) for t in self._tracked]

    @torch.no_grad()
    def record(self, step: int, loss: torch.Tensor | float | None = None) -> bool:
        """Measure at ``step`` (returns whether it did). ``loss``: the training loss now (a tensor stays on
        its device; it is used to compare runs at matched loss)."""
        if self._reference is not None and step % self.every:
            return False
        factors = self._factors()
        if self._reference is None:
            self._reference = [(a.clone(), b.clone()) for a, b in factors]
            for i, (a, b) in enumerate(factors):
                self._groups.setdefault((a.shape[1], b.shape[1]), []).append(i)
            self._initial = self._svdvals([a @ b.transpose(1, 2) for a, b in factors])
        changes = [(a - a0) @ b.transpose(1, 2) + a0 @ (b - b0).transpose(1, 2)
                   for (a, b), (a0, b0) in zip(factors, self._reference)]
        self._spectra.append(self._svdvals(changes))
        self._steps.append(int(step))
        self._losses.append(float("nan") if loss is None else loss.detach() if torch.is_tensor(loss) else loss)
        return True

    def _svdvals(self, matrices: list[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
        return {shape: torch.linalg.svdvals(torch.cat([matrices[i] for i in idx]))
                for shape, idx in self._groups.items()}

    def _host(self, per_group: list[dict[tuple[int, int], torch.Tensor]]) -> np.ndarray:
        """[records] of {shape: [sum of heads, r_shape]} -> [records, P, r] in product order, zero padded."""
        r = max(min(shape) for shape in self._groups)
        stacked = {shape: torch.stack([rec[shape] for rec in per_group]).to("cpu", torch.float64).numpy()
                   for shape in self._groups}
        out = np.zeros((len(per_group), sum(t.heads for t in self._tracked), r))
        offsets = np.cumsum([0] + [t.heads for t in self._tracked])
        for shape, idx in self._groups.items():
            row = 0
            for i in idx:
                h = self._tracked[i].heads
                s = stacked[shape][:, row : row + h]
                out[:, offsets[i] : offsets[i] + h, : s.shape[-1]] = s
                row += h
        return out

    def results(self, init_scale: float = 1.0) -> list:
        """``low-rank-perturbation`` and ``gradual-rank-increase`` on what was recorded (ordinary CheckResults).
        To compare runs at several init scales: ``verifier.tracking.rank_checks({scale: history, ...})``."""
        from .checks import rank_checks

        return rank_checks({init_scale: self.history()})

    def history(self) -> RankHistory:
        """Everything recorded so far, moved to the host in one transfer per shape."""
        if not self._steps:
            raise RuntimeError("RankTracker.history(): record() was never called")
        max_rank = [min(a.shape[1], b.shape[1], 2 * a.shape[2]) for a, b in self._reference]
        product_rank = [min(a.shape[1], b.shape[1], a.shape[2]) for a, b in self._reference]
        losses = np.array([np.nan if torch.is_tensor(v) else v for v in self._losses], dtype=np.float64)
        on_device = [i for i, v in enumerate(self._losses) if torch.is_tensor(v)]
        if on_device:
            losses[on_device] = torch.stack([self._losses[i].reshape(()).float() for i in on_device]).cpu().numpy()
        return RankHistory(
            names=tuple(t.name for t in self._tracked for _ in range(t.heads)),
            heads=tuple(h for t in self._tracked for h in range(t.heads)),
            max_rank=tuple(max_rank[i] for i, t in enumerate(self._tracked) for _ in range(t.heads)),
            product_rank=tuple(product_rank[i] for i, t in enumerate(self._tracked) for _ in range(t.heads)),
            steps=np.array(self._steps), losses=losses, delta_spectra=self._host(self._spectra),
            initial_spectra=self._host([self._initial])[0])
