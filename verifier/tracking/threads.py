"""The thread count of the tracker's own linear algebra on a CPU (docs/TRACKING.md, "Threads").

``record()`` runs inside a user's training loop, at whatever torch thread count the user's process has: torch's
default is one OpenMP thread per core, waiting actively (spinning) unless ``OMP_WAIT_POLICY`` was set before
OpenMP started. Its batched QR and SVD are many small parallel regions, each ending in a barrier, so a team
waits for its slowest thread at every one: on a shared machine a thread whose core is busy stalls them all
(benchmarks/README.md, "RankTracker threads": at GPT-2-small shape under load, record() took 4-12x longer
with torch's default 2 threads than with 1). ``OMP_WAIT_POLICY`` cannot be changed once OpenMP has started,
so a team with passive waits is not available to a library inside a running process; one thread has no
barrier to wait at. Hence :data:`DEFAULT_THREADS` = 1: the tracker sets it around its own linear algebra and
restores the process's count afterwards, also when an exception leaves the block. ``torch.set_num_threads``
is process-global: torch work that other Python threads run at the same moment runs at this count too.

On a GPU nothing changes: the kernels run on the device and the host thread only launches them.
"""

from __future__ import annotations

import operator
from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import InputError

DEFAULT_THREADS = 1


def check_threads(threads) -> int:
    """``threads=`` of :class:`~verifier.tracking.RankTracker`: None (the default, :data:`DEFAULT_THREADS`) or a
    positive integer."""
    if threads is None:
        return DEFAULT_THREADS
    try:
        if isinstance(threads, bool):
            raise TypeError
        threads = operator.index(threads)
    except TypeError:
        raise InputError("threads", f"{threads!r} is not an integer",
                         "a positive integer, or None for the tracker's default (1)") from None
    if threads < 1:
        raise InputError("threads", f"{threads} threads", "a positive integer, or None for the tracker's default (1)")
    return threads


@contextmanager
def cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Run the block at ``threads`` torch threads when ``device`` is a CPU, then restore the previous count."""
    before = torch.get_num_threads()
    if device.type != "cpu" or before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
