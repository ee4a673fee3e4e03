"""The one pool module (verifier/pool.py): the --workers parser and default, the main-guard rule of library use,
and the import map it sits in (ground floor; no runner <-> survey circle)."""

import ast
import sys
from pathlib import Path

import pytest

from verifier.errors import InputError
from verifier.pool import MAX_WORKERS, LocalPool, Workers, _guarded, parse_workers, require_main_guard

PKG = Path(__file__).resolve().parents[1] / "verifier"


def test_one_default_for_run_and_survey_auto_or_the_variable():
    assert parse_workers(None, {}) == Workers(None, "--workers", False)
    assert parse_workers(None, {"VERIFIER_WORKERS": "3"}) == Workers(3, "$VERIFIER_WORKERS", True)
    assert parse_workers("2", {"VERIFIER_WORKERS": "3"}) == Workers(2, "--workers", True)
    assert Workers(None).processes(cores=8) == 8 and Workers(None).processes(cores=8, gpus=2) == 2
    assert Workers(5).processes(cores=8, gpus=2) == 5


@pytest.mark.parametrize("text", ["0", str(MAX_WORKERS + 1), "2147483647", "99999999999", "-3", "two", "", "1.0",
                                  "0x10", True])
def test_out_of_range_or_not_a_count_is_refused_naming_the_option(text):
    with pytest.raises(InputError) as info:
        parse_workers(text, {})
    assert info.value.field == "--workers" and "1 to 1024, or auto" in str(info.value)


def test_a_pool_of_a_bad_size_is_refused_before_any_process():
    for bad in (0, MAX_WORKERS + 1, 2.0, True):
        with pytest.raises(InputError, match="^workers: "):
            LocalPool(bad, 1)


GUARDS = '''
import os
x = run(1)                                 # line 3: top level, unguarded
if __name__ == "__main__":
    y = run(2)                             # line 5: guarded
if "__main__" == __name__:
    for i in range(2):
        z = run(3)                         # line 8: guarded, nested
if __name__ != "__main__":
    w = run(4)                             # line 10: not the guard
else:
    v = run(5)                             # line 12: the else branch is not a guard body
def f():
    return run(6)                          # line 14: inside a function (not a top-level statement's body)
try:
    if __name__ == "__main__":
        u = run(7)                         # line 17: guarded inside try
except ImportError:
    pass
'''


@pytest.mark.parametrize("line, guarded", [(3, False), (5, True), (8, True), (10, False), (12, False), (17, True)])
def test_the_guard_is_found_where_spawn_would_not_rerun_the_line(line, guarded):
    assert _guarded(ast.parse(GUARDS), line) is guarded


def test_library_use_from_pytest_or_an_interactive_session_needs_no_guard():
    require_main_guard("workers", 2)  # pytest's __main__ runs no test at its top level


def test_the_pool_is_the_ground_floor_and_the_runner_survey_circle_is_gone():
    """Every import (lazy ones included) of pool.py, runner.py and survey/*.py: pool imports the standard library,
    torch (a worker's thread count) and errors, nothing else of verifier; runner imports nothing of survey; survey/workers nothing of survey/engine."""
    def imported(path: Path) -> set[str]:
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                out.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        return out

    pool = imported(PKG / "pool.py")
    assert {m for m in pool if m.startswith(".")} == {".errors"}
    assert {m.split(".")[0] for m in pool if not m.startswith(".")} - set(sys.stdlib_module_names) == {"torch"}
    assert not {m for m in imported(PKG / "runner.py") if "survey" in m}
    assert not {m for m in imported(PKG / "survey" / "workers.py") if m.endswith("engine")}
    assert ".pool" in imported(PKG / "runner.py") and "..pool" in imported(PKG / "survey" / "workers.py")
