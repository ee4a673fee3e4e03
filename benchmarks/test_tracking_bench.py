"""RankTracker overhead on the default ``verifier track`` ViT (vit-digits: 4 layers x 4 heads, width 64).

One training step (forward, backward, Adam) and one ``record`` (32 changes of 64 x 64 products, one batched
svdvals) alternate in one benchmark, so the ratio is measured side by side under the same load; the two
mean times and their ratio go to ``benchmark.extra_info``.
"""

import time

import numpy as np
import pytest
import torch

from verifier.tracking import RankTracker
from verifier.tracking.demo.track_config import TrackConfig
from verifier.tracking.demo.vit_training import build_vit, load_digits

STEPS = 20


def test_record_overhead_per_step(benchmark, machine_info):
    config = TrackConfig()
    device = torch.device("cpu")
    data = load_digits(0, device)
    model = build_vit(config, 1.0, device)
    opt = torch.optim.Adam(model.parameters(), lr=config.step_size)
    tracker = RankTracker(model)
    tracker.record(0)
    x, y = data.train_x[: config.spec.batch_size], data.train_y[: config.spec.batch_size]
    times = {"step_s": 0.0, "record_s": 0.0}

    def steps_and_records():
        for step in range(1, STEPS + 1):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            tracker.record(step, loss)
            times["step_s"] += t1 - t0
            times["record_s"] += time.perf_counter() - t1

    benchmark.pedantic(steps_and_records, rounds=1, iterations=1)
    history = tracker.history()
    machine_info.update({"steps": STEPS, "tracked_matrices": len(history.names),
                         "step_ms": 1e3 * times["step_s"] / STEPS, "record_ms": 1e3 * times["record_s"] / STEPS,
                         "record_over_step": times["record_s"] / times["step_s"]})
    assert len(history.steps) == STEPS + 1 and history.delta_spectra.shape[1] == 32


# --- record() at GPT-2-small shape (issue 17): 12 layers x 12 heads, d = 768, batch 8 x 256 tokens -------------

GPT2_BATCH, GPT2_TOKENS = 8, 256
BEFORE_LAYERS = 2  # the d x d svdvals record is measured on this many layers and scaled (its matrices are independent)


def _full_svdvals_record(factors, reference):
    """The previous record(): form every d x d change (A - A0) B^T + A0 (B - B0)^T, then batched svdvals."""
    changes = [(a - a0) @ b.transpose(1, 2) + a0 @ (b - b0).transpose(1, 2)
               for (a, b), (a0, b0) in zip(factors, reference)]
    return torch.linalg.svdvals(torch.cat(changes))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _clocks(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


@pytest.mark.parametrize("device", DEVICES)
def test_record_cost_gpt2_small(benchmark, machine_info, device):
    """One Adam training step of Hugging Face GPT-2 small (built from its config, random tokens) against
    one record() of all 288 tracked matrices (thin factors) and the previous full-svdvals record, side by
    side in one process (on a GPU, timed between synchronisations). Wall and CPU seconds go to extra_info;
    asserted: the spectra agree."""
    transformers = pytest.importorskip("transformers")
    device = torch.device(device)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=GPT2_TOKENS)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, model.config.vocab_size, (GPT2_BATCH, GPT2_TOKENS), device=device)
    tracker = RankTracker(model)
    assert len(tracker.tracked) == 24 and sum(t.heads for t in tracker.tracked) == 288
    tracker.record(0)
    times = {}

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def timed(name, fn):
        w0, c0 = _clocks(device)
        out = fn()
        w1, c1 = _clocks(device)
        times[f"{name}_wall_s"], times[f"{name}_cpu_s"] = w1 - w0, c1 - c0
        return out

    def measure():
        loss = timed("step", step)
        timed("record", lambda: tracker.record(1, loss))
        factors = tracker._factors()[: 2 * BEFORE_LAYERS]
        timed("full_svdvals", lambda: _full_svdvals_record(factors, tracker._reference[: 2 * BEFORE_LAYERS]))

    step()  # warm-up: allocations, Adam state
    benchmark.pedantic(measure, rounds=1, iterations=1)
    scale = model.config.n_layer / BEFORE_LAYERS
    for clock in ("wall", "cpu"):
        times[f"full_svdvals_{clock}_s_12_layers"] = times.pop(f"full_svdvals_{clock}_s") * scale
        times[f"record_over_step_{clock}"] = times[f"record_{clock}_s"] / times[f"step_{clock}_s"]
        times[f"before_over_step_{clock}"] = times[f"full_svdvals_{clock}_s_12_layers"] / times[f"step_{clock}_s"]
    machine_info.update(times)
    print({k: round(v, 4) for k, v in times.items()})
    factors = tracker._factors()[:2]
    full = _full_svdvals_record(factors, tracker._reference[:2]).double().cpu()
    thin = tracker.history().delta_spectra[1, :24]
    r = thin.shape[-1]
    assert np.abs(full[:, :r].numpy() - thin).max() <= 1e-4 * full[:, 0].max().item()
