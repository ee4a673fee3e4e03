"""Hostile user code (issue 21, class 1) and ignored options (class 2): a model file's ``sys.exit``, exception or
``os.chdir`` is exit 2 naming the file and the function, never the tool's own exit code; an option that would
do nothing is refused naming it. In-process calls of ``verifier.cli.main`` (cheap: definition-3.1 on p = 3)."""

import os
import textwrap

import pytest
import torch

import verifier
from verifier.checks import run_check
from verifier.cli import main
from verifier.config import RunConfig
from verifier.context import Context
from verifier.errors import InputError, UserCodeError, UserCodeExit
from verifier.model_file import load_model_file
from verifier.results import Verdict

GOOD = "import torch, verifier\ndef make():\n    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), 3)\n"
CHEAP = ["--checks", "definition-3.1", "--no-progress"]


def _file(tmp_path, text, name="m.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _run(tmp_path, spec, *extra, command="run"):
    out = tmp_path / "out"
    argv = [command, "--model-file", spec, *extra]
    if command == "run":
        argv += [*CHEAP, "--out", str(out)]
    return main(argv), out


HOSTILE = {  # name: (file text, what the message must say)
    "exit-0-at-import": ("import sys\nsys.exit(0)\n", "importing"),
    "exit-1-at-import": ("import sys\nsys.exit(1)\n", "called sys.exit(1)"),
    "exit-3-in-factory": ("import sys\ndef make():\n    sys.exit(3)\n", "make() called sys.exit(3)"),
    "exit-none-in-factory": ("import sys\ndef make():\n    sys.exit()\n", "make() called sys.exit(None)"),
    "exit-text-in-factory": ("import sys\ndef make():\n    sys.exit('bye')\n", "called sys.exit('bye')"),
    "base-exception": ("def make():\n    raise GeneratorExit('odd')\n", "make() raised GeneratorExit: odd"),
    "chdir-at-import": ("import os\nos.chdir('/')\n" + GOOD, "changed the working directory to /"),
    "chdir-in-factory": (GOOD.replace("def make():\n", "def make():\n    import os; os.chdir('/')\n"),
                         "make() changed the working directory to /"),
}


@pytest.mark.parametrize("command", ["run", "limit"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_user_code_never_sets_the_exit_code(case, command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, says = HOSTILE[case]
    path = _file(tmp_path, text)
    code, out = _run(tmp_path, f"{path}:make", command=command)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("verifier: error: --model-file: ") and says in err, err
    assert str(path) in err
    assert os.getcwd() == str(tmp_path)  # put back
    assert not out.exists()


def test_user_code_error_carries_file_function_and_seed(tmp_path):
    path = _file(tmp_path, "def make(seed):\n    raise ValueError(f'bad seed {seed}')\n")
    with pytest.raises(UserCodeError) as info:
        load_model_file(f"{path}:make", seed=7)
    exc = info.value
    assert (exc.file, exc.function, exc.seed) == (str(path), "make", 7)
    assert isinstance(exc, InputError) and exc.field == "--model-file"
    assert "make(seed=7) raised ValueError: bad seed 7" in str(exc)


def test_ctrl_c_in_user_code_stays_an_interrupt(tmp_path, capsys):
    path = _file(tmp_path, "def make():\n    raise KeyboardInterrupt\n")
    code, out = _run(tmp_path, f"{path}:make")
    assert code == 130 and not out.exists()


def test_a_loss_that_exits_during_a_check_is_an_error_of_that_check():
    armed = []

    def loss(b):
        if armed:
            raise SystemExit(0)
        return (b - 1).pow(2).sum()

    model = verifier.from_loss(loss, 3)
    armed.append(True)
    with pytest.raises(UserCodeExit, match="called sys.exit"):
        model.loss_beta(torch.zeros(3, dtype=torch.float64))
    result = run_check("definition-3.1", Context(RunConfig(), model=model))
    assert result.verdict == Verdict.INCONCLUSIVE and "sys.exit(0)" in result.message


def test_output_paths_are_fixed_before_user_code_runs(tmp_path, monkeypatch):
    """A relative --out is resolved when the command starts: a later chdir cannot move the output."""
    from verifier.outputs import OutputSet

    monkeypatch.chdir(tmp_path)
    output = OutputSet.for_out("rel")
    monkeypatch.chdir("/")
    assert output.target == tmp_path / "rel"


@pytest.mark.parametrize("argv,field", [
    (["--loss", "logistic"], "--loss"), (["--loss", "square"], "--loss"),
    (["--lr", "0.1"], "--lr"), (["--steps", "5"], "--steps"), (["--momentum", "0.5", "--optimizer", "adam"], "--momentum"),
    (["--noise", "0.2"], "--noise"), (["--perturb-epochs", "9"], "--perturb-epochs"), (["--alphas", "1e-4"], "--alphas"),
    (["--horizon", "2"], "--horizon"), (["--rtol", "1e-6"], "--rtol"),
    (["--batch-size", "4", "--optimizer", "gd"], "--batch-size"), (["--weight-decay", "0.1", "--optimizer", "adam"],
                                                                    "--weight-decay"),
])
def test_an_option_that_would_be_ignored_is_refused(argv, field, tmp_path, capsys):
    path = _file(tmp_path, GOOD)
    code, out = _run(tmp_path, f"{path}:make", *argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"verifier: error: {field}: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_limit_refuses_loss_with_a_model_file(tmp_path, capsys):
    path = _file(tmp_path, GOOD)
    assert main(["limit", "--model-file", f"{path}:make", "--loss", "logistic"]) == 2
    assert capsys.readouterr().err.startswith("verifier: error: --loss: ")


def test_options_that_apply_still_run(tmp_path):
    path = _file(tmp_path, GOOD)
    code, out = _run(tmp_path, f"{path}:make")
    assert code == 0 and (out / "results.json").is_file()


# ---- messages that name the real cause ------------------------------------------------------------------

def test_a_loss_cut_off_from_autograd_is_named_as_such(tmp_path, capsys):
    path = _file(tmp_path, "import torch, verifier\nT = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)\n"
                           "def make():\n    return verifier.from_loss(lambda b: (b.detach() - T).pow(2).sum(), 3)\n")
    code, out = _run(tmp_path, f"{path}:make")
    err = capsys.readouterr().err
    assert code == 2 and "cut off from autograd" in err and "built an invalid model: loss_beta:" in err, err


def test_theorem45_on_a_constant_loss_says_there_is_no_stage(tmp_path):
    """Was an OverflowError from the error figure's fit line (and without it, a vacuous pass)."""
    import json

    path = _file(tmp_path, "import torch, verifier\ndef make():\n    return verifier.from_loss(lambda b: (b * 0).sum() + 1.0, 3)\n")
    out = tmp_path / "o"
    assert main(["run", "--model-file", f"{path}:make", "--checks", "theorem-4.5", "--no-progress", "--out", str(out)]) == 3
    [check] = json.loads((out / "results.json").read_text())["checks"]
    assert check["verdict"] == "inconclusive" and check["message"].startswith("Algorithm 1 has no stage")


def test_a_system_exit_past_the_guards_is_a_bug_never_a_verdict(monkeypatch, capsys):
    import verifier.cli as cli

    def escaped():
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_checks", escaped)
    assert main(["checks"]) == 4
    assert "internal error: SystemExit" in capsys.readouterr().err


def test_a_model_file_run_records_the_loss_it_used_not_the_default(tmp_path):
    """results.json never records a loss that was not used: a model file brings its own."""
    import json

    code, out = _run(tmp_path, f"{_file(tmp_path, GOOD)}:make")
    config = json.loads((out / "results.json").read_text())["run"]["config"]
    assert code == 0 and config["loss"] == "defined by the model file"
