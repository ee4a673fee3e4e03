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
from verifier.tracking.config import TrackConfig
from verifier.tracking.train import build_vit, load_digits

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


# --- record()'s own thread count (issue 26): in a process that did not set OMP_NUM_THREADS / OMP_WAIT_POLICY ------

THREAD_ROUNDS = 3


def _thread_rounds(rounds: int) -> dict:
    """In this process, at its torch default thread count: one GPT-2-small training step, then record() at the
    tracker's default (1 thread) and at the process's count (what record() did before it chose its own), the
    order alternating from round to round. Wall and CPU seconds per round, the load, and the spectra of both."""
    import os

    import transformers

    default = torch.get_num_threads()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=GPT2_TOKENS))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, model.config.vocab_size, (GPT2_BATCH, GPT2_TOKENS))
    trackers = {"own": RankTracker(model), "process": RankTracker(model, threads=default)}
    for t in trackers.values():
        t.record(0)

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def clock():
        return time.perf_counter(), time.process_time()

    step()  # warm-up: allocations, Adam state
    rows = []
    for r in range(1, rounds + 1):
        load = os.getloadavg()[0]
        w0, c0 = clock()
        loss = step()
        w1, c1 = clock()
        row = {"load_1min": load, "step_wall_s": w1 - w0, "step_cpu_s": c1 - c0}
        for name in (("own", "process") if r % 2 else ("process", "own")):
            a = clock()
            trackers[name].record(r, loss)
            b = clock()
            row[f"record_{name}_wall_s"], row[f"record_{name}_cpu_s"] = b[0] - a[0], b[1] - a[1]
            assert torch.get_num_threads() == default  # restored
        rows.append(row)
    spectra = {name: t.history().delta_spectra[-1].tolist() for name, t in trackers.items()}
    return {"torch_threads": default, "omp_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
            "rounds": rows, "spectra": spectra}


@pytest.mark.parametrize("wait_policy", [None, "PASSIVE"], ids=["torch-default", "passive"])
def test_record_threads_gpt2_small(benchmark, machine_info, wait_policy):
    """The thread policy measured where it matters: a fresh process with neither OMP_NUM_THREADS nor
    OMP_WAIT_POLICY set (torch's default: one spinning thread per core), and one that set only
    OMP_WAIT_POLICY=PASSIVE (a team with passive waits, which a library cannot choose once OpenMP started).
    Each runs ``_thread_rounds`` side by side; asserted: both thread counts give the same spectra."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("transformers")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    out = {}

    def child():
        proc = subprocess.run([sys.executable, __file__, str(THREAD_ROUNDS)], env=env, capture_output=True,
                              text=True, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(child, rounds=1, iterations=1)
    rows = out.pop("rounds")
    own, process = (np.array(out.pop("spectra")[k]) for k in ("own", "process"))
    for clock in ("wall", "cpu"):
        step = np.array([r[f"step_{clock}_s"] for r in rows])
        for name in ("own", "process"):
            out[f"record_{name}_over_step_{clock}"] = [round(x, 4) for x in
                                                       np.array([r[f"record_{name}_{clock}_s"] for r in rows]) / step]
    out["rounds"] = rows
    machine_info.update(out)
    print(json.dumps(out, indent=1))
    scale = process[:, 0].max()  # float32 at two thread counts: equal to rounding
    assert np.abs(own - process).max() <= 1e-4 * scale, np.abs(own - process).max() / scale


if __name__ == "__main__":  # the child process of test_record_threads_gpt2_small
    import json
    import sys

    print(json.dumps(_thread_rounds(int(sys.argv[1]))))
