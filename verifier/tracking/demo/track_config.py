"""``verifier track``: presets and the frozen :class:`TrackConfig`, validated once in ``__post_init__``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ... import seeds
from ...config import COUNT, POSITIVE, SEED_MAX, Allowed, check_choice, resolve_device, validate_fields
from ...errors import InputError

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrackPreset:
    """A model and its training: ``model`` "vit", a ViT on scikit-learn's digits (1797 images of 8 x 8 pixels,
    10 classes; shipped with scikit-learn, nothing is downloaded), or "gpt2", a Hugging Face GPT-2 built from
    a config and trained with the Trainer and :class:`verifier.tracking.hf.RankTrackerCallback` on a copying
    task generated in-process (:mod:`.gpt2_training`). ``architecture``: the ViT's arguments or the GPT2Config's."""

    name: str
    description: str
    architecture: dict[str, int]
    epochs: int
    batch_size: int
    lr: dict[str, float]  # per optimizer
    init_scales: tuple[float, ...] = (1.0, 0.3, 0.1)
    every: int = 1  # record every N optimizer steps
    model: str = "vit"


TRACK_PRESETS = {
    p.name: p
    for p in (
        TrackPreset("vit-digits", "ViT 4 layers x 4 heads, width 64 (head dim 16), 2x2 patches; 20 epochs of Adam; "
                    "the default, about a minute per init scale on a 2-core CPU",
                    dict(patch=2, dim=64, depth=4, heads=4, mlp_dim=128), epochs=20, batch_size=128,
                    lr={"adam": 1e-3, "sgd": 0.1}),
        TrackPreset("vit-digits-tiny", "ViT 2 layers x 2 heads, width 16; 2 epochs (a smoke test in seconds)",
                    dict(patch=2, dim=16, depth=2, heads=2, mlp_dim=32), epochs=2, batch_size=128,
                    lr={"adam": 3e-3, "sgd": 0.1}, init_scales=(1.0, 0.1)),
        TrackPreset("vit-digits-wide", "ViT 6 layers x 8 heads, width 256 (head dim 32), 2x2 patches; 100 epochs, "
                    "init scales down to 0.03 (for a GPU)",
                    dict(patch=2, dim=256, depth=6, heads=8, mlp_dim=512), epochs=100, batch_size=128,
                    lr={"adam": 3e-4, "sgd": 0.05}, init_scales=(1.0, 0.3, 0.1, 0.03), every=5),
        TrackPreset("gpt2-tiny", "GPT-2 2 layers x 4 heads, width 64 (head dim 16), built from a config; the Hugging "
                    "Face Trainer with the RankTrackerCallback on a synthetic copying task (needs the hf extra)",
                    dict(n_embd=64, n_layer=2, n_head=4, vocab_size=16, n_positions=32), epochs=6, batch_size=32,
                    lr={"adam": 1e-3, "sgd": 0.3}, init_scales=(1.0, 0.3), every=2, model="gpt2"),
    )
}


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """'1,0.3,0.1' -> (1.0, 0.3, 0.1); the values are validated by :class:`TrackConfig`."""
    if text is None:
        return None
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise InputError("--init-scales", f"{text!r} is not a list of numbers",
                         "comma-separated positive floats, e.g. 1,0.3,0.1") from None


@dataclass(frozen=True)
class TrackConfig:
    """One ``verifier track`` run: a preset trained once per init scale with the same seed (data split,
    initial weights before scaling, batch order). ``None`` fields take the preset's value. ``device`` is
    resolved once, here: ``torch_device``."""

    preset: str = "vit-digits"
    init_scales: tuple[float, ...] | None = None
    optimizer: str = "adam"
    epochs: int | None = None
    lr: float | None = None
    device: str = "auto"
    seed: int = 0
    every: int | None = None

    RULES = {
        "seed": ("--seed", Allowed(int, 0, SEED_MAX - seeds.TRACK_INIT, text="an integer in [0, 2**63 - 1000004]")),
        "epochs": ("--epochs", COUNT), "lr": ("--lr", POSITIVE), "every": ("--every", COUNT),
    }

    def __post_init__(self):
        check_choice("--preset", self.preset, tuple(TRACK_PRESETS))
        scales = self.init_scales
        if scales is not None:
            if not scales or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in scales):
                raise InputError("--init-scales", f"{scales!r} has a value that is not a positive number",
                                 "comma-separated positive floats, e.g. 1,0.3,0.1")
            if len(set(scales)) != len(scales):
                raise InputError("--init-scales", f"{scales!r} repeats a value", "distinct positive floats")
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        object.__setattr__(self, "torch_device", resolve_device(self.device))  # resolved once; not in as_dict()
        validate_fields(self, {k: r for k, r in self.RULES.items() if getattr(self, k) is not None})

    @property
    def spec(self) -> TrackPreset:
        return TRACK_PRESETS[self.preset]

    @property
    def scales(self) -> tuple[float, ...]:
        return self.init_scales if self.init_scales is not None else self.spec.init_scales

    @property
    def n_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.spec.epochs

    @property
    def step_size(self) -> float:
        return self.lr if self.lr is not None else self.spec.lr[self.optimizer]

    @property
    def record_every(self) -> int:
        return self.every if self.every is not None else self.spec.every

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(init_scales=list(self.scales), epochs=self.n_epochs, lr=self.step_size, every=self.record_every,
                 model=self.spec.model, architecture=dict(self.spec.architecture), batch_size=self.spec.batch_size)
        return d
