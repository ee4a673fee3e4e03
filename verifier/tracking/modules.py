"""Per-module spectra of the weight change, for LoRA ranks chosen from data (docs/LORA.md, THEORY.md §6).

The per-head products say *which heads* moved; a LoRA adapter is attached to a *module* (a linear layer:
GPT-2's fused ``c_attn``, LLaMA's ``q_proj``, ...), whose change dW = W - W0 it replaces by B A of rank r. So
beside the head spectra, :class:`ModuleSpectra` records, for every distinct weight the tracked products read
and every other linear layer of the blocks that hold them (the MLP: what PEFT's ``"all-linear"`` adapts inside
the blocks), ``||dW||_F`` and the singular values of dW. It is the tracker's one hook for this (``RankTracker.record`` calls
:meth:`ModuleSpectra.record` after each record; ``history()`` takes :meth:`ModuleSpectra.fields`).

Cost. dW of a full fine-tune has no low-rank factorisation to exploit (unlike the head products, whose change
has rank <= 2k), so its spectrum costs the eigenvalues of its min(m, n)-square Gram matrix G = dW dW^T (or
dW^T dW), in dW's precision: 3-10x cheaper than ``svdvals`` of dW on one CPU thread, and all a rank choice
needs, since G's eigenvalues are s_i^2 up to rounding ~1e-7 s_1^2 in float32, so every energy share
sum_{i<=r} s_i^2 / ||dW||_F^2 is exact to ~1e-6 (small singular values themselves lose relative accuracy below
~3e-4 s_1; no energy share can see them). ``||dW||_F`` is computed directly. It runs on every ``module_every``-th
record (default ``MODULE_EVERY`` = 10); docs/LORA.md gives its measured cost at GPT-2-small width
(benchmarks/test_module_spectra_bench.py). On a GPU, ``eigvalsh`` may check its result on the host: at most one
wait for the device per ``module_every`` records.

Names. A module is named as ``model.named_modules()`` names the module owning the weight (``...attn.c_attn``),
with the leading path components every parameter of the model shares removed (a LightningModule's ``model.``),
so that PEFT, which matches a target by its trailing components, finds it whether it wraps the inner model or
the wrapper. ``nn.MultiheadAttention``'s ``in_proj_weight`` is named by the attention module (PEFT adapts it
there); another weight that is not a module's ``weight`` by its parameter path. Frozen weights (``requires_grad=False``: a PEFT base model) are not tracked; they cannot change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from . import distributed
from .layouts import _attribute, find_attention

MODULE_EVERY = 10  # records between two module measurements (the first record is the reference)
CHUNK_BYTES = 1 << 28  # at most this much of dW stacked at once (one batched Gram + eigvalsh per chunk)


@dataclass(frozen=True)
class TrackedModule:
    """One weight whose change is measured: its PEFT-style module ``name``, its stored ``shape``, the
    products it is a factor of, as ``"<product>:a"`` / ``"<product>:b"`` (the A or the B of A_h B_h^T), and
    ``path``, the parameter's path in the model, by which it is read at every measurement (a Parameter replaced
    between records is read, as the tracker reads its products)."""

    name: str
    shape: tuple[int, int]
    feeds: tuple[str, ...]
    path: str


def module_name(param_path: str, strip: str) -> str:
    """The PEFT target name of a parameter: its owning module's path (for a ``weight``, and for
    ``nn.MultiheadAttention``'s ``in_proj_weight``, which PEFT adapts through the attention module; the
    parameter's own path otherwise), without the leading ``strip`` prefix."""
    owner, _, attr = param_path.rpartition(".")
    name = owner if attr in ("weight", "in_proj_weight") and owner else param_path
    return name[len(strip):] if strip and name.startswith(strip) else name


def shared_prefix(paths: list[str], names: list[str]) -> str:
    """The leading components ('a.b.') that every one of ``paths`` shares, cut so that each of ``names``
    keeps at least one component of its own."""
    split = [p.split(".")[:-1] for p in paths]
    common = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    shortest = min((n.count(".") for n in names), default=0)
    common = common[:shortest]
    return "".join(c + "." for c in common)


def find_modules(model: torch.nn.Module, tracked) -> list[TrackedModule]:
    """The distinct trainable 2-d weights the tracked products read (``tracked``: the tracker's ``Tracked``
    list; zoo products resolved through their layouts, named products through their parameters' storage), then
    the other linear layers (``nn.Linear``, ``Conv1D``) of each block holding a tracked attention module (the
    module's parent: a transformer block's MLP; never the embeddings or the output head, which live outside
    the blocks)."""
    paths = {id(p): n for n, p in model.named_parameters()}
    feeds: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}

    def add(param, feed: str) -> None:
        if isinstance(param, torch.nn.Parameter) and param.ndim == 2 and param.requires_grad and id(param) in paths:
            params[id(param)] = param
            feeds.setdefault(id(param), [])
            if feed is not None:
                feeds[id(param)].append(feed)

    by_path = {path or "attention": (module, spec) for path, module, spec, _ in find_attention(model)}
    named = dict(model.named_parameters())
    for t in tracked:
        if t.layout == "named":  # its factors are views of the named parameters: matched by storage
            for side, factor in zip("ab", t.factors()):
                ptr = factor.untyped_storage().data_ptr()
                for param in named.values():
                    if param.untyped_storage().data_ptr() == ptr:
                        add(param, f"{t.name}:{side}")
            continue
        module, spec = by_path.get(t.module, (None, None))
        if module is None:
            continue
        roles = ("q", "k") if t.name.endswith(".qk") else ("v", "o")
        for side, role in zip("ab", roles):
            weight = next((c for c in getattr(spec, role) if _attribute(module, c.path) is not None), None)
            if weight is not None:
                add(_attribute(module, weight.path), f"{t.name}:{side}")
    for path in dict.fromkeys(t.module for t in tracked if t.layout != "named"):  # the blocks' other linear layers
        block = path.rpartition(".")[0]
        if not block:
            continue
        for sub, mod in model.named_modules():
            if sub.startswith(block + ".") and _linear(mod):
                add(mod.weight, None)
    ids = list(params)
    raw = [paths[i] for i in ids]
    unstripped = [module_name(p, "") for p in raw]
    strip = shared_prefix(list(paths.values()), unstripped)
    return [TrackedModule(module_name(p, strip), tuple(params[i].shape), tuple(dict.fromkeys(feeds[i])), p)
            for i, p in zip(ids, raw)]


def _linear(module: torch.nn.Module) -> bool:
    """A layer PEFT's LoRA adapts as a linear map: ``nn.Linear`` or Hugging Face's ``Conv1D``."""
    return isinstance(module, torch.nn.Linear) or (type(module).__name__ == "Conv1D" and
                                                    getattr(module, "weight", None) is not None)


def change_spectra(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``||dW||_F`` [N] and the singular values [N, min(m, n)] (descending) of a batch dW [N, m, n], from the
    eigenvalues of the Gram matrix of the smaller side, in dW's precision (module docstring)."""
    norms = torch.linalg.vector_norm(delta.flatten(1), dim=1)
    d = delta
    gram = d @ d.transpose(1, 2) if d.shape[1] <= d.shape[2] else d.transpose(1, 2) @ d
    finite = torch.isfinite(gram).flatten(1).all(1)
    eig = torch.linalg.eigvalsh(torch.where(finite[:, None, None], gram, torch.zeros((), dtype=gram.dtype,
                                                                                     device=gram.device)))
    s = eig.clamp_min(0).sqrt().flip(-1)
    s = torch.where(finite[:, None], s, torch.full((), float("nan"), dtype=s.dtype, device=s.device))
    return norms, s


class ModuleSpectra:
    """``||dW||_F`` and the singular values of dW for each :class:`TrackedModule`, measured on the records
    whose index is a multiple of ``every`` (the record with index 0 fixes W0); ``every=0`` measures nothing."""

    def __init__(self, model: torch.nn.Module, modules: list[TrackedModule], every: int, device: torch.device):
        if isinstance(every, bool) or not (isinstance(every, int) and every >= 0):
            raise InputError("module_every", f"{every!r} is not a non-negative integer",
                             "an integer >= 0 (records between module measurements; 0: none)")
        # Sharded weights (FSDP2) would need a gather on every rank at each measurement, and only rank 0
        # records: module spectra are not measured there (recommend_lora then refuses the history, saying so).
        self.sharded = any(distributed.is_sharded(model.get_parameter(m.path)) for m in modules)
        self.model = model
        self.modules, self.every, self.device = modules if every and not self.sharded else [], every, device
        self._reference: list[torch.Tensor] | None = None
        self._steps: list[int] = []
        self._norms: list[torch.Tensor] = []  # per measurement [M]
        self._spectra: list[list[torch.Tensor]] = []  # per measurement, per module [min(m, n)]

    def _weights(self) -> list[torch.Tensor]:
        def cast(w: torch.Tensor) -> torch.Tensor:
            return w.detach().to(self.device, torch.float64 if w.dtype == torch.float64 else torch.float32)

        return [cast(self.model.get_parameter(m.path)) for m in self.modules]

    @torch.no_grad()
    def record(self, step: int, index: int) -> None:
        """Called by ``RankTracker.record`` after its record number ``index`` (0 = the reference)."""
        if not self.modules:
            return
        if self._reference is None:
            if index == 0:
                self._reference = [w.clone() for w in self._weights()]
            return  # a tracker restored from a state without module spectra measures none
        if index % self.every:
            return
        weights = self._weights()
        norms: list[torch.Tensor | None] = [None] * len(weights)
        spectra: list[torch.Tensor | None] = [None] * len(weights)
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(weights):
            groups.setdefault((tuple(w.shape), w.dtype), []).append(i)
        for (shape, _), idx in groups.items():
            per_chunk = max(1, CHUNK_BYTES // (4 * shape[0] * shape[1]))
            for start in range(0, len(idx), per_chunk):
                chunk = idx[start : start + per_chunk]
                delta = torch.stack([weights[i] - self._reference[i] for i in chunk])
                n, s = change_spectra(delta)
                for j, i in enumerate(chunk):
                    norms[i], spectra[i] = n[j], s[j]
        self._steps.append(step)
        self._norms.append(torch.stack(norms))
        self._spectra.append(spectra)

    def fields(self, since: int | None = None) -> dict:
        """The ``module_*`` fields of a RankHistory (measurements at steps >= ``since``), on the host."""
        keep = [t for t, s in enumerate(self._steps) if since is None or s >= since]
        width = max((min(m.shape) for m in self.modules), default=0)
        spectra = np.zeros((len(keep), len(self.modules), width))
        norms = np.zeros((len(keep), len(self.modules)))
        if keep:
            norms = torch.stack([self._norms[t] for t in keep]).cpu().numpy()
            for row, t in enumerate(keep):
                for i, s in enumerate(self._spectra[t]):
                    spectra[row, i, : s.shape[0]] = s.cpu().numpy()
        return {"module_names": tuple(m.name for m in self.modules),
                "module_shapes": tuple(m.shape for m in self.modules),
                "module_feeds": tuple(m.feeds for m in self.modules),
                "module_steps": np.array([self._steps[t] for t in keep], dtype=np.int64),
                "module_spectra": spectra, "module_norms": norms}

    def state_dict(self) -> dict:
        return {"names": [m.name for m in self.modules], "every": self.every, "steps": list(self._steps),
                "reference": None if self._reference is None else [w.cpu() for w in self._reference],
                "norms": [n.cpu() for n in self._norms],
                "spectra": [[s.cpu() for s in rec] for rec in self._spectra]}

    def check_state(self, state) -> None:
        """Refuse a ``state["modules"]`` that :meth:`state_dict` of a tracker of this model cannot have written
        (InputError naming the entry); None, or another model's module names, is accepted (spectra turned off)."""
        def error(key: str, problem: str, allowed: str) -> InputError:
            return InputError(f"RankTracker.load_state_dict: state['modules'][{key!r}]", problem, allowed)

        if state is None:
            return
        if not isinstance(state, dict):
            raise InputError("RankTracker.load_state_dict: state['modules']", f"a {type(state).__name__}",
                             "None or the dict ModuleSpectra.state_dict() returns")
        for key in ("names", "every", "steps", "reference", "norms", "spectra"):
            if key not in state:
                raise error(key, "missing", "the keys of ModuleSpectra.state_dict()")
        names = state["names"]
        if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            raise error("names", repr(type(names).__name__), "a list of module names")
        if list(names) != [m.name for m in self.modules] or state["reference"] is None:
            return  # another model's (or no) module spectra: turned off by load_state_dict
        steps, norms, spectra, reference = state["steps"], state["norms"], state["spectra"], state["reference"]
        if not (isinstance(steps, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in steps)
                and all(b > a for a, b in zip(steps, steps[1:]))):
            raise error("steps", "not increasing integers", "the increasing steps of the module measurements")
        if not (isinstance(reference, (list, tuple)) and len(reference) == len(self.modules)):
            raise error("reference", f"{len(reference) if isinstance(reference, (list, tuple)) else type(reference).__name__} entries",
                        f"{len(self.modules)} weights")
        for m, w in zip(self.modules, reference):
            if not (isinstance(w, torch.Tensor) and tuple(w.shape) == m.shape):
                raise error("reference", f"{m.name}: {tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}",
                            f"a tensor of shape {m.shape}")
        if not (isinstance(norms, (list, tuple)) and len(norms) == len(steps)
                and all(isinstance(n, torch.Tensor) and tuple(n.shape) == (len(self.modules),) for n in norms)):
            raise error("norms", "not one [M] tensor per step", f"{len(steps)} tensors of shape ({len(self.modules)},)")
        widths = [min(m.shape) for m in self.modules]
        if not (isinstance(spectra, (list, tuple)) and len(spectra) == len(steps) and all(
                isinstance(rec, (list, tuple)) and len(rec) == len(widths)
                and all(isinstance(v, torch.Tensor) and tuple(v.shape) == (w,) for v, w in zip(rec, widths))
                for rec in spectra)):
            raise error("spectra", "not one list of per-module singular values per step",
                        f"{len(steps)} lists of {len(widths)} tensors of lengths min(m, n)")

    def load_state_dict(self, state: dict | None) -> None:
        """Continue from :meth:`state_dict`; a state from before module spectra existed (None), or of other
        modules, turns them off for this run (its W0 is lost: a change measured from the resume point would
        not be the run's change)."""
        if state is None or list(state["names"]) != [m.name for m in self.modules] or state["reference"] is None:
            self.modules, self._reference, self._steps, self._norms, self._spectra = [], None, [], [], []
            return
        self._reference = [w.to(self.device) for w in state["reference"]]
        self._steps = [int(s) for s in state["steps"]]
        self._norms = [n.to(self.device) for n in state["norms"]]
        self._spectra = [[s.to(self.device) for s in rec] for rec in state["spectra"]]
