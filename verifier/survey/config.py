"""What a survey draws and checks: :class:`SurveyConfig`, validated once in ``__post_init__``.

Draw i of a survey with seed S is the preset's problem (teacher, data and initialisation) at the seed
``draw_seed(S, i)``, so any single draw re-runs alone with ``verifier run --preset NAME --seed draw_seed(S, i)``.
With ``--model-file PATH.py:FACTORY`` the factory must take a ``seed`` argument (it draws the user's data and
teacher) and draw i re-runs with ``verifier run --model-file PATH.py:FACTORY --seed draw_seed(S, i)``.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from ..config import DEVICES, SEED_MAX, SEED_MIN, Allowed, RunConfig, check_choice, resolve_device, validate_fields
from ..errors import InputError

SEED_RULE = ("draw i uses seed int.from_bytes(sha256(f'verifier-survey:{S}:{i}')[:4], 'big'), "
             "S the survey seed (verifier.survey.config.draw_seed)")
DRAW_SEED_BITS = 32  # derived seeds lie in [0, 2^32): inside every seed range, short to type, exact in JSON
MAX_DRAWS = 100_000
AUTO = "auto"


def draw_seed(seed: int, index: int) -> int:
    """The seed of draw ``index`` of a survey seeded with ``seed``: the first 4 bytes (big-endian) of
    SHA-256 of the text ``verifier-survey:{seed}:{index}``. A hash rather than ``seed + index`` so that
    surveys with nearby seeds share no draws; independent of numpy, torch and the platform."""
    digest = hashlib.sha256(f"verifier-survey:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[: DRAW_SEED_BITS // 8], "big")


RULES = {"n": ("--n", Allowed(int, 1, MAX_DRAWS)),
         "seed": ("--seed", Allowed(int, SEED_MIN, SEED_MAX, text="an integer in [-2**63, 2**63 - 1]"))}
BATCH = ("--batch", Allowed(int, 1, 1024))


@dataclass(frozen=True)
class SurveyConfig:
    """``n`` draws of ``preset`` (or of a ``model_file`` factory that takes a seed) checked with ``checks``
    (None: every check that applies to the family).

    ``batch``: draws whose flows share one batched solve (``ladder`` of every draw in one Rodas4 call);
    None chooses: 1 on a CPU (a draw re-run alone then reproduces bit for bit; a stacked draw only to the
    solver tolerance), 16 on an accelerator (docs/SURVEYS.md). ``device`` is resolved once, here:
    ``torch_device`` (``auto``: cuda when available).
    """

    preset: str | None = None  # None: toy-attention, unless model_file is given
    n: int = 64
    checks: tuple[str, ...] | None = None
    device: str = AUTO
    seed: int = 0
    batch: int | None = None
    model_file: str | None = None

    def __post_init__(self):
        from ..checks import check_ids
        from ..presets import DEFAULT_PRESET, PRESETS

        if self.model_file is not None:
            from ..model_file import parse_spec

            if self.preset is not None:
                raise InputError("--model-file", "give either --model-file or --preset, not both")
            parse_spec(self.model_file)
        else:
            object.__setattr__(self, "preset", self.preset or DEFAULT_PRESET)
            check_choice("--preset", self.preset, tuple(PRESETS))
        check_choice("--device", self.device, DEVICES)
        object.__setattr__(self, "torch_device", resolve_device(self.device))  # not a field: not in as_dict()
        validate_fields(self, RULES | ({"batch": BATCH} if self.batch is not None else {}))
        if self.checks is not None:
            if not self.checks:
                raise InputError("--checks", "empty list", ", ".join(check_ids()))
            for c in self.checks:
                if c not in check_ids():
                    raise InputError("--checks", f"unknown check {c!r}", ", ".join(check_ids()))

    def draw_seed(self, index: int) -> int:
        return draw_seed(self.seed, index)

    @property
    def family(self) -> str:
        """What is drawn from, for titles and messages: the preset's name or the model file."""
        return self.preset if self.model_file is None else self.model_file

    def run_config(self, index: int) -> RunConfig:
        """The configuration ``verifier run`` builds from :meth:`command` for draw ``index``."""
        return RunConfig(preset=self.preset, model_file=self.model_file, seed=self.draw_seed(index),
                         device=self.device)

    def command(self, index: int, device: str | None = None) -> str:
        """The command that re-runs draw ``index`` alone (every check; results add ``--checks ID``). ``device``:
        another --device to name (a resumed journal's draws carry the device they ran on), taken as given: a
        known name, not resolved, so it need not exist on this machine; None: this survey's."""
        device = self.device if device is None else device
        problem = ["--preset", self.preset] if self.model_file is None else ["--model-file", self.model_file]
        argv = ["verifier", "run", *problem, "--seed", str(self.draw_seed(index))]
        argv += ["--device", device] if device != AUTO else []
        return shlex.join(argv)

    def as_dict(self) -> dict:
        return {"preset": self.preset, "model_file": self.model_file, "n": self.n, "checks": None if self.checks is None else list(self.checks),
                "device": self.device, "seed": self.seed, "batch": self.batch}
