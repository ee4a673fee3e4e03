"""Checks, one module per claim, registered explicitly: importing this package imports exactly the modules
listed here (no package scan); their ``order`` gives the suite's. A new claim is one module and one import line
here (docs/ADDING_A_CLAIM.md)."""

from ..results import CheckResult, CommonReason, Verdict
from . import assumption42, assumption43, assumption44, definition31, lemma41, rank_increments, theorem45  # noqa: F401
from .registry import REGISTRY, CheckSpec, check_ids, register, resolve_ids, run_check

__all__ = ["REGISTRY", "CheckSpec", "CheckResult", "CommonReason", "Verdict", "check_ids", "register",
           "resolve_ids", "run_check"]
