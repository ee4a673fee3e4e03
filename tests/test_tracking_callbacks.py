"""The Hugging Face Trainer and Lightning callbacks, 20 steps on tiny models (CPU, seconds): both checks come
back as CheckResults, the output set is written, TensorBoard gets the scalars, and a run resumed from a
checkpoint continues the history (the same records as the run that was not interrupted)."""

import json

import numpy as np
import pytest
import torch

from verifier.results import CheckResult
from verifier.tracking import GRADUAL, LOW_RANK, RankTracker
from verifier.tracking.tensorboard import TensorBoardSink

STEPS, EVERY, SAVE = 20, 2, 10
EPOCH = 8  # Lightning batches per epoch (64 samples, batch 8)


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
    tracker, writer = RankTracker(mha), FakeWriter()
    sink = TensorBoardSink(writer)
    tracker.record(0)
    sink.write(tracker)
    assert writer.scalars == {}  # the zero change has no rank
    with torch.no_grad():
        mha.in_proj_weight.add_(0.1 * torch.randn_like(mha.in_proj_weight))
    tracker.record(1)
    sink.write(tracker)
    h = tracker.history()
    assert sorted(writer.scalars) == sorted(f"rank/{label}" for label in h.labels)
    for label, rank in zip(h.labels, h.stable_rank()[1]):
        assert writer.scalars[f"rank/{label}"] == [(1, pytest.approx(rank))]
    np.testing.assert_allclose(writer.histograms["spectrum/attention.qk"][0][1], h.delta_spectra[1, :2].ravel())


def test_tensorboard_sink_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = RankTracker(torch.nn.MultiheadAttention(8, 2))
    tracker.record(0)
    sink = TensorBoardSink(tmp_path / "tb")
    sink.write(tracker)
    sink.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# --- Hugging Face Trainer ------------------------------------------------------------------------------------

def _hf_run(tmp_path, max_steps, resume=None, seed=0):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from verifier.tracking.hf import RankTrackerCallback

    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=13, n_positions=8,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 13, (64, 8), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=3e-3,
        logging_steps=EVERY, save_steps=SAVE, report_to=[], use_cpu=True, seed=seed, disable_tqdm=True,
        dataloader_num_workers=0)
    callback = RankTrackerCallback(every=EVERY, tensorboard=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return callback


def _assert_checks(callback, folder):
    results = callback.results()
    assert [type(r) for r in results] == [CheckResult, CheckResult]
    assert [r.id for r in results] == [LOW_RANK, GRADUAL]
    data = json.loads((folder / "results.json").read_text())
    assert [c["id"] for c in data["checks"]] == [LOW_RANK, GRADUAL]
    assert [c["verdict"] for c in data["checks"]] == [r.verdict.value for r in results]
    assert (folder / "report.html").read_text().count("<svg") >= 3


def test_hf_trainer_callback_and_resume(tmp_path):
    full = _hf_run(tmp_path / "full", STEPS)
    h = full.tracker.history()
    np.testing.assert_array_equal(h.steps, np.arange(0, STEPS + 1, EVERY))
    assert np.isnan(h.losses[0]) and np.isfinite(h.losses[1:]).all()  # the logged loss of every record
    assert len(h.names) == 8 and h.finite.all()  # 2 layers x {qk, vo} x 2 heads
    assert (h.delta_spectra[-1, :, 0] > 0).all()
    _assert_checks(full, tmp_path / "full" / "hf" / "verifier")
    assert list((tmp_path / "full" / "hf" / "runs").rglob("events.out.tfevents.*"))
    checkpoint = tmp_path / "full" / "hf" / f"checkpoint-{SAVE}"
    assert (checkpoint / "rank_tracker.pt").is_file()

    # a second run resumed from checkpoint-10 continues the history of the first
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "hf").mkdir(parents=True)
    import shutil

    shutil.copytree(checkpoint, resumed_dir / "hf" / checkpoint.name)
    resumed = _hf_run(resumed_dir, STEPS, resume=str(resumed_dir / "hf" / checkpoint.name))
    r = resumed.tracker.history()
    np.testing.assert_array_equal(r.steps, h.steps)
    np.testing.assert_array_equal(r.initial_spectra, h.initial_spectra)
    restored = h.steps <= SAVE
    np.testing.assert_array_equal(r.delta_spectra[restored], h.delta_spectra[restored])
    np.testing.assert_allclose(r.delta_spectra[~restored], h.delta_spectra[~restored], rtol=1e-3, atol=1e-6)
    _assert_checks(resumed, resumed_dir / "hf" / "verifier")


# --- Lightning -----------------------------------------------------------------------------------------------

def _lightning_run(tmp_path, max_steps, ckpt_path=None):
    pl = pytest.importorskip("lightning.pytorch")
    from verifier.tracking.lightning import RankTrackerCallback

    class Encoder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(16, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.head(self.encoder(x)).squeeze(-1), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 6, 16, generator=g)
    y = x[..., 0] * x[..., 1]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    callback = RankTrackerCallback(every=EVERY)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=EPOCH, save_top_k=-1)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, default_root_dir=tmp_path,
                         callbacks=[callback, checkpoints], logger=pl.loggers.CSVLogger(tmp_path),
                         log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Encoder(), loader, ckpt_path=ckpt_path)
    return callback


def test_lightning_callback_and_resume(tmp_path):
    full = _lightning_run(tmp_path / "full", STEPS)
    h = full.tracker.history()
    np.testing.assert_array_equal(h.steps, np.arange(0, STEPS + 1, EVERY))
    assert np.isnan(h.losses[0]) and np.isfinite(h.losses[1:]).all()
    assert len(h.names) == 8 and h.finite.all()
    _assert_checks(full, tmp_path / "full" / "verifier")
    metrics = next((tmp_path / "full").rglob("metrics.csv")).read_text().splitlines()
    assert "rank/encoder.layers.0.self_attn.qk[h0]" in metrics[0]

    # at an epoch's end: a plain DataLoader cannot resume inside an epoch
    checkpoint = next((tmp_path / "full" / "ckpt").glob(f"*step={EPOCH}.ckpt"))
    resumed = _lightning_run(tmp_path / "resumed", STEPS, ckpt_path=str(checkpoint))
    r = resumed.tracker.history()
    np.testing.assert_array_equal(r.steps, h.steps)
    restored = h.steps <= EPOCH
    np.testing.assert_array_equal(r.delta_spectra[restored], h.delta_spectra[restored])
    np.testing.assert_array_equal(r.losses[restored][1:], h.losses[restored][1:])
    np.testing.assert_allclose(r.delta_spectra[~restored], h.delta_spectra[~restored], rtol=1e-3, atol=1e-6)
    _assert_checks(resumed, tmp_path / "resumed" / "verifier")


def test_state_dict_refuses_another_model():
    from verifier.errors import InputError

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
    assert "change-spectrum-transformer.h.0.attn.qk[h0]-scale-1" in figure_ids
    assert "'loss'" not in capsys.readouterr().out  # --no-progress: no Trainer log lines
