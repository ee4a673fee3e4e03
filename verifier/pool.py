"""Worker processes, from one place: the ``--workers`` option (one parser, one default) and the local process
pool that ``verifier run --workers`` (groups of checks, :mod:`verifier.runner`) and ``verifier survey
--workers`` (draws, :mod:`verifier.survey.workers`) share. Ground floor: of verifier it imports
:mod:`verifier.errors` only (besides the standard library, and torch in a worker, for its thread count).

``--workers N|auto`` (default ``auto``, or ``$VERIFIER_WORKERS``): ``auto`` is one process per usable CPU core
(a survey on CUDA: one per GPU); N is 1 to :data:`MAX_WORKERS`; 1 runs everything in the command's own process.
Why ``auto`` for both commands: the work is small float64 tensors that keep one core busy and gain nothing
from a second torch thread, so a second core is used by a second process; single-threaded processes do not
spin, so on a busy machine N of them share the cores as N jobs do (docs/ARCHITECTURE.md, "Threads").

A worker (:class:`LocalPool`) is spawned, never forked, with SIGINT blocked from its first instruction (the
mask of the thread that starts it; Ctrl-C is the parent's to handle: it stops the pool); it ends with
``os._exit`` once the pool is shut down, so that threads or child processes its user code started cannot
keep it alive (docs/TRUST.md).
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import socket
import sys
from dataclasses import dataclass

from .errors import InputError

AUTO = "auto"
ENV = "VERIFIER_WORKERS"
MAX_WORKERS = 1024  # far beyond any machine's cores; a bound that keeps the pool's queues and semaphores valid
ALLOWED = f"a whole number from 1 to {MAX_WORKERS}, or {AUTO}"
GPU_VARIABLE = "VERIFIER_WORKER_GPU"  # set in a worker pinned to one GPU (worker_name shows it)


@dataclass(frozen=True)
class Workers:
    """A parsed ``--workers``: ``count`` (None for auto), ``field`` (what to name in a message: the option or
    the variable it came from) and ``explicit`` (given by the user, not the default)."""

    count: int | None
    field: str = "--workers"
    explicit: bool = False

    def processes(self, cores: int, gpus: int = 0) -> int:
        """How many processes: N as given; auto is one per GPU when ``gpus`` (a run on CUDA), else one per
        core."""
        if self.count is not None:
            return self.count
        return max(1, gpus) if gpus else max(1, cores)


def parse_workers(text: str | int | None, environ=None) -> Workers:
    """``--workers`` (None: not given) -> :class:`Workers`; not given, ``$VERIFIER_WORKERS``, else auto. A bad
    value is an InputError naming where it came from, with the allowed values."""
    environ = os.environ if environ is None else environ
    field, explicit = "--workers", text is not None
    if text is None and ENV in environ:
        text, field, explicit = environ[ENV], f"${ENV}", True
    if text is None or str(text).strip() == AUTO:
        return Workers(None, field, explicit)
    raw = str(text).strip()
    if isinstance(text, bool) or not raw.isdigit() or not raw.isascii():
        raise InputError(field, f"{_short(text)!r} is not a number of workers", ALLOWED)
    count = int(raw)
    if not 1 <= count <= MAX_WORKERS:
        raise InputError(field, f"{_short(raw)} workers is out of range", ALLOWED)
    return Workers(count, field, explicit)


def _short(text) -> str:
    text = str(text)
    return text if len(text) <= 40 else text[:37] + "..."


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """Torch threads per local worker: the cores shared out, at least one (N workers x T threads <= cores)."""
    return max(1, usable_cores() // workers)


def worker_name() -> str:
    """``host:pid``, plus ``/gpu:K`` for a worker pinned to a GPU: where a piece of work ran."""
    gpu = os.environ.get(GPU_VARIABLE)
    return f"{socket.gethostname()}:{os.getpid()}" + (f"/gpu:{gpu}" if gpu is not None else "")


# ---- the main guard (library use) ---------------------------------------------------------------------------

def _spawn_reruns_main() -> str | None:
    """The script a spawned worker imports again (Python's spawn runs ``__main__``'s file, or its module by
    name, as ``__mp_main__``), or None when it imports nothing (an interactive session, ``python -c``, a
    package's ``__main__``): the rules of ``multiprocessing.spawn.get_preparation_data``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None:
        return None if name == "__main__" or name.endswith(".__main__") else getattr(main, "__file__", name)
    return getattr(main, "__file__", None)


def _guarded(tree: ast.Module, line: int) -> bool | None:
    """Whether ``line`` of a module lies in the body of an ``if __name__ == "__main__":`` (at any depth of
    top-level compound statements); None when no statement holds it."""
    def is_main_test(test) -> bool:
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
            return False
        sides = [test.left, test.comparators[0]]
        return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
            isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)

    def search(body) -> bool | None:
        for node in body:
            if node.lineno <= line <= (node.end_lineno or node.lineno):
                if isinstance(node, ast.If) and is_main_test(node.test) and any(
                        n.lineno <= line <= (n.end_lineno or n.lineno) for n in node.body):
                    return True
                inner = [getattr(node, f, []) for f in ("body", "orelse", "finalbody")]
                inner += [h.body for h in getattr(node, "handlers", [])]
                for part in inner:
                    found = search(part)
                    if found is not None:
                        return found
                return False
        return None

    return search(tree.body)


def require_main_guard(field: str, count: int) -> None:
    """Refuse, before any process starts, worker processes that would run the user's script again: spawn
    imports ``__main__``'s file in every worker, so a call made at its top level outside an
    ``if __name__ == "__main__":`` guard would start workers from every worker (Python's bootstrapping
    traceback). InputError naming ``field``, the script, its line and the guard. Silent where the script
    cannot be read (its source is then not ours to judge)."""
    path = _spawn_reruns_main()
    main = sys.modules.get("__main__")
    if path is None or main is None:
        return
    if not os.path.isfile(path):  # e.g. `python - < script.py`: spawn would look for a file named <stdin>
        raise InputError(field, f"{count} worker processes would each import the main script {path!r} again "
                                "(Python's spawn), and it is not a file they can read",
                         f"{field}=1 (one process), or the script in a file, the call under "
                         "`if __name__ == \"__main__\":`")
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:  # called from a function nobody at the script's top level is running: spawn safe
        return
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return
    if _guarded(tree, frame.f_lineno) is False:
        raise InputError(field, f"{count} worker processes would each import {path} again (Python's spawn), and "
                                f"its line {frame.f_lineno} starts them at the top level, outside an "
                                "`if __name__ == \"__main__\":` guard",
                         f"the call under `if __name__ == \"__main__\":`, or {field}=1 (one process)")


# ---- signals and exit in a worker ------------------------------------------------------------------------------

@contextlib.contextmanager
def interrupts_blocked():
    """SIGINT blocked in this thread while processes are started: a spawned worker inherits the mask, so a
    Ctrl-C cannot reach it before :func:`_init_worker` runs (the parent still gets its own: a pending signal
    is delivered when the mask is restored, or meanwhile to another thread)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ignore_interrupt(signum, frame) -> None:
    """A worker's SIGINT handler: nothing (the parent decides). A Python handler rather than SIG_IGN, so that a
    program the user's code executes gets the default back (exec resets caught signals, not ignored ones)."""


def _default_interrupt_in_forked_child() -> None:
    """After a fork of the user's code in a worker: the child gets Python's own Ctrl-C handling back."""
    if signal.getsignal(signal.SIGINT) is _ignore_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _exit_now() -> None:
    """The worker's last act, once the pool has shut it down (a multiprocessing finalizer that runs before
    the interpreter would join the user's non-daemon threads and child processes): flush, then ``_exit``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _init_worker(threads: int | None, gpus) -> None:
    """A local worker's first code: Ctrl-C ignored (it was blocked since the process started), the explicit
    exit registered, pinned to one GPU (``CUDA_VISIBLE_DEVICES``, before torch initialises CUDA) when ``gpus``
    is a queue, torch threads limited."""
    signal.signal(signal.SIGINT, _ignore_interrupt)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_default_interrupt_in_forked_child)
    multiprocessing.util.Finalize(None, _exit_now, exitpriority=0)
    if gpus is not None:
        gpu = gpus.get()
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ[GPU_VARIABLE] = str(gpu)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# ---- the pool ------------------------------------------------------------------------------------------------

class LocalPool(cf.Executor):
    """N spawned worker processes (a ``ProcessPoolExecutor``; spawn: a fresh interpreter, never a fork of a
    parent whose OpenMP or CUDA state is live), each with ``threads`` torch threads, restarted by
    :meth:`restart` when a worker dies (a dead process breaks the whole pool). With ``gpus`` (device
    indices, one per worker) each process is pinned to one GPU. ``field``: what a refusal names
    (:func:`require_main_guard`)."""

    def __init__(self, workers: int, threads: int | None, gpus: list[int] | None = None, field: str = "workers"):
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
            raise InputError(field, f"{workers!r} worker processes", ALLOWED.replace(f", or {AUTO}", ""))
        require_main_guard(field, workers)
        self.workers, self.threads, self.gpus = workers, threads, gpus
        self.restarts = 0
        self._pool = self._start()

    def _start(self) -> cf.ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        queue = None
        if self.gpus is not None:
            queue = ctx.Queue()
            for g in self.gpus:
                queue.put(g)
        return cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                      initargs=(self.threads, queue))

    def submit(self, fn, /, *args, **kwargs):
        """As ``Executor.submit`` (a submit may start a worker: with SIGINT blocked, see
        :func:`interrupts_blocked`). A broken pool raises ``BrokenProcessPool``."""
        with interrupts_blocked():
            return self._pool.submit(fn, *args, **kwargs)

    def restart(self) -> None:
        """A fresh pool after a worker died (the old one refuses work once broken)."""
        self.shutdown(wait=False)
        self.restarts += 1
        self._pool = self._start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """``wait``: let the workers finish what they hold, then exit; else stop now (SIGTERM to every
        worker: a running task can take minutes, and nobody waits for it)."""
        if not wait:
            for p in list((getattr(self._pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    p.terminate()
            cancel_futures = True
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
