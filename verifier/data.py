"""Data sets and random teachers, generated here (no downloads), and bring-your-own ``.npz`` files.

All generators take a ``torch.Generator`` so a seed fixes the data exactly; tensors are float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError

F64 = torch.float64


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def gaussian_design(N: int, p: int, gen: torch.Generator) -> torch.Tensor:
    """X [N, p] with i.i.d. N(0, 1) entries (a correlated design: X^T X / N != I)."""
    return torch.randn(N, p, generator=gen, dtype=F64)


def orthogonal_design(N: int, p: int, gen: torch.Generator) -> torch.Tensor:
    """X [N, p] with X^T X / N = I exactly (THEORY.md §4's closed-form case)."""
    Q, _ = torch.linalg.qr(torch.randn(N, p, generator=gen, dtype=F64))
    return Q * N**0.5


def gaussian_tokens(N: int, n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """N sequences of n isotropic Gaussian tokens in R^d: [N, n, d]."""
    return torch.randn(N, n, d, generator=gen, dtype=F64)


def sparse_vector(p: int, r: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """r random nonzero entries with magnitudes uniform in ``scale`` and random signs; the rest zero."""
    out = torch.zeros(p, dtype=F64)
    idx = torch.randperm(p, generator=gen)[:r]
    lo, hi = scale
    mag = lo + (hi - lo) * torch.rand(r, generator=gen, dtype=F64)
    sign = torch.where(torch.rand(r, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    out[idx] = mag * sign
    return out


def load_npz(path: str | Path, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and validate ``X``/``Y`` (``y`` accepted for linear data) from an ``.npz`` file.

    Linear models: X [N, p], y [N]. Attention models: X [N, n, d], Y [N, n, d]. Finite, real numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("--data", f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # numpy raises several types for a corrupt file
        raise InputError("--data", f"cannot read {path} as .npz ({type(exc).__name__}: {exc})") from None
    X = arrays.get("X")
    Y = arrays.get("Y", arrays.get("y"))
    if X is None or Y is None:
        raise InputError("--data", f"{path} has arrays {sorted(arrays)}", "X and Y (or y)")
    for name, a in (("X", X), ("Y", Y)):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise InputError(f"--data {name}", f"dtype {a.dtype} is not numeric", "float or int arrays")
        if not np.all(np.isfinite(a)):
            raise InputError(f"--data {name}", "contains NaN or inf", "finite numbers")
    if family == "diag-linear":
        if X.ndim != 2 or Y.ndim != 1 or Y.shape[0] != X.shape[0]:
            raise InputError("--data", f"shapes X{X.shape}, y{Y.shape} for a linear model", "X [N, p] and y [N]")
    else:
        if X.ndim != 3 or X.shape != Y.shape:
            raise InputError("--data", f"shapes X{X.shape}, Y{Y.shape} for an attention model",
                             "X [N, n, d] and Y [N, n, d]")
    if X.shape[0] == 0:
        raise InputError("--data", "no samples (N = 0)", "N >= 1")
    return torch.as_tensor(X, dtype=F64), torch.as_tensor(Y, dtype=F64)
