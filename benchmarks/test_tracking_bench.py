"""RankTracker overhead on the default ``verifier track`` ViT (vit-digits: 4 layers x 4 heads, width 64).

One training step (forward, backward, Adam) and one ``record`` (32 changes of 64 x 64 products, one batched
svdvals) alternate in one benchmark, so the ratio is measured side by side under the same load; the two
mean times and their ratio go to ``benchmark.extra_info``.
"""

import time

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
