"""pytest plugin (entry point ``pytest11: verifier``): checks as tests, and one report per session.

* ``--verifier-report PATH`` writes every CheckResult recorded during the session into one HTML report at
  PATH, and the same results as results.json at PATH with suffix ``.json`` (so a test session can be gated).
  Every result of ``verifier.checks.run_check`` is recorded (:func:`parametrize_with_checks` tests and
  property suites alike); results built otherwise are added with the ``verifier_record`` fixture or
  :func:`record`.
* ``--verifier-device auto|cpu|cuda`` (default auto) is the device of :func:`parametrize_with_checks` runs
  and the value of the ``verifier_device`` fixture.
* :func:`parametrize_with_checks` turns user problems into pytest params with stable ids
  ``<problem-name>-<check-id>``, one per applicable check, with expected failures as strict xfails.
* Under pytest-xdist (``pytest -n auto --verifier-report r.html``) every worker sends its results to the
  controller, which writes the one report and results.json for the whole session.

The plugin is loaded in every pytest session of a project that has verifier installed, so it imports nothing
heavy: torch, the models and the checks are imported only when a verifier feature is used (as hypothesis's
plugin does).

Usage::

    from verifier.pytest_plugin import Problem, parametrize_with_checks

    @parametrize_with_checks([Problem("my-model", model=my_model,
                                      expected_failures={"assumption-4.2": "tied teacher entries"})])
    def test_theory(problem, check):
        check(problem)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest

from .config import DEVICES
from .results import OBSERVERS, CheckResult, Verdict

WORKER_KEY = "verifier_results"  # the results a pytest-xdist worker hands to the controller (JSON text)

# A property suite may record thousands of results: per check id the report keeps the first 20 passes and the
# first 100 fails/inconclusives, and says how many it left out.
MAX_PASSING_PER_CHECK = 20
MAX_OTHER_PER_CHECK = 100
MAX_SUMMARY_ROWS = 12  # more results than this: the terminal summary counts verdicts per check id


class CheckFailed(AssertionError):
    """A check's verdict was fail or inconclusive."""


class _Session:
    """What one pytest session records; nested in-process sessions (pytester) get their own."""

    def __init__(self, report: Path | None, device: str, args: Iterable[str]):
        # Written at the end of the session, after tests that may chdir: absolute now; shown as given.
        self.shown = report
        self.report = None if report is None else Path(os.path.abspath(report))
        self.device, self.args = device, list(args)
        self.results: list[CheckResult] = []
        self.omitted: dict[str, int] = {}
        self.cache: dict[tuple[str, int], tuple[Problem, Any]] = {}  # keeps the problem alive: id() stays unique
        self.outcomes: dict[str, str] = {}  # test node id -> passed, failed, skipped, xfailed, xpassed
        self.final = None
        self.write_error: str | None = None

    def add(self, result: CheckResult) -> None:
        passed = result.verdict == Verdict.PASS
        same = [r for r in self.results if r.id == result.id and (r.verdict == Verdict.PASS) == passed]
        cap = MAX_PASSING_PER_CHECK if passed else MAX_OTHER_PER_CHECK
        if len(same) >= cap:
            key = f"{result.id} ({result.verdict.value})"
            self.omitted[key] = self.omitted.get(key, 0) + 1
        else:
            self.results.append(result)


_SESSIONS: list[_Session] = []


def _current() -> _Session | None:
    return _SESSIONS[-1] if _SESSIONS else None


def _record(result: CheckResult, test: str) -> CheckResult:
    if not isinstance(result, CheckResult):
        raise TypeError(f"record() takes a CheckResult, got {type(result).__name__}")
    session = _current()
    if session is not None and session.report is not None:
        prov = result.provenance if isinstance(result.provenance, dict) else {}
        session.add(replace(result, provenance={**prov, "test": test}))
    return result


def record(result: CheckResult) -> CheckResult:
    """Add ``result`` to this pytest session's ``--verifier-report`` (a no-op without one); returns it."""
    return _record(result, os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0])


@dataclass(frozen=True)
class Problem:
    """A user's problem: a name (the test id prefix), a model or a config to build one, and the checks
    expected to fail on it (check id -> reason). ``checks`` restricts the ids (default: every check)."""

    name: str
    model: Any = None
    config: Any = None  # a verifier.config.RunConfig; None: the defaults
    expected_failures: Mapping[str, str] = field(default_factory=dict)
    checks: tuple[str, ...] | None = None

    def __post_init__(self):
        """Checked when the problem is made (at collection): an InputError naming the field, not an
        AttributeError from deep inside a check. A model is a verifier Model (or, for test doubles, has its
        ``diagonal`` and ``family``)."""
        from .errors import InputError

        if not isinstance(self.name, str) or not self.name:
            raise InputError("Problem.name", f"{self.name!r} is not a non-empty string", "a test id prefix")
        if self.model is not None:
            from .models import Model

            if not isinstance(self.model, Model) and not all(hasattr(self.model, a) for a in ("diagonal", "family")):
                raise InputError("Problem.model", f"{self.model!r} is a {type(self.model).__name__}, not a model",
                                 "verifier.from_module(...), verifier.from_loss(...), a verifier.models class, or None")
        if self.config is not None:
            from .config import RunConfig

            if not isinstance(self.config, RunConfig):
                raise InputError("Problem.config", f"{type(self.config).__name__} is not a RunConfig",
                                 "verifier.config.RunConfig(...) or None")
        if not isinstance(self.expected_failures, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.expected_failures.items()):
            raise InputError("Problem.expected_failures", f"{self.expected_failures!r}", "a dict check id -> reason")
        if self.checks is not None and (isinstance(self.checks, str) or not all(isinstance(c, str) for c in self.checks)):
            raise InputError("Problem.checks", f"{self.checks!r}", "a tuple of check ids, or None")

    def run_config(self):
        from .config import RunConfig

        return self.config if self.config is not None else RunConfig()

    def build(self):
        """The model (built from ``config`` on the CPU when none was given; once per session)."""
        if self.model is not None:
            return self.model
        from .presets import build_model

        c = self.run_config()
        return _cached(("model", self), lambda: build_model(c.preset, c.model, c.data, c.loss, c.seed, "cpu"))


@dataclass(frozen=True)
class CheckCall:
    """The ``check`` param: ``check(problem)`` runs one check, records it, and raises CheckFailed unless it passed."""

    check_id: str

    def __call__(self, problem: Problem) -> CheckResult:
        from .checks import run_check

        result = run_check(self.check_id, _context(problem))  # recorded by the run_check observer
        if result.verdict != Verdict.PASS:
            raise CheckFailed(f"{self.check_id} on {problem.name}: {result.verdict.value}: {result.message}")
        return result

    def __repr__(self) -> str:
        return self.check_id


def _cached(key: tuple[str, Problem], make):
    """``make()`` once per (kind, problem) and session; outside a pytest session, every time."""
    session = _current()
    if session is None:
        return make()
    slot = (key[0], id(key[1]))
    if slot not in session.cache:
        session.cache[slot] = (key[1], make())
    return session.cache[slot][1]


def _context(problem: Problem):
    """One Context per problem and session (checks share Algorithm 1 and the flow ladder), on the session device."""
    from .context import Context
    from .presets import place

    session = _current()
    config = problem.run_config()
    device = session.device if session is not None else config.device
    argv = ["pytest", *(session.args if session else [])]

    def make():
        run_config = replace(config, device=device)  # the device resolved once, on the config
        model = place(problem.build(), run_config.torch_device, keep_unmovable=device == "auto")
        return Context(run_config, model=model, argv=argv)

    return _cached(("context", problem), make)


def parametrize_with_checks(problems: Iterable[Problem], checks: Iterable[str] | None = None):
    """``pytest.mark.parametrize("problem, check", ...)``: one param per (problem, check), id
    ``<problem-name>-<check-id>``; a check that does not apply to the model is a skip that says why, an
    expected failure is ``xfail(strict=True, raises=CheckFailed)`` so a crash or an unexpected pass shows."""
    from .checks import REGISTRY, check_ids

    problems = list(problems)
    names = [p.name for p in problems]
    if len(set(names)) != len(names):
        raise ValueError(f"problem names must be unique (they are test ids): {names}")
    known = check_ids()
    wanted = list(checks) if checks is not None else None
    params = []
    for problem in problems:
        ids = list(problem.checks or wanted or known)
        for cid in [*ids, *problem.expected_failures]:
            if cid not in REGISTRY:
                raise ValueError(f"{problem.name}: unknown check {cid!r} (allowed: {', '.join(known)})")
        model = problem.build()
        for cid in ids:
            marks = []
            reason = REGISTRY[cid].applies_to(model)
            if reason is not None:
                marks.append(pytest.mark.skip(reason=f"not applicable: {reason}"))
            elif cid in problem.expected_failures:
                marks.append(pytest.mark.xfail(reason=problem.expected_failures[cid], strict=True, raises=CheckFailed))
            params.append(pytest.param(problem, CheckCall(cid), id=f"{problem.name}-{cid}", marks=marks))
    return pytest.mark.parametrize("problem, check", params)


# ---- hooks and fixtures ------------------------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("verifier", "verifier: numerical checks of the gradual-rank-increase theory")
    group.addoption("--verifier-report", metavar="PATH", default=None,
                    help="write every CheckResult recorded in this session to one HTML report at PATH "
                         "(and results.json at PATH with suffix .json)")
    group.addoption("--verifier-device", default="auto", choices=DEVICES,
                    help="device for parametrize_with_checks runs and the verifier_device fixture (default auto)")


def pytest_configure(config):
    device = config.getoption("--verifier-device", default="auto") or "auto"
    if device == "cuda":  # asked for explicitly: a verifier feature is in use, torch may load
        from .config import resolve_device
        from .errors import InputError

        try:
            resolve_device(device)
        except InputError as exc:
            raise pytest.UsageError(f"--verifier-device: {exc}") from None
    report = config.getoption("--verifier-report", default=None)
    if report and not hasattr(config, "workerinput"):
        report = _checked_report_path(report)
    if report and hasattr(config, "workerinput"):  # an xdist worker: results go to the controller, not a file
        report = os.devnull
    session = _Session(Path(report) if report else None, device, config.invocation_params.args)
    config.stash[_KEY] = session
    _SESSIONS.append(session)
    if record not in OBSERVERS:  # every run_check result of the session, property suites included
        OBSERVERS.append(record)


def _checked_report_path(report: str) -> str:
    """Refuse, before any test runs, a ``--verifier-report`` the session could not write at its end: a path
    whose results.json (suffix .json) would overwrite the HTML itself, a folder, a path under a file, an
    unwritable folder (a pytest usage error naming the option)."""
    from .errors import InputError
    from .outputs import check_output_file

    if Path(report).suffix == ".json":
        raise pytest.UsageError(f"--verifier-report: {report} ends in .json, where the session's results.json goes, "
                                "so it would overwrite the HTML report (allowed: an .html path, e.g. report.html)")
    try:
        check_output_file(report, "--verifier-report")
    except InputError as exc:
        raise pytest.UsageError(str(exc)) from None
    return report


def pytest_unconfigure(config):
    session = config.stash.get(_KEY, None)
    if session is not None and session in _SESSIONS:
        _SESSIONS.remove(session)
    if not _SESSIONS and record in OBSERVERS:
        OBSERVERS.remove(record)


def pytest_runtest_logreport(report):
    session = _current()
    if session is None or session.report is None or not (report.when == "call" or report.outcome != "passed"):
        return
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.outcome == "skipped" else "xpassed"
    session.outcomes[report.nodeid] = outcome


def _with_outcome(result: CheckResult, outcomes: dict[str, str]) -> CheckResult:
    """The test's outcome beside its check's verdict: a fail verdict may be what a test expects (Adam breaks
    Lemma 4.1)."""
    outcome = outcomes.get(result.provenance.get("test", ""))
    return replace(result, provenance={**result.provenance, "test_outcome": outcome}) if outcome else result


def _session_results(session: _Session):
    from .context import git_sha, versions
    from .results import RunResults

    notes = [f"{n} more results of {k} were recorded and left out of this report" for k, n in session.omitted.items()]
    prov = {"command": " ".join(["pytest", *session.args]), "device": session.device, "dtype": "float64",
            "versions": versions(), "git_sha": git_sha()}
    run = {"model": "pytest session", "provenance": prov, "config": {}, "notes": notes,
           "checks": sorted({r.id for r in session.results})}
    return RunResults(run=run, checks=tuple(_with_outcome(r, session.outcomes) for r in session.results))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    state = session.config.stash.get(_KEY, None)
    if state is None or state.report is None:
        return
    if hasattr(session.config, "workerinput"):  # an xdist worker: hand the results to the controller
        session.config.workeroutput[WORKER_KEY] = json.dumps(
            {"checks": [r.to_dict() for r in state.results], "omitted": state.omitted})
        return
    from .report import write_report
    from .results import write_results

    results = state.final = _session_results(state)
    try:
        write_report(results, state.report)
        write_results(results, state.report.with_suffix(".json"))
    except OSError as exc:  # checked at the start; the disk may still fill or the folder vanish
        state.write_error = f"could not write {state.report} ({exc.strerror or exc})"


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist, on the controller: a worker finished; add the results it recorded to the session's."""
    state = _current()
    payload = getattr(node, "workeroutput", {}).get(WORKER_KEY)
    if state is None or state.report is None or payload is None:
        return
    data = json.loads(payload)
    for d in sorted(data["checks"], key=lambda d: str(d.get("provenance", {}).get("test", ""))):
        state.add(CheckResult.from_dict(d))
    for key, n in data["omitted"].items():
        state.omitted[key] = state.omitted.get(key, 0) + n


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash.get(_KEY, None)
    if state is None or state.report is None:
        return
    from .report import summary_table
    from .report.format import verdict_counts

    terminalreporter.section("verifier")
    checks = state.final.checks if state.final is not None else ()
    if 0 < len(checks) <= MAX_SUMMARY_ROWS:
        terminalreporter.write_line(summary_table(state.final))
    for check_id in sorted({c.id for c in checks}) if len(checks) > MAX_SUMMARY_ROWS else ():
        counts = verdict_counts(c for c in checks if c.id == check_id)
        terminalreporter.write_line(f"{check_id}: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    if state.write_error is not None:
        terminalreporter.write_line(f"verifier report: {state.write_error}", red=True)
        return
    terminalreporter.write_line(f"verifier report: {state.shown} ({len(state.results)} check results)")


@pytest.fixture
def verifier_record(request):
    """``verifier_record(result)`` adds a CheckResult to the session report, tagged with this test's id."""
    return lambda result: _record(result, request.node.nodeid)


@pytest.fixture
def verifier_device(request) -> str:
    """The ``--verifier-device`` of this session (auto, cpu or cuda)."""
    return request.config.getoption("--verifier-device")


_KEY = pytest.StashKey[_Session]()
