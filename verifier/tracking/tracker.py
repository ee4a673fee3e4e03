"""RankTracker: the spectra of attention products and of their change during training (THEORY.md §6).

The paper (Section 5, App. B) tracks, per head, the learned change of the attention products
Delta(Wq Wk^T) = Wq Wk^T - (Wq Wk^T at init) and Delta(Wv Wo^T), whose rank stays low and grows
gradually. A product is M_h = A_h B_h^T with factors A_h [d1, k], B_h [d2, k] (k the head dimension).

``RankTracker(model)`` finds the attention modules of the common model zoos (:mod:`.layouts`: torch
``nn.MultiheadAttention``, timm, Hugging Face GPT-2, BERT/RoBERTa, ViT, LLaMA-style grouped-query attention,
and any type given to :func:`~verifier.tracking.layouts.register_attention`) and tracks, per query head h,

    qk[h] = Wq_h^T Wk_g        (the paper's Wq Wk^T with its Wq = Wq_h^T, torch storing weights [out, in])
    vo[h] = Wv_g^T Wo[:, h]^T  (the paper's Wv Wo^T)

with g = h // (heads / kv_heads) the head's key/value head, without the 1/sqrt(k) softmax temperature;
biases are not part of the products. ``products={name: (A_name, B_name[, heads])}`` tracks named
parameters instead (a user's own layout).

``record(step)`` computes the singular values of every product's change from its thin factors
(:mod:`.factors`: QR of [A - A0, A0] and [B, B - B0] and the SVD of a 2k x 2k core, batched over all heads
and layers of one shape, on the model's device); results stay on the device (no host sync) until
:meth:`RankTracker.history` moves them to the host once.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from ..errors import InputError
from .checks import rank_checks
from .factors import change_svdvals, product_svdvals
from .history import RankHistory
from .layouts import find_attention, per_head, spec_factors
from .modules import MODULE_EVERY, ModuleSpectra, find_modules

STATE_FORMAT = 1


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


@dataclass(frozen=True)
class Tracked:
    """One tracked product: ``name`` (e.g. "h.0.attn.qk"), the module it lives in, the layout that found
    it ("named" for ``products=``), ``heads`` matrices of d1 x d2 with head dimension k, and, under
    grouped-query attention, the ``kv_heads`` its key/value factors come from."""

    name: str
    module: str
    layout: str
    heads: int
    kv_heads: int
    d1: int
    d2: int
    k: int
    factors: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # () -> A [heads, d1, k], B [heads, d2, k]

    def __str__(self) -> str:
        kv = f" sharing {self.kv_heads} key/value heads" if self.kv_heads != self.heads else ""
        return (f"{self.name:<32} {self.layout:<28} {self.heads} heads{kv}, {self.d1} x {self.d2}, "
                f"head dim {self.k}")


def _zoo_products(model: torch.nn.Module) -> list[Tracked]:
    """qk and vo of every attention module :func:`~.layouts.find_attention` recognises."""
    out = []
    for path, module, spec, layout in find_attention(model):
        prefix = path or "attention"
        qk, vo = spec_factors(spec, module, layout)
        common = dict(module=prefix, layout=spec.name, heads=layout.heads, kv_heads=layout.kv_heads,
                      k=layout.head_dim)
        out += [Tracked(f"{prefix}.qk", d1=layout.d_q, d2=layout.d_k, factors=qk, **common),
                Tracked(f"{prefix}.vo", d1=layout.d_v, d2=layout.d_out, factors=vo, **common)]
    return out


def _named_products(module: torch.nn.Module, products: Mapping) -> list[Tracked]:
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
            # per_head(rows=True) reads a [k, d] weight, rows=False a [d, k] one
            return per_head(a, spec.heads, spec.a_transposed), per_head(b, spec.heads, spec.b_transposed)

        d1 = a.shape[1] if spec.a_transposed else a.shape[0]
        d2 = b.shape[1] if spec.b_transposed else b.shape[0]
        out.append(Tracked(name, "", "named", spec.heads, spec.heads, d1, d2, ka // spec.heads, factors))
    return out


def _scalar_loss(loss) -> torch.Tensor | float | None:
    """The loss as a detached one-element tensor or a float; anything else is refused here, at record time."""
    if loss is None:
        return None
    if torch.is_tensor(loss):
        if loss.numel() != 1:
            raise InputError("record(loss=...)", f"a tensor of shape {tuple(loss.shape)}",
                             "a scalar: a number or a one-element tensor (the mean training loss)")
        return loss.detach().reshape(())
    if isinstance(loss, bool) or not isinstance(loss, (int, float, np.floating, np.integer)):
        raise InputError("record(loss=...)", f"{type(loss).__name__} {loss!r}",
                         "a scalar: a number or a one-element tensor (the mean training loss)")
    return float(loss)


class RankTracker:
    """Snapshots of the spectra of attention products and of their change since the first record.

    ``products``: ``{name: (A_name, B_name)}``, ``(A_name, B_name, heads)`` or a :class:`Product`, tracking
    A_h B_h^T of the named parameters; ``None`` tracks qk and vo of every attention module the layouts
    recognise (see the module docstring; :meth:`describe` lists them). ``every``: ``record(step)`` measures
    only when ``step % every == 0`` (and always at its first call, which fixes the reference weights).
    ``device``: where to compute (default: the device of the module's parameters). ``module_every``: the
    per-module spectra of the weight change (:mod:`.modules`, for ``recommend_lora``) on every N-th record
    (0: none).
    """

    def __init__(self, module: torch.nn.Module, products: Mapping | None = None, *, every: int = 1,
                 device: str | torch.device | None = None, module_every: int = MODULE_EVERY):
        if isinstance(every, bool) or not (isinstance(every, int) and every >= 1):
            raise InputError("every", f"{every!r} is not a positive integer", "an integer >= 1")
        tracked = _zoo_products(module) if products is None else _named_products(module, products)
        if not tracked:
            raise InputError("products", f"{type(module).__name__} has no attention module of a known layout "
                             "(torch MultiheadAttention, timm, Hugging Face GPT-2/BERT/RoBERTa/ViT/LLaMA-style)",
                             "register its layout with verifier.tracking.register_attention(ModuleType, "
                             "AttentionSpec(...)), or pass named products {name: (A_name, B_name[, heads])}")
        self.module, self.every, self._tracked = module, every, tracked
        first = next(module.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self._reference: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._groups: dict[tuple[int, int, int], list[int]] = {}  # (d1, d2, k) -> indices into _tracked
        self._last_step: int | None = None
        self._steps: list[int] = []
        self._losses: list[torch.Tensor | float] = []
        self._loss_given: list[bool] = []
        self._spectra: list[dict[tuple[int, int, int], torch.Tensor]] = []
        self._initial: dict[tuple[int, int, int], torch.Tensor] = {}
        self._modules = ModuleSpectra(find_modules(module, tracked), module_every, self.device)

    @property
    def tracked(self) -> tuple[Tracked, ...]:
        return tuple(self._tracked)

    @property
    def last_step(self) -> int | None:
        """The step of the last ``record`` call (None before the first)."""
        return self._last_step

    @property
    def n_records(self) -> int:
        return len(self._steps)

    def set_loss(self, step: int, loss) -> bool:
        """Attach the training loss to the record at ``step`` when it is the last one (a loss logged after
        the record, as the Hugging Face Trainer logs); returns whether it did."""
        loss = _scalar_loss(loss)
        if not self._steps or self._steps[-1] != step or loss is None:
            return False
        self._losses[-1], self._loss_given[-1] = loss, True
        return True

    def describe(self) -> str:
        """One line per tracked product: name (module path + qk/vo), layout, heads, d1 x d2, head dim."""
        return "\n".join(str(t) for t in self._tracked)

    @torch.no_grad()
    def products(self) -> dict[str, torch.Tensor]:
        """The current products {name: [heads, d1, d2]} in the paper's orientation (module docstring)."""
        out = {}
        for t in self._tracked:
            a, b = t.factors()
            out[t.name] = (a @ b.transpose(1, 2)).detach()
        return out

    def _factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Current factors on the tracker's device; half precision (float16, bfloat16) in float32, so that the
        change A - A0 is not rounded to 8 or 11 bits."""
        def cast(f: torch.Tensor) -> torch.Tensor:
            wide = f.dtype in (torch.float16, torch.bfloat16)
            return f.detach().to(self.device, torch.float32 if wide else f.dtype)

        return [tuple(cast(f) for f in t.factors()) for t in self._tracked]

    def _check_step(self, step) -> int:
        try:
            step = operator.index(step)
        except TypeError:
            raise InputError("record(step)", f"{step!r} is not an integer", "the optimizer step, an integer") from None
        if self._last_step is not None and step <= self._last_step:
            raise InputError("record(step)", f"step {step} after step {self._last_step}",
                             "steps that increase from call to call")
        return step

    @torch.no_grad()
    def record(self, step: int, loss: torch.Tensor | float | None = None) -> bool:
        """Measure at ``step`` (returns whether it did). ``step`` must increase from call to call. ``loss``:
        the training loss now, a number or a one-element tensor (a tensor stays on its device; it is used
        to compare runs at matched loss)."""
        step, loss = self._check_step(step), _scalar_loss(loss)
        self._last_step = step
        if self._reference is not None and step % self.every:
            return False
        factors = self._factors()
        if self._reference is None:
            self._set_reference([(a.clone(), b.clone()) for a, b in factors])
            self._initial = {shape: product_svdvals(*self._batch(factors, idx)) for shape, idx in self._groups.items()}
        self._spectra.append({shape: change_svdvals(*self._batch(factors, idx), *self._batch(self._reference, idx))
                              for shape, idx in self._groups.items()})
        self._steps.append(step)
        self._losses.append(float("nan") if loss is None else loss)
        self._loss_given.append(loss is not None)
        self._modules.record(step, len(self._steps) - 1)
        return True

    def _set_reference(self, reference: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._reference = reference
        self._groups = {}
        for i, (a, b) in enumerate(reference):
            self._groups.setdefault((a.shape[1], b.shape[1], a.shape[2]), []).append(i)

    @staticmethod
    def _batch(factors: list[tuple[torch.Tensor, torch.Tensor]], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(idx) == 1:
            return factors[idx[0]]
        return torch.cat([factors[i][0] for i in idx]), torch.cat([factors[i][1] for i in idx])

    def _host(self, per_group: list[dict[tuple[int, int, int], torch.Tensor]]) -> np.ndarray:
        """[records] of {shape: [sum of heads, r_shape]} -> [records, P, r] in product order, zero padded."""
        r = max(min(d1, d2, 2 * k) for d1, d2, k in self._groups)
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
        return rank_checks({init_scale: self.history()})

    def _host_losses(self, losses: list) -> np.ndarray:
        out = np.array([np.nan if torch.is_tensor(v) else v for v in losses], dtype=np.float64)
        on_device = [i for i, v in enumerate(losses) if torch.is_tensor(v)]
        if on_device:
            out[on_device] = torch.stack([losses[i].float().to(self.device) for i in on_device]).cpu().numpy()
        return out

    def history(self, last: int | None = None) -> RankHistory:
        """Everything recorded so far (or the ``last`` records), moved to the host in one transfer per shape."""
        if not self._steps:
            raise RuntimeError("RankTracker.history(): record() was never called")
        keep = slice(None) if last is None else slice(-last, None)
        max_rank = [min(a.shape[1], b.shape[1], 2 * a.shape[2]) for a, b in self._reference]
        product_rank = [min(a.shape[1], b.shape[1], a.shape[2]) for a, b in self._reference]
        losses = self._host_losses(self._losses[keep])
        delta = self._host(self._spectra[keep])
        given = np.array(self._loss_given[keep], dtype=bool)
        finite = np.isfinite(delta).all(axis=(1, 2)) & (np.isfinite(losses) | ~given)
        return RankHistory(
            names=tuple(t.name for t in self._tracked for _ in range(t.heads)),
            heads=tuple(h for t in self._tracked for h in range(t.heads)),
            max_rank=tuple(max_rank[i] for i, t in enumerate(self._tracked) for _ in range(t.heads)),
            product_rank=tuple(product_rank[i] for i, t in enumerate(self._tracked) for _ in range(t.heads)),
            steps=np.array(self._steps[keep]), losses=losses, delta_spectra=delta,
            initial_spectra=self._host([self._initial])[0], finite=finite,
            **self._modules.fields(since=self._steps[keep][0]))

    def state_dict(self) -> dict:
        """Reference weights and history on the CPU (for a checkpoint); :meth:`load_state_dict` restores them
        into a tracker of the same model, which then continues the history."""
        keys = list(self._groups)
        return {
            "format": STATE_FORMAT, "every": self.every, "names": [t.name for t in self._tracked],
            "heads": [t.heads for t in self._tracked], "last_step": self._last_step, "steps": list(self._steps),
            "losses": [float(v) for v in self._host_losses(self._losses)] if self._losses else [],
            "loss_given": list(self._loss_given),
            "reference": None if self._reference is None else [(a.cpu(), b.cpu()) for a, b in self._reference],
            "shapes": keys,
            "initial": [self._initial[k].cpu() for k in keys] if self._initial else [],
            "spectra": [torch.stack([rec[k] for rec in self._spectra]).cpu() for k in keys] if self._spectra else [],
            "modules": self._modules.state_dict(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from :meth:`state_dict` of a tracker of the same model (names and heads must agree)."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise InputError("RankTracker.load_state_dict", "not a RankTracker state_dict",
                             f"the dict RankTracker.state_dict() returns (format {STATE_FORMAT})")
        names, heads = [t.name for t in self._tracked], [t.heads for t in self._tracked]
        if list(state["names"]) != names or list(state["heads"]) != heads:
            raise InputError("RankTracker.load_state_dict", f"it tracks {len(state['names'])} other products "
                             f"({', '.join(state['names'][:3])}, ...)", f"the state of a tracker of this model: "
                             f"{', '.join(names[:3])}, ...")
        self._last_step = state["last_step"]
        self._steps = [int(s) for s in state["steps"]]
        self._losses = [float(v) for v in state["losses"]]
        self._loss_given = [bool(g) for g in state["loss_given"]]
        self._modules.load_state_dict(state.get("modules"))
        if state["reference"] is None:
            self._reference, self._groups, self._initial, self._spectra = None, {}, {}, []
            return
        self._set_reference([(a.to(self.device), b.to(self.device)) for a, b in state["reference"]])
        keys = [tuple(k) for k in state["shapes"]]
        self._initial = {k: v.to(self.device) for k, v in zip(keys, state["initial"])}
        per_key = [v.to(self.device) for v in state["spectra"]]
        self._spectra = [{k: v[t] for k, v in zip(keys, per_key)} for t in range(len(self._steps))]
