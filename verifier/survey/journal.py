"""A survey's journal, ``DIR/draws.jsonl``: what has finished, kept as it finishes, and read back only as far
as it can be trusted.

Line 1 is a header (``{"journal": "verifier-survey-journal", "version": 2, "options": {...}, "seed_rule":
"...", "checks": [...]}``, the options of ``SurveyConfig.as_dict()``); every further line is one finished draw
(``Draw.to_dict()``), appended by the process that collects results with one ``write`` of the whole line on
an ``O_APPEND`` descriptor, then flushed to disk (fsync). A crash, a lost worker or Ctrl-C therefore keeps
every finished draw.

Reading it (``--resume``, :meth:`Journal.resume`) checks every line against the header and the command:

* **The header** must be a journal of a known version (1 has no seed rule: it never changed) whose options,
  seed rule and check ids are present, well typed and the command's (:data:`RESUME_OPTIONS`; ``--device``,
  ``--batch`` and the executor may differ). Otherwise: refused, exit 2, naming line 1 and the field, or the
  option that differs.
* **A damaged line** — longer than :data:`MAX_LINE_BYTES`, not UTF-8, not JSON, nested deeper than
  :data:`MAX_DEPTH`, a number that is not finite (``Infinity``, ``1e999``), not a draw record (its keys, their
  types, a verdict name) — is reported with its line number and skipped: its draw runs again. The lines after
  it are read as any other.
* **A foreign draw** — a whole draw record that is not this survey's: an index outside [0, n), a seed that is
  not the seed rule's for its index, a command other than the one the header's options give, other check
  ids — is refused: exit 2 naming the line and the field. (Someone mixed in another survey's journal: taking
  it would report draws this survey never made; skipping it silently would hide the mix-up.)
* **A repeated index**: the first line stands; a later one is reported and skipped.
* **A line cut short** at the end of the file (by a crash in the middle of its write: no final newline) is
  reported and cut off before anything is appended.

Storage: a journal that cannot be appended to, or a folder that cannot be written, is refused before any work
(InputError naming ``--out``). A write that fails mid-survey (a full disk, storage gone) is cut back, so no
line is half-written, and raises :class:`JournalWriteError`: the survey stops and every earlier draw stays.
Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..choices import DEVICES
from ..errors import InputError
from ..paths import probe_writable
from ..results import HIGHER, LOWER, Verdict
from .config import SEED_RULE, SurveyConfig
from .results import NON_FINITE_TEXT, Draw

NAME = "draws.jsonl"
KIND = "verifier-survey-journal"
VERSION = 2
READABLE = (1, 2)
MAX_LINE_BYTES = 1 << 20  # a draw line is a few KiB (six checks' messages); 1 MiB is far beyond any of ours
MAX_DEPTH = 16  # a draw line nests 4 deep (line, checks, check, outcome)
# (option, header key): a resume must give the same values; --device, --batch and the executor may differ
RESUME_OPTIONS = (("--preset", "preset"), ("--model-file", "model_file"), ("--n", "n"), ("--seed", "seed"),
                  ("--checks", "checks"))
OPTION_TYPES = {"preset": (str, type(None)), "model_file": (str, type(None)), "n": (int,), "seed": (int,),
                "checks": (list, type(None)), "device": (str,), "batch": (int, type(None))}
DRAW_KEYS = {"index": (int,), "seed": (int,), "command": (str,), "checks": (dict,)}
DRAW_OPTIONAL = {"duration_s": (int, float), "worker": (str, type(None))}
OUTCOME_KEYS = {"verdict": (str,)}
OUTCOME_OPTIONAL = {"message": (str,), "reason": (str, type(None)), "metric": (str, type(None)),
                    "value": (int, float, str, type(None)), "threshold": (int, float, str, type(None)),
                    "better": (str, type(None)), "duration_s": (int, float)}
VERDICT_NAMES = tuple(v.value for v in Verdict)
PROBE = ".verifier-probe."  # the prefix of the file made (and removed) to find a folder that cannot be written
REPORTED = 20  # skipped lines reported one by one; the rest as a count
WRONG = "a draws.jsonl written by verifier survey for this command, or a new --out for a new survey"
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


class JournalWriteError(Exception):
    """A finished draw could not be appended (``path``, the OSError ``cause``); nothing of it stays."""

    def __init__(self, path: Path, cause: OSError):
        self.path, self.cause = path, cause
        super().__init__(f"cannot append to {path} ({cause.strerror or cause})")


class _Damaged(ValueError):
    """A line that is not a draw record (skipped)."""


class _Foreign(ValueError):
    """A draw record of another survey: ``field`` and what is wrong (refused)."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(problem)


@dataclass(frozen=True)
class Contents:
    """What a journal holds: its header, the draws (file order, first line per index), the lines skipped
    (``line k: why``), the byte length of its whole lines and the length of a cut-short last line."""

    header: dict
    draws: tuple[Draw, ...]
    skipped: tuple[str, ...]
    whole_bytes: int
    cut_bytes: int

    def messages(self, path: Path) -> list[str]:
        """One line each, for stderr: the skipped lines (the first :data:`REPORTED`, then a count)."""
        out = [f"{path} {s}; skipped (a draw it held runs again)" for s in self.skipped[:REPORTED]]
        if len(self.skipped) > REPORTED:
            out.append(f"{path}: {len(self.skipped) - REPORTED} more damaged lines skipped")
        if self.cut_bytes:
            out.append(f"{path}: the last line was cut short ({self.cut_bytes} bytes, no newline: a crash while it "
                       "was written); cut off")
        return out


class Journal:
    """An open journal: :meth:`append` writes one finished draw; ``draws`` counts the draws it holds."""

    def __init__(self, path: Path, fd: int, draws: int = 0, made_folder: bool = False):
        self.path, self._fd, self.draws, self.made_folder = path, fd, draws, made_folder

    @classmethod
    def create(cls, folder: Path, config: SurveyConfig, checks: list[str]) -> "Journal":
        """A new journal in ``folder`` (which must not hold one: :func:`refuse_existing`); a folder that
        cannot be made or written is an InputError naming ``--out``, with nothing left behind."""
        path = folder / NAME
        made = not folder.exists()
        fd = -1
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            journal = cls(path, fd, made_folder=made)
            journal._write({"journal": KIND, "version": VERSION, "options": config.as_dict(), "seed_rule": SEED_RULE,
                            "checks": list(checks)})
        except (OSError, JournalWriteError) as exc:
            cause = exc.cause if isinstance(exc, JournalWriteError) else exc
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
            if made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise InputError("--out", f"cannot write the journal {path} ({cause.strerror or cause})",
                             "a folder you can write, with room for the survey") from None
        return journal

    @classmethod
    def resume(cls, folder: Path, config: SurveyConfig, checks: list[str]) -> tuple["Journal", Contents]:
        """Open ``folder``'s journal for appending and return what it holds (:func:`read_journal`). Nothing is
        written before everything is checked: the journal can be appended to and the folder written (else an
        InputError naming ``--out``); then a cut-short last line is cut off."""
        path = folder / NAME
        contents = read_journal(path, config, checks)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise InputError("--out", f"cannot append to the journal {path} ({exc.strerror or exc})",
                             "a journal and a folder you can write") from None
        try:
            probe_writable(folder, PROBE)
            if contents.cut_bytes:
                os.ftruncate(fd, contents.whole_bytes)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise InputError("--out", f"cannot write the journal {path} ({exc.strerror or exc})",
                                 "a journal and a folder you can write") from None
            raise
        return cls(path, fd, draws=len(contents.draws)), contents

    def append(self, draw: Draw) -> None:
        self._write(draw.to_dict())
        self.draws += 1

    def _write(self, record: dict) -> None:
        """One whole line, or nothing: a write that fails is cut back to where the line began."""
        data = (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode()
        start = None
        try:
            start = os.fstat(self._fd).st_size
            written = 0
            while written < len(data):  # one write on a regular file; the loop only guards a short write
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError as exc:
            if start is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
            raise JournalWriteError(self.path, exc) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _text(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else _short(value)


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def _refuse(path: Path, line: int, field: str, problem: str) -> InputError:
    return InputError("--resume", f"{path} line {line}: field {field}: {problem}", WRONG)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Damaged(f"a number that is not finite ({_short(text)})")
    return value


def _constant(name: str):
    raise _Damaged(f"a number that is not finite ({name})")


def _depth(raw: bytes) -> int:
    """How deep the brackets of a JSON text nest (outside its strings), without parsing it."""
    depth = deepest = 0
    for ch in re.sub(rb"[^\[\]{}]", b"", _STRINGS.sub(b"", raw)):
        depth += 1 if ch in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _parse(raw: bytes):
    """A line's JSON value; _Damaged when it is not UTF-8, not JSON, too deep or holds a non-finite number."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Damaged(f"not UTF-8 (byte {exc.start})") from None
    if _depth(raw) > MAX_DEPTH:
        raise _Damaged(f"nested more than {MAX_DEPTH} deep")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_constant)
    except _Damaged:
        raise
    except (ValueError, RecursionError) as exc:
        raise _Damaged(f"not JSON ({_short(exc)})") from None


def _typed(record, required: dict, optional: dict, what: str) -> None:
    if not isinstance(record, dict):
        raise _Damaged(f"{what} is {type(record).__name__}, not an object")
    for key in record:
        if key not in required and key not in optional:
            raise _Damaged(f"{what} has an unknown field {_short(key)!r}")
    for key, types in (required | optional).items():
        if key not in record:
            if key in required:
                raise _Damaged(f"{what} has no field {key!r}")
            continue
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise _Damaged(f"{what}'s field {key!r} is {type(value).__name__}")


def _draw(record, header_checks: list[str], config: SurveyConfig, device: str) -> Draw:
    """A draw record checked for damage (_Damaged) and for belonging to this survey (_Foreign); its command
    names the header's ``device``."""
    _typed(record, DRAW_KEYS, DRAW_OPTIONAL, "the draw")
    for check, o in record["checks"].items():
        _typed(o, OUTCOME_KEYS, OUTCOME_OPTIONAL, f"check {_short(check)!r}")
        if o["verdict"] not in VERDICT_NAMES:
            raise _Damaged(f"check {_short(check)!r} has verdict {_short(o['verdict'])!r}")
        for key in ("value", "threshold"):
            if isinstance(o.get(key), str) and o[key] not in NON_FINITE_TEXT:
                raise _Damaged(f"check {_short(check)!r}'s {key} is the text {_short(o[key])!r}")
        if o.get("better") not in (None, LOWER, HIGHER):
            raise _Damaged(f"check {_short(check)!r}'s better is {_short(o['better'])!r}")
        if o.get("duration_s", 0) < 0:
            raise _Damaged(f"check {_short(check)!r}'s duration_s is negative")
    if record.get("duration_s", 0) < 0:
        raise _Damaged("the draw's duration_s is negative")
    index = record["index"]
    if not 0 <= index < config.n:
        raise _Foreign("index", f"{_short(index)} is not a draw of this survey of --n {config.n} "
                                f"(indices 0 to {config.n - 1})")
    if record["seed"] != config.draw_seed(index):
        raise _Foreign("seed", f"{_short(record['seed'])} is not draw {index}'s seed under this survey's seed rule "
                               f"({config.draw_seed(index)}, --seed {config.seed}): another survey's draw")
    if record["command"] != config.command(index, device):
        raise _Foreign("command", f"{_short(record['command'])!r} is not draw {index}'s command "
                                  f"({config.command(index, device)!r}): another survey's draw")
    if sorted(record["checks"]) != sorted(header_checks):
        raise _Foreign("checks", f"{_text(sorted(record['checks']))} are not this survey's checks "
                                 f"({_text(header_checks)}): another survey's draw")
    return Draw.from_dict(record)


def _header(raw: bytes | None, path: Path, config: SurveyConfig, checks: list[str]) -> tuple[dict, str]:
    """Line 1 checked (refused, naming the field, when it is not this survey's header) and the --device its
    draws' commands name: a known choice, not resolved (a journal written on a GPU resumes on a CPU)."""
    if raw is None:
        raise InputError("--resume", f"{path} is empty: no header, nothing to resume", WRONG)
    try:
        header = _parse(raw)
    except _Damaged as exc:
        raise _refuse(path, 1, "header", str(exc)) from None
    if not isinstance(header, dict) or header.get("journal") != KIND:
        raise InputError("--resume", f"{path} is not a survey journal (line 1 is not its header)", WRONG)
    if isinstance(header.get("version"), bool) or header.get("version") not in READABLE:
        raise _refuse(path, 1, "version", f"{_short(header.get('version'))!r} (readable: "
                                          f"{', '.join(map(str, READABLE))})")
    options = header.get("options")
    if not isinstance(options, dict):
        raise _refuse(path, 1, "options", "missing" if options is None else f"a {type(options).__name__}, not an object")
    for key, types in OPTION_TYPES.items():
        value = options.get(key)
        if key not in options or isinstance(value, bool) or not isinstance(value, types):
            raise _refuse(path, 1, f"options.{key}", "missing" if key not in options else
                          f"a {type(value).__name__} ({_short(value)})")
    if header["version"] >= 2 and header.get("seed_rule") != SEED_RULE:
        raise _refuse(path, 1, "seed_rule", f"{_short(header.get('seed_rule'))!r} is not this verifier's rule")
    theirs_checks = header.get("checks")
    if not isinstance(theirs_checks, list) or not all(isinstance(c, str) for c in theirs_checks):
        raise _refuse(path, 1, "checks", "missing" if theirs_checks is None else "not a list of check ids")
    for option, key in RESUME_OPTIONS:
        theirs, ours = (theirs_checks, list(checks)) if key == "checks" else (options.get(key), config.as_dict()[key])
        if theirs != ours:
            raise InputError(option, f"the journal {path} was written with {option} {_text(theirs)}, "
                                     f"this command gives {option} {_text(ours)}",
                             f"{option} {_text(theirs)} to resume it, or a new --out for a new survey")
    if options["device"] not in DEVICES:
        raise _refuse(path, 1, "options.device", f"unknown device {_short(options['device'])!r} (known: "
                                                 f"{', '.join(DEVICES)})")
    return header, options["device"]


def _lines(f, limit: int):
    """(line number, the line's bytes without its newline or None when longer than ``limit``, whether it ended
    with a newline, its size in bytes) for each line of the binary file ``f``, reading at most ``limit`` + 1
    bytes at a time."""
    number = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        number += 1
        ended = raw.endswith(b"\n")
        if ended or len(raw) <= limit:
            yield number, raw.rstrip(b"\n"), ended, len(raw)
            continue
        size = len(raw)
        while True:  # too long: skip to its end
            more = f.readline(limit + 1)
            size += len(more)
            ended = more.endswith(b"\n")
            if ended or not more:
                break
        yield number, None, ended, size


def read_journal(path: Path, config: SurveyConfig, checks: list[str]) -> Contents:
    """Everything the module docstring promises of reading: the header checked against ``config`` and
    ``checks`` (InputError), each line after it a draw of this survey, skipped when damaged, refused when
    foreign (InputError naming ``--resume``, the line and the field)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise InputError("--resume", f"{path} not found: nothing to resume",
                         "the --out folder of an earlier survey (it holds draws.jsonl)") from None
    except OSError as exc:
        raise InputError("--resume", f"cannot read {path} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError("--resume", f"{path} is not a regular file", WRONG)
    header, device, draws, skipped, first = None, None, {}, [], {}
    whole = cut = 0
    try:
        with open(path, "rb") as f:
            for number, raw, ended, size in _lines(f, MAX_LINE_BYTES):
                if not ended:  # the last line, cut short
                    cut = size
                    break
                whole += size
                if number == 1:
                    if raw is None:
                        raise _refuse(path, 1, "header", f"longer than {MAX_LINE_BYTES} bytes")
                    header, device = _header(raw, path, config, checks)
                    continue
                try:
                    if raw is None:
                        raise _Damaged(f"longer than {MAX_LINE_BYTES} bytes")
                    if not raw.strip():
                        raise _Damaged("empty")
                    draw = _draw(_parse(raw), header["checks"], config, device)
                except _Damaged as exc:
                    skipped.append(f"line {number}: {exc}")
                    continue
                except _Foreign as exc:
                    raise _refuse(path, number, exc.field, str(exc)) from None
                if draw.index in draws:
                    skipped.append(f"line {number}: repeats draw {draw.index} of line {first[draw.index]}")
                    continue
                draws[draw.index], first[draw.index] = draw, number
    except OSError as exc:
        raise InputError("--resume", f"cannot read {path} ({exc.strerror or exc})") from None
    if header is None:
        if cut:
            raise _refuse(path, 1, "header", "cut short (no newline): the survey never started")
        _header(None, path, config, checks)
    return Contents(header, tuple(draws.values()), tuple(skipped), whole, cut)


def refuse_existing(folder: Path | None) -> None:
    """A survey without --resume never appends to (or replaces) another survey's journal: refused, exit 2."""
    if folder is not None and os.path.lexists(folder / NAME):
        raise InputError("--out", f"{folder} holds the journal of an earlier survey ({NAME})",
                         "--resume to finish that survey, or a new --out folder")
