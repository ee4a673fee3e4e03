"""Memory checks before work (THEORY.md §3-4): the flow integrator (Rosenbrock W-method) builds a dense
Jacobian of the flow per trajectory and factorises it, so gradient flow, and Algorithm 1 whose stage B is a
flow, need about ``DENSE_COPIES`` float64 matrices of n x n, n = p for a diagonal model (the reduced flow in
S) and n = n_params otherwise. A size that cannot fit the memory available on the model's device is refused
before any work, with the size, the memory it would need and what to do instead (never an allocation of
terabytes that ends in exit 4)."""

from __future__ import annotations

import os

import torch

from .errors import InputError

DENSE_COPIES = 3  # the Jacobian, the W-method matrix I - h gamma J and its LU factors (one trajectory)
# Which checks integrate a flow is declared on their CheckSpec (``flow``); the CLI asks before a run.


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: the GPU's free memory, or the host's MemAvailable (Linux) / physical pages;
    None when it cannot be read (then nothing is refused)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # pragma: no cover - a driver without the query
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def dense_size(model) -> int:
    """n of the n x n flow Jacobian of ``model``."""
    return model.p if model.diagonal else model.n_params


def require_dense_fits(model, field: str, what: str, instead: str) -> None:
    """InputError naming ``field`` when ``what`` (dense in n, see the module docstring) cannot fit."""
    n = dense_size(model)
    need = DENSE_COPIES * 8 * n * n
    free = available_bytes(torch.device(model.device))
    if free is not None and need > free:
        largest = int((free / (DENSE_COPIES * 8)) ** 0.5)
        raise InputError(field, f"{what} is dense in {'p' if model.diagonal else 'n_params'} = {n}: its flow "
                                f"Jacobian and factorisation need {_size(need)}, {_size(free)} is available on "
                                f"{model.device} (n up to about {largest} fits)", instead)
