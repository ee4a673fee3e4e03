"""Train the ViT on scikit-learn's digits once per init scale, tracking its attention products (THEORY.md §6).

The same seed fixes the train/test split, the initial weights before scaling and the batch order, so
runs at different init scales differ only by the scale (the paper's protocol, Section 5).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from ... import seeds
from ..tracker import RankTracker
from .track_config import TrackConfig
from .trained_run import TrainedRun
from .vit_model import ViT

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8 x 8 digits, pixels mapped from [0, 16] to [-1, 1], split 80/20 by the seed."""

    train_x: torch.Tensor  # [N, 1, 8, 8]
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits(seed: int, device: torch.device) -> Digits:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("verifier track needs scikit-learn for its data set: pip install 'verifier[track]'") from None
    raw = sk_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(raw.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + seeds.TRACK_SPLIT))
    n_test = int(TEST_FRACTION * len(y))
    test, train = perm[:n_test], perm[n_test:]
    return Digits(*(t.to(device) for t in (x[train], y[train], x[test], y[test])))


def build_vit(config: TrackConfig, scale: float, device: torch.device) -> ViT:
    """The preset's ViT with the seed's initial weights, every layer but the patch embedding times ``scale``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + seeds.TRACK_INIT)
        vit = ViT(image_size=8, channels=1, classes=10, **config.spec.architecture)
    return vit.scale_init(scale).to(device)


def train(config: TrackConfig, scale: float, data: Digits, device: torch.device, progress: bool = True) -> TrainedRun:
    model = build_vit(config, scale, device)
    params = model.parameters()
    opt = (torch.optim.Adam(params, lr=config.step_size) if config.optimizer == "adam"
           else torch.optim.SGD(params, lr=config.step_size))
    tracker = RankTracker(model, every=config.record_every)
    tracker.record(0)
    order = torch.Generator().manual_seed(config.seed + seeds.TRACK_BATCHES)
    n, bs = len(data.train_y), config.spec.batch_size
    step, train_s, record_s, epoch_loss = 0, 0.0, 0.0, float("nan")
    bar = tqdm(range(config.n_epochs), desc=f"init scale {scale:g}", unit="epoch", file=sys.stderr,
               disable=not progress, leave=False)
    for _ in bar:
        total = torch.zeros((), device=device)
        for idx in torch.randperm(n, generator=order).to(device).split(bs):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            t1 = time.perf_counter()
            tracker.record(step, loss)
            train_s, record_s = train_s + t1 - t0, record_s + time.perf_counter() - t1
            total += loss.detach() * len(idx)
        epoch_loss = float(total) / n
        bar.set_postfix_str(f"loss {epoch_loss:.3f}")
    with torch.no_grad():
        accuracy = float((model(data.test_x).argmax(1) == data.test_y).float().mean())
    info = {"model": f"ViT ({config.preset})", "init_scale": scale, "every": config.record_every,
            "tracked": tracker.describe().splitlines(), "record_s": round(record_s, 6), "device": str(device),
            "dtype": "torch.float32"}
    return TrainedRun(scale, replace(tracker.history(), info=info), epoch_loss, accuracy, step, train_s, record_s)
