"""The survey's worker side, and where its draws run: the task a worker receives (:class:`DrawTask`), the code
it runs (:func:`run_task` -> :func:`run_draws`, each draw as ``verifier run`` would), and the executors
``verifier survey`` builds (``--workers N``: the shared local pool, :class:`verifier.pool.LocalPool`;
``--scheduler ADDRESS``: a Dask cluster, :class:`DaskPool`).

A task carries everything a worker needs: the survey config, the draw indices (one, or a group whose ladders
share a batched solve) and the check ids. The worker rebuilds each draw's problem from its seed (a
``--model-file`` is imported there, by path), so nothing but that small object travels, and any
``concurrent.futures.Executor`` can run it (docs/SURVEYS.md).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shlex
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ..context import Context
from ..errors import InputError
from ..pool import LocalPool, worker_name
from ..results import Verdict
from ..runner import run_checks
from .config import SurveyConfig
from .results import USER_CODE_ERROR, Draw, Outcome, outcome
from .stacked import prefill_ladders

DISTRIBUTED_EXTRA = "pip install 'verifier[distributed]'  (dask[distributed])"
SCHEDULER_TIMEOUT_S = 30.0  # to connect to --scheduler, and for it to greet us (a Dask scheduler speaks first)
SCHEDULER_EXAMPLE = "the address `dask scheduler` prints, e.g. tcp://10.0.0.1:8786"


@dataclass(frozen=True)
class DrawTask:
    """Draws ``indices`` of ``config``, checked with ``checks``. ``threads``: torch threads in the worker
    (None: leave them as they are). ``markers``: a local folder where the worker notes the draw it is running
    (its file removed when the draw ends), so that a crashed process pool can tell which draw was running."""

    config: SurveyConfig
    indices: tuple[int, ...]
    checks: tuple[str, ...]
    threads: int | None = None
    markers: str | None = None


def run_task(task: DrawTask) -> list[Draw]:
    """The worker's side: run the task's draws in order (their ladders in one batched solve when the task
    holds several), each as ``verifier run`` would (:func:`run_draws`)."""
    if task.threads is not None:
        import torch

        if torch.get_num_threads() != task.threads:
            torch.set_num_threads(task.threads)
    marker = Path(task.markers) / str(task.indices[0]) if task.markers else None
    if marker is not None:
        marker.write_text(str(os.getpid()))
    try:
        return run_draws(task.config, task.indices, list(task.checks), worker_name())
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


def draw_context(config: SurveyConfig, index: int) -> Context:
    """Draw ``index``'s problem, as ``verifier run`` with the draw's command builds it."""
    return Context(config.run_config(index), argv=shlex.split(config.command(index)))


def run_draws(config: SurveyConfig, indices, ids: list[str], worker: str) -> list[Draw]:
    """Run draws ``indices`` in this process (what a worker does with a task). A draw whose model-file factory
    raises or calls sys.exit is recorded as inconclusive (reason ``user-code-error``), never a crash of the
    survey; KeyboardInterrupt still stops it."""
    contexts, draws = {}, {}
    for i in indices:
        t0 = time.perf_counter()
        try:
            contexts[i] = draw_context(config, i)
        except (InputError, SystemExit) as exc:
            if config.model_file is None or (isinstance(exc, InputError) and exc.field != "--model-file"):
                raise
            draws[i] = failed_draw(config, i, ids, user_code_error(config, i, exc), USER_CODE_ERROR, worker,
                                   time.perf_counter() - t0)
    if len(contexts) > 1:
        prefill_ladders(list(contexts.values()), ids)
    for i, ctx in contexts.items():
        t0 = time.perf_counter()
        try:
            results = run_checks(ctx, ids, progress=False)
        except (InputError, SystemExit) as exc:  # the user's code refused or exited while a check ran it
            if config.model_file is None:
                raise
            draws[i] = failed_draw(config, i, ids, user_code_error(config, i, exc), USER_CODE_ERROR, worker,
                                   time.perf_counter() - t0)
            continue
        outcomes = {c.id: outcome(c) for c in results.checks}
        draws[i] = Draw(i, config.draw_seed(i), config.command(i), outcomes, time.perf_counter() - t0, worker)
    return [draws[i] for i in indices]


def failed_draw(config: SurveyConfig, index: int, checks, message: str, reason: str, worker: str | None = None,
                duration_s: float = 0.0) -> Draw:
    """A draw that produced no check result: every check inconclusive with ``message`` and ``reason``."""
    outcomes = {c: Outcome(Verdict.INCONCLUSIVE, message, reason=reason) for c in checks}
    return Draw(index, config.draw_seed(index), config.command(index), outcomes, duration_s, worker)


def user_code_error(config: SurveyConfig, index: int, exc: BaseException) -> str:
    """What a draw's message says when the user's factory raised (or called sys.exit) for its seed: the file,
    the function, the draw and its seed."""
    from ..model_file import FIELD, parse_spec

    file, factory = parse_spec(config.model_file)
    seed = config.draw_seed(index)
    if isinstance(exc, SystemExit):
        what = f"{file}:{factory}(seed={seed}) called sys.exit({exc.code!r})"
    elif getattr(exc, "problem", None) is not None and getattr(exc, "function", None):  # errors.UserCodeError
        what = f"{exc.file}:{exc.function}(seed={seed}) {exc.problem}"
    else:  # the loader's InputError: its text names the file and the function
        what = str(exc).removeprefix(f"{FIELD}: ")
    return f"{what} (draw {index}, seed {seed}); the other draws go on"


def is_worker_death(exc: BaseException) -> bool:
    """A task that failed because its worker process died (not because the draw raised): a broken local
    pool, or Dask's KilledWorker (a worker lost while running it, after the scheduler's own retries)."""
    return isinstance(exc, cf.BrokenExecutor) or type(exc).__name__ == "KilledWorker"


# ---- a Dask cluster --------------------------------------------------------------------------------------------

class DaskPool(cf.Executor):
    """``--scheduler ADDRESS``: the concurrent.futures executor of a Dask client (tasks not pure: a retried
    draw is run again, not served from the scheduler's memory of the failure), and :meth:`lost`, which says
    when the scheduler has gone (the engine then stops the survey; the journal keeps what finished)."""

    def __init__(self, client, address: str):
        self.client, self.address = client, address
        self._executor = client.get_executor(pure=False)

    def submit(self, fn, /, *args, **kwargs):
        return self._executor.submit(fn, *args, **kwargs)

    def lost(self) -> str | None:
        """Why the scheduler is out of reach (the client no longer running: it lost the connection and
        could not get it back), or None."""
        status = str(getattr(self.client, "status", "running"))
        return None if status in ("running", "newly-created", "Status.running") else f"the client is {status}"

    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        try:
            self._executor.shutdown(wait=False)
        finally:
            self.client.close(timeout=SCHEDULER_TIMEOUT_S)


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Before any work: a TCP address must accept a connection within ``timeout`` and greet with Dask's
    framing (a Dask scheduler sends its handshake first: 8 bytes of message length, 8 bytes of frame count);
    a server that stays silent (an HTTP server waits for a request) or sends anything else is refused, naming
    ``--scheduler``. Other schemes (tls://, ucx://) are left to the client's own connect timeout."""
    timeout = SCHEDULER_TIMEOUT_S if timeout is None else timeout
    scheme, sep, rest = address.rpartition("://")
    if sep and scheme != "tcp":
        return
    host, colon, port = (rest if sep else address).rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("--scheduler", f"{address!r} is not a scheduler address", SCHEDULER_EXAMPLE)
    where = f"{host.strip('[]')}:{port}"
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:
        raise InputError("--scheduler", f"cannot reach a Dask scheduler at {address} "
                                        f"({exc.strerror or type(exc).__name__})", SCHEDULER_EXAMPLE) from None
    with sock:
        head = b""
        try:
            sock.settimeout(timeout)
            while len(head) < 16:
                chunk = sock.recv(16 - len(head))
                if not chunk:
                    break
                head += chunk
        except socket.timeout:
            raise InputError("--scheduler", f"{where} accepted the connection but sent nothing in {timeout:g} s; a "
                                            "Dask scheduler greets every client at once (another kind of server?)",
                             SCHEDULER_EXAMPLE) from None
        except OSError as exc:
            raise InputError("--scheduler", f"{where} dropped the connection ({exc.strerror or exc})",
                             SCHEDULER_EXAMPLE) from None
    if len(head) < 16:
        raise InputError("--scheduler", f"{where} closed the connection without a Dask greeting", SCHEDULER_EXAMPLE)
    size, frames = struct.unpack("QQ", head)
    if not (16 <= size <= 1 << 20 and 1 <= frames <= 64):
        raise InputError("--scheduler", f"{where} is not a Dask scheduler: it answered {head!r}", SCHEDULER_EXAMPLE)


def dask_executor(address: str) -> DaskPool:
    """``--scheduler ADDRESS``: a client of an existing Dask scheduler (:func:`probe_scheduler` first), as a
    :class:`DaskPool`. Every way this fails is an InputError naming ``--scheduler``, before any work."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler", "needs Dask distributed, which is not installed",
                         DISTRIBUTED_EXTRA) from None
    probe_scheduler(address)
    _quiet_dask_logs()
    try:
        client = Client(address, timeout=f"{SCHEDULER_TIMEOUT_S:g}s")
    except Exception as exc:  # noqa: BLE001 - whatever the client met, the address is what the user gave
        raise InputError("--scheduler", f"cannot use the Dask scheduler at {address} "
                                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
                         SCHEDULER_EXAMPLE) from None
    return DaskPool(client, address)


def _quiet_dask_logs() -> None:
    """Dask's client logs its reconnection attempts, with tracebacks, on this process's stderr; what matters
    to the user (a scheduler lost, a worker killed) the survey says itself, in one line. The scheduler's and
    the workers' own logs are untouched."""
    import logging

    for name in ("distributed", "asyncio", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("distributed.") and isinstance(logger, logging.Logger) and logger.level:
            logger.setLevel(logging.CRITICAL)


def describe_executor(executor) -> dict:
    """What results.json records about where the draws ran."""
    if executor is None:
        return {"kind": "in-process", "workers": 1}
    if isinstance(executor, LocalPool):
        return {"kind": "local-processes", "workers": executor.workers, "torch_threads": executor.threads,
                "gpus": executor.gpus, "restarts": executor.restarts}
    if isinstance(executor, DaskPool):
        return {"kind": "dask", "workers": executor.workers(), "scheduler": executor.address}
    return {"kind": type(executor).__name__, "workers": None}
