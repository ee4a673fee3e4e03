"""The closed sets of names a run accepts (devices, losses) and the one place a device name becomes a
``torch.device``. config.py (validation) and presets.py (building problems) both import this module, so
presets.py needs nothing from config.py and the two form no import circle (config.py imports presets.py only
to validate the choice of problem)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("square", "logistic")


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(name, f"unknown value {value!r}", ", ".join(choices))


def resolve_device(name: str) -> "torch.device":
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an InputError naming --device."""
    import torch

    check_choice("--device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda requested but torch.cuda.is_available() is False", "auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
