"""Checks side by side in worker processes (runner.py): the groups, the worker count, and the same results
as one process."""

import json
import os

import pytest

from verifier.checks import resolve_ids
from verifier.cli import main
from verifier.config import RunConfig
from verifier.context import Context
from verifier.errors import InputError
from verifier.pool import MAX_WORKERS, parse_workers
from verifier.runner import can_split, reads_stages, run_checks, share_groups

PAPER_SUITE = ["definition-3.1", "lemma-4.1", "assumption-4.2", "assumption-4.3", "assumption-4.4", "theorem-4.5"]


def test_checks_that_share_a_run_are_grouped():
    # 4.2 and theorem-4.5 read the alpha ladder (4.5 may refine it after 4.2 read it: same order as in one
    # process); 4.3 and 4.4 the reference run; Algorithm 1's stages are handed to every group that reads them.
    assert share_groups(PAPER_SUITE) == [["assumption-4.2", "theorem-4.5"], ["assumption-4.3", "assumption-4.4"],
                                         ["definition-3.1"], ["lemma-4.1"]]
    assert share_groups(["theorem-4.5", "lemma-4.1"]) == [["theorem-4.5"], ["lemma-4.1"]]
    assert share_groups(["assumption-4.4"]) == [["assumption-4.4"]]
    assert [reads_stages(g) for g in share_groups(PAPER_SUITE)] == [True, True, False, False]


@pytest.mark.parametrize("text, env, cores, want", [
    (None, {}, 2, 2),  # auto: one per core
    (None, {}, 16, 16),
    (None, {"VERIFIER_WORKERS": "3"}, 2, 3),
    ("auto", {"VERIFIER_WORKERS": "1"}, 2, 2),  # the option wins over the variable
    ("4", {}, 2, 4),
    (" 7 ", {}, 2, 7),
    (str(MAX_WORKERS), {}, 2, MAX_WORKERS),
])
def test_worker_count(text, env, cores, want):
    assert parse_workers(text, env).processes(cores) == want


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", "", "2147483647", "99999999999", str(MAX_WORKERS + 1),
                                  "1e3", "\u0663", "+2"])
def test_bad_worker_count_is_refused(text):
    with pytest.raises(InputError, match=r"^--workers: .* \(allowed: a whole number from 1 to 1024, or auto\)$"):
        parse_workers(text, {})


def test_a_bad_worker_variable_is_named_as_such():
    with pytest.raises(InputError, match=r"^\$VERIFIER_WORKERS: 'two' is not a number of workers"):
        parse_workers(None, {"VERIFIER_WORKERS": "two"})


def test_bad_workers_exit_2_before_any_work(tmp_path, capsys):
    assert main(["run", "--preset", "diag-linear", "--workers", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_model_handed_in_stays_in_this_process():
    from verifier.presets import PRESETS

    ctx = Context(RunConfig(preset="diag-linear"), model=PRESETS["diag-linear"].build(), argv=["t"])
    assert can_split(ctx) == "the model was handed in as an object"
    res = run_checks(ctx, ["definition-3.1", "lemma-4.1"], progress=False, workers=2)
    assert [c.id for c in res.checks] == ["definition-3.1", "lemma-4.1"]
    assert res.run["provenance"]["workers"] == 1


@pytest.fixture
def one_thread():
    """One torch thread here, as each worker has on 2 cores: the comparison is at the same thread count (another
    count moves values at rounding level)."""
    import torch

    own = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(own)


def test_two_workers_give_the_results_of_one_process(tmp_path, one_thread, comparable_run):
    args = ["run", "--preset", "diag-linear", "--seed", "3", "--no-progress"]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["run"]["provenance"]["workers"] == 2 and "ran_here" not in two["run"]["provenance"]
    assert [c["id"] for c in two["checks"]] == PAPER_SUITE == resolve_ids(None, _model())
    assert comparable_run(tmp_path / "one" / "results.json") == comparable_run(tmp_path / "two" / "results.json")


def test_a_failing_check_fails_the_same_way_in_a_worker(tmp_path, one_thread, comparable_run):
    # The valley counterexample of Assumptions 4.3/4.4 (duplicated features) fails in a worker as here.
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    X = torch.cat([x, x[:, :1]], 1)
    y = X @ torch.tensor([1.0, -0.5, 1.0], dtype=torch.float64)
    data = tmp_path / "valley.npz"
    np.savez(data, X=X.numpy(), Y=y.numpy())
    args = ["run", "--model", "diag-linear", "--data", str(data), "--checks", "assumption-4.3,assumption-4.4,lemma-4.1",
            "--no-progress"]
    one = main([*args, "--workers", "1", "--out", str(tmp_path / "one")])
    two = main([*args, "--workers", "2", "--out", str(tmp_path / "two")])
    assert one == two == 1
    assert comparable_run(tmp_path / "one" / "results.json") == comparable_run(tmp_path / "two" / "results.json")


def _model():
    from verifier.presets import PRESETS

    return PRESETS["diag-linear"].build()


def test_workers_that_cannot_apply_are_refused(tmp_path, capsys, monkeypatch):
    # On a GPU the checks stay in one process (runner.can_split); an explicit --workers 2 would be ignored.
    import verifier.runner as runner

    monkeypatch.setattr(runner, "can_split", lambda ctx: "the run is on cuda")
    assert main(["run", "--preset", "diag-linear", "--workers", "2", "--out", str(tmp_path / "o")]) == 2
    assert "--workers: 2 processes asked for, but the run is on cuda" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _die_in_the_ladder_group(task):
    """A worker that dies (as one killed for memory would) when it gets the ladder's group."""
    import os

    from verifier.runner import run_group

    if "assumption-4.2" in task.ids:
        os._exit(9)
    return run_group(task)


def test_a_dead_worker_s_checks_run_here(tmp_path, one_thread, monkeypatch, comparable_run):
    import verifier.runner as runner

    args = ["run", "--preset", "diag-linear", "--seed", "3", "--no-progress"]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
    monkeypatch.setattr(runner, "run_group", _die_in_the_ladder_group)
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    ran_here = json.loads((tmp_path / "two" / "results.json").read_text())["run"]["provenance"]["ran_here"]
    assert "assumption-4.2" in [c for r in ran_here for c in r["checks"]]  # and any group the broken pool held
    assert {r["why"] for r in ran_here} == {"a worker process died"}
    assert comparable_run(tmp_path / "one" / "results.json") == comparable_run(tmp_path / "two" / "results.json")


UNSEEDED = """
import torch
import verifier


def make():
    X = torch.randn(30, 3, dtype=torch.float64)  # no seed: every process draws other data
    y = X @ torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    return verifier.from_loss(lambda b: 0.5 * (X @ b - y).pow(2).mean(), 3)
"""


def test_a_model_a_worker_rebuilds_differently_runs_here(tmp_path, one_thread):
    # A model file that draws its data without a seed gives each process another problem: the workers see that
    # their model's losses at the probe points differ from the parent's, and the groups run here instead.
    path = tmp_path / "unseeded.py"
    path.write_text(UNSEEDED)
    code = main(["run", "--model-file", f"{path}:make", "--checks", "definition-3.1,lemma-4.1", "--workers", "2",
                 "--no-progress", "--out", str(tmp_path / "o")])
    assert code in (0, 1, 3)
    run = json.loads((tmp_path / "o" / "results.json").read_text())
    ran_here = run["run"]["provenance"]["ran_here"]
    assert sorted(c for r in ran_here for c in r["checks"]) == ["definition-3.1", "lemma-4.1"]
    assert all("without a seed" in r["why"] for r in ran_here)
    assert [c["id"] for c in run["checks"]] == ["definition-3.1", "lemma-4.1"]


IN_A_WORKER = "multiprocessing.parent_process() is not None"  # true in a spawned worker only
HOSTILE_IN_WORKERS = {  # user code that behaves in the parent and misbehaves in a worker: name -> the make() body
    "factory-exits": f"if {IN_A_WORKER}:\n        sys.exit(0)",
    "factory-raises": f"if {IN_A_WORKER}:\n        raise RuntimeError('not here')",
    "factory-changes-directory": f"if {IN_A_WORKER}:\n        os.chdir('/')",
    "loss-exits": None,
}


def _hostile_file(path, case):
    body = HOSTILE_IN_WORKERS[case]
    loss = ("def loss(b):\n    if {w}:\n        sys.exit(0)\n    return (X @ b - y).pow(2).mean()\n".format(w=IN_A_WORKER)
            if body is None else "def loss(b):\n    return (X @ b - y).pow(2).mean()\n")
    path.write_text(
        "import multiprocessing, os, sys\nimport torch, verifier\n"
        "X = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)\n"
        "y = X @ torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)\n" + loss
        + "def make():\n    " + (body or "pass") + "\n    return verifier.from_loss(loss, 3)\n")


@pytest.mark.parametrize("case", sorted(HOSTILE_IN_WORKERS))
def test_user_code_that_misbehaves_only_in_a_worker_changes_no_verdict(case, tmp_path, one_thread, monkeypatch,
                                                                       comparable_run):
    # sys.exit, an exception or a chdir that happens only in a worker process: the group runs in the parent,
    # the results are those of one process, provenance.ran_here says why, and the directory is unchanged here.
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "m.py"
    _hostile_file(path, case)
    args = ["run", "--model-file", f"{path}:make", "--checks", "definition-3.1,lemma-4.1", "--no-progress"]
    one = main([*args, "--workers", "1", "--out", str(tmp_path / "one")])
    two = main([*args, "--workers", "2", "--out", str(tmp_path / "two")])
    assert one == two and one in (0, 1, 3)
    assert comparable_run(tmp_path / "one" / "results.json") == comparable_run(tmp_path / "two" / "results.json")
    ran_here = json.loads((tmp_path / "two" / "results.json").read_text())["run"]["provenance"]["ran_here"]
    assert sorted(c for r in ran_here for c in r["checks"]) == ["definition-3.1", "lemma-4.1"]
    if case != "loss-exits":
        assert all("rebuilding the model in a worker failed" in r["why"] for r in ran_here)
    assert os.getcwd() == str(tmp_path)
