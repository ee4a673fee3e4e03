"""Shared fixtures for the benchmarks (pytest-benchmark; run with ``pytest benchmarks --benchmark-enable``).

Benchmarks record what they measure in ``benchmark.extra_info``; they assert properties of the algorithms
(work counts), never wall-clock times.
"""

import pytest
import torch

from verifier.config import RunConfig
from verifier.context import Context


@pytest.fixture(scope="session")
def toy_context() -> Context:
    """The default run's problem: the ``toy-attention`` preset and its initialisation theta0 (seed 0)."""
    return Context(RunConfig(preset="toy-attention"), argv=["pytest", "benchmarks"])


@pytest.fixture
def machine_info(benchmark):
    """Record the thread count next to every measurement (it changes timings, not results)."""
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    return benchmark.extra_info
