"""The pytest plugin against hostile input (issue 21): a --verifier-report the session could not write is a
usage error before any test runs (never a crash after the tests passed); a .json report path would be
overwritten by the results.json and is refused; Problem(model=<not a model>) is an InputError naming the field."""

import pytest

from verifier.errors import InputError
from verifier.pytest_plugin import Problem

pytest_plugins = ["pytester"]

PASSING = "def test_ok():\n    assert True\n"


@pytest.mark.parametrize("report,says", [
    ("a_file/r.html", "not a folder"), ("r.json", "ends in .json"), ("adir", "a folder")])
def test_an_unwritable_report_path_is_a_usage_error_before_the_tests(report, says, pytester):
    (pytester.path / "a_file").write_text("mine\n")
    (pytester.path / "adir").mkdir()
    pytester.makepyfile(test_inner=PASSING)
    result = pytester.runpytest("--verifier-report", report)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--verifier-report" in str(result.stderr) and says in str(result.stderr)
    assert (pytester.path / "a_file").read_text() == "mine\n"
    assert not (pytester.path / "r.json").exists()


def test_a_good_report_path_still_writes_both_files(pytester):
    pytester.makepyfile(test_inner=PASSING)
    result = pytester.runpytest("--verifier-report", "out/r.html")
    assert result.ret == 0
    assert (pytester.path / "out" / "r.html").is_file() and (pytester.path / "out" / "r.json").is_file()


@pytest.mark.parametrize("kwargs,field", [
    (dict(model="not a model"), "Problem.model"), (dict(model=3), "Problem.model"), (dict(name=""), "Problem.name"),
    (dict(config={"preset": "diag-linear"}), "Problem.config"), (dict(expected_failures=["x"]), "Problem.expected_failures"),
    (dict(checks="lemma-4.1"), "Problem.checks")])
def test_a_bad_problem_names_its_field(kwargs, field):
    with pytest.raises(InputError, match=f"^{field}: "):
        Problem(**{"name": "a", **kwargs})
