"""A survey's journal, ``DIR/draws.jsonl``: what has finished, kept as it finishes.

Line 1 is a header (``{"journal": "verifier-survey-journal", "version": 1, "options": {...}, "checks": [...]}``);
every further line is one finished draw (``Draw.to_dict()``), appended by the process that collects results
with one ``write`` of the whole line on an ``O_APPEND`` descriptor, then flushed to disk (fsync). A crash, a
lost worker or Ctrl-C therefore keeps every finished draw; a line cut short by a crash in the middle of its
write (no final newline, or not JSON) is dropped when the journal is read, and cut off before a resume appends.

``verifier survey ... --out DIR --resume`` reads the journal, refuses options that differ from its header
(:data:`RESUME_OPTIONS`), and runs only the draws it does not hold. Torch-free.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from .results import Draw

NAME = "draws.jsonl"
KIND = "verifier-survey-journal"
VERSION = 1
# (option, header key): a resume must give the same values; --device, --batch and the executor may differ
RESUME_OPTIONS = (("--preset", "preset"), ("--model-file", "model_file"), ("--n", "n"), ("--seed", "seed"),
                  ("--checks", "checks"))


class Journal:
    """An open journal: :meth:`append` writes one finished draw."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def create(cls, folder: Path, options: dict, checks: list[str]) -> "Journal":
        """A new journal in ``folder`` (which must not hold one: :func:`refuse_existing`)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        journal = cls(path, fd)
        journal._write({"journal": KIND, "version": VERSION, "options": options, "checks": checks})
        return journal

    @classmethod
    def resume(cls, folder: Path, options: dict, checks: list[str]) -> tuple["Journal", list[Draw]]:
        """Open ``folder``'s journal for appending and return the draws it holds; InputError (naming the
        option) when the journal was written with other options."""
        path = folder / NAME
        header, draws, good_bytes = read_journal(path)
        for option, key in RESUME_OPTIONS:
            theirs, ours = header["options"].get(key), options.get(key)
            if key == "checks":
                theirs, ours = header.get("checks"), checks
            if theirs != ours:
                raise InputError(option, f"the journal {path} was written with {option} {_text(theirs)}, "
                                         f"this command gives {option} {_text(ours)}",
                                 f"{option} {_text(theirs)} to resume it, or a new --out for a new survey")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.truncate(path, good_bytes)  # a line cut short by a crash goes; whole lines stay
        return cls(path, fd), draws

    def append(self, draw: Draw) -> None:
        self._write(draw.to_dict())

    def _write(self, record: dict) -> None:
        data = (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode()
        written = 0
        while written < len(data):  # one write on a regular file; the loop only guards a short write
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _text(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def read_journal(path: Path) -> tuple[dict, list[Draw], int]:
    """(header, the draws in file order with later lines winning for a repeated index, the byte length of
    the whole valid lines). InputError naming ``--resume`` when there is no readable journal."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("--resume", f"{path} not found: nothing to resume",
                         "the --out folder of an earlier survey (it holds draws.jsonl)") from None
    except OSError as exc:
        raise InputError("--resume", f"cannot read {path} ({exc.strerror or exc})") from None
    lines, good = [], 0
    for raw in data.split(b"\n")[:-1]:  # the text after the last newline is a cut-short line, or nothing
        try:
            lines.append(json.loads(raw))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        good += len(raw) + 1
    if not lines or not isinstance(lines[0], dict) or lines[0].get("journal") != KIND:
        raise InputError("--resume", f"{path} is not a survey journal", f"a {NAME} written by verifier survey")
    if lines[0].get("version") != VERSION:
        raise InputError("--resume", f"{path} is a journal of version {lines[0].get('version')!r}",
                         f"version {VERSION}")
    draws: dict[int, Draw] = {}
    for k, line in enumerate(lines[1:], start=2):
        try:
            draw = Draw.from_dict(line)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError("--resume", f"{path} line {k} is not a draw ({type(exc).__name__}: {exc})") from None
        draws[draw.index] = draw
    return lines[0], list(draws.values()), good


def refuse_existing(folder: Path | None) -> None:
    """A survey without --resume never appends to (or replaces) another survey's journal: refused, exit 2."""
    if folder is not None and (folder / NAME).exists():
        raise InputError("--out", f"{folder} holds the journal of an earlier survey ({NAME})",
                         "--resume to finish that survey, or a new --out folder")
