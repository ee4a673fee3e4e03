"""Where a survey's draws run: the task a worker receives, the function it runs, and the executors
``verifier survey`` builds (``--workers N``: local processes; ``--scheduler ADDRESS``: a Dask cluster).

A task (:class:`DrawTask`) carries everything a worker needs: the survey config, the draw indices (one, or a
group whose ladders share a batched solve) and the check ids. The worker rebuilds each draw's problem from its
seed (a ``--model-file`` is imported there, by path), so nothing but that small object travels, and any
``concurrent.futures.Executor`` can run it (docs/SURVEYS.md).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..results import Verdict
from .config import SurveyConfig
from .results import Draw, Outcome
DISTRIBUTED_EXTRA = "pip install 'verifier[distributed]'  (dask[distributed])"


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


def worker_name() -> str:
    """``host:pid``, plus ``/gpu:K`` for a worker pinned to a GPU: what results.json records per draw."""
    gpu = os.environ.get("VERIFIER_SURVEY_GPU")
    return f"{socket.gethostname()}:{os.getpid()}" + (f"/gpu:{gpu}" if gpu is not None else "")


def run_task(task: DrawTask) -> list[Draw]:
    """The worker's side: run the task's draws in order (their ladders in one batched solve when the task
    holds several), each as ``verifier run`` would (engine.run_draws)."""
    if task.threads is not None:
        import torch

        if torch.get_num_threads() != task.threads:
            torch.set_num_threads(task.threads)
    marker = Path(task.markers) / str(task.indices[0]) if task.markers else None
    if marker is not None:
        marker.write_text(str(os.getpid()))
    try:
        from .engine import run_draws

        return run_draws(task.config, task.indices, list(task.checks), worker_name())
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


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


def _init_worker(threads: int | None, gpus) -> None:
    """A local worker process: Ctrl-C is the parent's to handle (it stops the pool); torch threads limited;
    pinned to one GPU (CUDA_VISIBLE_DEVICES, set before torch initialises CUDA) when ``gpus`` is a queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if gpus is not None:
        gpu = gpus.get()
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["VERIFIER_SURVEY_GPU"] = str(gpu)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


class LocalPool(cf.Executor):
    """``--workers N``: a ``ProcessPoolExecutor`` of N spawned processes (spawn: a fresh interpreter, never a
    fork of a parent whose OpenMP or CUDA state is live), restarted by :meth:`restart` when a worker dies
    (a dead process breaks the whole pool). With ``gpus`` (a list of device indices, one per worker) each
    process is pinned to one GPU."""

    def __init__(self, workers: int, threads: int | None, gpus: list[int] | None = None):
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
        return self._pool.submit(fn, *args, **kwargs)

    def restart(self) -> None:
        """A fresh pool after a worker died (the old one refuses work once broken)."""
        self.shutdown(wait=False)
        self.restarts += 1
        self._pool = self._start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not wait:  # stop now: a running draw can take minutes, and nobody waits for it
            for p in list((getattr(self._pool, "_processes", None) or {}).values()):
                p.terminate()
            cancel_futures = True
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def local_workers(workers: str | int, device) -> tuple[int, list[int] | None]:
    """``--workers N|auto`` -> (number of processes, the GPU of each or None) on ``device`` (a resolved
    torch.device: ``SurveyConfig.torch_device``). ``auto``: one per GPU when the survey runs on CUDA (one GPU:
    one worker, whose batched solves use it; processes sharing a GPU would compete for it), else one per CPU
    core."""
    if workers != "auto":
        try:
            n = int(workers)
        except (TypeError, ValueError):
            n = 0
        if isinstance(workers, bool) or n < 1 or str(n) != str(workers).strip():
            raise InputError("--workers", f"{workers!r} is not a number of workers", "a positive integer or auto")
        return n, None
    import torch

    if torch.device(device).type == "cuda":
        count = max(1, torch.cuda.device_count())
        return count, list(range(count))
    return max(1, os.cpu_count() or 1), None


def threads_per_worker(workers: int) -> int:
    """Torch threads per local worker: the cores shared out, at least one (N workers x T threads <= cores)."""
    return max(1, (os.cpu_count() or 1) // workers)


def dask_executor(address: str):
    """``--scheduler ADDRESS``: a client of an existing Dask scheduler and its concurrent.futures executor
    (tasks not pure: a retried draw is run again, not served from the scheduler's memory of the failure)."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler", "needs Dask distributed, which is not installed",
                         DISTRIBUTED_EXTRA) from None
    try:
        client = Client(address, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError("--scheduler", f"cannot reach a Dask scheduler at {address} ({exc})",
                         "the address `dask scheduler` prints, e.g. tcp://10.0.0.1:8786") from None
    return client, client.get_executor(pure=False)


def describe_executor(executor, workers: int | None = None, address: str | None = None) -> dict:
    """What results.json records about where the draws ran."""
    if executor is None:
        return {"kind": "in-process", "workers": 1}
    if isinstance(executor, LocalPool):
        return {"kind": "local-processes", "workers": executor.workers, "torch_threads": executor.threads,
                "gpus": executor.gpus, "restarts": executor.restarts}
    out = {"kind": "dask" if address else type(executor).__name__, "workers": workers}
    return out | ({"scheduler": address} if address else {})

