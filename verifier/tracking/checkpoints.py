"""The weight changes between two checkpoints of a fine-tune (no history, no model), for LoRA ranks: docs/LORA.md.

Every 2-d floating-point weight present in both with the same shape (``targets``: a regular expression the
module name must contain a match of) gets ||dW||_F and the spectrum of dW = after - before
(:func:`~verifier.tracking.modules.change_spectra`); a module is named as in the checkpoint, its leading
components shared by every key removed (a Lightning ``.ckpt``'s ``model.``). :mod:`.lora` turns them into a
recommendation (inconclusive ``no-trend``: two points carry no trend; no per-head evidence, which needs the
model's layout).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..paths import absent
from .modules import change_spectra, module_name, shared_prefix

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors")


def read_torch_file(path: Path, field: str, what: str, allowed: str):
    """``torch.load`` of ``path`` without unpickling objects (``weights_only=True``) and without torch's warnings
    about the file's pickle protocol; a file torch cannot read that way (UnpicklingError, RuntimeError, EOFError,
    ...) is an InputError naming ``field`` (the path itself, or the option that gave it): "[PATH] is not WHAT
    (the error's first 120 characters)"."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unreadable(field, path, what, exc, allowed) from None


def _unreadable(field: str, path: Path, what: str, exc: Exception, allowed: str) -> InputError:
    named = "" if field == str(path) else f"{path} "
    return InputError(field, f"{named}is not {what} ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})",
                      allowed)


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
            raise InputError(field, f"{source} {absent(source)}", "a checkpoint file or folder")
        allowed = ".safetensors, or a torch file of tensors (weights_only)"
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                state = load_file(str(path))
            except Exception as exc:  # a file that is not a checkpoint: one line naming it
                raise _unreadable(field, path, "a checkpoint", exc, allowed) from None
        else:
            state = read_torch_file(path, field, "a checkpoint", allowed)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        raise InputError(field, f"{source} holds no tensors", "a state dict of the model's weights")
    return tensors


@dataclass(frozen=True)
class CheckpointChanges:
    """||dW||_F [1, M] and the singular values [1, M, r] of dW for the M weights both checkpoints hold."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    norms: np.ndarray
    spectra: np.ndarray


def checkpoint_changes(before, after, pattern: re.Pattern | None = None, targets: str | None = None,
                       flag: str = "") -> CheckpointChanges:
    """The change of every 2-d floating-point weight present in both checkpoints with the same shape whose
    module name ``pattern`` finds (``targets``: the pattern's text, for messages). Errors name the arguments
    ``before``, ``after``, ``targets`` after ``flag`` ("--" for the command's options)."""
    if before is None or after is None:
        raise InputError(f"{flag}before/{flag}after", "one checkpoint given",
                         "two checkpoints: before and after the fine-tune")
    a, b = load_state(before, f"{flag}before"), load_state(after, f"{flag}after")
    keys = [k for k in a if k in b and a[k].ndim == 2 and a[k].shape == b[k].shape and a[k].is_floating_point()]
    strip = shared_prefix(list(a), [module_name(k, "") for k in keys]) if keys else ""
    chosen = [(k, module_name(k, strip)) for k in keys]
    chosen = [(k, n) for k, n in chosen if pattern is None or pattern.search(n)]
    if not chosen:
        raise InputError(f"{flag}targets" if pattern is not None else f"{flag}after",
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
        raise InputError(f"{flag}after", "non-finite weights", "checkpoints of a run that stayed finite")
    if not np.any(norms_arr > 0):
        raise InputError(f"{flag}after", "no weight changed between the two checkpoints", "checkpoints before and after training")
    return CheckpointChanges(tuple(n for _, n in chosen), tuple(tuple(a[k].shape) for k, _ in chosen), norms_arr,
                             spectra_arr)
