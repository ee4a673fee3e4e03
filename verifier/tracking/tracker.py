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
:meth:`RankTracker.history` moves them to the host once. On a CPU it runs at its own thread count
(:mod:`.threads`). Weights are read by name at every record, as the forward pass uses them (:mod:`.weights`):
through PEFT adapters (:mod:`.adapters`), DDP and FSDP2 (:mod:`.distributed`: rank 0 records).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from ..errors import InputError
from . import adapters, distributed
from .checks import rank_checks
from .factors import ChangeBasis, product_svdvals
from .history import RankHistory
from .layouts import find_attention, per_head, spec_factors
from .threads import check_threads, cpu_threads
from .weights import WeightReader, unwrap
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
    reads: tuple[tuple[torch.nn.Module, str], ...] = ()  # (module, attribute path) of each weight it reads

    def __str__(self) -> str:
        kv = f" sharing {self.kv_heads} key/value heads" if self.kv_heads != self.heads else ""
        return (f"{self.name:<32} {self.layout:<28} {self.heads} heads{kv}, {self.d1} x {self.d2}, "
                f"head dim {self.k}")


def _zoo_products(model: torch.nn.Module, reader: WeightReader) -> list[Tracked]:
    """qk and vo of every attention module :func:`~.layouts.find_attention` recognises."""
    out = []
    for path, module, spec, layout in find_attention(model):
        prefix = path or "attention"
        qk, vo = spec_factors(module, layout, reader.read)
        q, k, v, o = ((module, w.path) for w in layout.weights)
        common = dict(module=prefix, layout=spec.name, heads=layout.heads, kv_heads=layout.kv_heads,
                      k=layout.head_dim)
        out += [Tracked(f"{prefix}.qk", d1=layout.d_q, d2=layout.d_k, factors=qk, reads=(q, k), **common),
                Tracked(f"{prefix}.vo", d1=layout.d_v, d2=layout.d_out, factors=vo, reads=(v, o), **common)]
    return out


def _parameter(roots: tuple[torch.nn.Module, ...], name: str) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """(root, tensor) of the weight named ``name`` in the first root that has it (the wrapped model, then the
    model as given), or None."""
    for root in roots:
        obj = root
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if torch.is_tensor(obj):
            return root, obj
    return None


def _named_products(roots: tuple[torch.nn.Module, ...], products: Mapping, reader: WeightReader) -> list[Tracked]:
    if not isinstance(products, Mapping):
        raise InputError("products", f"{type(products).__name__}", "a dict {name: (A_name, B_name[, heads])}")
    allowed = "parameter names of the module, e.g. " + ", ".join(n for n, _ in zip(
        (n for n, _ in roots[0].named_parameters()), range(4)))
    out = []
    for name, spec in products.items():
        if isinstance(spec, tuple) and len(spec) in (2, 3):
            spec = Product(*spec)
        if not isinstance(spec, Product):
            raise InputError(f"products[{name!r}]", f"{spec!r} is not (A, B), (A, B, heads) or a Product",
                             "(A_name, B_name[, heads]) or Product(...)")
        found = {}
        for pname in (spec.a, spec.b):
            hit = _parameter(roots, pname) if isinstance(pname, str) and pname else None
            if hit is None:
                raise InputError(f"products[{name!r}]", f"no parameter named {pname!r}", allowed)
            if hit[1].ndim != 2:
                raise InputError(f"products[{name!r}]", f"{pname!r} has shape {tuple(hit[1].shape)}", "2-d weights")
            found[pname] = hit
        (root_a, a), (root_b, b) = found[spec.a], found[spec.b]
        ka = a.shape[0] if spec.a_transposed else a.shape[1]
        kb = b.shape[0] if spec.b_transposed else b.shape[1]
        if ka != kb:
            raise InputError(f"products[{name!r}]", f"inner dimensions differ ({ka} vs {kb})",
                             "A [d1, k] and B [d2, k] (or set a_transposed/b_transposed)")
        if not (isinstance(spec.heads, int) and not isinstance(spec.heads, bool) and spec.heads >= 1
                and ka % spec.heads == 0):
            raise InputError(f"products[{name!r}]", f"heads={spec.heads!r} does not divide k={ka}",
                             "a positive divisor of the inner dimension")

        def factors(root_a=root_a, root_b=root_b, spec=spec):
            # read by name at every call; per_head(rows=True) reads a [k, d] weight, rows=False a [d, k] one
            return (per_head(reader.read(root_a, spec.a), spec.heads, spec.a_transposed),
                    per_head(reader.read(root_b, spec.b), spec.heads, spec.b_transposed))

        d1 = a.shape[1] if spec.a_transposed else a.shape[0]
        d2 = b.shape[1] if spec.b_transposed else b.shape[0]
        out.append(Tracked(name, "", "named", spec.heads, spec.heads, d1, d2, ka // spec.heads, factors,
                           reads=((root_a, spec.a), (root_b, spec.b))))
    return out


def _device(device, default: torch.device) -> torch.device:
    """``device=`` validated now, not at the first record: a device torch knows and can allocate on."""
    allowed = "cpu, cuda, cuda:N, mps, a torch.device, or None for the device of the model's weights"
    if device is None:
        return default
    if not isinstance(device, (str, torch.device)):
        raise InputError("device", f"{device!r} is not a device", allowed)
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InputError("device", f"{str(exc).splitlines()[0]}", allowed) from None
    if device.type == "meta":
        raise InputError("device", "'meta' holds no values to measure", allowed)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device", f"{str(device)!r} but torch.cuda.is_available() is False", allowed)
    if device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except Exception as exc:  # noqa: BLE001 - any failure to allocate there is this argument's fault
            raise InputError("device", f"{str(device)!r} cannot be used: {str(exc).splitlines()[0]}", allowed) from None
    return device


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
    ``device``: where to compute (default: the device of the model's weights). ``threads``: the torch thread
    count of its linear algebra on a CPU (default 1, :mod:`.threads`; restored afterwards).
    ``module_every``: the per-module spectra of the weight change (:mod:`.modules`, for
    ``recommend_lora``) on every N-th record (0: none).

    The model may be wrapped: PEFT's ``PeftModel`` (adapters read as the effective weight, :mod:`.adapters`),
    ``DistributedDataParallel``, ``DataParallel``, a DeepSpeed engine (ZeRO 0-2), or sharded with FSDP2's
    ``fully_shard`` (:mod:`.distributed`); names are those of the wrapped model. Under ``torch.distributed``
    rank 0 records (:attr:`records_here`); under FSDP2 every rank must call :meth:`record` alike.
    ``wrappers``: the class names of the wrappers looked through, outermost first.
    """

    def __init__(self, module: torch.nn.Module, products: Mapping | None = None, *, every: int = 1,
                 device: str | torch.device | None = None, threads: int | None = None,
                 module_every: int = MODULE_EVERY):
        if isinstance(every, bool) or not (isinstance(every, int) and every >= 1):
            raise InputError("every", f"{every!r} is not a positive integer", "an integer >= 1")
        if not isinstance(module, torch.nn.Module):
            raise InputError("module", f"{type(module).__name__} is not a torch.nn.Module", "a torch.nn.Module")
        self.threads = check_threads(threads)
        distributed.refuse_unsupported(module)
        inner, self.wrappers = unwrap(module)
        self._reader = WeightReader(inner)
        tracked = (_zoo_products(inner, self._reader) if products is None
                   else _named_products((inner, module), products, self._reader))
        if not tracked:
            raise InputError("products", f"{type(module).__name__} has no attention module of a known layout "
                             "(torch MultiheadAttention, timm, Hugging Face GPT-2/BERT/RoBERTa/ViT/LLaMA-style)",
                             "register its layout with verifier.tracking.register_attention(ModuleType, "
                             "AttentionSpec(...)), or pass named products {name: (A_name, B_name[, heads])}")
        weights = [(t, m, p, self._reader.stored(m, p)) for t in tracked for m, p in t.reads]
        meta = next(((t, p) for t, _, p, w in weights if w.is_meta), None)
        if meta is not None:
            raise InputError("module", f"the weights of {meta[0].name} ({meta[1]!r}) are on the meta device: "
                             "there are no values to measure", "a model whose weights hold values (materialise "
                             "it with model.to_empty(device=...) and load its weights first)")
        for t, m, p, _ in weights:  # an adapter the tracker cannot read is refused now, by name
            self._reader.tuner(m, p, f"{t.module}.{p}" if t.module else p)
        self.module, self.every, self._tracked = module, every, tracked
        self.device = _device(device, weights[0][3].device)
        self.records_here = distributed.rank() == 0
        self._started = False  # a record call measured (or, on another rank, took part): later ones follow every
        self._reference: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._groups: dict[tuple[int, int, int], list[int]] = {}  # (d1, d2, k) -> indices into _tracked
        self._bases: dict[tuple[int, int, int], ChangeBasis] = {}  # the reference of each group, factored
        self._last_step: int | None = None
        self._record_steps: list[int] = []  # the run's record steps, on every rank that calls record() alike
        self._steps: list[int] = []  # the records this process measured (rank 0's: the history)
        self._losses: list[torch.Tensor | float] = []
        self._loss_given: list[bool] = []
        self._spectra: list[dict[tuple[int, int, int], torch.Tensor]] = []
        self._initial: dict[tuple[int, int, int], torch.Tensor] = {}
        self._modules = ModuleSpectra(inner, find_modules(inner, tracked), module_every, self.device)

    @property
    def tracked(self) -> tuple[Tracked, ...]:
        return tuple(self._tracked)

    @property
    def last_step(self) -> int | None:
        """The step of the last ``record`` call (None before the first)."""
        return self._last_step

    @property
    def n_records(self) -> int:
        """The records this process measured (0 on a rank that does not record)."""
        return len(self._steps)

    @property
    def record_steps(self) -> tuple[int, ...]:
        """The steps at which the run was recorded, the same on every rank that calls :meth:`record` at the same
        steps and loads the same state (rank 0 measured them; :attr:`n_records` counts only this process's own
        records): what a training-framework callback decides by, so that every rank acts alike."""
        return tuple(self._record_steps)

    def set_loss(self, step: int, loss) -> bool:
        """Attach the training loss to the record at ``step`` when it is the last one (a loss logged after
        the record, as the Hugging Face Trainer logs); returns whether it did."""
        loss = _scalar_loss(loss)
        if not self._steps or self._steps[-1] != step or loss is None:
            return False
        self._losses[-1], self._loss_given[-1] = loss, True
        return True

    def describe(self) -> str:
        """One line per tracked product: name (module path + qk/vo), layout, heads, d1 x d2, head dim, and the
        PEFT adapters it reads (e.g. "; adapters: c_attn: LoRA 'default' r=4 scaling 2")."""
        lines = []
        for t in self._tracked:
            read = {}
            for m, p in t.reads:
                layer = self._reader.tuner(m, p)
                if layer is not None:
                    read.setdefault(p.rsplit(".", 1)[0] if "." in p else p, adapters.describe(layer))
            lines.append(str(t) + ("; adapters: " + "; ".join(f"{w}: {d}" for w, d in read.items()) if read else ""))
        return "\n".join(lines)

    @torch.no_grad()
    def products(self) -> dict[str, torch.Tensor]:
        """The current products {name: [heads, d1, d2]} in the paper's orientation (module docstring). Under
        FSDP2 a collective, like :meth:`record`."""
        with cpu_threads(self.device, self.threads), self._reader.reading():
            out = {}
            for t in self._tracked:
                a, b = t.factors()
                out[t.name] = (a @ b.transpose(1, 2)).detach()
            return out

    def _factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Current factors on the tracker's device, each weight read once; half precision (float16, bfloat16)
        in float32, so that the change A - A0 is not rounded to 8 or 11 bits."""
        def cast(f: torch.Tensor) -> torch.Tensor:
            wide = f.dtype in (torch.float16, torch.bfloat16)
            return f.detach().to(self.device, torch.float32 if wide else f.dtype)

        with self._reader.reading():
            factors = [tuple(cast(f) for f in t.factors()) for t in self._tracked]
        if self._reference is not None:
            for t, now, then in zip(self._tracked, factors, self._reference):
                if now[0].shape != then[0].shape or now[1].shape != then[1].shape:
                    raise InputError("module", f"the weights of {t.name} changed shape since the first record "
                                     f"({tuple(then[0].shape)}, {tuple(then[1].shape)} -> {tuple(now[0].shape)}, "
                                     f"{tuple(now[1].shape)})", "weights that keep their shape during training")
        return factors

    def _sharded(self) -> bool:
        """Whether a tracked weight is an FSDP2 shard now (reading it is then a collective)."""
        return any(distributed.is_sharded(self._reader.stored(m, p)) for t in self._tracked for m, p in t.reads)

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
        to compare runs at matched loss). Only rank 0 measures (:attr:`records_here`); under FSDP2 the
        other ranks take part in gathering the weights and return False."""
        step, loss = self._check_step(step), _scalar_loss(loss)
        self._last_step = step
        if self._started and step % self.every:
            return False
        self._record_steps.append(step)
        if not self.records_here:
            if self._sharded():
                self._factors()  # the gathers are collectives: take part, drop what they gave
        else:
            with cpu_threads(self.device, self.threads):
                self._measure(step, loss, self._factors())
        self._started = True
        return self.records_here

    def _measure(self, step: int, loss, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Everything one record measures, from the factors read once (a new measurement goes here)."""
        if self._reference is None:
            self._set_reference([(a.clone(), b.clone()) for a, b in factors])
            self._initial = {shape: product_svdvals(*self._batch(factors, idx)) for shape, idx in self._groups.items()}
        self._spectra.append({shape: self._bases[shape].svdvals(*self._batch(factors, idx))
                              for shape, idx in self._groups.items()})
        self._steps.append(step)
        self._losses.append(float("nan") if loss is None else loss)
        self._loss_given.append(loss is not None)
        self._modules.record(step, len(self._steps) - 1)

    def _set_reference(self, reference: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Group the products by shape; factor each group's reference once (:class:`~.factors.ChangeBasis`); the
        per-product reference are views into it."""
        self._groups = {}
        for i, (a, b) in enumerate(reference):
            self._groups.setdefault((a.shape[1], b.shape[1], a.shape[2]), []).append(i)
        self._bases = {shape: ChangeBasis(*self._batch(reference, idx)) for shape, idx in self._groups.items()}
        self._reference = [None] * len(reference)
        for shape, idx in self._groups.items():
            heads = [reference[i][0].shape[0] for i in idx]
            basis = self._bases[shape]
            for i, a0, b0 in zip(idx, basis.a0.split(heads), basis.b0.split(heads)):
                self._reference[i] = (a0, b0)

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
        if not self.records_here:
            raise RuntimeError(f"RankTracker.history(): this process (rank {distributed.rank()}) does not record; "
                               "rank 0 does: read the history where tracker.records_here is True")
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
        """Continue from :meth:`state_dict` of a tracker of the same model: every key, length, type and shape is
        checked against this tracker's products first (an InputError naming the key; nothing changes then). On a
        rank that does not record only the steps are kept (:attr:`record_steps`, :attr:`last_step`): it measures
        nothing, so it holds no reference weights."""
        state = self._validated(state)
        self._modules.check_state(state.get("modules"))
        self._last_step = None if state["last_step"] is None else int(state["last_step"])
        self._started = state["reference"] is not None
        self._record_steps = [int(s) for s in state["steps"]]
        if not self.records_here:
            return
        self._steps = list(self._record_steps)
        self._losses = [float(v) for v in state["losses"]]
        self._loss_given = [bool(g) for g in state["loss_given"]]
        self._modules.load_state_dict(state.get("modules"))
        if state["reference"] is None:
            self._reference, self._groups, self._bases, self._initial, self._spectra = None, {}, {}, {}, []
            return
        self._set_reference([(a.to(self.device), b.to(self.device)) for a, b in state["reference"]])
        keys = list(self._groups)
        self._initial = {k: v.to(self.device) for k, v in zip(keys, state["initial"])}
        per_key = [v.to(self.device) for v in state["spectra"]]
        self._spectra = [{k: v[t] for k, v in zip(keys, per_key)} for t in range(len(self._steps))]

    def _validated(self, state) -> Mapping:
        """``state`` checked against this tracker (the layout :meth:`state_dict` writes)."""
        allowed = f"the dict RankTracker.state_dict() returns (format {STATE_FORMAT}) for this model"
        if not isinstance(state, Mapping):
            raise InputError("RankTracker.load_state_dict: state", f"a {type(state).__name__}, not a dict", allowed)
        for key in STATE_KEYS:
            if key not in state:
                raise _state_error(key, "missing", allowed)
        if state["format"] != STATE_FORMAT:
            raise _state_error("format", repr(state["format"]), str(STATE_FORMAT))
        names, heads = [t.name for t in self._tracked], [t.heads for t in self._tracked]
        for key, want in (("names", names), ("heads", heads)):
            got = state[key]
            if not isinstance(got, (list, tuple)) or list(got) != want:
                shown = f"{len(got)} entries: {', '.join(map(str, list(got)[:3]))}, ..." if isinstance(
                    got, (list, tuple)) else repr(got)
                raise _state_error(key, f"{shown} (another model's tracker?)",
                                   f"this tracker's {len(want)} products: {', '.join(map(str, want[:3]))}, ...")
        steps = _state_list(state, "steps", _is_index, "integers")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise _state_error("steps", "steps that do not increase", "increasing optimizer steps")
        last = state["last_step"]
        if (last is None) != (not steps) or (last is not None and not (_is_index(last) and last >= steps[-1])):
            raise _state_error("last_step", repr(last), "None with no steps, else an integer >= the last step")
        _state_list(state, "losses", _is_number, "numbers", len(steps))
        _state_list(state, "loss_given", lambda v: isinstance(v, bool), "booleans", len(steps))
        if state["reference"] is None:
            if steps:
                raise _state_error("reference", f"None with {len(steps)} steps", "the weights of the first record")
            for key in ("shapes", "initial", "spectra"):
                if state[key] not in ([], ()):
                    raise _state_error(key, f"{len(state[key])} entries without a reference", "[]")
            return state
        if not steps:
            raise _state_error("reference", "weights with no steps", "None before the first record")
        reference = _state_list(state, "reference", lambda v: isinstance(v, (list, tuple)) and len(v) == 2,
                                "(A, B) pairs", len(self._tracked))
        groups: dict[tuple[int, int, int], int] = {}
        for i, (t, pair) in enumerate(zip(self._tracked, reference)):
            for j, d in ((0, t.d1), (1, t.d2)):
                _state_tensor(f"['reference'][{i}][{j}]", pair[j], (t.heads, d, t.k), f" of {t.name}")
            groups[(t.d1, t.d2, t.k)] = groups.get((t.d1, t.d2, t.k), 0) + t.heads
        shapes = state["shapes"]
        if not isinstance(shapes, (list, tuple)) or [tuple(k) if isinstance(k, (list, tuple)) else k
                                                       for k in shapes] != list(groups):
            raise _state_error("shapes", repr(shapes), f"{list(groups)} (d1, d2, k of each group of products)")
        for key, rank, leading in (("initial", 1, ()), ("spectra", 2, (len(steps),))):
            tensors = _state_list(state, key, torch.is_tensor, "tensors", len(groups))
            for j, ((d1, d2, k), n) in enumerate(groups.items()):
                _state_tensor(f"[{key!r}][{j}]", tensors[j], (*leading, n, min(d1, d2, rank * k)))
        return state


STATE_KEYS = ("format", "names", "heads", "last_step", "steps", "losses", "loss_given", "reference", "shapes",
              "initial", "spectra")


def _state_error(key: str, problem: str, allowed: str) -> InputError:
    """An InputError naming the entry: ``key`` is a top-level key or a path such as "['reference'][3][0]"."""
    return InputError(f"RankTracker.load_state_dict: state{key if key.startswith('[') else f'[{key!r}]'}",
                      problem, allowed)


def _is_index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _state_list(state: Mapping, key: str, valid: Callable, what: str, length: int | None = None) -> list:
    value = state[key]
    if not isinstance(value, (list, tuple)):
        raise _state_error(key, f"a {type(value).__name__}", f"a list of {what}")
    if length is not None and len(value) != length:
        raise _state_error(key, f"{len(value)} entries", f"{length} {what}")
    bad = next((i for i, v in enumerate(value) if not valid(v)), None)
    if bad is not None:
        raise _state_error(key, f"entry {bad} is {type(value[bad]).__name__} {value[bad]!r:.40}", f"{what}")
    return list(value)


def _state_tensor(key: str, tensor, shape: tuple[int, ...], of: str = "") -> None:
    if not (torch.is_tensor(tensor) and tensor.is_floating_point()):
        raise _state_error(key, f"a {type(tensor).__name__}" + (f" of {tensor.dtype}" if torch.is_tensor(tensor) else ""),
                           "a floating-point tensor")
    if tuple(tensor.shape) != shape:
        raise _state_error(key, f"shape {tuple(tensor.shape)}", f"shape {shape}{of} for this model")
