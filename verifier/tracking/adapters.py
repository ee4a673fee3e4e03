"""PEFT adapters read as the weight the forward pass computes with (docs/TRACKING.md, "Adapters").

A fine-tune with PEFT (LoRA and its relatives) freezes the base weight W0 and trains an adapter; the layer's
forward computes with an effective weight, and that is what the tracker reads, so that the tracked change is
the adapter's. For a tuner layer over a base weight W0 (in the base layer's storage, e.g. [in, out] for GPT-2's
``Conv1D``, where PEFT sets ``fan_in_fan_out``), following PEFT's own forward:

- adapters disabled (``with model.disable_adapter()``): W0 without the merged adapters (PEFT's next forward
  unmerges them);
- some adapter merged (``merge_adapter()``): W0 as stored; it holds the merged adapters, and PEFT's forward uses
  the base layer alone;
- otherwise W0 + sum over the active adapters a of D_a, with
  - LoRA: D_a = s_a B_a A_a ([out, r] x [r, in], transposed to the storage when ``fan_in_fan_out``), s_a the
    layer's ``scaling[a]`` (lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora``; ``rank_pattern`` and
    ``alpha_pattern`` give each layer its own r and alpha, which PEFT has already folded into ``scaling``);
  - DoRA (``use_dora``): D_a = m_a / ||W0 + s_a B_a A_a|| (W0 + s_a B_a A_a) - W0, the norm taken per output
    row of the [out, in] weight, as PEFT's DoRA forward;
  - AdaLoRA, LoHa, LoKr, VeRA: D_a = the layer's ``get_delta_weight(a)`` (what PEFT adds to W0 when it merges;
    without rank dropout), on unsharded parameters.

Anything else on a tracked weight (OFT and BOFT rotate the weight, IA3 scales it, aLoRA depends on the token
position, other LoRA variants, a quantized base weight, an adapter wrapping a whole ``nn.MultiheadAttention``) is
refused by name: its change is not a weight delta the tracker can read. Nothing here imports peft: a model can
only hold PEFT layers once peft has been imported.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from ..errors import InputError
from .distributed import is_sharded

# PEFT tuner packages whose layers merge by adding get_delta_weight(adapter) to the base weight
ADDITIVE = {"adalora": "AdaLoRA", "loha": "LoHa", "lokr": "LoKr", "vera": "VeRA"}
SUPPORTED = "LoRA, DoRA, " + ", ".join(ADDITIVE.values())


def _peft_layer_type() -> type | None:
    if "peft" not in sys.modules:
        return None
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def is_tuner(module) -> bool:
    """Whether ``module`` is a PEFT tuner layer (an adapter around a base layer)."""
    base = _peft_layer_type()
    return base is not None and isinstance(module, base)


def tuner_layers(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """{id(base layer): tuner layer} for every PEFT tuner layer in ``model``."""
    if _peft_layer_type() is None:
        return {}
    return {id(m.get_base_layer()): m for m in model.modules() if is_tuner(m)}


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model a ``PeftModel`` wraps (its tuner layers in place), or None when ``model`` is not one."""
    if _peft_layer_type() is None:
        return None
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else None


def _kind(layer, where: str = "") -> str:
    """The adapter family of a tuner layer: "LoRA" or a name in ADDITIVE; an InputError for anything else."""
    package = type(layer).__module__.split(".")
    family = package[2] if len(package) > 2 and package[:2] == ["peft", "tuners"] else ""
    if family in ADDITIVE:
        return ADDITIVE[family]
    if family == "lora" and all(isinstance(getattr(layer, n, None), torch.nn.ModuleDict) for n in ("lora_A", "lora_B")):
        return "LoRA"
    raise InputError("module", f"{where}a PEFT {type(layer).__module__}.{type(layer).__qualname__} adapter is not a "
                     "weight delta the tracker can read", SUPPORTED)


def _adapters(layer) -> list[str]:
    """The active adapters this layer holds."""
    held = set(getattr(layer, layer.adapter_layer_names[0]).keys())
    return [a for a in layer.active_adapters if a in held]


def _variant(layer, adapter: str, where: str = "") -> str:
    """"LoRA" or "DoRA" for an adapter of a LoRA layer; other LoRA variants are refused by name."""
    variant = getattr(layer, "lora_variant", {}).get(adapter)  # PEFT >= 0.16; before, DoRA was use_dora alone
    if variant is None:
        return "DoRA" if getattr(layer, "use_dora", {}).get(adapter) else "LoRA"
    if type(variant).__name__ == "DoraLinearVariant":
        return "DoRA"
    raise InputError("module", f"{where}PEFT LoRA adapter {adapter!r} uses the {type(variant).__name__}: not a weight "
                     "delta the tracker can read", SUPPORTED)


def check(layer, where: str = "") -> None:
    """Refuse, by name, a tuner layer or adapter the tracker cannot read (at construction and at each read);
    ``where``: the weight's path, for the message."""
    where = f"{where}: " if where else ""
    kind = _kind(layer, where)
    for adapter in _adapters(layer) + list(layer.merged_adapters):
        if kind == "LoRA":
            _variant(layer, adapter, where)
            if not isinstance(layer.lora_A[adapter], torch.nn.Linear):
                raise InputError("module", f"{where}PEFT LoRA adapter {adapter!r} of a "
                                 f"{type(layer.lora_A[adapter]).__name__}", "LoRA on a linear (or GPT-2 Conv1D) projection")


def describe(layer) -> str:
    """E.g. "LoRA 'default' r=4 scaling 2" for each adapter the layer's forward uses now."""
    kind = _kind(layer)
    if layer.disable_adapters:
        return "adapters disabled"
    parts = []
    for adapter in (layer.merged_adapters or _adapters(layer)):
        name = _variant(layer, adapter) if kind == "LoRA" else kind
        rank = getattr(layer, "r", {}).get(adapter)
        scaling = getattr(layer, "scaling", {}).get(adapter)
        parts.append(f"{name} {adapter!r}" + (f" r={rank}" if rank is not None else "")
                     + (f" scaling {scaling:g}" if isinstance(scaling, (int, float)) else "")
                     + (" (merged)" if adapter in layer.merged_adapters else ""))
    return ", ".join(parts) or "no active adapter"


def effective_weight(layer, read: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The weight ``layer``'s forward computes with, in its base layer's storage (module docstring). ``read``
    materialises a parameter (gathers a sharded one)."""
    check(layer)
    kind = _kind(layer)
    w0 = read(layer.get_base_layer().weight)
    if not w0.is_floating_point():
        raise InputError("module", f"the base weight under a PEFT adapter is quantized ({w0.dtype})",
                         "a floating-point base weight")
    if w0.dtype in (torch.float16, torch.bfloat16):  # the adapter's delta is not rounded to the base's 8 or 11 bits
        w0 = w0.float()
    if layer.disable_adapters:
        if not layer.merged_adapters:
            return w0
        return w0 - sum(_delta(layer, kind, a, w0, read, merged=True) for a in layer.merged_adapters)
    if layer.merged_adapters:
        return w0
    adapters = _adapters(layer)
    return w0 + sum(_delta(layer, kind, a, w0, read) for a in adapters) if adapters else w0


def _delta(layer, kind: str, adapter: str, w0: torch.Tensor, read, merged: bool = False) -> torch.Tensor:
    """What adapter ``adapter`` adds to the base weight ``w0`` (storage orientation)."""
    if kind != "LoRA":
        if any(is_sharded(p) for p in layer.parameters()):
            raise InputError("module", f"a PEFT {kind} adapter on sharded (FSDP) parameters", "LoRA or DoRA under FSDP")
        delta = layer.get_delta_weight(adapter).to(w0.dtype)
        if delta.shape != w0.shape:
            raise InputError("module", f"PEFT {kind} adapter {adapter!r}: a delta of shape {tuple(delta.shape)} for a "
                             f"weight of shape {tuple(w0.shape)}", "an adapter of the weight's own shape")
        return delta
    fan_in_fan_out = bool(getattr(layer, "fan_in_fan_out", False))
    a, b = read(layer.lora_A[adapter].weight), read(layer.lora_B[adapter].weight)
    delta = layer.scaling[adapter] * (b.to(w0.dtype) @ a.to(w0.dtype))  # [out, in]
    if _variant(layer, adapter) == "DoRA":
        if merged:
            raise InputError("module", f"PEFT DoRA adapter {adapter!r} merged while adapters are disabled",
                             "enabled adapters, or unmerged ones")
        w = w0.T if fan_in_fan_out else w0
        magnitude = layer.lora_magnitude_vector[adapter]
        magnitude = read(magnitude.weight if isinstance(magnitude, torch.nn.Module) else magnitude).to(w0.dtype)
        merged_w = (magnitude / torch.linalg.vector_norm(w + delta, dim=1))[:, None] * (w + delta)
        delta = merged_w - w
    return delta.T if fan_in_fan_out else delta
