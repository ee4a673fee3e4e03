"""The training step the tracking benchmarks compare against: Hugging Face GPT-2 small built from its config
(nothing is downloaded), Adam at lr 1e-4, one batch of ``BATCH`` x ``TOKENS`` random tokens; and wall + CPU
clocks read between synchronisations on a GPU. Shared by test_tracking_bench.py (also in its child process)
and test_module_spectra_bench.py."""

import time

import torch

BATCH, TOKENS = 8, 256


def clocks(device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds, after the device's queued work finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


class Gpt2Small:
    """``model``, ``opt``, ``tokens`` on ``device`` (seed 0); ``step()`` is one forward, backward and Adam step
    and returns the loss."""

    def __init__(self, device: torch.device):
        import transformers

        torch.manual_seed(0)
        self.model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=TOKENS)).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.tokens = torch.randint(0, self.model.config.vocab_size, (BATCH, TOKENS), device=device)

    def step(self) -> torch.Tensor:
        loss = self.model(input_ids=self.tokens, labels=self.tokens).loss
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss


class Stopwatch:
    """``timed(name, fn)`` runs ``fn`` and adds ``<name>_wall_s`` and ``<name>_cpu_s`` to ``times``."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, {}

    def timed(self, name: str, fn):
        w0, c0 = clocks(self.device)
        out = fn()
        w1, c1 = clocks(self.device)
        self.times[f"{name}_wall_s"], self.times[f"{name}_cpu_s"] = w1 - w0, c1 - c0
        return out
