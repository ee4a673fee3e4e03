"""Cost of the per-module weight-change spectra (verifier/tracking/modules.py, docs/LORA.md) at GPT-2-small shape.

One Adam training step of Hugging Face GPT-2 small (built from its config, batch 8 x 256 random tokens), one
``record()`` without module spectra, one module measurement (48 weights: c_attn 768 x 2304, c_proj, c_fc
768 x 3072, mlp.c_proj, per layer; Gram matrix + eigvalsh in float32), and ``torch.linalg.svdvals`` of the
same 48 changes (the direct computation the Gram route replaces), side by side in one process; wall and CPU
seconds go to ``extra_info``. A module measurement runs on every ``MODULE_EVERY``-th record, so its share of a
step is (module / step) / MODULE_EVERY. Asserted: the energy shares agree with svdvals to 1e-5.
"""


import numpy as np
import pytest
import torch

from gpt2_small import Gpt2Small, Stopwatch
from verifier.tracking import RankTracker
from verifier.tracking.modules import MODULE_EVERY, change_spectra

@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_module_spectra_cost_gpt2_small(benchmark, machine_info, device):
    pytest.importorskip("transformers")
    device = torch.device(device)
    run = Gpt2Small(device)
    watch = Stopwatch(device)
    tracker = RankTracker(run.model, module_every=1)
    modules = tracker._modules
    assert len(modules.modules) == 48
    tracker.record(0)
    times, timed = watch.times, watch.timed

    def deltas():
        return [w - w0 for w, w0 in zip(modules._weights(), modules._reference)]

    def measure():
        loss = timed("step", run.step)
        modules.every = 2  # record 1: the head spectra only
        timed("record", lambda: tracker.record(1, loss))
        modules.every = 1
        timed("modules", lambda: modules.record(1, 1))
        timed("svdvals", lambda: [torch.linalg.svdvals(d) for d in deltas()])

    run.step()  # warm-up: allocations, Adam state
    benchmark.pedantic(measure, rounds=1, iterations=1)
    for clock in ("wall", "cpu"):
        times[f"record_over_step_{clock}"] = times[f"record_{clock}_s"] / times[f"step_{clock}_s"]
        times[f"modules_over_step_{clock}"] = times[f"modules_{clock}_s"] / times[f"step_{clock}_s"]
        times[f"modules_amortised_over_step_{clock}"] = times[f"modules_over_step_{clock}"] / MODULE_EVERY
    machine_info.update({**times, "threads": torch.get_num_threads(), "module_every": MODULE_EVERY})
    print({k: round(v, 4) for k, v in times.items()})
    for d, s in zip(deltas()[:4], modules._spectra[-1][:4]):
        exact = torch.linalg.svdvals(d.double()).cpu().numpy()
        got = s.double().cpu().numpy()
        np.testing.assert_allclose(np.cumsum(got**2) / np.sum(got**2), np.cumsum(exact**2) / np.sum(exact**2),
                                   atol=1e-5)
    assert change_spectra(deltas()[0][None])[1].shape == (1, 768)
