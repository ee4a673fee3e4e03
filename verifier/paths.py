"""Names and atomic writes of files: the ground floor every writer stands on (results.json, reports, outputs).

* :func:`check_name` — a path the file system can hold, checked before any file-system call.
* :func:`temp_prefix` — the prefix of a temporary sibling, short enough for any legal target name.
* :func:`absent` — why a path given as a file or folder is neither: it does not exist, or is something else.
* :func:`probe_writable` — a file can be made (and removed) in a folder, found before any work.
* :func:`atomic_write_text` — a temporary file in the same folder, renamed into place: readers never see half
  a file.

Imports nothing of verifier but its errors (docs/ARCHITECTURE.md, layers).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError

NAME_MAX, PATH_MAX = 255, 4095  # bytes of one path component and of a whole path (Linux, macOS; os.fsencode)
TEMP_NAME_ROOM = 200  # bytes of a target's name kept in its temporary sibling's name (".NAME.XXXXXXXX.tmp")


def check_name(path: str | os.PathLike, flag: str) -> None:
    """A path the file system can hold: no NUL, every component at most NAME_MAX bytes and the whole at most
    PATH_MAX (as os.fsencode gives them: a non-UTF-8 name counts its own bytes); else InputError naming
    ``flag``, before any file-system call could fail with 'File name too long'."""
    raw = os.fsencode(path)
    if not raw or b"\x00" in raw:
        raise InputError(flag, f"{os.fsdecode(raw)!r} is not a path", "a file or folder path")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise InputError(flag, f"a name of {len(longest)} bytes ({os.fsdecode(longest[:40])}...)",
                         f"names of at most {NAME_MAX} bytes")
    if len(raw) > PATH_MAX:
        raise InputError(flag, f"a path of {len(raw)} bytes", f"paths of at most {PATH_MAX} bytes")


def absent(path: str | os.PathLike) -> str:
    """Why ``path``, which is neither a regular file nor a folder, cannot be read: "does not exist", or
    "is not a regular file or folder" (a device such as /dev/zero, a FIFO, a socket)."""
    return "is not a regular file or folder" if os.path.exists(path) else "does not exist"


def temp_prefix(name: str) -> str:
    """'.NAME.' for a temporary sibling of NAME, cut to TEMP_NAME_ROOM bytes so that the temporary name stays
    within NAME_MAX even when NAME itself is near it (a legal 250-byte --out)."""
    return "." + os.fsdecode(os.fsencode(name)[:TEMP_NAME_ROOM]) + "."


def probe_writable(folder: str | os.PathLike, prefix: str) -> None:
    """A file named ``prefix``... can be made (and removed) in ``folder``: OSError if not (read-only, a read-only
    file system, no room for an inode). Nothing is left behind either way."""
    fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.close(fd)
    os.unlink(name)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:  # a non-UTF-8 path: its bytes
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
