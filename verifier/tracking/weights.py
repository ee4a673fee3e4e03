"""Reading a tracked weight, by name, as the forward pass computes with it (docs/TRACKING.md).

A tracked weight is an attribute path from a module (``"c_attn.weight"`` of an attention module, or a
parameter name of a named product), looked up again at every read: a parameter that training code replaces by
a new ``Parameter`` (or a module that PEFT wraps after the tracker was built) is read where it is now, never a
stale object. Through the wrappers of :mod:`.adapters` (PEFT: the effective weight, base plus adapter) and
:mod:`.distributed` (DDP and DeepSpeed engines looked through; an FSDP2 shard gathered whole).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import InputError
from . import adapters, distributed


def unwrap(model: torch.nn.Module) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """The model inside DDP, DataParallel, DeepSpeed-engine and PEFT wrappers, and the wrappers' class names
    (outermost first)."""
    wrappers: list[str] = []
    while (inner := distributed.unwrap(model) or adapters.unwrap_peft(model)) is not None:
        wrappers.append(type(model).__name__)
        model = inner
    return model, tuple(wrappers)


class WeightReader:
    """Reads weights of ``model`` (and its submodules) by attribute path. Within :meth:`reading`, a weight
    read twice (GPT-2's fused ``c_attn`` gives q, k and v) is read, combined with its adapters and gathered
    once."""

    def __init__(self, model: torch.nn.Module):
        self._tuners = adapters.tuner_layers(model)  # PEFT tuner layers by their base layer's id
        self._cache: dict | None = None

    @staticmethod
    def _locate(module: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
        *owners, leaf = path.split(".")
        owner = module
        for part in owners:
            owner = getattr(owner, part, None)
            if not isinstance(owner, torch.nn.Module):
                raise InputError("module", f"no submodule {part!r} on the way to {path!r}",
                                 "the attribute path of a weight that exists")
        return owner, leaf

    def stored(self, module: torch.nn.Module, path: str) -> torch.Tensor:
        """The tensor stored at ``path`` now (a shard under FSDP2; a PEFT layer's base weight), not combined."""
        owner, leaf = self._locate(module, path)
        w = getattr(owner, leaf, None)
        if not torch.is_tensor(w):
            raise InputError("module", f"{path!r} is no longer a tensor ({type(w).__name__})",
                             "the attribute path of a weight that exists")
        return w

    def tuner(self, module: torch.nn.Module, path: str, where: str | None = None):
        """The PEFT tuner layer whose forward computes with the weight at ``path`` (None when there is none);
        an InputError when the adapter is one the tracker cannot read (``where``: the weight's name in it)."""
        owner, leaf = self._locate(module, path)
        layer = owner if adapters.is_tuner(owner) else self._tuners.get(id(owner))
        if layer is None:
            return None
        if leaf != "weight":
            raise InputError("module", f"{where or path}: a PEFT adapter ({type(layer).__module__}."
                             f"{type(layer).__qualname__}) wraps the module holding it, and it is not that module's "
                             "'weight'", "adapters on linear (or Conv1D) projections")
        adapters.check(layer, where or path)
        return layer

    def read(self, module: torch.nn.Module, path: str) -> torch.Tensor:
        """The weight the forward pass computes with: a PEFT layer's effective weight, a shard gathered whole."""
        owner, leaf = self._locate(module, path)
        key = (id(owner), leaf)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        layer = self.tuner(module, path)
        w = (adapters.effective_weight(layer, distributed.whole) if layer is not None
             else distributed.whole(self.stored(module, path)))
        if self._cache is not None:
            self._cache[key] = w
        return w

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Read each weight once in the block."""
        self._cache = {}
        try:
            yield
        finally:
            self._cache = None
