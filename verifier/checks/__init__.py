"""Checks, one module per claim; each module registers itself on import."""

import importlib
import pkgutil

from ..results import CheckResult, Verdict
from .registry import REGISTRY, CheckSpec, check_ids, register, resolve_ids, run_check

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "registry":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["REGISTRY", "CheckSpec", "CheckResult", "Verdict", "check_ids", "register", "resolve_ids", "run_check"]
