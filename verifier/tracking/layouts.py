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
        if not (isinstance(self.path, str) and self.path and all(self.path.split("."))):
            raise InputError("Weight.path", f"{self.path!r} is not an attribute path",
                             "a dotted attribute path from the attention module, e.g. 'c_attn.weight'")
        if self.stored not in STORAGE:
            raise InputError("Weight.stored", repr(self.stored), ", ".join(STORAGE))
        for field in ("part", "parts"):
            if not _is_int(getattr(self, field)):
                raise InputError(f"Weight.{field}", f"{getattr(self, field)!r} is not an integer", "an integer")
        if not (0 <= self.part < self.parts):
            raise InputError("Weight.part", f"{self.part} of {self.parts} parts", "0 <= part < parts")

    def shape(self, module: torch.nn.Module) -> tuple[int, int] | None:
        """The [out, in] shape of this weight in ``module`` (read from the stored tensor, never gathered), or None
        when the module does not have it."""
        w = _attribute(module, self.path)
        if not (torch.is_tensor(w) and w.ndim == 2):
            return None
        out, inner = w.shape if self.stored == "out_in" else reversed(w.shape)
        return None if out % self.parts else (out // self.parts, inner)

    def resolve(self, module: torch.nn.Module, read: Callable[[torch.nn.Module, str], torch.Tensor]) -> torch.Tensor:
        """The weight as an [out, in] tensor, read with ``read(module, path)`` (adapters added, shards gathered)."""
        w = read(module, self.path)
        w = w if self.stored == "out_in" else w.T
        n = w.shape[0] // self.parts
        return w[self.part * n : (self.part + 1) * n]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _candidates(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class AttentionSpec:
    """One attention layout: candidates (tried in order) for the q, k, v and o weights (a :class:`Weight`
    or a path of an ``nn.Linear`` weight), and attribute paths for the number of query heads (``heads``) or
    the head dimension (``head_dim``); at least one of the two must resolve to a positive integer."""

    name: str = None  # every field is checked in __post_init__: a missing one is an InputError naming it
    q: Weight | str | tuple = None
    k: Weight | str | tuple = None
    v: Weight | str | tuple = None
    o: Weight | str | tuple = None
    heads: str | tuple[str, ...] = ()
    head_dim: str | tuple[str, ...] = ()

    def __post_init__(self):
        where = f"AttentionSpec({self.name!r})"
        for role in "qkvo":
            given = _candidates(getattr(self, role))
            if not given or not all(isinstance(w, (Weight, str)) for w in given):
                raise InputError(f"{where}.{role}", f"{getattr(self, role)!r} is not a weight",
                                 "a Weight, an attribute path such as 'wq.weight', or a tuple of them (candidates)")
            object.__setattr__(self, role, tuple(w if isinstance(w, Weight) else Weight(w) for w in given))
        if not (isinstance(self.name, str) and self.name):
            raise InputError("AttentionSpec.name", f"{self.name!r}", "a non-empty name for the layout")
        for field in ("heads", "head_dim"):
            paths = _candidates(getattr(self, field))
            if not all(isinstance(p, str) and p and all(p.split(".")) for p in paths):
                raise InputError(f"{where}.{field}", f"{getattr(self, field)!r} is not an attribute path",
                                 "an attribute path such as 'num_heads' or 'config.head_dim', or a tuple of them")
            object.__setattr__(self, field, paths)
        if not (self.heads or self.head_dim):
            raise InputError(where, "neither heads nor head_dim is given",
                             "attribute paths such as heads='num_heads' or head_dim='config.head_dim'")

    def match(self, module: torch.nn.Module) -> "Layout | None":
        """The layout of ``module`` under this spec, or None when it does not fit (shapes only: nothing is
        read or gathered)."""
        chosen = [next(((w, s) for w in getattr(self, r) if (s := w.shape(module)) is not None), None) for r in "qkvo"]
        if any(c is None for c in chosen):
            return None
        (q, k, v, o) = (s for _, s in chosen)
        heads, head_dim = _count(module, self.heads), _count(module, self.head_dim)
        if head_dim is None and heads is not None and q[0] % heads == 0:
            head_dim = q[0] // heads
        if head_dim is None or q[0] % head_dim or k[0] % head_dim:
            return None
        h, kv = q[0] // head_dim, k[0] // head_dim
        if (heads is not None and heads != h) or kv == 0 or h % kv or v[0] != k[0]:
            return None
        if o[1] != q[0]:
            return None
        return Layout(self.name, h, kv, head_dim, q[1], k[1], v[1], o[0], tuple(w for w, _ in chosen))


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
    dimension ``head_dim``; d_q, d_k, d_v = widths read by q, k, v; d_out = width written by o; ``weights``: the
    q, k, v, o weights it reads."""

    spec: str
    heads: int
    kv_heads: int
    head_dim: int
    d_q: int
    d_k: int
    d_v: int
    d_out: int
    weights: tuple[Weight, Weight, Weight, Weight]  # the q, k, v, o candidates that fit


def per_head(w: torch.Tensor, heads: int, rows: bool) -> torch.Tensor:
    """An [out, in] weight as per-head factors [heads, d, k]: head h's rows h*k:(h+1)*k transposed
    (``rows``: q, k, v) or its columns h*k:(h+1)*k (o)."""
    if rows:
        out, d = w.shape
        return w.reshape(heads, out // heads, d).transpose(1, 2)
    d, inner = w.shape
    return w.reshape(d, heads, inner // heads).permute(1, 0, 2)


def spec_factors(module: torch.nn.Module, layout: Layout, read: Callable[[torch.nn.Module, str], torch.Tensor]
                 ) -> tuple[Callable[[], tuple[torch.Tensor, torch.Tensor]], Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """Functions giving the current (A, B) of qk and of vo, each [heads, d, k], key/value heads paired
    with their query heads (h -> h // (heads / kv_heads)); each weight read by name at every call."""
    group = layout.heads // layout.kv_heads
    q, k, v, o = layout.weights

    def shared(factors: torch.Tensor) -> torch.Tensor:
        return factors if group == 1 else factors.repeat_interleave(group, dim=0)

    def qk():
        return (per_head(q.resolve(module, read), layout.heads, True),
                shared(per_head(k.resolve(module, read), layout.kv_heads, True)))

    def vo():
        return (shared(per_head(v.resolve(module, read), layout.kv_heads, True)),
                per_head(o.resolve(module, read), layout.heads, False))

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
