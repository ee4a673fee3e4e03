"""LoRA ranks from two checkpoints of a fine-tune (no history, no model): docs/LORA.md.

Every 2-d floating-point weight present in both with the same shape (``targets``: a regular expression the
module name must contain a match of) gets ||dW||_F and the spectrum of dW = after - before
(:func:`~verifier.tracking.modules.change_spectra`); a module is named as in the checkpoint, its leading
components shared by every key removed (a Lightning ``.ckpt``'s ``model.``). Two points carry no trend, so the
recommendation is inconclusive (``no-trend``); it has no per-head evidence (that needs the model's layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..results import Judgement
from .lora import (DEFAULT_ENERGY, DEFAULT_ALPHA, LoraRecommendation, Reason, Saturation, _check_energy,
                   _check_options, _module_ranks, target_pattern)
from .modules import change_spectra, module_name, shared_prefix

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors")


def load_state(source, field: str) -> dict[str, torch.Tensor]:
    """A state dict from a mapping, a ``.safetensors`` file, a torch file (``.pt``, ``.bin``, a Lightning
    ``.ckpt`` with its ``state_dict``) or a Hugging Face model folder; tensors only, loaded without pickle."""
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if path.is_dir():
            path = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
            if path is None:
                raise InputError(field, f"{source} holds none of {', '.join(WEIGHT_FILES)}",
                                 "a checkpoint file or a Hugging Face model folder")
        if not path.is_file():
            raise InputError(field, f"{source} does not exist", "a checkpoint file or folder")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file that is not a checkpoint: one line naming it
            raise InputError(field, f"cannot read {path} as a checkpoint ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})",
                             ".safetensors, or a torch file of tensors (weights_only)") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        raise InputError(field, f"{source} holds no tensors", "a state dict of the model's weights")
    return tensors


def recommend_from_checkpoints(before, after, energy: float = DEFAULT_ENERGY, *, lora_alpha: float = DEFAULT_ALPHA,
                               max_rank: int | None = None, targets: str | None = None) -> LoraRecommendation:
    energy = _check_energy(energy)
    _check_options(lora_alpha, max_rank, 0.5)
    if before is None or after is None:
        raise InputError("before/after", "one checkpoint given", "two checkpoints: before and after the fine-tune")
    pattern = target_pattern(targets)
    a, b = load_state(before, "before"), load_state(after, "after")
    keys = [k for k in a if k in b and a[k].ndim == 2 and a[k].shape == b[k].shape and a[k].is_floating_point()]
    strip = shared_prefix(list(a), [module_name(k, "") for k in keys]) if keys else ""
    chosen = [(k, module_name(k, strip)) for k in keys]
    chosen = [(k, n) for k, n in chosen if pattern is None or pattern.search(n)]
    if not chosen:
        raise InputError("targets" if pattern is not None else "after",
                         "no 2-d weight of the same shape in both checkpoints" + (f" matches {targets!r}" if pattern else ""),
                         "checkpoints of the same model" + (", and a pattern that matches module names" if pattern else ""))
    norms, spectra = [], []
    width = max(min(a[k].shape) for k, _ in chosen)
    for k, _ in chosen:
        dtype = torch.float64 if a[k].dtype == torch.float64 else torch.float32
        n, s = change_spectra((b[k].to(dtype) - a[k].to(dtype))[None])
        norms.append(float(n[0]))
        spectra.append(np.pad(s[0].numpy(), (0, width - s.shape[1])))
    norms_arr, spectra_arr = np.array([norms]), np.array([spectra])
    if not np.all(np.isfinite(norms_arr)):
        raise InputError("after", "non-finite weights", "checkpoints of a run that stayed finite")
    if not np.any(norms_arr > 0):
        raise InputError("after", "no weight changed between the two checkpoints", "checkpoints before and after training")
    names = [n for _, n in chosen]
    modules = _module_ranks(names, [tuple(a[k].shape) for k, _ in chosen], [()] * len(chosen), spectra_arr,
                            norms_arr, energy, max_rank)
    judgement = Judgement.inconclusive(Reason.NO_TREND, "two checkpoints carry no trend: whether the rank has "
                                       "saturated is not judged (track the run with RankTracker for that)")
    source = {"kind": "checkpoints", "before": str(before) if not isinstance(before, dict) else "state dict",
              "after": str(after) if not isinstance(after, dict) else "state dict", "targets": targets}
    return LoraRecommendation(energy, float(lora_alpha), modules, Saturation.UNKNOWN, judgement, source)
