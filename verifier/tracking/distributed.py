"""Distributed training: which process records, and sharded weights read whole (docs/TRACKING.md, "Distributed
training").

- DDP (``DistributedDataParallel``), ``DataParallel``, DeepSpeed ZeRO stages 0-2: every rank holds the whole
  weights. The wrapper is looked through (the tracked names are the wrapped model's); rank 0 of the default
  process group records and every other rank's ``record()`` returns at once: no collective call, so a rank
  may call it or not.
- FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters are ``DTensor`` shards. At a record, each tracked
  weight alone is gathered (``DTensor.full_tensor()``, one all-gather per weight, in the same order on every
  rank), so under FSDP2 every rank calls ``record()`` at the same steps, as every rank runs the forward; rank 0
  computes and the others drop what they gathered.
- FSDP1 (``FullyShardedDataParallel``) and DeepSpeed ZeRO-3 are refused at construction, by name: outside the
  forward their attention weights are pieces of flat buffers (FSDP1) or partitions (ZeRO-3) that only a
  whole-model gather (``summon_full_params``, ``GatheredParameters``) makes readable; that gather is not done
  for the user (docs/TRACKING.md says how to track such a run).

Nothing here imports torch.distributed submodules or deepspeed that the process has not imported already.
"""

from __future__ import annotations

import sys

import torch

from ..errors import InputError


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _dtensor_type() -> type | None:
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "DTensor"):
            return module.DTensor
    return None


def is_sharded(t) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 parameter, or any tensor distributed over a device mesh)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def whole(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a DTensor gathered whole (a collective: every rank of its mesh must call it)."""
    return t.full_tensor() if is_sharded(t) else t


def unwrap(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model inside a DDP, DataParallel or DeepSpeed engine wrapper, or None when ``model`` is none of them."""
    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return model.module
    deepspeed = sys.modules.get("deepspeed")
    engine = getattr(deepspeed, "DeepSpeedEngine", None)
    if engine is not None and isinstance(model, engine):
        return model.module
    return None


def refuse_unsupported(model: torch.nn.Module) -> None:
    """FSDP1 and DeepSpeed ZeRO-3 partitioned parameters: an InputError naming them and what works instead."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    fsdp1 = getattr(fsdp, "FullyShardedDataParallel", None)
    if fsdp1 is not None and any(isinstance(m, fsdp1) for m in model.modules()):
        raise InputError("module", "wrapped in FSDP1 (FullyShardedDataParallel), whose flat parameters hide the "
                         "attention weights outside the forward pass",
                         "torch's FSDP2 (torch.distributed.fsdp.fully_shard), DDP, or one process; or track a "
                         "copy of the weights gathered with FSDP.summon_full_params")
    for name, p in model.named_parameters():
        if hasattr(p, "ds_id") and hasattr(p, "ds_status"):
            raise InputError("module", f"DeepSpeed ZeRO-3 partitions its parameters ({name!r} is a partition of a "
                             f"{tuple(getattr(p, 'ds_shape', ()))} weight)",
                             "ZeRO stage 0, 1 or 2 (every rank holds the whole weights; rank 0 records), torch's "
                             "FSDP2 (fully_shard), or a copy of the weights gathered with "
                             "deepspeed.zero.GatheredParameters")
