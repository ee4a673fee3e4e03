"""RankHistory: what a RankTracker measured, on the host (THEORY.md §6). The checks judge it alone.

``RankHistory.save(path)`` / ``RankHistory.load(path)``: one ``.npz`` (docs/TRACKING.md, "Runs across jobs"),
read with ``allow_pickle=False``: every field an array, except the JSON-able ones (``info``), which travel in a
JSON string under ``__metadata__`` together with the format name, its version and each field's kind. A field
added later (with a default) is optional on load; fields the reader does not know are ignored.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from .spectra import NUMERICAL_RANK_RTOL, effective_rank, numerical_rank, stable_rank

FORMAT, VERSION = "verifier.rank-history", 1
METADATA = "__metadata__"


@dataclass(frozen=True)
class RankHistory:
    """What a tracker measured, on the host. P tracked matrices (one per product and head), T records.

    ``delta_spectra[t, i]`` are the singular values of matrix i's change at record t (descending, zero
    padded to the largest rank r), ``initial_spectra[i]`` those of the matrix at the first record.
    ``max_rank[i]`` = min(d1, d2, 2k), the largest rank the change (dA) B^T + A0 (dB)^T can have.
    ``losses`` are the losses passed to ``record`` (NaN where none was). ``finite[t]`` is False where
    record t met a non-finite weight (its spectra are then NaN) or a non-finite loss: training diverged.

    Per module (M distinct weights the products read, :mod:`.modules`; empty for a history without them):
    ``module_names`` as PEFT matches them, ``module_shapes`` (stored shape), ``module_feeds`` (the products
    each is a factor of, ``"<product>:a"``/``":b"``), and at the Tm records in ``module_steps``:
    ``module_norms[t, m]`` = ||W_m - W_m0||_F and ``module_spectra[t, m]`` its singular values (descending,
    zero padded to the widest module).
    """

    names: tuple[str, ...]  # product name per matrix, e.g. "blocks.0.attn.qk"
    heads: tuple[int, ...]
    max_rank: tuple[int, ...]
    product_rank: tuple[int, ...]  # min(d1, d2, k): the largest rank of the product itself
    steps: np.ndarray  # [T]
    losses: np.ndarray  # [T]
    delta_spectra: np.ndarray  # [T, P, r]
    initial_spectra: np.ndarray  # [P, r]
    finite: np.ndarray  # [T] bool
    # What produced it, JSON-able (set by the callbacks: model, framework, init_scale, every, tracked, record_s)
    info: Mapping[str, Any] = field(default_factory=dict)
    module_names: tuple[str, ...] = ()
    module_shapes: tuple[tuple[int, int], ...] = ()
    module_feeds: tuple[tuple[str, ...], ...] = ()
    module_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [Tm]
    module_spectra: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))  # [Tm, M, r_m]
    module_norms: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [Tm, M]

    @property
    def diverged_step(self) -> int | None:
        """The first recorded step with non-finite weights or loss (None when training stayed finite)."""
        bad = np.flatnonzero(~self.finite)
        return int(self.steps[bad[0]]) if bad.size else None

    @property
    def labels(self) -> list[str]:
        return [f"{n}[h{h}]" for n, h in zip(self.names, self.heads)]

    def stable_rank(self) -> np.ndarray:
        """[T, P] stable rank of the change (NaN at the first record, where it is zero)."""
        return stable_rank(self.delta_spectra)

    def effective_rank(self) -> np.ndarray:
        return effective_rank(self.delta_spectra)

    def numerical_rank(self, rtol: float = NUMERICAL_RANK_RTOL) -> np.ndarray:
        return numerical_rank(self.delta_spectra, rtol)

    def initial_stable_rank(self) -> np.ndarray:
        """[P] stable rank of each product at the first record."""
        return stable_rank(self.initial_spectra)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` (no pickle) atomically: a temporary file beside ``path``, renamed into place."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.npz_bytes())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def npz_bytes(self) -> bytes:
        """The ``.npz`` that :meth:`save` writes, as bytes."""
        arrays, kinds, values = {}, {}, {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                kinds[f.name] = "none"
            elif isinstance(value, Mapping):
                kinds[f.name], values[f.name] = "json", dict(value)
            elif isinstance(value, (tuple, list)) and any(isinstance(v, (tuple, list)) for v in value):
                kinds[f.name], values[f.name] = "nested-tuple", [list(v) for v in value]  # ragged: JSON lists
            elif isinstance(value, (tuple, list, np.ndarray)):
                array = np.asarray(value)
                if array.dtype == object:
                    raise TypeError(f"RankHistory.save: field {f.name!r} is not an array of numbers or strings")
                kinds[f.name], arrays[f.name] = ("tuple" if isinstance(value, (tuple, list)) else "array"), array
            else:
                kinds[f.name], values[f.name] = "json", value
        metadata = {"format": FORMAT, "version": VERSION, "kinds": kinds, "values": values}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{METADATA: np.array(json.dumps(metadata, allow_nan=True))})
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RankHistory":
        """Read and validate a ``.npz`` written by :meth:`save`; anything else is an InputError naming the file
        and the field."""
        return _load(Path(path))


def _error(path: Path, field: str | None, problem: str, allowed: str | None = None) -> InputError:
    where = str(path) if field is None else f"{path}, field {field!r}"
    return InputError(where, problem, allowed)


def _load(path: Path) -> RankHistory:
    allowed = "a rank-history.npz written by RankHistory.save (the callbacks write rank-tracking/rank-history.npz)"
    if path.is_dir():
        raise _error(path, None, "is a folder", allowed)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise _error(path, None, "is a single .npy array, not a .npz", allowed)
        if not zipfile.is_zipfile(path):
            raise _error(path, None, "is not a .npz (zip) archive", allowed)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except InputError:
        raise
    except FileNotFoundError:
        raise _error(path, None, "no such file", allowed) from None
    except ValueError as exc:  # numpy refuses an object array: it would need pickle
        raise _error(path, None, f"holds an array numpy can only read by unpickling ({str(exc)[:80]})",
                     allowed) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        first = " ".join(str(exc).split()).split(". ")[0][:160]
        raise _error(path, None, f"is a damaged .npz ({type(exc).__name__}: {first})", allowed) from None
    if METADATA not in arrays:
        raise _error(path, METADATA, "missing: not a RankHistory file", allowed)
    try:
        meta = json.loads(str(arrays.pop(METADATA)[()]))
    except (ValueError, TypeError, IndexError) as exc:
        raise _error(path, METADATA, f"is not a JSON string ({exc})", allowed) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _error(path, "format", f"{meta.get('format') if isinstance(meta, dict) else meta!r:.80}", FORMAT)
    version = meta.get("version")
    if not (isinstance(version, int) and 1 <= version <= VERSION):
        raise _error(path, "version", f"{version!r:.40} (written by a newer verifier?)", f"1 to {VERSION}")
    kinds, values = meta.get("kinds"), meta.get("values")
    if not isinstance(kinds, dict) or not isinstance(values, dict):
        raise _error(path, METADATA, "has no 'kinds' and 'values' objects", allowed)
    fields = {}
    for f in dataclasses.fields(RankHistory):
        kind = kinds.get(f.name)
        if kind is None or (kind not in ("none", "json", "nested-tuple") and f.name not in arrays) or (
                kind in ("json", "nested-tuple") and f.name not in values):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _error(path, f.name, "missing", "every field of RankHistory that has no default")
            continue  # a field added after this file was written: its default
        if kind == "none":
            fields[f.name] = None
        elif kind == "json":
            fields[f.name] = values[f.name]
        elif kind == "tuple":
            fields[f.name] = tuple(arrays[f.name].tolist())
        elif kind == "nested-tuple":
            rows = values[f.name]
            if not (isinstance(rows, list) and all(isinstance(r, list) for r in rows)):
                raise _error(path, f.name, "not a list of lists", "one list per entry")
            fields[f.name] = tuple(tuple(r) for r in rows)
        elif kind == "array":
            fields[f.name] = arrays[f.name]
        else:
            raise _error(path, f.name, f"unknown kind {kind!r:.40}", "array, tuple, nested-tuple, json or none")
    _validate(path, fields)
    return RankHistory(**fields)


def _validate(path: Path, f: dict) -> None:
    """Types and shapes of the fields the checks read: P matrices, T records, spectra of width r."""
    def need(name, ok, problem, allowed):
        if not ok:
            raise _error(path, name, problem, allowed)

    for name in ("names", "heads", "max_rank", "product_rank"):
        need(name, isinstance(f[name], tuple), f"a {type(f[name]).__name__}", "a tuple (one entry per matrix)")
    p = len(f["names"])
    need("names", p >= 1 and all(isinstance(n, str) for n in f["names"]), "empty or not strings",
         "one product name per tracked matrix")
    for name in ("heads", "max_rank", "product_rank"):
        vals = f[name]
        need(name, len(vals) == p, f"{len(vals)} entries for {p} matrices", f"{p} entries, one per matrix")
        need(name, all(isinstance(v, int) and not isinstance(v, bool) and v >= (0 if name == "heads" else 1)
                       for v in vals), "not all non-negative integers" if name == "heads" else
             "not all positive integers", "integers")
    for name in ("steps", "losses", "delta_spectra", "initial_spectra", "finite"):
        need(name, isinstance(f[name], np.ndarray), f"a {type(f[name]).__name__}", "an array")
    steps = f["steps"]
    need("steps", steps.ndim == 1 and steps.size >= 1 and steps.dtype.kind in "iu", f"shape {steps.shape}, "
         f"dtype {steps.dtype}", "a 1-d integer array of at least one step")
    need("steps", bool(np.all(np.diff(steps) > 0)), "steps that do not increase", "increasing steps")
    t = steps.size
    for name, shape, kinds in (("losses", (t,), "fiu"), ("finite", (t,), "b")):
        arr = f[name]
        need(name, arr.shape == shape and arr.dtype.kind in kinds, f"shape {arr.shape}, dtype {arr.dtype}",
             f"shape {shape}, {'bool' if kinds == 'b' else 'numbers'}")
    delta, initial = f["delta_spectra"], f["initial_spectra"]
    need("delta_spectra", delta.ndim == 3 and delta.shape[:2] == (t, p) and delta.shape[2] >= 1
         and delta.dtype.kind in "fiu", f"shape {delta.shape}, dtype {delta.dtype}", f"[{t} records, {p} matrices, r]")
    need("initial_spectra", initial.ndim == 2 and initial.shape[0] == p and initial.dtype.kind in "fiu",
         f"shape {initial.shape}, dtype {initial.dtype}", f"[{p} matrices, r]")
    for name in ("delta_spectra", "initial_spectra"):
        need(name, not np.any(f[name] < 0), "a negative singular value", "singular values >= 0 (NaN where diverged)")
    info = f.get("info", {})
    need("info", isinstance(info, dict), f"a {type(info).__name__}", "a JSON object")
    _validate_modules(path, f, need)


def _validate_modules(path: Path, f: dict, need) -> None:
    """The per-module spectra (docs/LORA.md): M modules measured at Tm steps, each spectrum of width r_m."""
    names = f.get("module_names", ())
    m = len(names) if isinstance(names, tuple) else -1
    need("module_names", m >= 0 and all(isinstance(n, str) for n in names), "not a tuple of strings",
         "one PEFT module name per measured weight")
    shapes, feeds = f.get("module_shapes", ()), f.get("module_feeds", ())
    need("module_shapes", isinstance(shapes, tuple) and len(shapes) == m and all(
        isinstance(s, tuple) and len(s) == 2 and all(isinstance(v, int) and v >= 1 for v in s) for s in shapes),
         "not one (rows, columns) pair per module", f"{m} pairs of positive integers")
    need("module_feeds", isinstance(feeds, tuple) and len(feeds) in (0, m) and all(
        isinstance(r, tuple) and all(isinstance(v, str) for v in r) for r in feeds),
         "not one tuple of product names per module", f"{m} tuples of strings")
    steps = f.get("module_steps", np.zeros(0, dtype=np.int64))
    need("module_steps", isinstance(steps, np.ndarray) and steps.ndim == 1 and (steps.size == 0 or steps.dtype.kind in "iu")
         and bool(np.all(np.diff(steps) > 0)), "not increasing integers", "the increasing steps of the measurements")
    tm = steps.size if isinstance(steps, np.ndarray) else 0
    spectra = f.get("module_spectra", np.zeros((0, 0, 0)))
    norms = f.get("module_norms", np.zeros((0, 0)))
    if m == 0 or tm == 0:
        return
    need("module_spectra", isinstance(spectra, np.ndarray) and spectra.ndim == 3 and spectra.shape[:2] == (tm, m)
         and spectra.dtype.kind in "fiu" and not np.any(spectra < 0), f"shape {getattr(spectra, 'shape', None)}",
         f"[{tm} measurements, {m} modules, r] of singular values >= 0")
    need("module_norms", isinstance(norms, np.ndarray) and norms.shape == (tm, m) and norms.dtype.kind in "fiu",
         f"shape {getattr(norms, 'shape', None)}", f"[{tm} measurements, {m} modules]")
