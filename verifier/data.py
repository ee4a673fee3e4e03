"""Data sets and random teachers, generated here (no downloads), and bring-your-own ``.npz`` files.

All generators take a ``torch.Generator`` so a seed fixes the data exactly; tensors are float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .paths import check_name

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


# The largest |entry| of X and of Y must lie in this range (or be 0): the losses square and multiply entries,
# and squares of larger (smaller) numbers overflow (underflow) float64.
DATA_SCALE = (1e-150, 1e150)
_NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (an empty one starts with the second)


def load_npz(path: str | Path, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and validate ``X``/``Y`` (``y`` accepted for linear data) from an ``.npz`` file.

    Linear models: X [N, p], y [N]. Attention models: X [N, n, d], Y [N, n, d]. Every dimension >= 1;
    real numbers (integers or floats up to float64), finite, largest magnitude within ``DATA_SCALE``.
    """
    check_name(path, "--data")
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "is not a regular file" if path.exists() else "file not found"
        raise InputError("--data", f"{what}: {path}", "an .npz file")
    arrays = _read_npz(path)
    X, Y = arrays["X"], arrays["Y"]
    for name, a in (("X", X), ("Y", Y)):
        _check_values(name, a)
    if family == "diag-linear":
        if X.ndim != 2 or Y.ndim != 1 or Y.shape[0] != X.shape[0]:
            raise InputError("--data", f"shapes X{X.shape}, y{Y.shape} for a linear model", "X [N, p] and y [N]")
    else:
        if X.ndim != 3 or X.shape != Y.shape:
            raise InputError("--data", f"shapes X{X.shape}, Y{Y.shape} for an attention model",
                             "X [N, n, d] and Y [N, n, d]")
    if X.shape[0] == 0:
        raise InputError("--data", "no samples (N = 0)", "N >= 1")
    if 0 in X.shape:
        dims = "N, p" if family == "diag-linear" else "N, n, d"
        raise InputError("--data", f"X has shape {X.shape}: an empty dimension", f"{dims} >= 1")
    return torch.as_tensor(X, dtype=F64), torch.as_tensor(Y, dtype=F64)


MAX_ARRAY_BYTES = 2**31  # one X or Y larger than this (2 GiB) is refused before it is inflated


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays X and Y (or y) of an .npz, read by name: members are listed from the zip directory, each
    used member's .npy header is read first and its size checked against MAX_ARRAY_BYTES, and no other member
    is inflated (an unused 2 GiB array beside X and y costs nothing). ``Y`` and ``y`` both present (or ``X``
    and ``X.npy``) is ambiguous and refused. Object arrays (pickles) are never loaded."""
    import zipfile

    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise InputError("--data", f"cannot read {path} ({exc.strerror})") from None
    if head.startswith(b"\x93NUMPY"):
        raise InputError("--data", f"{path} is a single .npy array", "an .npz: numpy.savez(path, X=X, Y=Y)")
    if not head.startswith(_NPZ_MAGIC):
        raise InputError("--data", f"{path} is not an .npz file (no zip header)", "an .npz: numpy.savez(path, X=X, Y=Y)")
    try:
        with zipfile.ZipFile(path) as zf:
            members: dict[str, list[zipfile.ZipInfo]] = {}
            for info in zf.infolist():
                members.setdefault(info.filename.removesuffix(".npy"), []).append(info)
            wanted = {"X": ["X"], "Y": [k for k in ("Y", "y") if k in members]}
            if len(wanted["Y"]) > 1:
                raise InputError("--data", f"{path} has both Y and y: ambiguous", "one of Y or y")
            out = {}
            for name, keys in wanted.items():
                if not keys or keys[0] not in members:
                    continue
                infos = members[keys[0]]
                if len(infos) > 1:
                    raise InputError("--data", f"{path} has {len(infos)} members named {keys[0]} "
                                               f"({', '.join(i.filename for i in infos)}): ambiguous", "one each")
                out[name] = _read_member(zf, infos[0], path)
            if len(out) < 2:
                raise InputError("--data", f"{path} has arrays {sorted(members)}", "X and Y (or y)")
            return out
    except InputError:
        raise
    except Exception as exc:  # zipfile and numpy raise several types for a corrupt file
        raise InputError("--data", f"cannot read {path} as .npz ({type(exc).__name__}: {exc})") from None


def _read_member(zf, info, path: Path) -> np.ndarray:
    """One .npy member: header first (dtype, shape), size checked, then the data."""
    from numpy.lib import format as npy

    where = f"{path} member {info.filename}"
    with zf.open(info) as f:
        try:
            version = npy.read_magic(f)
            shape, _order, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
        except ValueError as exc:
            raise InputError("--data", f"{where} is not a .npy array ({exc})", "numeric arrays") from None
    if dtype.hasobject:  # a pickle: never unpickled (arbitrary code)
        raise InputError("--data", f"{where} holds an array of Python objects", "numeric arrays")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise InputError("--data", f"{where} is {nbytes / 2**30:.1f} GiB", f"arrays up to {MAX_ARRAY_BYTES // 2**30} GiB")
    if nbytes > info.file_size:
        raise InputError("--data", f"{where}: its header promises {nbytes} bytes, the member holds {info.file_size}",
                         "a well-formed .npz")
    with zf.open(info) as f:
        return npy.read_array(f, allow_pickle=False)


def _check_values(name: str, a: np.ndarray) -> None:
    field = f"--data {name}"
    if a.dtype.kind not in "fiu" or (a.dtype.kind == "f" and a.dtype.itemsize > 8):
        kind = {"c": "complex", "b": "boolean"}.get(a.dtype.kind, "long double" if a.dtype.kind == "f" else "non-numeric")
        raise InputError(field, f"dtype {a.dtype} ({kind})", "real int or float arrays up to float64")
    if a.size == 0:
        return
    if not np.all(np.isfinite(a)):
        raise InputError(field, "contains NaN or inf", "finite numbers")
    largest = float(np.max(np.abs(a.astype(np.float64))))
    lo, hi = DATA_SCALE
    if largest != 0.0 and not lo <= largest <= hi:
        raise InputError(field, f"largest |entry| is {largest:.3g}: its square {'over' if largest > hi else 'under'}"
                                "flows float64", f"rescale so the largest |entry| is between {lo:g} and {hi:g}")
