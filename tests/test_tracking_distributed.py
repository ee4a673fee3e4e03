"""RankTracker under distributed training (issue 26), two CPU processes on gloo: DDP and FSDP2 (``fully_shard``;
FSDP1 needs an accelerator in this torch) give the history of one process on the whole batch, recorded once, on
rank 0; DDP without a single collective call from the tracker; FSDP2 with a PEFT LoRA fine-tune too (slow). FSDP1
and DeepSpeed ZeRO-3 are refused by name."""

import datetime
import sys

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.tracking import RankTracker

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

STEPS, WORLD = 4, 2
TIMEOUT = datetime.timedelta(minutes=3)  # a collective that never meets its partner fails after this


class Tiny(torch.nn.Module):
    """Two torch encoder layers (2 heads, width 8) on 11 tokens, in float64."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.layers = torch.nn.ModuleList(torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
                                          for _ in range(2))
        self.head = torch.nn.Linear(8, 11)

    def forward(self, tokens):
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class Attention(torch.nn.Module):
    """q_proj/k_proj/v_proj/o_proj (the LLaMA-style layout), 2 heads of width 4, for LoRA to adapt."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (p(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1)
        return x + self.o_proj((a @ v).transpose(1, 2).reshape(b, n, d))


class TinyLinear(Tiny):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(Attention() for _ in range(2))


def _model(lora: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if not lora:
        return Tiny().double()
    import peft

    return peft.get_peft_model(TinyLinear().double(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj",
                                                                                                       "v_proj"]))


def _train(rank: int, world: int, mode: str, store: str, out: str, lora: bool = False) -> None:
    """Adam on the whole batch (one process) or on this rank's half of it; the mean loss over the whole batch is
    recorded (all-reduced by the training code, as a user's loop would log it). ``lora``: a PEFT LoRA fine-tune
    of q_proj and v_proj (the base frozen) instead of full training."""
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                             timeout=TIMEOUT)
    model = _model(lora)
    tokens = torch.randint(0, 11, (8, 6), generator=torch.Generator().manual_seed(1))
    tokens = tokens.chunk(world)[rank]
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in (model.get_base_model() if lora else model).layers:
            fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    else:
        wrapped = model
    tracker = RankTracker(wrapped)
    opt = torch.optim.Adam([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    for step in range(STEPS + 1):
        loss = None
        if step:
            logits = wrapped(tokens)
            local = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), tokens.reshape(-1))
            opt.zero_grad()
            local.backward()
            opt.step()
            loss = local.detach().clone()
            if world > 1:
                torch.distributed.all_reduce(loss)
                loss /= world
        if mode != "ddp" or rank == 0:  # under DDP rank 1 never calls record(): a collective in it would hang
            tracker.record(step, loss)
    state = {"records_here": tracker.records_here, "n_records": tracker.n_records,
             "sharded": tracker._sharded(), "names": [t.name for t in tracker.tracked]}
    if mode == "ddp" and rank == 1:
        state["late_record"] = tracker.record(STEPS + 1)  # returns at once, nothing measured
    if tracker.records_here:
        h = tracker.history()
        state.update(steps=h.steps, losses=h.losses, delta=h.delta_spectra, initial=h.initial_spectra)
    torch.save(state, f"{out}/rank{rank}.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


def _spawn(spawn_ranks, mode: str, tmp_path, lora: bool = False) -> list[dict]:
    """Run ``_train`` in WORLD spawned processes (failing, never hanging, if they have not finished in minutes)."""
    spawn_ranks(_train, (WORLD, mode, str(tmp_path / "store"), str(tmp_path), lora), WORLD)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The single-process history, for each model (``lora``: a PEFT LoRA fine-tune)."""
    histories = {}

    def run(lora: bool) -> dict:
        if lora not in histories:
            out = tmp_path_factory.mktemp("single")
            _train(0, 1, "single", "", str(out), lora)
            histories[lora] = torch.load(out / "rank0.pt", weights_only=False)
        return histories[lora]

    return run


def _needs_fsdp2():
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no torch.distributed.fsdp.fully_shard (FSDP2)")


@pytest.mark.parametrize("mode, lora", [("ddp", False), ("fsdp2", False),
                                        pytest.param("fsdp2", True, marks=pytest.mark.slow)],  # imports peft x 3
                         ids=["ddp", "fsdp2", "fsdp2-lora"])
def test_two_gloo_processes_record_the_history_of_one_once(mode, lora, tmp_path, one_process, spawn_ranks):
    if mode == "fsdp2":
        _needs_fsdp2()
    if lora:
        pytest.importorskip("peft")
    single = one_process(lora)
    rank0, rank1 = _spawn(spawn_ranks, mode, tmp_path, lora)
    assert rank0["names"] == rank1["names"] == single["names"] == [
        f"layers.{i}.{'' if lora else 'self_attn.'}{p}" for i in range(2) for p in ("qk", "vo")]
    assert rank0["sharded"] == rank1["sharded"] == (mode == "fsdp2")
    assert (rank0["records_here"], rank1["records_here"]) == (True, False)
    assert (rank0["n_records"], rank1["n_records"]) == (STEPS + 1, 0)  # recorded once: on rank 0
    if mode == "ddp":
        assert rank1["late_record"] is False
    np.testing.assert_array_equal(rank0["steps"], single["steps"])
    np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-10)
    np.testing.assert_allclose(rank0["initial"], single["initial"], rtol=1e-10, atol=1e-12)
    assert single["delta"][-1, :, 0].min() > 1e-3  # the weights (or, under LoRA, the adapters) did change
    np.testing.assert_allclose(rank0["delta"], single["delta"], rtol=1e-8, atol=1e-10)


def test_history_on_a_rank_that_does_not_record_says_so(monkeypatch):
    from verifier.tracking import distributed

    monkeypatch.setattr(distributed, "rank", lambda: 1)
    tracker = RankTracker(Tiny())
    assert tracker.records_here is False and tracker.record(0) is False and tracker.n_records == 0
    with pytest.raises(RuntimeError, match=r"rank 1\) does not record; rank 0 does"):
        tracker.history()


def test_fsdp1_and_deepspeed_zero3_are_refused_by_name(monkeypatch):
    class FullyShardedDataParallel(torch.nn.Module):  # stands for torch's FSDP1 class (it needs an accelerator)
        def __init__(self, module):
            super().__init__()
            self._fsdp_wrapped_module = module

    fake = type(sys)("torch.distributed.fsdp")
    fake.FullyShardedDataParallel = FullyShardedDataParallel
    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", fake)
    with pytest.raises(InputError, match=r"^module: wrapped in FSDP1 \(FullyShardedDataParallel\).*allowed: torch's "
                                         r"FSDP2 \(torch.distributed.fsdp.fully_shard\)"):
        RankTracker(FullyShardedDataParallel(Tiny()))
    monkeypatch.delitem(sys.modules, "torch.distributed.fsdp")

    model = Tiny()
    weight = model.layers[0].self_attn.in_proj_weight
    weight.ds_id, weight.ds_status, weight.ds_shape = 3, "NOT_AVAILABLE", (24, 8)  # what ZeRO-3 sets on a partition
    with pytest.raises(InputError, match=r"^module: DeepSpeed ZeRO-3 partitions its parameters \("
                                         r"'layers.0.self_attn.in_proj_weight' is a partition of a \(24, 8\) weight\)"
                                         r" \(allowed: ZeRO stage 0, 1 or 2"):
        RankTracker(model)


def test_data_parallel_is_looked_through():
    model = Tiny()
    tracker = RankTracker(torch.nn.DataParallel(model))
    assert tracker.wrappers == ("DataParallel",)
    assert [t.name for t in tracker.tracked] == [t.name for t in RankTracker(model).tracked]
