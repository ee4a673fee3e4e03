"""Defensive readers (issue 21, class 4): numbers that do not fit a float, empty baselines, special files,
names near the file-system limits, non-UTF-8 paths, stdout that cannot be written, .npz members read by name.
Every refusal is exit 2 with one line naming the field, before any work; in-process calls of ``main``."""

import errno
import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from verifier import data as D
from verifier.cli import main
from verifier.errors import InputError
from verifier.outputs import NAME_MAX, OutputSet

CHEAP = ["--checks", "definition-3.1", "--no-progress"]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    out = tmp_path_factory.mktemp("valid") / "v"
    assert main(["run", "--preset", "diag-linear", *CHEAP, "--out", str(out)]) == 0
    return out / "results.json"


def _err_line(capsys, field):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"verifier: error: {field}"), err
    return err


def test_an_integer_too_large_for_a_float_is_refused_by_gate_and_report(valid, tmp_path, capsys):
    raw = json.loads(valid.read_text())
    name = next(iter(raw["checks"][0]["metrics"]))
    raw["checks"][0]["metrics"][name]["value"] = 10**400
    big = tmp_path / "big.json"
    big.write_text(json.dumps(raw))
    assert main(["gate", "--baseline", str(big), str(valid)]) == 2
    assert "401 digits does not fit a float64" in _err_line(capsys, "gate")
    assert main(["report", str(big), "-o", str(tmp_path / "r.html")]) == 2
    _err_line(capsys, "RESULTS.json")
    assert not (tmp_path / "r.html").exists()


def test_a_baseline_without_checks_has_nothing_to_compare(valid, tmp_path, capsys):
    raw = json.loads(valid.read_text())
    raw["checks"] = []
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(raw))
    assert main(["gate", "--baseline", str(empty), str(valid)]) == 2
    assert "nothing to compare" in _err_line(capsys, "--baseline")


@pytest.mark.parametrize("argv,field", [
    (["report", "{f}", "-o", "{t}/r.html"], "RESULTS.json"), (["gate", "--baseline", "{f}", "{f}"], "gate"),
    (["run", "--model", "diag-linear", "--data", "{f}", *CHEAP, "--out", "{t}/o"], "--data"),
    (["run", "--model-file", "{f}.py:make", *CHEAP, "--out", "{t}/o"], "--model-file")])
def test_a_fifo_is_refused_never_read(argv, field, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "fifo.py")
    argv = [a.replace("{f}", str(fifo)).replace("{t}", str(tmp_path)) for a in argv]
    assert main(argv) == 2  # a read would block forever: this returning at all is the test
    _err_line(capsys, field)


@pytest.mark.parametrize("argv,field", [
    (["run", "--model", "diag-linear", "--data", "{long}.npz", *CHEAP], "--data"),
    (["run", "--preset", "diag-linear", *CHEAP, "--out", "{long}"], "--out"),
    (["report", "{valid}", "-o", "{long}.html"], "-o"), (["report", "{long}.json", "-o", "r.html"], "RESULTS.json"),
    (["gate", "--baseline", "{long}.json", "{valid}"], "--baseline"),
    (["limit", "--preset", "diag-linear", "--json", "{long}.json"], "--json"),
    (["run", "--model-file", "{long}.py:make", *CHEAP], "--model-file")])
def test_a_name_too_long_for_the_file_system_is_refused(argv, field, valid, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{long}", "a" * 300).replace("{valid}", str(valid)) for a in argv]
    assert main(argv) == 2
    assert "at most 255 bytes" in _err_line(capsys, field)
    assert os.listdir(tmp_path) == []


@SETTINGS
@given(length=st.integers(1, NAME_MAX), multibyte=st.booleans())
def test_any_legal_out_name_gets_a_legal_temporary_name(length, multibyte, tmp_path):
    name = ("\u00e9" * (length // 2) if multibyte else "b" * length) or "b"
    output = OutputSet.for_out(str(tmp_path / name))
    output.open()  # the temporary sibling's name must fit NAME_MAX too
    try:
        assert len(os.fsencode(output.tmp.name)) <= NAME_MAX
    finally:
        output.discard()
    assert os.listdir(tmp_path) == []


def test_a_250_byte_out_completes(tmp_path):
    out = tmp_path / ("c" * 250)
    assert main(["run", "--preset", "diag-linear", *CHEAP, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"results.json", "report.html"}


def test_a_non_utf8_out_keeps_the_finished_run(tmp_path, capsys):
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xff\xfe")
    assert main(["run", "--preset", "diag-linear", *CHEAP, "--out", out]) == 0
    assert sorted(os.listdir(os.fsencode(out))) == [b"report.html", b"results.json"]
    with open(os.fsencode(out) + b"/results.json", "rb") as f:
        saved = json.loads(f.read())
    assert os.fsencode(saved["run"]["provenance"]["command"]).endswith(b"r\xff\xfe")  # the path's own bytes


class _FullDisk(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_stdout_on_a_full_disk_after_the_set_is_written_keeps_the_verdict(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout", _FullDisk())
    assert main(["run", "--preset", "diag-linear", *CHEAP, "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "results.json").is_file() and (tmp_path / "o" / "report.html").is_file()
    assert "could not print the summary" in capsys.readouterr().err


def test_stdout_on_a_full_disk_when_stdout_is_the_output_is_bad_input(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout", _FullDisk())
    assert main(["checks"]) == 2
    _err_line(capsys, "stdout")


# ---- .npz members ------------------------------------------------------------------------------------------

def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


X = np.random.default_rng(0).standard_normal((6, 2))
MEMBERS = {"X.npy": _npy(X), "X": _npy(X), "y.npy": _npy(X[:, 0]), "Y.npy": _npy(X[:, 0]), "y": _npy(X[:, 1]),
           "Z.npy": b"not an array at all", "extra": _npy(np.zeros(3))}


@SETTINGS
@given(names=st.sets(st.sampled_from(sorted(MEMBERS)), min_size=1))
def test_npz_members_are_read_by_name_or_refused(names, tmp_path):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for n in sorted(names):
            zf.writestr(n, MEMBERS[n])
    xs = {"X", "X.npy"} & names
    ys = {n.removesuffix(".npy") for n in {"y", "y.npy", "Y.npy"} & names}
    ambiguous = len(xs) > 1 or len(ys) > 1 or {"y", "y.npy"} <= names
    try:
        got_X, got_Y = D.load_npz(path, "diag-linear")
    except InputError as exc:
        assert str(exc).startswith("--data") and (ambiguous or not xs or not ys), str(exc)
        return
    assert not ambiguous and xs and ys  # an unusable Z.npy or extra member beside them is never read
    assert np.array_equal(got_X.numpy(), X)


def test_a_member_larger_than_the_limit_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, X=np.zeros((1000, 100)), y=np.zeros(1000))
    monkeypatch.setattr(D, "MAX_ARRAY_BYTES", 10_000)
    with pytest.raises(InputError, match="member X.npy is 0.0 GiB"):
        D.load_npz(path, "diag-linear")


def test_an_array_header_that_promises_more_than_the_member_holds_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 3)})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("X.npy", head.getvalue() + b"\0" * 64)
        zf.writestr("y.npy", _npy(np.zeros(3)))
    with pytest.raises(InputError, match="header promises"):
        D.load_npz(path, "diag-linear")


def test_printed_text_fits_any_stream_encoding():
    from verifier.cli import _printable

    class Ascii(io.StringIO):
        encoding = "ascii"

    text = "wrote r\u00e9/" + os.fsdecode(b"\xff") + "/results.json"
    assert _printable(text, Ascii()) == "wrote r\\xe9/\\xff/results.json"
    assert _printable(text, None) == "wrote r\u00e9/\\xff/results.json"
