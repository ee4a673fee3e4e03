"""RankTracker overhead on the default ``verifier track`` ViT (vit-digits: 4 layers x 4 heads, width 64).

One training step (forward, backward, Adam) and one ``record`` (32 changes of 64 x 64 products, one batched
svdvals) alternate in one benchmark, so the ratio is measured side by side under the same load; the two
mean times and their ratio go to ``benchmark.extra_info``.
"""

import time

import numpy as np
import pytest
import torch

from gpt2_small import Gpt2Small, Stopwatch
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

BEFORE_LAYERS = 2  # the d x d svdvals record is measured on this many layers and scaled (its matrices are independent)


def _full_svdvals_record(factors, reference):
    """The previous record(): form every d x d change (A - A0) B^T + A0 (B - B0)^T, then batched svdvals."""
    changes = [(a - a0) @ b.transpose(1, 2) + a0 @ (b - b0).transpose(1, 2)
               for (a, b), (a0, b0) in zip(factors, reference)]
    return torch.linalg.svdvals(torch.cat(changes))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_record_cost_gpt2_small(benchmark, machine_info, device):
    """One Adam training step of Hugging Face GPT-2 small (built from its config, random tokens) against
    one record() of all 288 tracked matrices (thin factors) and the previous full-svdvals record, side by
    side in one process (on a GPU, timed between synchronisations). Wall and CPU seconds go to extra_info;
    asserted: the spectra agree."""
    pytest.importorskip("transformers")
    device = torch.device(device)
    run = Gpt2Small(device)
    model, watch = run.model, Stopwatch(device)
    tracker = RankTracker(model)
    assert len(tracker.tracked) == 24 and sum(t.heads for t in tracker.tracked) == 288
    tracker.record(0)
    times, timed = watch.times, watch.timed

    def measure():
        loss = timed("step", run.step)
        timed("record", lambda: tracker.record(1, loss))
        factors = tracker._factors()[: 2 * BEFORE_LAYERS]
        timed("full_svdvals", lambda: _full_svdvals_record(factors, tracker._reference[: 2 * BEFORE_LAYERS]))

    run.step()  # warm-up: allocations, Adam state
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


def _todays_record(tracker: RankTracker) -> torch.Tensor:
    """record() as it was before issue 26, at the process's thread count: the factors batched per shape,
    the reference batched again, [A - A0, A0] and [B, B - B0] built and QR'd with 2k columns."""
    from verifier.tracking.factors import product_svdvals

    factors, reference = tracker._factors(), tracker._reference
    idx = range(len(factors))
    a, b = torch.cat([factors[i][0] for i in idx]), torch.cat([factors[i][1] for i in idx])
    a0, b0 = torch.cat([reference[i][0] for i in idx]), torch.cat([reference[i][1] for i in idx])
    return product_svdvals(torch.cat([a - a0, a0], dim=-1), torch.cat([b, b - b0], dim=-1))


def _thread_rounds(rounds: int) -> dict:
    """In this process, at its torch default thread count: one GPT-2-small training step, then record() at the
    tracker's default (1 thread), record() at the process's count, and the record() of before issue 26 (at the
    process's count), the order rotating from round to round. Wall and CPU seconds, the load, and the spectra."""
    import os

    default = torch.get_num_threads()
    run = Gpt2Small(torch.device("cpu"))
    own, process = RankTracker(run.model), RankTracker(run.model, threads=default)
    own.record(0)
    process.record(0)
    spectra = {}
    step = run.step

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
        work = {"own": lambda: own.record(r, loss), "process": lambda: process.record(r, loss),
                "today": lambda: spectra.__setitem__("today", _todays_record(process))}
        names = list(work)
        for name in names[r % 3:] + names[: r % 3]:
            a = clock()
            work[name]()
            b = clock()
            row[f"record_{name}_wall_s"], row[f"record_{name}_cpu_s"] = b[0] - a[0], b[1] - a[1]
            assert torch.get_num_threads() == default  # restored
        rows.append(row)
    spectra.update(own=own.history().delta_spectra[-1], process=process.history().delta_spectra[-1])
    return {"torch_threads": default, "omp_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
            "rounds": rows, "spectra": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in spectra.items()}}


@pytest.mark.parametrize("wait_policy", [None, "PASSIVE"], ids=["torch-default", "passive"])
def test_record_threads_gpt2_small(benchmark, machine_info, wait_policy):
    """The thread policy measured where it matters: a fresh process with neither OMP_NUM_THREADS nor
    OMP_WAIT_POLICY set (torch's default: one spinning thread per core), and one that set only
    OMP_WAIT_POLICY=PASSIVE (a team with passive waits, which a library cannot choose once OpenMP started).
    Each runs ``_thread_rounds`` side by side; asserted: the three records give the same spectra."""
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
    spectra = {k: np.array(v) for k, v in out.pop("spectra").items()}
    machine_info.update(out)
    for clock in ("wall", "cpu"):
        step = np.array([row[f"step_{clock}_s"] for row in out["rounds"]])
        for name in ("own", "process", "today"):
            machine_info[f"record_{name}_over_step_{clock}"] = [
                round(float(x), 4) for x in np.array([row[f"record_{name}_{clock}_s"] for row in out["rounds"]]) / step]
    print(json.dumps(dict(machine_info), indent=1))
    scale = spectra["today"][:, 0].max()  # float32, other thread counts and algorithms: equal to rounding
    for name in ("own", "process"):
        assert np.abs(spectra[name] - spectra["today"]).max() <= 1e-4 * scale


if __name__ == "__main__":  # the child process of test_record_threads_gpt2_small
    import json
    import sys

    print(json.dumps(_thread_rounds(int(sys.argv[1]))))
