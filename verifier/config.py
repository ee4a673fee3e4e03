"""Small immutable configuration objects: the one validation boundary of the CLI, the pytest plugin and the API.

Every field is checked (and text from the command line converted) in ``__post_init__`` against its
:class:`Allowed` values, so each entry point gets the same one-line :class:`~verifier.errors.InputError`:
``<field>: <problem> (allowed: <values>)``. The defaults live here and in ``presets.py``; ``verifier presets``
prints both.
"""

from __future__ import annotations

import decimal
import math
import numbers
from dataclasses import asdict, dataclass, field, fields

from .choices import DEVICES, LOSSES, check_choice, resolve_device  # noqa: F401  (re-exported)
from .errors import InputError

OPTIMIZERS = ("flow", "gd", "sgd", "adam")
SOLVER_METHODS = ("rodas4", "ros34pw2")
# Theorem 4.5's default ladder, as log(1/alpha): alpha = 1e-4, 1e-8, ..., 1e-256.
DEFAULT_LOG_INV_ALPHAS = tuple(math.log(10.0) * e for e in (4, 8, 16, 32, 64, 128, 256))
# Seeds are int64. Every generator seed is seed + a fixed offset in [0, 2**63) (verifier/seeds.py: the data
# +0 or the preset's seed_offset, the initialisation +1000003, ...), which torch.Generator.manual_seed accepts
# for every int64 seed (its range is [-2**63, 2**64); a negative s is the generator seed s + 2**64, so the
# preset docs' --seed -1 is 2**64 - 1, and toy-attention's seed_offset 1 makes it 0).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# Discrete training starts at alpha * theta0 and Lemma 4.1 measures u^2 - v^2 ~ alpha^2 there: below
# alpha = 1e-100 that product leaves the normal float64 range (alpha^2 theta0^2 < 2.2e-308 for small theta0
# entries) and the law would be compared on rounded-to-zero numbers. The flow works in log space, any alpha.
DISCRETE_MAX_LOG_INV_ALPHA = 100 * math.log(10.0)


@dataclass(frozen=True)
class Allowed:
    """The allowed values of one numeric field: ``kind`` int or float, finite, within [low, high] (ends open
    where ``open_low``/``open_high``). :meth:`check` converts text (the CLI's) and numbers alike."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    text: str | None = None

    def describe(self) -> str:
        if self.text:
            return self.text
        noun, fmt = ("an integer", str) if self.kind is int else ("a float", "{:g}".format)
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.open_low else '['}{fmt(self.low)}, {fmt(self.high)}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.open_low else '>='} {fmt(self.low)}"
        return f"a finite {noun[2:]}" if self.kind is float else noun

    def check(self, name: str, value):
        allowed = self.describe()
        if isinstance(value, str):
            value = _parse_number(name, value, self.kind, allowed)
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(name, f"{value!r} is not an integer", allowed)
            value = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InputError(name, f"{value!r} is not a number", allowed)
            value = float(value)
            if not math.isfinite(value):
                raise InputError(name, f"{value!r} is not finite", allowed)
        too_low = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if too_low or too_high:
            raise InputError(name, f"{value!r} is out of range", allowed)
        return value


def _parse_number(name: str, text: str, kind: type, allowed: str):
    try:
        if kind is int:
            return int(text.strip())
        value = float(text)
    except ValueError:
        raise InputError(name, f"{text!r} is not {'an integer' if kind is int else 'a number'}", allowed) from None
    if math.isinf(value) and "inf" not in text.lower():
        raise InputError(name, f"{text.strip()} overflows float64 (largest 1.8e308)", allowed)
    return value


POSITIVE = Allowed(float, 0.0, open_low=True)
UNIT = Allowed(float, 0.0, 1.0, open_low=True, open_high=True)
HALF_OPEN_UNIT = Allowed(float, 0.0, 1.0, open_high=True)
COUNT = Allowed(int, 1, 10**6)


def validate_fields(obj, rules: dict[str, tuple[str, Allowed]]) -> None:
    """Check and normalise every field named in ``rules`` (field -> (name in messages, allowed values))."""
    for attr, (name, allowed) in rules.items():
        object.__setattr__(obj, attr, allowed.check(name, getattr(obj, attr)))



@dataclass(frozen=True)
class SolverConfig:
    """Error control of the exact gradient flow (reduced coordinates, THEORY.md §3).

    The local error of S = -int g is held below atol + rtol * |S| per coordinate (RMS norm); an error in
    S of e is a relative error of 2e in beta, so atol is the relative accuracy of active weights. These are
    the run's tolerances: the floor of the alpha ladder's error budget (context.py, THEORY.md §3), which
    solves the smallest alpha here and the others as loosely as theorem-4.5's trends allow. ``method``:
    "rodas4" (exact Jacobian every step) or "ros34pw2" (a W-method reusing its Jacobian; cheaper where a
    Hessian costs many gradients, benchmarks/README.md).
    """

    rtol: float = 1e-8
    atol: float = 1e-7
    max_steps: int = 5000
    method: str = "rodas4"  # or "ros34pw2", a W-method that reuses its Jacobian (dynamics/rosenbrock.py)

    RULES = {"rtol": ("--rtol", UNIT), "atol": ("--atol", UNIT), "max_steps": ("SolverConfig.max_steps", COUNT)}

    def __post_init__(self):
        validate_fields(self, self.RULES)
        check_choice("SolverConfig.method", self.method, SOLVER_METHODS)


@dataclass(frozen=True)
class OptimizerConfig:
    """Discrete training on (u, v) as in the paper's experiments (GD, minibatch SGD, Adam).

    ``lr`` is the step size eta; ``steps`` the number of updates; momentum and weight decay apply to
    GD/SGD (both break Lemma 4.1, which the check reports).
    """

    name: str = "flow"
    lr: float = 0.01
    steps: int = 2000
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    RULES = {
        "lr": ("--lr", POSITIVE), "steps": ("--steps", COUNT),
        "batch_size": ("--batch-size", Allowed(int, 1)), "momentum": ("--momentum", HALF_OPEN_UNIT),
        "weight_decay": ("--weight-decay", Allowed(float, 0.0)), "eps": ("OptimizerConfig.eps", POSITIVE),
    }

    def __post_init__(self):
        check_choice("--optimizer", self.name, OPTIMIZERS)
        validate_fields(self, self.RULES)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise InputError("OptimizerConfig.betas", f"{self.betas!r} is not a pair", "(beta1, beta2) in [0, 1)")
        object.__setattr__(self, "betas", tuple(HALF_OPEN_UNIT.check("OptimizerConfig.betas", b) for b in self.betas))


ALPHAS_ALLOWED = "comma-separated alphas in (0, 1): floats such as 1e-4, or exp(-x) with x > 0 for tiny ones"


def parse_alphas(text: str | None) -> tuple[float, ...] | None:
    """'1e-4,1e-16,exp(-10000)' -> the values L = log(1/alpha), which is how alphas travel everywhere:
    exp(-10^4) underflows a float, but its L does not. Every alpha must lie in (0, 1)."""
    if text is None:
        return None
    return tuple(_parse_alpha(item.strip()) for item in text.split(","))


def _parse_alpha(item: str) -> float:
    if not item:
        raise InputError("--alphas", "empty entry", ALPHAS_ALLOWED)
    if item.startswith("exp(") and item.endswith(")"):
        try:
            L = -float(item[4:-1])
        except ValueError:
            raise InputError("--alphas", f"{item!r} is not exp of a number", ALPHAS_ALLOWED) from None
        if not (L > 0 and math.isfinite(L)):
            raise InputError("--alphas", f"alpha={item} is not in (0, 1)", ALPHAS_ALLOWED)
        return L
    try:
        val = float(item)
    except ValueError:
        raise InputError("--alphas", f"{item!r} is not a number", ALPHAS_ALLOWED) from None
    if val == 0.0 and decimal.Decimal(item) > 0:  # 1e-400: positive, but below float64's 5e-324
        L = float(-decimal.Decimal(item).ln())
        raise InputError("--alphas", f"alpha={item} underflows float64 (smallest 5e-324): write it as "
                                     f"exp(-{L:.6g})", ALPHAS_ALLOWED)
    if not 0 < val < 1:
        raise InputError("--alphas", f"alpha={item} is not in (0, 1)", ALPHAS_ALLOWED)
    return -math.log(val)


def format_alpha(L: float) -> str:
    """The alpha with log(1/alpha) = L, as text ('1e-16', or 'exp(-10000)' where it underflows)."""
    a = math.exp(-L)
    return f"{a:.3g}" if a > 1e-300 else f"exp(-{L:.6g})"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run of checks depends on; recorded verbatim in results.json.

    The problem is a preset, or a model family with a data file (``model`` alone when the model object is
    handed to :class:`~verifier.context.Context` directly), or a ``model_file`` PATH.py:FACTORY (alone);
    none of them means the default preset. ``device`` (auto, cpu, cuda) is resolved once, here:
    ``torch_device`` is the torch.device every part of the run uses (``auto``: cuda when available).
    """

    preset: str | None = None
    model: str | None = None
    data: str | None = None
    model_file: str | None = None  # PATH.py:FACTORY (then preset, model and data are None)
    loss: str = "square"
    seed: int = 0
    device: str = "cpu"
    log_inv_alphas: tuple[float, ...] | None = None
    horizon: float | None = None
    solver: SolverConfig = field(default_factory=SolverConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    noise: float = 0.1
    negligible: float = 1e-3
    perturb_epochs: int = 1000
    n_perturb: int = 4

    RULES = {
        "seed": ("--seed", Allowed(int, SEED_MIN, SEED_MAX, text="an integer in [-2**63, 2**63 - 1]")),
        "noise": ("--noise", POSITIVE), "negligible": ("--negligible", POSITIVE),
        "perturb_epochs": ("--perturb-epochs", Allowed(int, 1, 10**9)),
        "n_perturb": ("RunConfig.n_perturb", Allowed(int, 1, 1000)),
    }

    def __post_init__(self):
        from .presets import resolve_problem

        preset, _family = resolve_problem(self.preset, self.model, self.data, self.loss, self.model_file)
        object.__setattr__(self, "preset", preset)
        object.__setattr__(self, "torch_device", resolve_device(self.device))  # not a field: not in as_dict()
        validate_fields(self, self.RULES)
        if self.horizon is not None:
            object.__setattr__(self, "horizon", POSITIVE.check("--horizon", self.horizon))
        for name, cls in (("solver", SolverConfig), ("optimizer", OptimizerConfig)):
            if not isinstance(getattr(self, name), cls):
                raise InputError(f"RunConfig.{name}", f"{getattr(self, name)!r} is not a {cls.__name__}", cls.__name__)
        if self.log_inv_alphas is not None:
            object.__setattr__(self, "log_inv_alphas", self._checked_alphas(self.log_inv_alphas))

    def _checked_alphas(self, Ls) -> tuple[float, ...]:
        if isinstance(Ls, str):
            return parse_alphas(Ls)
        if not isinstance(Ls, (tuple, list)) or not Ls:
            raise InputError("--alphas", f"{Ls!r} is not a non-empty list of log(1/alpha)", ALPHAS_ALLOWED)
        Ls = tuple(POSITIVE.check("--alphas (log(1/alpha))", L) for L in Ls)
        if self.optimizer.name != "flow" and max(Ls) > DISCRETE_MAX_LOG_INV_ALPHA:
            raise InputError(
                "--alphas", f"alpha={format_alpha(max(Ls))} is too small for --optimizer {self.optimizer.name}: "
                "discrete training starts at alpha*theta0 and u^2 - v^2 ~ alpha^2 underflows float64",
                "alphas >= 1e-100 with gd/sgd/adam; --optimizer flow takes any alpha")
        return Ls

    def as_dict(self) -> dict:
        d = asdict(self)
        d["alphas"] = None if self.log_inv_alphas is None else [format_alpha(L) for L in self.log_inv_alphas]
        if self.model_file is not None:  # the file's loss is the one used; --loss is refused with --model-file
            d["loss"] = "defined by the model file"
        return d


def defaults_table() -> list[tuple[str, str, str]]:
    """(name, default, allowed values) of every setting, for ``verifier presets``."""
    rows = []
    for cls in (RunConfig, SolverConfig, OptimizerConfig):
        rules = getattr(cls, "RULES", {})
        for f in fields(cls):
            if f.name in rules:
                name, allowed = rules[f.name]
                rows.append((name, repr(f.default), allowed.describe()))
    rows += [
        ("--preset", "toy-attention (when neither --preset nor --model is given)", "see the presets above"),
        ("--loss", repr(RunConfig.loss), ", ".join(LOSSES) + " (logistic: diag-linear only)"),
        ("--device", "auto (cli), 'cpu' (RunConfig)", ", ".join(DEVICES)),
        ("--optimizer", repr(OptimizerConfig.name), ", ".join(OPTIMIZERS)),
        ("--alphas", "lemma-4.1: 1e-2; the other checks: " + ",".join(format_alpha(L) for L in DEFAULT_LOG_INV_ALPHAS),
         ALPHAS_ALLOWED),
        ("--horizon", "1.25 x the last stage time of Algorithm 1 (10 if it has none)", POSITIVE.describe()),
        ("OptimizerConfig.betas", repr(OptimizerConfig.betas), "a pair in [0, 1)"),
    ]
    return rows
