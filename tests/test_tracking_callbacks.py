"""The Hugging Face Trainer and Lightning callbacks on tiny models (CPU, seconds each): both checks come back as
CheckResults; the output set (results.json, report.html, rank-history.npz) lands in the run's own folder under
rank-tracking/; the stable ranks reach the frameworks' loggers at the record steps; a run resumed from a
checkpoint continues the history; bad folders and damaged state files are refused when training begins, naming
them; a run whose loss explodes while staying finite is inconclusive, never a pass."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.results import CheckResult, Verdict
from verifier.tracking import GRADUAL, LOW_RANK, RankHistory, RankTracker
from verifier.tracking.tensorboard import TensorBoardSink

STEPS, EVERY, SAVE = 20, 2, 10
EPOCH = 8  # Lightning batches per epoch (64 samples, batch 8)
RECORDS = np.arange(0, STEPS + 1, EVERY)


class FakeWriter:
    def __init__(self):
        self.scalars, self.histograms = {}, {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))

    def add_histogram(self, tag, values, step):
        self.histograms.setdefault(tag, []).append((step, np.asarray(values)))

    def flush(self):
        pass


def test_tensorboard_sink_writes_each_heads_stable_rank():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2)
    tracker, writer, spectra_only = RankTracker(mha), FakeWriter(), FakeWriter()
    sinks = TensorBoardSink(writer), TensorBoardSink(spectra_only, scalars=False)
    tracker.record(0)
    for sink in sinks:
        sink.write(tracker)
    assert writer.scalars == {}  # the zero change has no rank
    with torch.no_grad():
        mha.in_proj_weight.add_(0.1 * torch.randn_like(mha.in_proj_weight))
    tracker.record(1)
    for sink in sinks:
        sink.write(tracker)
    h = tracker.history()
    assert sorted(writer.scalars) == sorted(f"rank/{label}" for label in h.labels)
    for label, rank in zip(h.labels, h.stable_rank()[1]):
        assert writer.scalars[f"rank/{label}"] == [(1, pytest.approx(rank))]
    np.testing.assert_allclose(writer.histograms["spectrum/attention.qk"][0][1], h.delta_spectra[1, :2].ravel())
    assert spectra_only.scalars == {} and set(spectra_only.histograms) == set(writer.histograms)


def test_tensorboard_sink_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = RankTracker(torch.nn.MultiheadAttention(8, 2))
    tracker.record(0)
    sink = TensorBoardSink(tmp_path / "tb")
    sink.write(tracker)
    sink.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# --- Hugging Face Trainer ------------------------------------------------------------------------------------

def _gpt2(seed=0, scale=1.0):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=13, n_positions=8,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("transformer.wte.", "transformer.wpe.")):
                p.mul_(scale)
    return model


def _hf_run(output_dir, max_steps=STEPS, resume=None, seed=0, callback=None, **args):
    import transformers

    from verifier.tracking.hf import RankTrackerCallback

    model = _gpt2(seed)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 13, (64, 8), generator=g)]
    settings = dict(max_steps=max_steps, per_device_train_batch_size=8, learning_rate=3e-3, logging_steps=EVERY,
                    save_steps=SAVE, report_to=[], use_cpu=True, seed=seed, disable_tqdm=True,
                    dataloader_num_workers=0)
    settings.update(args)
    if output_dir is not None:
        settings["output_dir"] = str(output_dir)
    callback = callback or RankTrackerCallback(every=EVERY)
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(**settings),
                                   train_dataset=data, callbacks=[callback])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.train(resume_from_checkpoint=resume)
    return callback, trainer


def _assert_set(callback, folder):
    """The output set: both checks as CheckResults and in results.json, the report's figures, and a
    rank-history.npz equal to the callback's history."""
    results = callback.results()
    assert [type(r) for r in results] == [CheckResult, CheckResult]
    assert [r.id for r in results] == [LOW_RANK, GRADUAL]
    assert callback.written == folder and folder.name == "rank-tracking"
    data = json.loads((folder / "results.json").read_text())
    assert [c["id"] for c in data["checks"]] == [LOW_RANK, GRADUAL]
    assert [c["verdict"] for c in data["checks"]] == [r.verdict.value for r in results]
    assert (folder / "report.html").read_text().count("<svg") >= 5
    saved, h = RankHistory.load(folder / "rank-history.npz"), callback.history()
    np.testing.assert_array_equal(saved.delta_spectra, h.delta_spectra)
    np.testing.assert_array_equal(saved.losses, h.losses)
    assert saved.names == h.names and saved.info["init_scale"] == 1.0 and saved.info["every"] == EVERY
    return data


def test_hf_trainer_callback_and_resume(tmp_path):
    full, _ = _hf_run(tmp_path / "full" / "hf")
    h = full.tracker.history()
    np.testing.assert_array_equal(h.steps, RECORDS)
    assert np.isfinite(h.losses).all()  # every record, the reference too (the first step's loss)
    assert len(h.names) == 8 and h.finite.all()  # 2 layers x {qk, vo} x 2 heads
    assert (h.delta_spectra[-1, :, 0] > 0).all()
    data = _assert_set(full, tmp_path / "full" / "hf" / "rank-tracking")
    assert data["run"]["model"] == "GPT2LMHeadModel"
    checkpoint = tmp_path / "full" / "hf" / f"checkpoint-{SAVE}"
    assert (checkpoint / "rank_tracker.pt").is_file()
    np.testing.assert_array_equal(RankHistory.load(checkpoint / "rank-history.npz").steps, RECORDS[RECORDS <= SAVE])

    # a second run resumed from checkpoint-10 continues the history of the first
    resumed_dir = tmp_path / "resumed" / "hf"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(checkpoint, resumed_dir / checkpoint.name)
    resumed, _ = _hf_run(resumed_dir, resume=str(resumed_dir / checkpoint.name))
    r = resumed.tracker.history()
    np.testing.assert_array_equal(r.steps, h.steps)
    np.testing.assert_array_equal(r.initial_spectra, h.initial_spectra)
    restored = h.steps <= SAVE
    np.testing.assert_array_equal(r.delta_spectra[restored], h.delta_spectra[restored])
    np.testing.assert_allclose(r.delta_spectra[~restored], h.delta_spectra[~restored], rtol=1e-3, atol=1e-6)
    _assert_set(resumed, resumed_dir / "rank-tracking")


def test_hf_report_to_gets_the_ranks_in_the_trainers_log_history(tmp_path):
    """report_to set, logging_steps left at the Trainer's default (500): the Trainer's own log history holds
    rank/<product> at every record step (through Trainer.log, as every integration gets it), every record
    carries the Trainer's logged loss, and the TensorBoard integration wrote the rank scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from verifier.tracking.hf import RankTrackerCallback

    callback = RankTrackerCallback(every=EVERY)
    _, trainer = _hf_run(tmp_path / "hf", callback=callback, report_to=["tensorboard"], logging_steps=500,
                         save_strategy="no")
    h = callback.tracker.history()
    assert np.isfinite(h.losses).all()
    logged = [e for e in trainer.state.log_history if any(k.startswith("rank/") for k in e)]
    assert [e["step"] for e in logged] == list(RECORDS[1:])  # the reference (a zero change) has no rank
    names = list(dict.fromkeys(h.names))
    for entry, sr in zip(logged, h.stable_rank()[1:]):
        assert sorted(k for k in entry if k.startswith("rank/")) == sorted(f"rank/{n}" for n in names)
        for n in names:  # the mean over the product's heads
            assert entry[f"rank/{n}"] == pytest.approx(np.mean(sr[np.array(h.names) == n]), rel=1e-6)
    events = EventAccumulator(str(next((tmp_path / "hf" / "runs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tag = f"train/rank/{names[0]}"
    assert tag in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars(tag)] == list(RECORDS[1:])
    assert not list((tmp_path / "hf").rglob("rank-spectra"))  # no writer of its own unless asked


def test_hf_per_head_logging_and_no_loss_warning(tmp_path):
    from verifier.tracking.hf import RankTrackerCallback

    callback = RankTrackerCallback(every=EVERY, log="heads", write=False)
    with pytest.warns(UserWarning, match="logging_strategy='no'") as caught:
        _, trainer = _hf_run(tmp_path / "hf", callback=callback, logging_strategy="no", save_strategy="no")
    assert sum("logging_strategy" in str(w.message) for w in caught) == 1  # once
    h = callback.tracker.history()
    assert np.isnan(h.losses).all()
    logged = [e for e in trainer.state.log_history if any(k.startswith("rank/") for k in e)]
    assert sorted(k for k in logged[-1] if k.startswith("rank/")) == sorted(f"rank/{label}" for label in h.labels)
    assert not (tmp_path / "hf" / "rank-tracking").exists()  # write=False


def test_hf_sgd_explosion_that_stays_finite_is_inconclusive(tmp_path, monkeypatch):
    """Issue 29: SGD at lr 1e6 under the Trainer's gradient clipping takes the loss from log 13 ~ 2.6 to ~1e9
    with every value finite. Without the loss-rose rule both checks pass on it; with it both are inconclusive."""
    callback, _ = _hf_run(tmp_path / "hf", optim="sgd", learning_rate=1e6, lr_scheduler_type="constant",
                          save_strategy="no")
    h = callback.tracker.history()
    assert h.finite.all() and h.losses[0] < 3 and h.losses[-1] > 1e6
    results = callback.results()
    assert [(r.verdict, r.reason) for r in results] == [(Verdict.INCONCLUSIVE, "loss-rose")] * 2
    assert all("training loss rose (init scale 1: 2." in r.message for r in results)
    data = json.loads((tmp_path / "hf" / "rank-tracking" / "results.json").read_text())
    assert {c["reason"] for c in data["checks"]} == {"loss-rose"}
    import verifier.tracking.checks as checks

    monkeypatch.setattr(checks, "loss_rose", lambda history: None)  # the counterexample: without the rule
    assert [r.verdict for r in callback.results()] == [Verdict.PASS, Verdict.PASS]


# --- Lightning -----------------------------------------------------------------------------------------------

def _lightning_module():
    pl = pytest.importorskip("lightning.pytorch")

    class Encoder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(16, 1)

        def forward(self, x):
            return self.head(self.encoder(x)).squeeze(-1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 6, 16, generator=g)
    y = x[..., 0] * x[..., 1]
    return pl, Encoder(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _lightning_run(root, max_steps=STEPS, ckpt_path=None, callback=None, **trainer_args):
    pl, module, loader = _lightning_module()
    from verifier.tracking.lightning import RankTrackerCallback

    callback = callback or RankTrackerCallback(every=EVERY)
    settings = dict(max_steps=max_steps, accelerator="cpu", devices=1, enable_progress_bar=False,
                    enable_model_summary=False, log_every_n_steps=1)
    if root is not None:
        checkpoints = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=EPOCH, save_top_k=-1)
        settings.update(default_root_dir=root, logger=pl.loggers.CSVLogger(root),
                        callbacks=[callback, checkpoints])
    else:
        settings.update(callbacks=[callback])
    settings.update(trainer_args)
    trainer = pl.Trainer(**settings)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return callback, trainer


def test_lightning_callback_and_resume(tmp_path):
    full, trainer = _lightning_run(tmp_path / "full")
    h = full.tracker.history()
    np.testing.assert_array_equal(h.steps, RECORDS)
    assert np.isfinite(h.losses).all()  # the reference takes the first step's loss
    assert len(h.names) == 8 and h.finite.all()
    log_dir = Path(trainer.log_dir)
    assert log_dir == tmp_path / "full" / "lightning_logs" / "version_0"
    data = _assert_set(full, log_dir / "rank-tracking")
    assert data["run"]["model"] == "TransformerEncoder in Encoder"  # the model, not its LightningModule wrapper

    # the stable ranks reach the logger at the record steps (not one step early)
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    tag = "rank/encoder.layers.0.self_attn.qk"
    ranked = [r for r in rows if r.get(tag)]
    assert [int(r["step"]) for r in ranked] == list(RECORDS[1:])
    sr = h.stable_rank()[1:, np.array(h.names) == "encoder.layers.0.self_attn.qk"].mean(axis=1)
    np.testing.assert_allclose([float(r[tag]) for r in ranked], sr, rtol=1e-6)

    # at an epoch's end: a plain DataLoader cannot resume inside an epoch
    checkpoint = next((tmp_path / "full" / "ckpt").glob(f"*step={EPOCH}.ckpt"))
    resumed, trainer = _lightning_run(tmp_path / "resumed", ckpt_path=str(checkpoint))
    r = resumed.tracker.history()
    np.testing.assert_array_equal(r.steps, h.steps)
    restored = h.steps <= EPOCH
    np.testing.assert_array_equal(r.delta_spectra[restored], h.delta_spectra[restored])
    np.testing.assert_array_equal(r.losses[restored], h.losses[restored])
    np.testing.assert_allclose(r.delta_spectra[~restored], h.delta_spectra[~restored], rtol=1e-3, atol=1e-6)
    _assert_set(resumed, Path(trainer.log_dir) / "rank-tracking")


# --- where the output goes, and what is refused when training begins ------------------------------------------

@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_default_arguments_leave_nothing_importable_in_the_working_directory(tmp_path, monkeypatch, framework):
    """Issue 26: with default arguments the callbacks write inside the framework's own run folder (the Trainer's
    output_dir, Lightning's log_dir) under rank-tracking/, never a folder named verifier in the working
    directory; the next `python -c "import verifier"` started there works."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if framework == "hf":
        from verifier.tracking.hf import RankTrackerCallback

        callback, _ = _hf_run(None, callback=RankTrackerCallback(), save_strategy="no", logging_steps=500)
        own = {"trainer_output"}  # TrainingArguments' default output_dir
        folder = work / "trainer_output" / "rank-tracking"
    else:
        from verifier.tracking.lightning import RankTrackerCallback

        callback, trainer = _lightning_run(None, callback=RankTrackerCallback())
        own = {"lightning_logs"}  # Lightning's default logger
        folder = Path(trainer.log_dir) / "rank-tracking"
    assert set(os.listdir(work)) <= own  # the callback added nothing beside the framework's own folder
    assert callback.written == folder and (folder / "results.json").is_file()
    assert not (folder / "rank-tracking").exists() and not folder.name.isidentifier()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import verifier; print(verifier.__version__)"], cwd=work,
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def _blocked(tmp_path, how):
    if how == "a regular file":
        path = tmp_path / "out"
        path.write_text("not a folder")
    elif how == "a place that cannot be created":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux's /proc, where nothing can be created, even by root")
        path = Path("/proc/verifier-never/out")
    elif how == "a read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir()
        path = tmp_path / "ro" / "out"
        os.chmod(tmp_path / "ro", 0o555)
    else:
        path = tmp_path / "out"
        path.mkdir()
        (path / "notes.txt").write_text("the user's own file")
    return path


@pytest.mark.parametrize("how", ["a regular file", "a folder holding other files", "a read-only folder",
                                 "a place that cannot be created"])
@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_a_bad_output_folder_is_refused_when_training_begins(tmp_path, framework, how):
    """Issue 29: noticed before the first step, naming the callback's own argument (output_dir), never --out."""
    path = _blocked(tmp_path, how)
    if framework == "hf":
        from verifier.tracking.hf import RankTrackerCallback

        callback = RankTrackerCallback(every=EVERY, output_dir=path)
        with pytest.raises(InputError, match=r"^output_dir: ") as err:
            _hf_run(tmp_path / "hf", callback=callback, save_strategy="no")
    else:
        from verifier.tracking.lightning import RankTrackerCallback

        callback = RankTrackerCallback(every=EVERY, output_dir=path)
        with pytest.raises(InputError, match=r"^output_dir: ") as err:
            _lightning_run(tmp_path / "pl", callback=callback)
    assert "--out" not in str(err.value) and str(path) in str(err.value)
    assert callback.tracker is None  # refused before the tracker was built: no step was taken with it
    if how in ("a read-only folder", "a place that cannot be created"):
        assert not path.exists()
    else:
        assert (path.read_text() if path.is_file() else (path / "notes.txt").read_text()) in ("not a folder",
                                                                                               "the user's own file")


@pytest.mark.parametrize("kwargs, field", [
    (dict(every=0), "every"), (dict(init_scale=0.0), "init_scale"), (dict(init_scale=float("nan")), "init_scale"),
    (dict(heads="h.0.attn.qk[h0]"), "heads"), (dict(log="everything"), "log"),
])
@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_callback_arguments_are_checked_when_built(framework, kwargs, field):
    module = pytest.importorskip("verifier.tracking.hf" if framework == "hf" else "verifier.tracking.lightning")
    with pytest.raises(InputError, match=rf"^{field}: "):
        module.RankTrackerCallback(**kwargs)


def test_an_unknown_head_label_is_refused_when_training_begins(tmp_path):
    from verifier.tracking.hf import RankTrackerCallback

    with pytest.raises(InputError, match=r"^heads: 'nope\[h0\]' is not a tracked head"):
        _hf_run(tmp_path / "hf", callback=RankTrackerCallback(every=EVERY, heads=["nope[h0]"]), save_strategy="no")


@pytest.mark.parametrize("content", [b"\x00garbage, not a zip or a pickle", "foreign"])
def test_a_damaged_state_file_on_resume_names_the_file(tmp_path, content):
    """Issue 29: rank_tracker.pt read with weights_only=True; garbage, or a readable file that is not a tracker
    state, is an InputError naming the file when training begins."""
    _hf_run(tmp_path / "hf", max_steps=SAVE)
    checkpoint = tmp_path / "hf" / f"checkpoint-{SAVE}"
    state = checkpoint / "rank_tracker.pt"
    if content == "foreign":
        torch.save({"weights": torch.zeros(3)}, state)
    else:
        state.write_bytes(content)
    with pytest.raises(InputError, match="rank_tracker.pt") as err:
        _hf_run(tmp_path / "hf", resume=str(checkpoint))
    assert str(err.value).startswith(str(state))
    assert "allowed" in str(err.value)


def test_a_lightning_checkpoint_with_another_models_state_names_the_checkpoint(tmp_path):
    _lightning_run(tmp_path / "full", max_steps=EPOCH)
    checkpoint = next((tmp_path / "full" / "ckpt").glob(f"*step={EPOCH}.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)
    key = next(k for k in saved["callbacks"] if k.startswith("RankTrackerCallback"))
    saved["callbacks"][key]["tracker"]["names"] = ["other.qk"] * len(saved["callbacks"][key]["tracker"]["names"])
    torch.save(saved, checkpoint)
    with pytest.raises(InputError) as err:
        _lightning_run(tmp_path / "resumed", ckpt_path=str(checkpoint))
    assert str(err.value).startswith(f"{checkpoint} (RankTrackerCallback state): ")


def test_a_resume_without_the_state_file_warns_once(tmp_path):
    _hf_run(tmp_path / "hf", max_steps=SAVE)
    checkpoint = tmp_path / "hf" / f"checkpoint-{SAVE}"
    (checkpoint / "rank_tracker.pt").unlink()
    with pytest.warns(UserWarning, match=f"resumed at step {SAVE} without .*rank_tracker.pt"):
        callback, _ = _hf_run(tmp_path / "hf", resume=str(checkpoint))
    np.testing.assert_array_equal(callback.tracker.history().steps, RECORDS[RECORDS >= SAVE])


def test_state_dict_refuses_another_model():
    a = RankTracker(torch.nn.MultiheadAttention(8, 2))
    a.record(0)
    b = RankTracker(torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2)))
    with pytest.raises(InputError, match="load_state_dict"):
        b.load_state_dict(a.state_dict())


def test_verifier_track_gpt2_tiny(tmp_path, capsys):
    """The language-model demo: GPT-2 from a config, the Hugging Face Trainer with the callback, a copying task
    made in-process; the same output set as the ViT demo."""
    pytest.importorskip("transformers")
    from verifier.cli import main

    out = tmp_path / "run"
    code = main(["track", "--preset", "gpt2-tiny", "--epochs", "1", "--out", str(out), "--no-progress"])
    data = json.loads((out / "results.json").read_text())
    verdicts = [c["verdict"] for c in data["checks"]]
    assert code == {"pass": 0, "fail": 1, "inconclusive": 3}[min(verdicts, key=["fail", "inconclusive", "pass"].index)]
    assert [c["id"] for c in data["checks"]] == [LOW_RANK, GRADUAL]
    assert data["run"]["model"] == "gpt2 (gpt2-tiny)" and "transformers" in data["run"]["provenance"]["versions"]
    training = data["run"]["training"]
    assert set(training) == {"1", "0.3"}
    for run in training.values():
        assert run["steps"] == 64  # 2048 sequences / batch 32
        assert run["records"] == 33  # the reference and every 2nd step
        assert run["tracked_matrices"] == 16  # 2 layers x {qk, vo} x 4 heads
        assert run["final_train_loss"] < np.log(16)  # below chance: the copy is being learned
    figure_ids = [f["id"] for c in data["checks"] for f in c["evidence"]["figures"]]
    assert "stable-rank-vs-loss" in figure_ids and "final-stable-rank-scale-0.3" in figure_ids
    assert data["run"]["problem"]["init scale 1"]["framework"] == "transformers"
    assert "'loss'" not in capsys.readouterr().out  # --no-progress: no Trainer log lines


# --- runs from two jobs ---------------------------------------------------------------------------------------

WRITER = '''
import sys, torch, transformers
from verifier.tracking.hf import RankTrackerCallback
out, scale = sys.argv[1], float(sys.argv[2])
torch.manual_seed(0)
config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=8, n_positions=8, resid_pdrop=0.0,
                                 embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
model = transformers.GPT2LMHeadModel(config)
with torch.no_grad():
    for name, p in model.named_parameters():
        if not name.startswith(("transformer.wte.", "transformer.wpe.")):
            p.mul_(scale)
g = torch.Generator().manual_seed(1)
half = torch.randint(0, 8, (256, 4), generator=g)
data = [{"input_ids": x, "labels": x} for x in torch.cat([half, half], 1)]
args = transformers.TrainingArguments(output_dir=out, max_steps=60, per_device_train_batch_size=32,
    learning_rate=1e-2, logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    lr_scheduler_type="constant")
trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                               callbacks=[RankTrackerCallback(every=5, init_scale=scale, log=False)])
trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
trainer.train()
'''


def test_two_runs_from_separate_processes_compared_with_one_command(tmp_path, capsys):
    """Issue 26: each job writes its own rank-tracking/; `verifier track-compare` judges them together (the
    cross-scale comparison) and its report draws the stable-rank-vs-loss overlay of both."""
    pytest.importorskip("transformers")
    from verifier.cli import main

    script = tmp_path / "job.py"
    script.write_text(WRITER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, scale in (("a", "1.0"), ("b", "0.1")):
        done = subprocess.run([sys.executable, str(script), str(tmp_path / name), scale], capture_output=True,
                              text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "compared"
    # scales recorded by the callbacks (a), or given on the command line (b)
    code = main(["track-compare", str(tmp_path / "a"), str(tmp_path / "b" / "rank-tracking") + ":0.1",
                 "--out", str(out)])
    data = json.loads((out / "results.json").read_text())
    verdicts = [c["verdict"] for c in data["checks"]]
    assert code == {"pass": 0, "fail": 1, "inconclusive": 3}[min(verdicts, key=["fail", "inconclusive", "pass"].index)]
    gradual = next(c for c in data["checks"] if c["id"] == GRADUAL)
    assert "0.1 vs 1" in gradual["metrics"]["matched_loss"]["value"]
    assert gradual["metrics"]["max_rank_ratio_smaller_init"]["value"] not in ("nan", None)
    overlay = next(f for f in gradual["evidence"]["figures"] if f["id"] == "stable-rank-vs-loss")
    assert [s["label"] for s in overlay["series"]] == ["init scale 1", "init scale 0.1"]
    assert overlay["vlines"]  # the compared loss levels
    html = (out / "report.html").read_text()
    assert "Mean stable rank of the change vs training loss, across init scales" in html
    assert set(data["run"]["config"]["runs"]) == {"1", "0.1"}
    assert str(tmp_path / "a" / "rank-tracking" / "rank-history.npz") in html  # the Problem table names the sources


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("framework", ["hf", "lightning"])
def test_callbacks_on_cuda(tmp_path, framework):
    """The same records on a GPU: losses that stay on the device until the history is read, the ranks logged, the
    set written."""
    if framework == "hf":
        callback, trainer = _hf_run(tmp_path / "hf", use_cpu=False, save_strategy="no")
        folder = tmp_path / "hf" / "rank-tracking"
        assert any("rank/transformer.h.0.attn.qk" in e for e in trainer.state.log_history)
    else:
        callback, trainer = _lightning_run(tmp_path / "pl", accelerator="cuda")
        folder = Path(trainer.log_dir) / "rank-tracking"
    h = callback.tracker.history()
    assert callback.tracker.device.type == "cuda" and h.finite.all() and np.isfinite(h.losses).all()
    np.testing.assert_array_equal(h.steps, RECORDS)
    assert RankHistory.load(folder / "rank-history.npz").info["device"].startswith("cuda")
