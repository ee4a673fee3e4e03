"""One registry of checks feeds the CLI, the library call and ``pytest.mark.parametrize`` (stable ids).

A check is a plain function ``(ctx: Context) -> CheckResult`` registered with its own ``Reason`` enum (the
failure kinds it can give, besides :class:`~verifier.results.CommonReason`; docs/THEORY.md §5.0).
:func:`run_check` turns an exception into an ``inconclusive`` result that names it (never a pass; reason
``check-raised``), refuses a reason the check did not declare, and stamps config, provenance, duration.

Every check module has the same shape (theorem45.py is the template): constants with their derivation, a
frozen dataclass of what is measured, ``measure`` (all the torch work), ``judge`` (pure: verdict, reason and
message from the measurement), ``declare`` (the measurement as :class:`~verifier.results.Metric` s),
``figures``, and the registered function that chains them; a check of several parts (4.3, 4.4) has a
measurement and a ``judge_*`` per part.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable

from ..errors import InputError
from ..results import OBSERVERS, CheckResult, CommonReason, Verdict


@dataclass(frozen=True)
class CheckSpec:
    id: str
    claim: str
    func: Callable[..., CheckResult]
    reasons: type[Enum] = CommonReason
    diagonal_only: bool = True
    order: int = 0
    full_only: bool = False
    reads: tuple[str, ...] = ()  # the cached Context computations it reads (runner.share_groups)

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


REGISTRY: dict[str, CheckSpec] = {}


def register(id: str, claim: str, *, reasons: type[Enum] = CommonReason, diagonal_only: bool = True,
             order: int = 0, full_only: bool = False, reads: tuple[str, ...] = ()):
    """Register ``func`` as check ``id``; ``reasons``: the check's ``Reason`` enum (str values, kebab-case);
    ``reads``: the cached Context computations it reads ("stages": Algorithm 1, "ladder", "reference-run"):
    checks that read the same run go to the same worker process (runner.share_groups). A computation left
    out is computed again where it is read: slower, never different."""
    def deco(func):
        if id in REGISTRY and REGISTRY[id].func is not func:
            raise ValueError(f"check id {id!r} registered twice")
        REGISTRY[id] = CheckSpec(id, claim, func, reasons, diagonal_only, order, full_only, tuple(reads))
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


def run_check(check_id: str, ctx) -> CheckResult:
    spec = REGISTRY[check_id]
    start = time.perf_counter()
    why_not = spec.applies_to(ctx.model)
    if why_not is not None:
        result = CheckResult(check_id, spec.claim, Verdict.INCONCLUSIVE, f"not applicable: {why_not}",
                             reason=CommonReason.NOT_APPLICABLE)
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
            result = CheckResult(check_id, spec.claim, Verdict.INCONCLUSIVE,
                                 f"the check raised {type(exc).__name__}: {exc}", evidence={"traceback": tb},
                                 reason=CommonReason.CHECK_RAISED)
    result = replace(result, claim=result.claim or spec.claim, config=ctx.config.as_dict(),
                     provenance=ctx.provenance, duration_s=time.perf_counter() - start)
    notify(result)
    return result


def notify(result: CheckResult) -> None:
    """Hand a finished result to the observers (the pytest plugin's record), in the process that owns them."""
    for observe in OBSERVERS:
        observe(result)
