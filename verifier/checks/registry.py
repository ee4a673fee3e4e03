"""One registry of checks feeds the CLI, the library call, the survey, the hunts, the report and
``pytest.mark.parametrize`` (stable ids).

A check is a plain function ``(ctx: Context) -> CheckResult`` registered with :func:`register`, which declares
everything the rest of the package needs to know about it (docs/ADDING_A_CLAIM.md): its ``Reason`` enum (the
failure kinds it can give, besides :class:`~verifier.results.CommonReason`; docs/THEORY.md §5.0), the models it
applies to, the run options it uses (others are refused), whether it integrates a gradient flow (the memory
check), the cached Context computations it reads (worker groups, the survey's stacked ladders), how a hunt
measures it (:class:`Hunt`) and what the report explains beside a failure kind (:class:`ReportNote`).
:func:`run_check` turns an exception into an ``inconclusive`` result that names it (never a pass; reason
``check-raised``), refuses a reason the check did not declare, and stamps config, provenance, duration.

Every check module has the same shape (definition31.py is the simplest, theorem45.py one with a ladder):
constants with their derivation, a frozen dataclass of what is measured, ``measure`` (all the torch work),
``judge`` (pure: a :class:`~verifier.results.Judgement` from the measurement), ``declare`` (the measurement as
:class:`~verifier.results.Metric` s), ``figures``, and the registered function that chains them; a check of
several parts (4.3, 4.4) has a measurement and a ``judge_*`` per part, composed by ``Judgement.compose``.
This module imports no torch.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Mapping

from ..errors import InputError
from ..results import OBSERVERS, CheckResult, CommonReason, Judgement

# The run options a check may declare it uses (``verifier run --OPTION``; RunConfig and SolverConfig fields).
# An option given while no chosen check uses it is refused, naming it (cli.py): it would be recorded in
# results.json as if it had been used.
RUN_OPTIONS = ("alphas", "horizon", "rtol", "atol", "noise", "negligible", "perturb_epochs")
# The cached Context computations a check may read (context.py, checks/_perturb.py).
READS = ("stages", "ladder", "reference-run")


@dataclass(frozen=True)
class Hunt:
    """How ``verifier.survey.hunt`` searches for a violation of a check: the key ``metric`` it steers towards
    its threshold, and ``measure(ctx) -> CheckResult``, a cheaper measurement that declares that metric and
    judges it (None: the whole check)."""

    metric: str
    measure: Callable[..., CheckResult] | None = None


@dataclass(frozen=True)
class ReportNote:
    """What the report explains beside a failure kind a reader must not confuse with a plain violation: the
    ``text``, and the ``companion`` check whose verdict on the same run it shows next to it (from the run's
    results when that check ran, else from the metric ``recorded_in`` of this check, a dict with verdict,
    reason and message)."""

    text: str
    companion: str | None = None
    recorded_in: str | None = None


@dataclass(frozen=True)
class CheckSpec:
    """A registered check and what it declares (see :func:`register`)."""

    id: str
    claim: str
    func: Callable[..., CheckResult]
    reasons: type[Enum] = CommonReason
    diagonal_only: bool = True
    order: int = 0
    full_only: bool = False
    reads: tuple[str, ...] = ()  # the cached Context computations it reads (runner.share_groups)
    options: tuple[str, ...] = ()  # the RUN_OPTIONS it uses
    flow: bool | Callable[..., bool] = True  # integrates a gradient flow (a callable: given the RunConfig)
    hunt: Hunt | None = None
    notes: Mapping[str, ReportNote] = field(default_factory=dict)  # failure reason -> what the report explains

    def reason_values(self) -> tuple[str, ...]:
        """Every reason this check may give: its own enum's values, then the common ones."""
        return tuple(dict.fromkeys([r.value for r in self.reasons] + [r.value for r in CommonReason]))

    def applies_to(self, model) -> str | None:
        """None when the check applies to ``model``, else the reason it does not."""
        if self.diagonal_only and not model.diagonal:
            return f"{self.id} needs a network with diagonal weights (Definition 3.1); {model.family} has full weights"
        if self.full_only and model.diagonal:
            return (f"{self.id} tracks the singular values of full weight products; {model.family} has diagonal "
                    "weights, whose stages Algorithm 1 and theorem-4.5 check")
        return None

    def integrates_flow(self, config) -> bool:
        """Whether the check, run with ``config``, integrates a gradient flow (whose dense Jacobian must fit in
        memory: verifier/memory.py)."""
        return bool(self.flow(config) if callable(self.flow) else self.flow)

    def note(self, reason: str | None) -> ReportNote | None:
        return self.notes.get(reason) if reason is not None else None


REGISTRY: dict[str, CheckSpec] = {}


def register(id: str, claim: str, *, reasons: type[Enum] = CommonReason, diagonal_only: bool = True,
             order: int = 0, full_only: bool = False, reads: tuple[str, ...] = (), options: tuple[str, ...] = (),
             flow: bool | Callable[..., bool] = True, hunt: Hunt | None = None,
             notes: Mapping[str, ReportNote] | None = None):
    """Register ``func`` as check ``id`` (the claim it tests in one sentence); ``order``: its place in the suite.

    ``reasons``: the check's ``Reason`` enum (str values, kebab-case). ``diagonal_only``/``full_only``: the models
    it applies to. ``reads``: the cached Context computations it reads (READS: "stages" is Algorithm 1,
    "ladder" the flow along the alpha ladder, "reference-run" the flow at the smallest alpha): checks that read
    the same run go to the same worker process (runner.share_groups), and the survey solves the ladders of
    several draws at once when a chosen check reads "ladder"; a computation left out is computed again where it
    is read (slower, never different). ``options``: the RUN_OPTIONS it uses. ``flow``: whether it integrates a
    gradient flow, or a function of the RunConfig saying so (the memory check before work). ``hunt``: how a
    hunt measures it (None: not hunted). ``notes``: failure reason -> :class:`ReportNote`."""
    unknown = [o for o in options if o not in RUN_OPTIONS] + [r for r in reads if r not in READS]
    if unknown:
        raise ValueError(f"check {id!r} declares unknown options or reads {unknown} (options: "
                         f"{', '.join(RUN_OPTIONS)}; reads: {', '.join(READS)})")

    def deco(func):
        if id in REGISTRY and REGISTRY[id].func is not func:
            raise ValueError(f"check id {id!r} registered twice")
        REGISTRY[id] = CheckSpec(id, claim, func, reasons, diagonal_only, order, full_only, tuple(reads),
                                 tuple(options), flow, hunt, dict(notes or {}))
        return func

    return deco


def check_ids() -> list[str]:
    return [s.id for s in sorted(REGISTRY.values(), key=lambda s: (s.order, s.id))]


def resolve_ids(text: str | None, model) -> list[str]:
    """'a,b' -> validated ids; None -> every check that applies to the model (the paper suite)."""
    if text is None:
        return [i for i in check_ids() if REGISTRY[i].applies_to(model) is None]
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids:
        raise InputError("--checks", "empty list", ", ".join(check_ids()))
    for i in ids:
        if i not in REGISTRY:
            raise InputError("--checks", f"unknown check {i!r}", ", ".join(check_ids()))
    return ids


def users_of(option: str) -> list[str]:
    """The registered checks that use run option ``option``, in suite order."""
    return [i for i in check_ids() if option in REGISTRY[i].options]


def integrating_flow(ids, config) -> list[str]:
    """The checks of ``ids`` that integrate a gradient flow when run with ``config``."""
    return [i for i in ids if REGISTRY[i].integrates_flow(config)]


def hunted() -> list[str]:
    """The checks a hunt can search (those that declare a :class:`Hunt`), in suite order."""
    return [i for i in check_ids() if REGISTRY[i].hunt is not None]


def run_check(check_id: str, ctx) -> CheckResult:
    spec = REGISTRY[check_id]
    start = time.perf_counter()
    why_not = spec.applies_to(ctx.model)
    if why_not is not None:
        result = CheckResult.judged(check_id, spec.claim,
                                    Judgement.inconclusive(CommonReason.NOT_APPLICABLE, f"not applicable: {why_not}"))
    else:
        try:
            result = spec.func(ctx)
            if result.reason is not None and result.reason not in spec.reason_values():
                raise ValueError(f"reason {result.reason!r} is not one of {check_id}'s declared reasons "
                                 f"({', '.join(spec.reason_values())})")
        except InputError:
            raise
        except Exception as exc:  # a crash is a result, never a pass
            tb = traceback.format_exc(limit=3)
            result = CheckResult.judged(check_id, spec.claim, Judgement.inconclusive(
                CommonReason.CHECK_RAISED, f"the check raised {type(exc).__name__}: {exc}"), evidence={"traceback": tb})
    result = replace(result, claim=result.claim or spec.claim, config=ctx.config.as_dict(),
                     provenance=ctx.provenance, duration_s=time.perf_counter() - start)
    notify(result)
    return result


def notify(result: CheckResult) -> None:
    """Hand a finished result to the observers (the pytest plugin's record), in the process that owns them."""
    for observe in OBSERVERS:
        observe(result)
