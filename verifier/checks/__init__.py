"""Checks, one module per claim; each module registers itself on import."""

import importlib
import pkgutil

from .registry import REGISTRY, CheckSpec, check_ids, register, resolve_ids, run_check
from .result import CheckResult, Verdict

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("registry", "result"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["REGISTRY", "CheckSpec", "CheckResult", "Verdict", "check_ids", "register", "resolve_ids", "run_check"]
