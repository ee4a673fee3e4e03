"""Processes that fail cleanly (issue 29, "Workers", "Signals", "Closed stdout"): a worker that dies at any
moment hands its group to the parent; the user's threads and child processes cannot keep the command alive;
a fork of the user's code does not inherit verifier's signal handlers; Ctrl-C at any moment is 130 without
a traceback; closed or full standard streams never change the exit code of a run whose set was written; the
library's ``workers=`` needs a main guard. Most run ``verifier`` as a real process (timeouts in minutes: the
machine may be loaded); every one asserts the exit code, the one line and no traceback."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from verifier.cli import main

TIMEOUT = 900  # seconds a command may take on a loaded 2-core machine: a hang fails the test, slowness does not
CHEAP = ["--checks", "definition-3.1,lemma-4.1", "--no-progress"]
SQUARE = """
import torch, verifier
X = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
y = X @ torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
"""
MAKE = """
def make(seed=0):
    return verifier.from_loss(lambda b: 0.5 * (X @ b - y).pow(2).mean(), 3)
"""


def _env(**changes) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("VERIFIER_WORKERS", None)  # conftest's 1: these tests name --workers themselves
    env.pop("VERIFIER_TRACEBACK", None)
    env.update(changes)
    return env


def _verifier(args, cwd, **popen) -> subprocess.CompletedProcess:
    """``verifier ARGS`` as a real process (``python -m verifier``: the console entry point)."""
    popen.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "verifier", *args], cwd=cwd, env=_env(), text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL, **popen)


def _complete(folder: Path) -> bool:
    try:
        json.loads((folder / "results.json").read_text())
        return (folder / "report.html").stat().st_size > 0
    except (OSError, ValueError):
        return False


@pytest.fixture
def one_thread():
    import torch

    own = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(own)


# ---- workers that die ------------------------------------------------------------------------------------

KILLED_MID_CHECK = SQUARE + """
import multiprocessing, os, signal
CALLS = [0]


def loss(b):
    CALLS[0] += 1
    if multiprocessing.parent_process() is not None and CALLS[0] == 40:  # in a worker, in the middle of a check
        os.kill(os.getpid(), signal.SIGKILL)
    return 0.5 * (X @ b - y).pow(2).mean()


def make():
    return verifier.from_loss(loss, 3)
"""


def test_a_worker_sigkilled_mid_check_hands_its_group_to_the_parent(tmp_path, one_thread, capsys, comparable_run):
    path = tmp_path / "killed.py"
    path.write_text(KILLED_MID_CHECK)
    args = ["run", "--model-file", f"{path}:make", *CHEAP]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    ran_here = json.loads((tmp_path / "two" / "results.json").read_text())["run"]["provenance"]["ran_here"]
    # the killed worker's group runs here; the other worker's too unless it returned before the pool broke (timing)
    here = sorted(c for r in ran_here for c in r["checks"])
    assert here in (["lemma-4.1"], ["definition-3.1"], ["definition-3.1", "lemma-4.1"]), here
    assert {r["why"] for r in ran_here} == {"a worker process died"}
    assert comparable_run(tmp_path / "one" / "results.json") == comparable_run(tmp_path / "two" / "results.json")


def test_a_worker_that_dies_while_algorithm1_runs_here_hands_its_groups_back(tmp_path, one_thread, monkeypatch,
                                                                             comparable_run):
    """SIGKILL to a worker while the parent computes Algorithm 1: the groups submitted after it (and any the
    broken pool held) run in the parent, with the results of one process."""
    import verifier.runner as runner

    args = ["run", "--preset", "diag-linear", "--seed", "3", "--checks", "definition-3.1,assumption-4.2",
            "--no-progress"]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
    real, killed = runner._stages, []

    def kill_then_compute(ctx, bar):
        victim = multiprocessing.active_children()[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(TIMEOUT)
        killed.append(victim.pid)
        real(ctx, bar)

    monkeypatch.setattr(runner, "_stages", kill_then_compute)
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    assert killed
    ran_here = json.loads((tmp_path / "two" / "results.json").read_text())["run"]["provenance"]["ran_here"]
    assert "assumption-4.2" in [c for r in ran_here for c in r["checks"]]
    assert {r["why"] for r in ran_here} == {"a worker process died"}
    assert comparable_run(tmp_path / "one" / "results.json") == comparable_run(tmp_path / "two" / "results.json")


@pytest.mark.parametrize("argv", [["run", "--workers", "2147483647"], ["run", "--workers", "99999999999"],
                                  ["survey", "--workers", "2147483647"], ["survey", "--workers", "99999999999"]])
def test_workers_beyond_the_bound_exit_2_naming_it(argv, tmp_path, capsys):
    code = main([argv[0], "--preset", "diag-linear", *argv[1:], "--checks", "definition-3.1", "--out",
                 str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"verifier: error: --workers: {argv[-1]} workers is out of range") \
        and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_bad_workers_variable_is_named_for_survey_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VERIFIER_WORKERS", "99999999999")
    assert main(["survey", "--preset", "diag-linear", "--n", "1", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("verifier: error: $VERIFIER_WORKERS: 99999999999 workers is out of range")


# ---- user code's threads, children and forks -------------------------------------------------------------

LINGERING = SQUARE + """
import multiprocessing, threading, time
from pathlib import Path

threading.Thread(target=time.sleep, args=(3600,)).start()  # a non-daemon thread that never ends
CHILD = multiprocessing.get_context("fork").Process(target=time.sleep, args=(3600,))  # a non-daemon child
CHILD.start()
with open(Path(__file__).with_name("children"), "a") as f:
    f.write(f"{CHILD.pid}\\n")
""" + MAKE


@pytest.mark.parametrize("argv", [["run", *CHEAP, "--workers", "1"], ["run", *CHEAP, "--workers", "2"],
                                  ["survey", "--n", "2", "--checks", "definition-3.1", "--workers", "1"],
                                  ["survey", "--n", "2", "--checks", "definition-3.1", "--workers", "2"]],
                         ids=["run-1", "run-2", "survey-1", "survey-2"])
def test_user_threads_and_child_processes_cannot_keep_the_command_alive(argv, tmp_path):
    path = tmp_path / "lingering.py"
    path.write_text(LINGERING)
    try:
        with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
            # files, not pipes: the user's child holds its copies of them open for an hour, which is its own
            # business; what is tested is that verifier's process ends (a hang is a TimeoutExpired)
            proc = _verifier([argv[0], "--model-file", f"{path}:make", *argv[1:], "--out", str(tmp_path / "o")],
                             tmp_path, capture_output=False, stdout=out, stderr=err)
        err = (tmp_path / "stderr").read_text()
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert _complete(tmp_path / "o")
    finally:
        for pid in (tmp_path / "children").read_text().split() if (tmp_path / "children").exists() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


FORKS = {
    "fork-pool": SQUARE + """
import multiprocessing


def make(seed=0):
    with multiprocessing.get_context("fork").Pool(2) as pool:  # __exit__ terminates the pool's children
        pool.map(abs, [1, -2])
    return verifier.from_loss(lambda b: 0.5 * (X @ b - y).pow(2).mean(), 3)
""",
    "terminated-child": SQUARE + """
import multiprocessing, time


def make(seed=0):
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    time.sleep(0.5)
    child.terminate()  # SIGTERM: the default action in the child, never verifier's handler
    child.join()
    return verifier.from_loss(lambda b: 0.5 * (X @ b - y).pow(2).mean(), 3)
""",
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("case", sorted(FORKS))
def test_a_fork_in_user_code_inherits_no_verifier_signal_handler(case, workers, tmp_path):
    path = tmp_path / "forks.py"
    path.write_text(FORKS[case])
    proc = _verifier(["run", "--model-file", f"{path}:make", *CHEAP, "--workers", workers, "--out",
                      str(tmp_path / "o")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert _complete(tmp_path / "o")


# ---- Ctrl-C -------------------------------------------------------------------------------------------------

STARTED = "import sys; from verifier.cli import console; sys.argv[0] = 'verifier'; sys.stderr.write('started\\n'); " \
          "sys.stderr.flush(); console()"


def _interrupted(argv, delay: float, cwd: Path) -> tuple[int, str]:
    """The command, as from a terminal (its own process group, SIGINT to the group as Ctrl-C sends it),
    interrupted ``delay`` seconds after its entry point calls ``console()`` (Python's own start-up and the
    entry script's import of verifier.cli come before: docs/TRUST.md)."""
    p = subprocess.Popen([sys.executable, "-c", STARTED, *argv], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert p.stderr.readline() == "started\n"
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, err


@pytest.mark.parametrize("command", ["run", "survey"])
def test_ctrl_c_at_any_moment_is_130_without_a_traceback(command, tmp_path):
    argv = (["run", "--preset", "diag-linear", "--workers", "2", "--no-progress"] if command == "run" else
            ["survey", "--preset", "diag-linear", "--n", "4", "--checks", "definition-3.1,lemma-4.1", "--workers", "2",
             "--no-progress"])
    # from 0.25 s: a harness preempted between its marker and console() must not be what is tested
    for k, delay in enumerate([0.25, 0.4, 0.6, 0.8, 1.0, 1.5, 2.5, 4.0, 6.0]):
        out = tmp_path / f"o{k}"
        code, err = _interrupted([*argv, "--out", str(out)], delay, tmp_path)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        if code == 130:
            assert err.strip().splitlines()[-1].startswith("verifier: interrupted"), (delay, err)
        else:  # it finished first: then with its verdict and its whole set
            assert code in (0, 1, 3), (delay, code, err)
        assert not out.exists() or _complete(out) or sorted(p.name for p in out.iterdir()) in ([], ["draws.jsonl"])
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], (delay, list(tmp_path.iterdir()))


# ---- standard streams -----------------------------------------------------------------------------------------

def _closing(*fds):
    return lambda: [os.close(fd) for fd in fds]


STREAMS = {  # name -> Popen arguments
    "stdout closed": {"preexec_fn": _closing(1), "stdout": None},
    "stderr closed": {"preexec_fn": _closing(2), "stderr": None},
    "stdin, stdout and stderr closed": {"preexec_fn": _closing(0, 1, 2), "stdout": None, "stderr": None},
    "stdout full": {"stdout": "/dev/full"},
    "stderr full": {"stderr": "/dev/full"},
}


@pytest.mark.parametrize("case", sorted(STREAMS))
def test_closed_or_full_standard_streams_never_change_the_exit_code(case, tmp_path):
    opened, kwargs = [], {}
    for key, value in STREAMS[case].items():
        if isinstance(value, str):
            opened.append(open(value, "w"))
            value = opened[-1]
        kwargs[key] = value
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    try:
        proc = subprocess.run([sys.executable, "-m", "verifier", "run", "--preset", "diag-linear", "--checks",
                               "definition-3.1", "--out", str(tmp_path / "o")], cwd=tmp_path, env=_env(), text=True,
                              timeout=TIMEOUT, **kwargs)
    finally:
        for f in opened:
            f.close()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in (proc.stderr or "")
    assert _complete(tmp_path / "o")


def test_a_command_whose_only_output_is_stdout_says_a_closed_stdout(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "verifier", "checks"], cwd=tmp_path, env=_env(), text=True,
                          timeout=TIMEOUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_closing(1))
    assert proc.returncode == 2 and proc.stderr.startswith("verifier: error: stdout: cannot be written (closed)")


# ---- the library without a main guard ------------------------------------------------------------------------

LIBRARY = """
from verifier.config import RunConfig
from verifier.runner import run_suite
{call}
"""
CALL = ('res = run_suite(RunConfig(preset="diag-linear"), ["definition-3.1", "lemma-4.1"], progress=False, '
        'workers=2)\nprint("workers", res.run["provenance"]["workers"], res.verdict.value)')


@pytest.mark.parametrize("guarded", [False, True])
def test_library_workers_need_a_main_guard(guarded, tmp_path):
    body = ("def main():\n" + textwrap.indent(CALL, "    ") + "\n\n\nif __name__ == \"__main__\":\n    main()"
            if guarded else CALL)
    script = tmp_path / "script.py"
    script.write_text(LIBRARY.format(call=body))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(), text=True, timeout=TIMEOUT,
                          capture_output=True)
    assert "bootstrapping" not in proc.stderr and "spawn_main" not in proc.stderr, proc.stderr
    if guarded:
        assert proc.returncode == 0 and proc.stdout.strip() == "workers 2 pass", proc.stderr
    else:
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and last.startswith("verifier.errors.InputError: workers: 2 worker processes would"
                                                        f" each import {script} again"), proc.stderr
        assert 'if __name__ == "__main__":' in last and "line 4" in last


def test_library_workers_from_standard_input_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-"], input=LIBRARY.format(call=CALL), cwd=tmp_path, env=_env(), text=True,
                          timeout=TIMEOUT, capture_output=True)
    assert proc.returncode == 1 and "spawn_main" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("verifier.errors.InputError: workers: 2 worker processes "
                                                           "would each import the main script '<stdin>'")


def test_library_workers_from_python_c_need_no_guard(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LIBRARY.format(call=CALL)], cwd=tmp_path, env=_env(), text=True,
                          timeout=TIMEOUT, capture_output=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "workers 2 pass", proc.stderr
