"""Where the attention weights of the common model zoos are: one declarative spec per layout (THEORY.md §6).

An attention module holds four projections. With torch's storage convention ([out, in], ``nn.Linear``), query
head h owns rows h*k:(h+1)*k of Wq, Wk, Wv and columns h*k:(h+1)*k of Wo, and the tracked per-head products
are the d x d matrices (the paper's orientation, README "Track your own training run")

    qk[h] = Wq_h^T Wk_g        vo[h] = Wv_g^T Wo[:, h]^T        g = h // (heads / kv_heads)

without the 1/sqrt(k) temperature and without biases. ``g`` pairs a query head with its key/value head under
grouped-query attention (LLaMA, Mistral, Qwen: fewer key/value heads than query heads); g = h otherwise.
Each product is A B^T of thin per-head factors A, B [heads, d, k], which is all :mod:`.factors` needs.

A :class:`AttentionSpec` says, for one layout, where each weight is (an attribute path from the attention
module, candidates tried in order), how it is stored (``"out_in"``: ``nn.Linear``; ``"in_out"``: Hugging Face's
``Conv1D``), which equal part of a fused projection it is (q, k, v = parts 0, 1, 2 of 3 of GPT-2's ``c_attn``
or timm's ``qkv``), and where the head count or head dimension is read (the module or its ``config``). The key/
value head count follows from the shapes: kv_heads = (rows of Wk) / k.

Built-in layouts, matched by structure (nothing imports transformers or timm): torch
``nn.MultiheadAttention`` (by type), timm's fused ``qkv``/``proj``, Hugging Face GPT-2 (``c_attn``/``c_proj``),
BERT/RoBERTa (``self.query``/... and the sibling ``output.dense``), the pre-5 Hugging Face ViT
(``attention.query``/... and ``output.dense``), and ``q_proj``/``k_proj``/``v_proj`` with ``o_proj`` or
``out_proj`` (LLaMA, Mistral, Qwen, ViT in transformers 5, BART, OPT, Whisper), and T5's ``q``/``k``/``v``/``o``
(self- and cross-attention). Cross-attention whose shapes do
not fit a layout is skipped. :func:`register_attention` adds a layout for a module type, tried before these.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError

STORAGE = ("out_in", "in_out")


@dataclass(frozen=True)
class Weight:
    """One projection's weight: the 2-d parameter at ``path`` (dots descend into submodules), stored
    [out, in] (``"out_in"``) or [in, out] (``"in_out"``); of a fused projection, equal part ``part`` of
    ``parts`` along the out dimension."""

    path: str
    stored: str = "out_in"
    part: int = 0
    parts: int = 1

    def __post_init__(self):
        if self.stored not in STORAGE:
            raise InputError("Weight.stored", repr(self.stored), ", ".join(STORAGE))
        if not (0 <= self.part < self.parts):
            raise InputError("Weight.part", f"{self.part} of {self.parts} parts", "0 <= part < parts")

    def resolve(self, module: torch.nn.Module) -> torch.Tensor | None:
        """The weight as an [out, in] view, or None when the module does not have it."""
        w = _attribute(module, self.path)
        if not (torch.is_tensor(w) and w.ndim == 2):
            return None
        w = w if self.stored == "out_in" else w.T
        if w.shape[0] % self.parts:
            return None
        n = w.shape[0] // self.parts
        return w[self.part * n : (self.part + 1) * n]


def _candidates(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class AttentionSpec:
    """One attention layout: candidates (tried in order) for the q, k, v and o weights (a :class:`Weight`
    or a path of an ``nn.Linear`` weight), and attribute paths for the number of query heads (``heads``) or
    the head dimension (``head_dim``); at least one of the two must resolve to a positive integer."""

    name: str
    q: Weight | str | tuple
    k: Weight | str | tuple
    v: Weight | str | tuple
    o: Weight | str | tuple
    heads: str | tuple[str, ...] = ()
    head_dim: str | tuple[str, ...] = ()

    def __post_init__(self):
        for role in "qkvo":
            weights = tuple(w if isinstance(w, Weight) else Weight(w) for w in _candidates(getattr(self, role)))
            object.__setattr__(self, role, weights)
        object.__setattr__(self, "heads", _candidates(self.heads))
        object.__setattr__(self, "head_dim", _candidates(self.head_dim))
        if not (self.heads or self.head_dim):
            raise InputError(f"AttentionSpec({self.name!r})", "neither heads nor head_dim is given",
                             "attribute paths such as heads='num_heads' or head_dim='config.head_dim'")

    def match(self, module: torch.nn.Module) -> "Layout | None":
        """The layout of ``module`` under this spec, or None when it does not fit."""
        q, k, v, o = (next((w for w in (c.resolve(module) for c in getattr(self, r)) if w is not None), None)
                      for r in "qkvo")
        if any(w is None for w in (q, k, v, o)):
            return None
        heads, head_dim = _count(module, self.heads), _count(module, self.head_dim)
        if head_dim is None and heads is not None and q.shape[0] % heads == 0:
            head_dim = q.shape[0] // heads
        if head_dim is None or q.shape[0] % head_dim or k.shape[0] % head_dim:
            return None
        h, kv = q.shape[0] // head_dim, k.shape[0] // head_dim
        if (heads is not None and heads != h) or kv == 0 or h % kv or v.shape[0] != k.shape[0]:
            return None
        if o.shape[1] != q.shape[0]:
            return None
        return Layout(self.name, h, kv, head_dim, q.shape[1], k.shape[1], v.shape[1], o.shape[0])


def _attribute(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _count(module: torch.nn.Module, paths: tuple[str, ...]) -> int | None:
    for path in paths:
        value = _attribute(module, path)
        try:
            value = operator.index(value)
        except TypeError:
            continue
        if value > 0:
            return value
    return None


@dataclass(frozen=True)
class Layout:
    """What a spec found in one module: ``heads`` query heads sharing ``kv_heads`` key/value heads of
    dimension ``head_dim``; d_q, d_k, d_v = widths read by q, k, v; d_out = width written by o."""

    spec: str
    heads: int
    kv_heads: int
    head_dim: int
    d_q: int
    d_k: int
    d_v: int
    d_out: int


def per_head(w: torch.Tensor, heads: int, rows: bool) -> torch.Tensor:
    """An [out, in] weight as per-head factors [heads, d, k]: head h's rows h*k:(h+1)*k transposed
    (``rows``: q, k, v) or its columns h*k:(h+1)*k (o)."""
    if rows:
        out, d = w.shape
        return w.reshape(heads, out // heads, d).transpose(1, 2)
    d, inner = w.shape
    return w.reshape(d, heads, inner // heads).permute(1, 0, 2)


def spec_factors(spec: AttentionSpec, module: torch.nn.Module, layout: Layout
                 ) -> tuple[Callable[[], tuple[torch.Tensor, torch.Tensor]], Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """Functions giving the current (A, B) of qk and of vo, each [heads, d, k], key/value heads paired
    with their query heads (h -> h // (heads / kv_heads))."""
    group = layout.heads // layout.kv_heads

    def weight(role: str) -> torch.Tensor:
        return next(w for w in (c.resolve(module) for c in getattr(spec, role)) if w is not None)

    def shared(factors: torch.Tensor) -> torch.Tensor:
        return factors if group == 1 else factors.repeat_interleave(group, dim=0)

    def qk():
        return per_head(weight("q"), layout.heads, True), shared(per_head(weight("k"), layout.kv_heads, True))

    def vo():
        return shared(per_head(weight("v"), layout.kv_heads, True)), per_head(weight("o"), layout.heads, False)

    return qk, vo


MHA = AttentionSpec(
    "torch-mha",
    q=(Weight("in_proj_weight", part=0, parts=3), Weight("q_proj_weight")),
    k=(Weight("in_proj_weight", part=1, parts=3), Weight("k_proj_weight")),
    v=(Weight("in_proj_weight", part=2, parts=3), Weight("v_proj_weight")),
    o="out_proj.weight", heads="num_heads")
TIMM = AttentionSpec("timm-fused-qkv", q=Weight("qkv.weight", part=0, parts=3),
                     k=Weight("qkv.weight", part=1, parts=3), v=Weight("qkv.weight", part=2, parts=3),
                     o="proj.weight", heads="num_heads", head_dim="head_dim")
GPT2 = AttentionSpec("hf-gpt2", q=Weight("c_attn.weight", "in_out", 0, 3), k=Weight("c_attn.weight", "in_out", 1, 3),
                     v=Weight("c_attn.weight", "in_out", 2, 3), o=Weight("c_proj.weight", "in_out"),
                     heads=("num_heads", "config.n_head"), head_dim="head_dim")
BERT = AttentionSpec("hf-bert", q="self.query.weight", k="self.key.weight", v="self.value.weight",
                     o="output.dense.weight", heads=("self.num_attention_heads", "self.config.num_attention_heads"),
                     head_dim="self.attention_head_size")
VIT_LEGACY = AttentionSpec("hf-vit", q="attention.query.weight", k="attention.key.weight",
                           v="attention.value.weight", o="output.dense.weight",
                           heads="attention.num_attention_heads", head_dim="attention.attention_head_size")
QKV_PROJ = AttentionSpec("q_proj/k_proj/v_proj/o_proj", q="q_proj.weight", k="k_proj.weight", v="v_proj.weight",
                         o=("o_proj.weight", "out_proj.weight"), head_dim=("head_dim", "config.head_dim"),
                         heads=("num_heads", "num_attention_heads", "config.num_attention_heads"))
T5 = AttentionSpec("hf-t5", q="q.weight", k="k.weight", v="v.weight", o="o.weight", heads="n_heads",
                   head_dim="key_value_proj_dim")

_REGISTERED: dict[type, AttentionSpec] = {torch.nn.MultiheadAttention: MHA}
STRUCTURAL = (TIMM, GPT2, BERT, VIT_LEGACY, QKV_PROJ, T5)


def register_attention(module_type: type, spec: AttentionSpec) -> None:
    """Track every instance of ``module_type`` (and its subclasses) with ``spec``, before the built-in
    layouts. E.g. ``register_attention(MyAttention, AttentionSpec("mine", q="wq.weight", k="wk.weight",
    v="wv.weight", o="wo.weight", heads="n_heads"))``."""
    if not isinstance(module_type, type):
        raise InputError("register_attention(module_type)", f"{module_type!r} is not a class", "a module class")
    if not isinstance(spec, AttentionSpec):
        raise InputError("register_attention(spec)", f"{spec!r} is not an AttentionSpec", "an AttentionSpec")
    _REGISTERED[module_type] = spec


def find_attention(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, AttentionSpec, Layout]]:
    """(path, module, spec, layout) of every attention module, outermost first; a matched module's
    submodules are not searched (BERT's ``attention.self`` is part of ``attention``). A registered type
    that does not fit its spec is an error; a structural layout that does not fit is skipped."""
    found: list = []
    inside: tuple[str, ...] = ()
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") for p in inside):
            continue
        registered = next((s for t, s in reversed(_REGISTERED.items()) if isinstance(module, t)), None)
        if registered is not None:
            layout = registered.match(module)
            if layout is None:
                raise InputError(f"attention {path or type(module).__name__}",
                                 f"does not fit its registered layout {registered.name!r}",
                                 "a spec whose q, k, v, o and heads resolve on the module")
            candidates = [(registered, layout)]
        else:
            candidates = [(s, l) for s in STRUCTURAL if (l := s.match(module)) is not None][:1]
        if candidates:
            found.append((path, module, *candidates[0]))
            if not path:  # the model is itself one attention module
                break
            inside = (*inside, path)
    return found
