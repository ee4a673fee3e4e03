"""Where the CLI writes: checked before any work, written whole or not at all.

* :class:`OutputSet` — one run's folder (results.json, report.html). The target is checked first (a new
  folder, an empty one, or one that holds only a previous output set); the files are written into a
  temporary folder next to it and renamed into place, so a reader (or an interrupted run) sees no set or a
  whole set. Without ``--out`` each run reserves its own ``reports/<YYYYmmdd-HHMMSS>[-k]`` with an exclusive
  mkdir, and ``reports/latest`` is a symbolic link swapped atomically to the newest run.
* :func:`check_output_file` / :func:`write_output_file` — one file (``report -o``, ``limit --json``).

Problems with a place to write are :class:`~verifier.errors.InputError` naming the option (exit 2).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import os
import shutil
import signal
import tempfile
from pathlib import Path

from .errors import InputError
from .paths import NAME_MAX, PATH_MAX, atomic_write_text, check_name, temp_prefix  # noqa: F401  (re-exported)
from .paths import probe_writable

SET_FILES = ("results.json", "report.html")
WHERE = "a new folder, an empty one, or one holding only a previous results.json and report.html"


def _where(files: tuple[str, ...]) -> str:
    return WHERE if files == SET_FILES else f"a new folder, an empty one, or one holding only a previous {', '.join(files)}"


def _blocked_signals():
    """SIGINT/SIGTERM held back while the set is moved into place (delivered right after)."""
    if not hasattr(signal, "pthread_sigmask"):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    return held()


def _is_previous_set(folder: Path, files: tuple[str, ...] = SET_FILES) -> bool:
    """True when ``folder`` is empty or holds only ``files`` (results.json, report.html) as plain files."""
    return all(e.name in files and e.is_file() and not e.is_symlink() for e in folder.iterdir())


def _check_ancestors(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder (so the missing ones can be created)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(flag, f"{parent} is not a folder, so {path} cannot be created", WHERE)
            return


class OutputSet:
    """One run's output folder; see the module docstring. Use :meth:`for_out`, then :meth:`open` before the
    checks run, then :meth:`commit` (or :meth:`discard`). ``flag``: the option or argument errors name
    (``--out``; a callback's ``output_dir``); ``files``: the set's file names (a tracking callback's adds
    rank-history.npz)."""

    def __init__(self, target: Path | None, root: Path, flag: str = "--out", files: tuple[str, ...] = SET_FILES):
        self.flag, self.files = flag, files
        # Absolute from the start: user code that runs later (a model file, a loss) cannot move the output.
        self.shown_root = root  # as the user gave it, for messages
        self.target = None if target is None else Path(os.path.abspath(target))
        self.root = Path(os.path.abspath(root))
        self.new_run = target is None  # a fresh folder under root (reports/), with root/latest linking to it
        self.tmp: Path | None = None
        self.reserved = False
        self.warnings: list[str] = []

    @classmethod
    def for_out(cls, out: str | None, root: str | Path = "reports", *, flag: str = "--out",
                files: tuple[str, ...] = SET_FILES) -> "OutputSet":
        """Check ``--out`` (or, without it, ``root``) without touching anything."""
        root, where = Path(root), _where(files)
        if out is None:
            check_name(root, flag)
            if root.exists() and not root.is_dir():
                raise InputError(flag, f"{root} exists and is not a folder, so runs cannot be written there",
                                 f"give {flag} DIR")
            _check_ancestors(root, flag)
            return cls(None, root, flag, files)
        target = Path(out)
        if out == "" or "\x00" in out or target.absolute() == Path("/"):
            raise InputError(flag, f"{out!r} cannot hold a run", where)
        check_name(out, flag)
        if target.is_symlink():
            raise InputError(flag, f"{target} is a symbolic link", where)
        if target.exists():
            if not target.is_dir():
                raise InputError(flag, f"{target} exists and is not a folder", where)
            try:
                ok = _is_previous_set(target, files)
            except OSError as exc:
                raise InputError(flag, f"cannot list {target} ({exc.strerror})", where) from None
            if not ok:
                raise InputError(flag, f"{target} holds other files; refusing to replace them", where)
        _check_ancestors(target, flag)
        return cls(target, root, flag, files)

    def open(self) -> None:
        """Reserve the run folder (without --out) and create the temporary folder next to the target."""
        try:
            if self.target is None:
                self.target = self._reserve()
            self.target.parent.mkdir(parents=True, exist_ok=True)
            if self.target.is_dir():  # it is swapped out at the end: found now if it cannot be written
                probe_writable(self.target, temp_prefix(self.target.name))
            self.tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(self.target.name), suffix=".tmp", dir=self.target.parent))
        except OSError as exc:
            self.discard()
            raise InputError(self.flag, f"cannot write next to {self.target or self.root} ({exc.strerror or exc})",
                             _where(self.files)) from None

    def _reserve(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for k in itertools.count(1):
            path = self.root / (stamp if k == 1 else f"{stamp}-{k}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            self.reserved = True
            return path

    def commit(self, results, extra: dict[str, str | bytes] | None = None) -> list[Path]:
        """Write results.json and report.html of a run (and ``extra`` files of the set) into the temporary
        folder, then move it into place."""
        from .report import render_html
        from .results import results_json

        return self.commit_texts({"results.json": results_json(results), "report.html": render_html(results),
                                  **(extra or {})})

    def commit_texts(self, texts: dict[str, str | bytes]) -> list[Path]:
        """Write ``texts`` (the set's files by name: a run's or a survey's; bytes written as they are) into the
        temporary folder, then move it into place."""
        assert self.tmp is not None and self.target is not None, "open() first"
        try:
            for name in self.files:
                if isinstance(texts[name], bytes):
                    (self.tmp / name).write_bytes(texts[name])
                    continue
                # surrogateescape: a non-UTF-8 path named in a report is written as its own bytes (os.fsencode)
                (self.tmp / name).write_text(texts[name], encoding="utf-8", errors="surrogateescape")
            os.chmod(self.tmp, 0o755)  # mkdtemp makes 0700; a run folder is meant to be shared
            with _blocked_signals():
                self._place()
                if self.new_run:
                    self._point_latest()
        except OSError as exc:
            self.discard()
            raise InputError(self.flag, f"cannot write {self.target} ({exc.strerror or exc})",
                             _where(self.files)) from None
        except BaseException:
            self.discard()
            raise
        self.tmp, self.reserved = None, False  # placed: nothing left to discard
        return [self.target / name for name in self.files]

    def _place(self) -> None:
        target = self.target
        if target.exists() and any(target.iterdir()):  # a previous set: swap it out, then drop it
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".old", dir=target.parent))
            try:
                os.replace(target, old / target.name)
            except BaseException:
                old.rmdir()
                raise
            try:
                os.replace(self.tmp, target)
            except BaseException:
                os.replace(old / target.name, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, target)  # onto nothing or onto an empty folder (the reserved run folder)

    def _point_latest(self) -> None:
        """``root/latest`` -> the new run folder: a symlink made beside it and renamed over it (atomic).
        Something else in the way (not a link, not an old copy of a run) is left alone, with a warning."""
        latest, shown = self.root / "latest", self.shown_root / "latest"
        if latest.is_dir() and not latest.is_symlink():
            if not _is_previous_set(latest):
                self.warnings.append(f"{shown} not updated: it is a folder holding other files")
                return
            shutil.rmtree(latest)  # an older verifier's copy of a run
        elif latest.exists() and not latest.is_symlink():
            self.warnings.append(f"{shown} not updated: a file is in the way")
            return
        link = self.root / f".latest.{os.getpid()}.tmp"
        try:
            link.unlink(missing_ok=True)
            os.symlink(self.target.name, link, target_is_directory=True)
            os.replace(link, latest)
        except OSError as exc:
            link.unlink(missing_ok=True)
            self.warnings.append(f"{shown} not updated ({exc.strerror or exc})")

    def discard(self) -> None:
        """Remove the temporary folder and an unused reserved run folder."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self.reserved and self.target is not None:
            with contextlib.suppress(OSError):
                self.target.rmdir()  # only if still empty
            self.reserved = False


def check_output_file(path: str, flag: str, inputs: tuple[str, ...] = ()) -> Path:
    """Check a single output file before any work: not one of ``inputs``, not a folder or a device, its
    folder creatable and writable (probed with a temporary file)."""
    out = Path(path)
    if path == "" or "\x00" in path:
        raise InputError(flag, f"{path!r} is not a file path", "a file path")
    check_name(path, flag)
    for src in inputs:
        if src is not None and "\x00" not in str(src) and (out.absolute() == Path(src).absolute()
                                or (out.exists() and Path(src).exists() and os.path.samefile(out, src))):
            raise InputError(flag, f"{path} is the input {src}; refusing to overwrite it", "a different file")
    if out.exists() and not out.is_file():
        raise InputError(flag, f"{path} is {'a folder' if out.is_dir() else 'not a regular file'}", "a file path")
    _check_ancestors(out, flag)
    out = Path(os.path.abspath(out))  # user code that runs later cannot move it
    # Probe the nearest existing folder; missing ones are created only when the file is written, so that a
    # refused run leaves nothing behind.
    where = next(p for p in out.absolute().parents if p.exists())
    try:
        if where == out.absolute().parent:
            probe_writable(where, temp_prefix(out.name))
        else:
            probe = Path(tempfile.mkdtemp(prefix=".verifier-probe.", dir=where))
            probe.rmdir()
    except OSError as exc:
        raise InputError(flag, f"cannot write in {where} ({exc.strerror or exc})", "a writable file path") from None
    return out


def write_output_file(path: Path, text: str, flag: str) -> None:
    """Write ``text`` atomically (a temporary file in the same folder, renamed over ``path``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as exc:
        raise InputError(flag, f"cannot write {path} ({exc.strerror or exc})", "a writable file path") from None

