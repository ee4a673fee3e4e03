"""The Hugging Face and Lightning callbacks under torch.distributed (issue 26 item 4): two CPU processes on gloo,
joined through a file store (no port is opened). Every rank builds the tracker, restores it and calls record() at
the same steps; rank 0 alone logs and writes. Each run is compared with the same run in one process: the same
rank-tracking/ history (float64, to 1e-8), written once.

- Lightning, strategy "ddp": the real Trainer. Rank 1 never reads a weight (no measurement, so no collective
  call from the tracker); ``trainer.log_dir`` (a broadcast) is read on every rank.
- Lightning, FSDP2: the real Trainer with ``ModelParallelStrategy`` (data-parallel mesh of 2, ``fully_shard`` in
  ``configure_model``), which runs on CPU with gloo in this Lightning. Every rank reads (gathers) the weights at
  every record.
- Hugging Face, DDP: the real Trainer (accelerate's multi-CPU mode wraps the model in DDP) with
  ``logging_steps=500``, so the callback itself asks the Trainer to log (and so gather) the loss at each record.
- Hugging Face, FSDP2: accelerate enables FSDP only on accelerators (on CPU its distributed mode is DDP), so a
  loop drives the callback's hooks as the Trainer does (on_train_begin, on_step_end, on_log when
  ``control.should_log``, on_save, on_train_end) around a ``fully_shard`` model, and resumes from the saved state
  file on both ranks halfway.

Before this, the callbacks built the tracker and recorded on the main process only: under FSDP2 rank 0's gathers
waited for a rank that never came, Lightning's ``trainer.log_dir`` broadcast waited on rank 0, and the Hugging
Face Trainer gathered the loss on rank 0 only. Here a process group times out after 3 minutes and the test fails
after 10: a hang is a failure, not a stuck CI job.
"""

import contextlib
import csv
import datetime
import gc
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from verifier.errors import InputError

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

STEPS, EVERY, SAVE, WORLD, BATCH = 6, 2, 4, 2, 8
RECORDS = (0, 2, 4, 6)
TIMEOUT = datetime.timedelta(minutes=3)  # a collective that never meets its partner fails after this


def _join(rank: int, world: int, store: str) -> None:
    """One thread; under ``world`` > 1, the environment a launcher (torchrun) gives and the default process group,
    joined through the file ``store`` (the frameworks find it initialised and use it)."""
    torch.set_num_threads(1)
    if world == 1:
        return
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")  # read, never connected to
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                         timeout=TIMEOUT)


def _leave(world: int) -> None:
    """Under ``world`` > 1: collect what still holds the process group (a DDP wrapper's reducer, sharded
    parameters) while every peer is alive, meet them, then leave the group; a gloo connection torn down at
    interpreter exit, after its peer left, can abort the process (SIGABRT) although all its work was done."""
    if world > 1:
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _count_reads(world: int) -> list:
    """The steps at which this spawned process read the tracked weights (``RankTracker._factors``: a record's
    measurement, or under FSDP2 its part in the gathers); in the test process itself (``world`` 1) nothing is
    patched."""
    from verifier.tracking.tracker import RankTracker

    if world == 1:
        return []

    reads, original = [], RankTracker._factors

    def counted(self):
        reads.append(self.last_step)
        return original(self)

    RankTracker._factors = counted
    return reads


def _outcome(callback, reads, **extra) -> dict:
    t = callback.tracker
    out = {"records_here": t.records_here, "n_records": t.n_records, "record_steps": t.record_steps,
           "reads": list(reads), "sharded": t._sharded(), "written": callback.written, **extra}
    if t.records_here:
        h = callback.history()
        out.update(steps=h.steps, losses=h.losses, delta=h.delta_spectra, initial=h.initial_spectra)
    return out


# --- Lightning -------------------------------------------------------------------------------------------------

def _lightning_module():
    import lightning.pytorch as pl

    class Encoder(pl.LightningModule):
        """Two torch encoder layers (2 heads, width 8) and a linear head, in float64; under ModelParallelStrategy
        each layer and the whole model are sharded with FSDP2 over the data-parallel mesh."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.model = torch.nn.Sequential(torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                                             torch.nn.Linear(8, 1)).double()
            self.losses = []  # the loss training_step returned, per step, on this rank

        def configure_model(self):
            if self.device_mesh is not None:
                from torch.distributed.fsdp import fully_shard

                mesh = self.device_mesh["data_parallel"]
                for block in self.model[0].layers:
                    fully_shard(block, mesh=mesh)
                fully_shard(self.model, mesh=mesh)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.model(x).squeeze(-1), y)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, 5, 8, generator=g, dtype=torch.float64)
    return Encoder(), torch.utils.data.TensorDataset(x, x[..., 0] * x[..., 1])


def _lightning(rank: int, world: int, mode: str, store: str, out: str) -> None:
    """``mode``: "single" (one process), "ddp" or "fsdp2"; the global batch is the whole data set (8 samples), so
    every step of every mode sees the same samples."""
    _join(rank, world, store)
    reads = _count_reads(world)
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    from verifier.tracking.lightning import RankTrackerCallback

    module, data = _lightning_module()
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH // world)
    strategy = {"single": "auto", "ddp": lambda: DDPStrategy(process_group_backend="gloo"),
                "fsdp2": lambda: ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)}[mode]
    callback = RankTrackerCallback(every=EVERY)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=world,
                         strategy=strategy if isinstance(strategy, str) else strategy(), default_root_dir=out,
                         logger=pl.loggers.CSVLogger(out), callbacks=[callback], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, loader)
    torch.save(_outcome(callback, reads, returned=module.losses, log_dir=trainer.log_dir), f"{out}/rank{rank}.pt")
    del trainer, module, callback
    _leave(world)


@pytest.fixture(scope="module")
def lightning_single(tmp_path_factory):
    pytest.importorskip("lightning.pytorch")
    out = tmp_path_factory.mktemp("single")
    _lightning(0, 1, "single", "", str(out))
    return torch.load(out / "rank0.pt", weights_only=False)


def _needs_fsdp2():
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no torch.distributed.fsdp.fully_shard (FSDP2)")


def _assert_once_and_alike(rank0: dict, rank1: dict, single: dict, mode: str) -> None:
    """Recorded once (rank 0), at the same steps on both ranks, with the single process's spectra; under DDP
    rank 1 read no weight, under FSDP2 it took part in every record's gathers."""
    assert (rank0["records_here"], rank1["records_here"]) == (True, False)
    assert (rank0["n_records"], rank1["n_records"]) == (len(RECORDS), 0)
    assert rank0["record_steps"] == rank1["record_steps"] == single["record_steps"] == RECORDS
    assert rank0["reads"] == list(RECORDS)
    assert rank1["reads"] == (list(RECORDS) if mode == "fsdp2" else [])
    assert rank0["sharded"] == rank1["sharded"] == (mode == "fsdp2")
    assert rank1["written"] is None
    np.testing.assert_array_equal(rank0["steps"], RECORDS)
    np.testing.assert_allclose(rank0["initial"], single["initial"], rtol=1e-10, atol=1e-12)
    assert single["delta"][-1, :, 0].min() > 1e-3  # the weights did change
    np.testing.assert_allclose(rank0["delta"], single["delta"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_lightning_on_two_processes_records_the_history_of_one_once(mode, tmp_path, lightning_single, spawn_ranks):
    if mode == "fsdp2":
        _needs_fsdp2()
    spawn_ranks(_lightning, (WORLD, mode, str(tmp_path / "store"), str(tmp_path)), WORLD)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    single = lightning_single
    _assert_once_and_alike(rank0, rank1, single, mode)

    # the two ranks together trained as the one process did; each record carries rank 0's own loss (its half of
    # the batch), the reference the first step's
    np.testing.assert_allclose((np.array(rank0["returned"]) + rank1["returned"]) / 2, single["returned"], rtol=1e-10)
    loss_at = [0, *[s - 1 for s in RECORDS[1:]]]  # a loss tensor reaches the host in float32 (RankTracker.history)
    np.testing.assert_allclose(rank0["losses"], np.array(rank0["returned"])[loss_at], rtol=1e-6)
    np.testing.assert_allclose(single["losses"], np.array(single["returned"])[loss_at], rtol=1e-6)

    # written once, by rank 0, into the run's log folder; logged once per record step
    log_dir = Path(rank0["log_dir"])
    assert rank1["log_dir"] == rank0["log_dir"] and log_dir == tmp_path / "lightning_logs" / "version_0"
    assert rank0["written"] == log_dir / "rank-tracking"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("rank-tracking")) == [
        Path("lightning_logs/version_0/rank-tracking")]
    assert sorted(p.name for p in log_dir.iterdir()) == ["metrics.csv", "rank-tracking"]  # no temporary folder left
    from verifier.tracking import RankHistory

    saved = RankHistory.load(log_dir / "rank-tracking" / "rank-history.npz")
    np.testing.assert_array_equal(saved.delta_spectra, rank0["delta"])
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    tag = "rank/model.0.layers.0.self_attn.qk"
    assert [int(r["step"]) for r in rows if r.get(tag)] == list(RECORDS[1:])


# --- Hugging Face ----------------------------------------------------------------------------------------------

def _gpt2():
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=13, n_positions=8, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).double()


def _tokens() -> torch.Tensor:
    return torch.randint(0, 13, (BATCH, 8), generator=torch.Generator().manual_seed(1))


def _hf_trainer(rank: int, world: int, store: str, out: str) -> None:
    """The Trainer on the whole data set (8 sequences) per step: one process, or DDP over ``world`` (accelerate's
    multi-CPU mode); ``logging_steps=500``, so every record's loss is logged because the callback asks for it."""
    _join(rank, world, store)
    reads = _count_reads(world)
    import transformers

    from verifier.tracking.hf import RankTrackerCallback

    args = transformers.TrainingArguments(output_dir=out, max_steps=STEPS, per_device_train_batch_size=BATCH // world,
                                          learning_rate=3e-3, logging_steps=500, save_steps=SAVE, report_to=[],
                                          use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    callback = RankTrackerCallback(every=EVERY)
    trainer = transformers.Trainer(model=_gpt2(), args=args, train_dataset=[{"input_ids": x, "labels": x}
                                                                          for x in _tokens()], callbacks=[callback])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.train()
    logged = [e["step"] for e in trainer.state.log_history if any(k.startswith("rank/") for k in e)]
    torch.save(_outcome(callback, reads, logged=logged, wrapped=type(trainer.model_wrapped).__name__),
               f"{out}/rank{rank}.pt")
    del trainer, callback
    _leave(world)


def _hf_hooks(rank: int, world: int, store: str, out: str) -> None:
    """An FSDP2 (``fully_shard``) training loop driving the callback through transformers' own CallbackHandler and
    DefaultFlowCallback, as the Trainer does: on_train_begin; after each optimizer step on_step_end, then, when
    ``control.should_log``, the loss averaged over the ranks (the Trainer gathers it) to on_log, when
    ``control.should_save`` on_save. The job stops after the save at step SAVE; a second callback resumes there,
    on every rank from the state file rank 0 saved, and runs to the end (on_train_end writes the set)."""
    _join(rank, world, store)
    reads = _count_reads(world)
    import transformers
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, TrainerControl, TrainerState

    from verifier.tracking.hf import RankTrackerCallback

    model = _gpt2()
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    tokens = _tokens().chunk(world)[rank]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    args = transformers.TrainingArguments(output_dir=out, max_steps=STEPS, logging_steps=500, save_steps=SAVE,
                                          report_to=[], use_cpu=True)
    flags, callbacks = [], []

    def run(first: int, last: int) -> None:
        callback = RankTrackerCallback(every=EVERY, log=False)
        callbacks.append(callback)
        handler = CallbackHandler([DefaultFlowCallback(), callback], model, None, opt, None)
        state = TrainerState(global_step=first, max_steps=STEPS, logging_steps=500, save_steps=SAVE,
                             is_world_process_zero=rank == 0, is_local_process_zero=rank == 0)
        control = handler.on_train_begin(args, state, TrainerControl())
        while state.global_step < last:
            loss = model(tokens, labels=tokens).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            state.global_step += 1
            control = handler.on_step_end(args, state, control)
            flags.append((state.global_step, control.should_log, control.should_save))
            if control.should_log:
                mean = loss.detach().clone()
                if world > 1:
                    torch.distributed.all_reduce(mean)
                control = handler.on_log(args, state, control, {"loss": (mean / world).item()})
            if control.should_save:
                control = handler.on_save(args, state, control)
        if last == STEPS:
            handler.on_train_end(args, state, control)

    run(0, SAVE)
    if world > 1:
        torch.distributed.barrier()  # the next job starts after this one saved
    run(SAVE, STEPS)
    torch.save(_outcome(callbacks[-1], reads, flags=flags, first_written=callbacks[0].written), f"{out}/rank{rank}.pt")
    model = opt = None  # the run() closure holds them
    callbacks.clear()
    _leave(world)


@pytest.fixture(scope="module")
def hf_single(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    runs = {}

    def run(fn):
        if fn not in runs:
            out = tmp_path_factory.mktemp("single")
            fn(0, 1, "", str(out))
            runs[fn] = torch.load(out / "rank0.pt", weights_only=False)
        return runs[fn]

    return run


def test_hf_trainer_ddp_on_two_processes_records_the_history_of_one_once(tmp_path, hf_single, spawn_ranks):
    """The Trainer logs (and gathers) the loss where the callback asks for it, on every rank alike: asked on rank
    0 only, as before, rank 0 waited in the gather for a rank that never came."""
    single = hf_single(_hf_trainer)
    spawn_ranks(_hf_trainer, (WORLD, str(tmp_path / "store"), str(tmp_path)), WORLD)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert rank0["wrapped"] == rank1["wrapped"] == "DistributedDataParallel"
    _assert_once_and_alike(rank0, rank1, single, "ddp")
    assert np.isfinite(rank0["losses"]).all()  # every record, the reference too, carries the Trainer's loss
    np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-4)  # the mean over both ranks
    assert rank0["logged"] == single["logged"] == list(RECORDS[1:]) and rank1["logged"] == []
    assert rank0["written"] == tmp_path / "rank-tracking"
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("rank-tracking")] == [Path("rank-tracking")]
    assert (tmp_path / f"checkpoint-{SAVE}" / "rank_tracker.pt").is_file()


def test_hf_callback_hooks_under_fsdp2_on_two_processes_with_a_resume(tmp_path, hf_single, spawn_ranks):
    """Every rank takes part in each record's gathers, asks the Trainer to log at the same steps, and restores
    the state file on resume (a rank starting a fresh history there would gather alone)."""
    _needs_fsdp2()
    single = hf_single(_hf_hooks)
    spawn_ranks(_hf_hooks, (WORLD, str(tmp_path / "store"), str(tmp_path)), WORLD)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    _assert_once_and_alike(rank0, rank1, single, "fsdp2")
    assert rank0["flags"] == rank1["flags"] == single["flags"]
    assert [s for s, log, _ in rank0["flags"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, log, _ in rank0["flags"] if log] == [1, 2, 4, 6]  # the reference's loss, then each record's
    np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-6)  # stored in float32 (the state file)
    assert rank0["first_written"] is None and rank0["written"] == tmp_path / "rank-tracking"
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("rank-tracking")] == [Path("rank-tracking")]
    assert sorted(p.name for p in (tmp_path / f"checkpoint-{SAVE}").iterdir()) == ["rank-history.npz",
                                                                                  "rank_tracker.pt"]


# --- what a rank that does not record does, in one process (rank 1 simulated) ----------------------------------

def test_a_rank_that_does_not_record_keeps_only_the_steps_of_a_restored_state(monkeypatch):
    """It measures nothing, so it holds no reference weights; it knows the run's record steps, so a callback on it
    decides as on rank 0 (a fresh history records a reference, a restored one does not)."""
    from verifier.tracking import RankTracker, distributed

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2)
    main = RankTracker(mha, every=EVERY)
    for step in range(5):
        main.record(step)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    other = RankTracker(mha, every=EVERY)
    other.load_state_dict(main.state_dict())
    assert other.record_steps == main.record_steps == (0, 2, 4) and other.last_step == main.last_step == 4
    assert other.n_records == 0 and other._reference is None and other._bases == {}
    assert other.record(5) is False and other.record(6) is False and main.record(6) is True
    assert other.record_steps == main.record_steps == (0, 2, 4, 6)
    with pytest.raises(RuntimeError, match=r"rank 1\) does not record; rank 0 does"):
        other.history()


@pytest.mark.parametrize("blocked", [False, True])
def test_only_rank_0_checks_the_output_folder_and_writes(tmp_path, monkeypatch, blocked):
    """The Hugging Face callback's hooks on a rank other than 0: the folder is neither probed nor created (a bad
    one is rank 0's to refuse), the tracker is built and takes part in the records, nothing is saved or written."""
    transformers = pytest.importorskip("transformers")
    from transformers.trainer_callback import TrainerControl, TrainerState

    from verifier.tracking import distributed
    from verifier.tracking.hf import RankTrackerCallback

    folder = tmp_path / "out"
    if blocked:
        folder.write_text("a regular file: refused on rank 0")
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    callback = RankTrackerCallback(every=EVERY, log=False, output_dir=folder)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True,
                                          logging_steps=500)
    state, control = TrainerState(is_world_process_zero=False), TrainerControl()
    callback.on_train_begin(args, state, control, model=_gpt2())
    for step in range(1, 5):
        state.global_step = step
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs={"loss": 1.0})
    callback.on_save(args, state, control)
    callback.on_train_end(args, state, control)
    assert callback.tracker.record_steps == RECORDS[:3] and callback.tracker.n_records == 0
    assert callback.written is None and not (tmp_path / "run").exists()
    assert folder.is_file() if blocked else not folder.exists()
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    with pytest.raises(InputError, match=r"^output_dir: ") if blocked else contextlib.nullcontext():
        RankTrackerCallback(every=EVERY, log=False, output_dir=folder).on_train_begin(args, TrainerState(), control,
                                                                                      model=_gpt2())
