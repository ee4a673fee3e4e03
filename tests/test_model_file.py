"""``--model-file PATH.py:FACTORY`` for ``verifier run`` and ``verifier limit``: the example passes; every bad
factory exits 2 with one line naming --model-file, before any work, with nothing written."""

import json
import textwrap
from pathlib import Path

import pytest

from verifier.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "attention_head.py"

HEAD = """
import torch
from torch import nn
import verifier

class Head(nn.Module):
    def __init__(self, d=3, dtype=torch.float64):
        super().__init__()
        self.q, self.k = nn.Parameter(torch.ones(d, dtype=dtype)), nn.Parameter(torch.ones(d, dtype=dtype))

    def forward(self, X):
        return X * self.q * self.k

X = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
Y = X @ torch.diag(torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64))
"""

BAD = {
    "missing-file": (None, "nope.py:make", "file not found"),
    "not-a-spec": (None, "examples/attention_head.py", "is not PATH.py:FACTORY"),
    "missing-function": ("def other():\n    pass\n", "make", "has no function 'make'"),
    "import-error": ("import not_a_module_xyz\n", "make", "importing"),
    "factory-raises": ("def make():\n    raise RuntimeError('no GPU here')\n", "make", "RuntimeError: no GPU here"),
    "wrong-type": ("def make():\n    return Head()\n", "make", "returned Head"),
    "float32": ("def make():\n    return verifier.from_module(Head(dtype=torch.float32), [('q', 'k')], "
                "lambda m: (m(X) - Y).pow(2).sum())\n", "make", "float32"),
    "non-finite": ("def make():\n    return verifier.from_module(Head(), [('q', 'k')], "
                   "lambda m: (m(X) - Y).pow(2).sum() / 0.0 * 0.0)\n", "make", "nan"),
    "not-batchable": ("def make():\n    return verifier.from_module(Head(), [('q', 'k')], "
                      "lambda m: (m(X) - Y).pow(2).sum() if m.q.sum() > 0 else m.q.sum())\n", "make", "vmap"),
    "not-a-loss": ("def make():\n    return verifier.from_loss(lambda b: b, 3)\n", "make", "scalar"),
}


def _write(tmp_path, body):
    path = tmp_path / "mymodel.py"
    path.write_text(HEAD + textwrap.dedent(body))
    return path


@pytest.mark.parametrize("command", ["run", "limit"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_file_exits_2_naming_the_option(case, command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    body, spec, text = BAD[case]
    if body is not None:
        spec = f"{_write(tmp_path, body)}:{spec}"
    out = tmp_path / "out" if command == "run" else tmp_path / "stages.json"
    extra = ["--out", str(out)] if command == "run" else ["--json", str(out)]
    code = main([command, "--model-file", spec, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("verifier: error: --model-file"), err
    assert text in err and "Traceback" not in err
    assert not out.exists()  # nothing written


def test_model_file_with_a_preset_is_bad_input(capsys, tmp_path):
    assert main(["run", "--preset", "diag-linear", "--model-file", f"{EXAMPLE}:make", "--out", str(tmp_path / "o")]) == 2
    assert "either --model-file or --preset" in capsys.readouterr().err


def test_limit_on_the_example(capsys, tmp_path):
    assert main(["limit", "--model-file", f"{EXAMPLE}:make", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "+v*o[7]" in out and "status: complete" in out
    stages = json.loads((tmp_path / "s.json").read_text())["stages"]
    assert len(stages) == 5 and all(s["left"] == [] for s in stages)


def _run_example(tmp_path, capsys, *checks):
    out = tmp_path / "out"
    code = main(["run", "--model-file", f"{EXAMPLE}:make", "--out", str(out), "--no-progress",
                 *(["--checks", ",".join(checks)] if checks else [])])
    printed = capsys.readouterr().out
    assert code == 0, printed
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_run_on_the_example_passes_every_check(tmp_path, capsys):
    """``verifier run --model-file examples/attention_head.py:make``: the paper suite passes on a user's module
    (about 80 s of CPU time: slow)."""
    _, data = _run_example(tmp_path, capsys)
    assert [c["verdict"] for c in data["checks"]] == ["pass"] * 6
    assert [c["id"] for c in data["checks"]] == ["definition-3.1", "lemma-4.1", "assumption-4.2", "assumption-4.3",
                                                   "assumption-4.4", "theorem-4.5"]


def test_run_on_the_example_shows_the_module_in_the_report(tmp_path, capsys):
    """The fast part of the above: two checks pass on the module, and the report's problem section shows the
    module's source and pairs."""
    out, data = _run_example(tmp_path, capsys, "definition-3.1", "lemma-4.1")
    assert [c["verdict"] for c in data["checks"]] == ["pass"] * 2
    problem = data["run"]["problem"]
    assert problem["kind"] == "from_module" and problem["pairs"] == [["q", "k"], ["v", "o"]]
    assert "class AttentionHead(nn.Module)" in problem["module"]["code"]
    html = (out / "report.html").read_text()
    assert "class AttentionHead(nn.Module)" in html and "q*k" in html


def _readme_snippet() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Check your own model", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_snippet_is_a_model_file(tmp_path):
    """The README's 'Check your own model' code, saved as a file, is a valid --model-file with the coordinates
    the text describes."""
    from verifier.model_file import load_model_file

    path = tmp_path / "mymodel.py"
    path.write_text(_readme_snippet())
    model = load_model_file(f"{path}:make")
    assert model.p == 16 and model.coordinate_names()[3] == "q*k[3]" and model.coordinate_names()[8] == "v*o[0]"
    assert len(_readme_snippet().strip().splitlines()) <= 22


pytest_plugins = ["pytester"]

INNER = '''
import verifier
from verifier.pytest_plugin import Problem, parametrize_with_checks
from mymodel import make

@parametrize_with_checks([Problem("my-head", model=make())], checks=["definition-3.1", "rank-increments"])
def test_theory(problem, check):
    check(problem)
'''


def test_problem_with_a_from_module_model_in_pytest(pytester):
    pytester.makepyfile(mymodel=_readme_snippet(), test_inner=INNER)
    out = pytester.runpytest("--verifier-device", "auto", "-p", "no:randomly", "--verifier-report", "r.html")
    out.assert_outcomes(passed=1, skipped=1)  # rank-increments is for full weights
    html = (pytester.path / "r.html").read_text()
    assert "definition-3.1" in html
