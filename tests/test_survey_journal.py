"""The journal as a record you can trust (issue 29, "Journal"): every line checked against the header and the
command; a damaged line is reported with its number and skipped, never a reason to drop the lines after it;
another survey's draws are refused naming the line and the field; storage that cannot be written is found
before work, or stops the survey with every finished draw kept and a message that says how to resume; nothing
half-written, no temporary file left. In-process (``verifier.cli.main``, one process: conftest), faults
injected where a real one needs privileges (a read-only folder for root, a full disk)."""

import errno
import json
import os

import pytest

import verifier.paths as P
import verifier.survey.engine as E
import verifier.survey.journal as J
from verifier.cli import main
from verifier.survey import draw_seed
from verifier.survey.journal import MAX_LINE_BYTES, NAME

N, SEED = 4, 5
ARGS = ["survey", "--preset", "diag-linear", "--n", str(N), "--checks", "definition-3.1", "--device", "cpu",
        "--seed", str(SEED), "--no-progress"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The survey run straight through: its journal lines and results.json."""
    out = tmp_path_factory.mktemp("straight") / "s"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def _journal(straight, tmp_path, line: int | None = None, text: bytes | None = None, insert: bool = False,
             cut: bytes | None = None):
    """A copy of the straight survey's journal alone in a new folder, with line ``line`` (1 = header) replaced
    by (or, ``insert``, preceded by) ``text``; ``cut``: the last draw's line replaced by these bytes without a
    newline (a line cut short by a crash)."""
    out = tmp_path / "s"
    out.mkdir()
    lines = (straight / NAME).read_bytes().split(b"\n")[:-1]
    if line is not None:
        lines[line - 1:line] = [text, lines[line - 1]] if insert else [text]
    data = b"\n".join(lines) + b"\n"
    if cut is not None:
        data = b"\n".join(lines[:-1]) + b"\n" + cut
    (out / NAME).write_bytes(data)
    return out


@pytest.fixture
def ran(monkeypatch):
    """The draw indices the survey runs in this process."""
    indices, real = [], E.run_draws
    monkeypatch.setattr(E, "run_draws", lambda c, i, ids, w: (indices.extend(i), real(c, i, ids, w))[1])
    return indices


def _line(straight, k: int) -> dict:
    return json.loads((straight / NAME).read_text().splitlines()[k - 1])


DAMAGED = {  # what replaces draw 1's line (line 3): name -> bytes
    "garbage": b"this is not a draw",
    "not-utf8": b'{"index": 1, "seed": "\xff\xfe"}',
    "index-1e999": None,  # built from the real line
    "nested-100000-deep": b"[" * 100_000 + b"]" * 100_000,
    "duration-infinity": None,
    "value-nan-literal": None,
    "longer-than-the-bound": b'{"pad": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}',
    "a-list": b"[1, 2, 3]",
    "no-seed": None,
    "verdict-maybe": None,
    "empty": b"",
}


def _damaged(name: str, real: dict) -> bytes:
    if DAMAGED[name] is not None:
        return DAMAGED[name]
    text = json.dumps(real)
    if name == "index-1e999":
        return text.replace('"index": 1,', '"index": 1e999,').encode()
    if name == "duration-infinity":
        return text.replace(f'"duration_s": {real["duration_s"]}', '"duration_s": Infinity').encode()
    if name == "value-nan-literal":
        return text.replace('"value": "inf"', '"value": NaN').encode()
    if name == "no-seed":
        return json.dumps({k: v for k, v in real.items() if k != "seed"}).encode()
    return text.replace('"verdict": "pass"', '"verdict": "maybe"').encode()


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_a_damaged_line_is_skipped_and_the_lines_after_it_stay(name, straight, tmp_path, ran, capsys,
                                                               comparable_survey):
    real = _line(straight, 3)
    assert real["index"] == 1
    damaged = _damaged(name, real)
    assert damaged != json.dumps(real).encode()
    out = _journal(straight, tmp_path, 3, damaged)
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [x for x in err.splitlines() if x.startswith("verifier: warning:")]
    assert len(warnings) == 1 and f"{out / NAME} line 3: " in warnings[0] and "skipped" in warnings[0], err
    assert ran == [1]  # only the damaged line's draw runs again; draws 2 and 3, after it, are kept
    assert comparable_survey(out / "results.json") == comparable_survey(straight / "results.json")
    skipped = json.loads((out / "results.json").read_text())["survey"]["resumed"]["skipped_lines"]
    assert len(skipped) == 1 and skipped[0].startswith("line 3: ")
    assert sorted(p.name for p in out.parent.iterdir()) == ["s"]  # no temporary sibling left


def test_a_damaged_line_between_whole_draws_costs_nothing(straight, tmp_path, ran, capsys, comparable_survey):
    out = _journal(straight, tmp_path, 3, b"\x00\x01 garbage \xff", insert=True)
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert "line 3: not UTF-8" in capsys.readouterr().err
    assert ran == []  # every draw was in the journal, before and after the damaged line
    assert comparable_survey(out / "results.json") == comparable_survey(straight / "results.json")


def test_a_repeated_draw_keeps_the_first_line(straight, tmp_path, ran, capsys, comparable_survey):
    out = _journal(straight, tmp_path, 4, (straight / NAME).read_bytes().split(b"\n")[1], insert=True)
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert "line 4: repeats draw 0 of line 2; skipped" in capsys.readouterr().err
    assert ran == [] and comparable_survey(out / "results.json") == comparable_survey(straight / "results.json")


def _foreign(kind: str, real: dict) -> bytes:
    """Draw 1's line as another survey would have written it."""
    other = dict(real)
    if kind == "seed":  # the same index of a survey with another --seed
        other["seed"] = draw_seed(SEED + 1, 1)
        other["command"] = real["command"].replace(str(real["seed"]), str(other["seed"]))
    elif kind == "index":  # a draw beyond --n
        other.update(index=N + 3, seed=draw_seed(SEED, N + 3))
        other["command"] = real["command"].replace(str(real["seed"]), str(other["seed"]))
    elif kind == "command":  # another preset's draw at the same seed
        other["command"] = real["command"].replace("diag-linear", "toy-attention")
    else:  # another survey's checks
        other["checks"] = {"lemma-4.1": real["checks"]["definition-3.1"]}
    return json.dumps(other).encode()


@pytest.mark.parametrize("field", ["seed", "index", "command", "checks"])
def test_another_survey_s_draw_is_refused_naming_the_line_and_the_field(field, straight, tmp_path, ran, capsys):
    out = _journal(straight, tmp_path, 3, _foreign(field, _line(straight, 3)))
    before = (out / NAME).read_bytes()
    assert main([*ARGS, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"verifier: error: --resume: {out / NAME} line 3: field {field}: ") and "\n" not in err, err
    assert ran == [] and (out / NAME).read_bytes() == before  # nothing ran, nothing changed
    assert sorted(p.name for p in out.iterdir()) == [NAME] and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


HEADERS = {  # field named -> header (line 1) text
    "options": lambda h: {k: v for k, v in h.items() if k != "options"},
    "options.n": lambda h: h | {"options": {k: v for k, v in h["options"].items() if k != "n"}},
    "version": lambda h: h | {"version": 99},
    "seed_rule": lambda h: h | {"seed_rule": "draw i uses seed S + i"},
    "checks": lambda h: h | {"checks": "definition-3.1"},
    "options.device": lambda h: h | {"options": h["options"] | {"device": "tpu"}},
    "header": None,
}


@pytest.mark.parametrize("field", sorted(HEADERS) + ["options-list"])
def test_a_damaged_header_is_refused_naming_the_field(field, straight, tmp_path, capsys):
    header = _line(straight, 1)
    if field == "options-list":
        text, field = json.dumps(header | {"options": [1, 2]}).encode(), "options"
    elif field == "header":
        text = b'{"journal": "verifier-survey-journal", "version": 2, "options": ' + b"[" * 50_000
    else:
        text = json.dumps(HEADERS[field](header)).encode()
    out = _journal(straight, tmp_path, 1, text)
    before = (out / NAME).read_bytes()
    assert main([*ARGS, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"verifier: error: --resume: {out / NAME} line 1: field {field}: ") and "\n" not in err, err
    assert (out / NAME).read_bytes() == before and sorted(p.name for p in out.iterdir()) == [NAME]


def test_a_journal_written_on_a_gpu_resumes_on_a_cpu_only_machine(straight, tmp_path, ran, capsys, monkeypatch,
                                                                   comparable_survey):
    """--device may differ on resume: a journal whose header (and draws' commands) say --device cuda is resumed
    with --device cpu where there is no GPU, its draws kept; the header's device is a name, not resolved."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = _journal(straight, tmp_path)
    lines = (out / NAME).read_text().splitlines()
    header = json.loads(lines[0])
    assert header["options"]["device"] == "cpu"
    header["options"]["device"] = "cuda"
    draws = [json.loads(x) for x in lines[1:]]
    for d in draws:
        assert d["command"].endswith(" --device cpu")
        d["command"] = d["command"].removesuffix(" --device cpu") + " --device cuda"
    (out / NAME).write_text("".join(json.dumps(x) + "\n" for x in [header, *draws]))
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "error" not in err and "warning" not in err, err
    assert ran == [] and len(draws) == N  # every draw kept, none run again
    kept = json.loads((out / "results.json").read_text())["draws"]
    assert [d["command"] for d in kept] == [d["command"] for d in draws]  # as they ran: --device cuda
    same = json.dumps(comparable_survey(out / "results.json")).replace("--device cuda", "--device cpu")
    assert same == json.dumps(comparable_survey(straight / "results.json"))


def _fail_when(monkeypatch, module, name: str, when, error: int):
    """``module.os.<name>`` raising OSError(error) when ``when(*args)``; otherwise the real call."""
    real = getattr(module.os, name)

    def fake(*args, **kwargs):
        if when(*args):
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(module.os, name, fake)


def test_a_journal_that_cannot_be_appended_to_is_refused_before_work(straight, tmp_path, ran, capsys, monkeypatch):
    out = _journal(straight, tmp_path, cut=b'{"index": 3, "se')  # draw 3 cut short: it would be cut off
    before = (out / NAME).read_bytes()
    _fail_when(monkeypatch, J, "open", lambda path, flags, *a: str(path).endswith(NAME) and flags & os.O_WRONLY,
               errno.EACCES)
    assert main([*ARGS, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"verifier: error: --out: cannot append to the journal {out / NAME} (Permission denied)"), err
    assert "\n" not in err and ran == [] and (out / NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"] and sorted(p.name for p in out.iterdir()) == [NAME]


def test_a_read_only_survey_folder_is_refused_before_work(straight, tmp_path, ran, capsys, monkeypatch):
    out = _journal(straight, tmp_path, cut=b'{"index": 3, "se')
    before = (out / NAME).read_bytes()
    real = P.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(dir) == str(out):
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(P.tempfile, "mkstemp", read_only)
    assert main([*ARGS, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"verifier: error: --out: cannot write the journal {out / NAME} (Read-only file system)"), err
    assert ran == [] and (out / NAME).read_bytes() == before  # not even the cut-short line was cut off
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"] and sorted(p.name for p in out.iterdir()) == [NAME]


def test_a_new_survey_in_a_folder_it_cannot_write_is_refused_before_work(tmp_path, ran, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    _fail_when(monkeypatch, J, "open", lambda path, flags, *a: str(path).endswith(NAME), errno.EROFS)
    assert main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"verifier: error: --out: cannot write the journal {out / NAME} (Read-only file system)")
    assert ran == [] and list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ro"]


def test_a_folder_without_room_is_refused_before_work(tmp_path, ran, capsys, monkeypatch):
    import verifier.survey.session as S

    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_blocks, self.f_bavail = st.f_frsize, st.f_blocks, 3

    monkeypatch.setattr(S.os, "statvfs", lambda p: Full(real(p)))
    assert main([*ARGS, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("verifier: error: --out: ") and "KiB free" in err and "\n" not in err
    assert ran == [] and list(tmp_path.iterdir()) == []


def test_a_disk_that_fills_mid_survey_stops_it_with_every_finished_draw_kept(straight, tmp_path, ran, capsys,
                                                                              monkeypatch, comparable_survey):
    """The third draw's line meets a full disk halfway through its write: the half line is cut back, the survey
    stops (exit 2, one line saying how --resume finishes it), and --resume then gives the straight results."""
    out = tmp_path / "s"
    full, real = [], os.write

    def filling(fd, data):
        if full or b'"index":2' in bytes(data[:20]):
            full.append(len(data))
            if len(full) == 1:  # half the line goes in, then the disk is full
                return real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(J.os, "write", filling)
    assert main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"verifier: error: --out: cannot append to {out / NAME} (No space left on device); the survey "
                          f"stopped after 2 of {N} draws") and "--resume" in err and "\n" not in err, err
    lines = (out / NAME).read_text().splitlines(keepends=True)
    assert len(lines) == 3 and all(x.endswith("\n") for x in lines)  # header + draws 0, 1; no half line
    assert [json.loads(x)["index"] for x in lines[1:]] == [0, 1]
    assert sorted(p.name for p in out.iterdir()) == [NAME] and sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    monkeypatch.setattr(J.os, "write", real)
    ran.clear()
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert ran == [2, 3] and comparable_survey(out / "results.json") == comparable_survey(straight / "results.json")


def test_a_report_that_cannot_be_written_keeps_the_journal_and_says_how_to_finish(straight, tmp_path, ran, capsys,
                                                                                 monkeypatch, comparable_survey):
    import verifier.outputs as O

    out = tmp_path / "s"
    real = O.Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "report.html":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(O.Path, "write_text", full)
    assert main([*ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and f"--out {out} --resume writes the report" in err and "\n" not in err
    assert sorted(p.name for p in out.iterdir()) == [NAME] and sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    monkeypatch.setattr(O.Path, "write_text", real)
    ran.clear()
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert ran == [] and comparable_survey(out / "results.json") == comparable_survey(straight / "results.json")


def test_an_interrupt_before_any_draw_leaves_nothing(tmp_path, capsys, monkeypatch):
    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "run_draws", stop)
    assert main([*ARGS, "--out", str(tmp_path / "s")]) == 130
    assert list(tmp_path.iterdir()) == []  # the journal it made, and the folder, are gone


@pytest.fixture
def read_only():
    """Make a path read-only for real: chmod for a user, ``chattr +i`` for root (whom modes do not stop);
    skipped where neither can be done. Undone at the end."""
    import subprocess

    made = []

    def make(path):
        if os.geteuid() != 0:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
            made.append(("chmod", path))
            return
        try:
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            pytest.skip("root, and chattr +i is not available here: no way to make a path read-only for real")
        made.append(("chattr", path))

    yield make
    for how, path in made:
        if how == "chmod":
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        else:
            subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True, timeout=60)


@pytest.mark.parametrize("what", ["journal", "folder"])
def test_a_read_only_journal_or_folder_for_real_is_refused_before_work(what, straight, tmp_path, ran, capsys,
                                                                        read_only):
    out = _journal(straight, tmp_path, cut=b'{"index": 3, "se')
    before = (out / NAME).read_bytes()
    read_only(out / NAME if what == "journal" else out)
    assert main([*ARGS, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("verifier: error: --out: cannot ") and str(out / NAME) in err and "\n" not in err, err
    assert ran == [] and (out / NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"] and sorted(p.name for p in out.iterdir()) == [NAME]


def test_a_run_folder_that_cannot_be_written_is_refused_before_the_checks(tmp_path, capsys, read_only, monkeypatch):
    """The same rule for `verifier run --out DIR` holding a previous set (swapped out at the end): found when the
    set is opened, before any check, and no temporary sibling is left."""
    import verifier.runner as R

    out = tmp_path / "o"
    run = ["run", "--preset", "diag-linear", "--checks", "definition-3.1", "--no-progress", "--out", str(out)]
    assert main(run) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    read_only(out)
    calls = []
    monkeypatch.setattr(R, "run_check", lambda *a: calls.append(a))
    assert main(run) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("verifier: error: --out: cannot write") and "\n" not in err, err
    assert calls == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
