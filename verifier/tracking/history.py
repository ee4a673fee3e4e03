"""RankHistory: what a RankTracker measured, on the host (THEORY.md §6). The checks judge it alone."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .spectra import NUMERICAL_RANK_RTOL, effective_rank, numerical_rank, stable_rank


@dataclass(frozen=True)
class RankHistory:
    """What a tracker measured, on the host. P tracked matrices (one per product and head), T records.

    ``delta_spectra[t, i]`` are the singular values of matrix i's change at record t (descending, zero
    padded to the largest rank r), ``initial_spectra[i]`` those of the matrix at the first record.
    ``max_rank[i]`` = min(d1, d2, 2k), the largest rank the change (dA) B^T + A0 (dB)^T can have.
    ``losses`` are the losses passed to ``record`` (NaN where none was). ``finite[t]`` is False where
    record t met a non-finite weight (its spectra are then NaN) or a non-finite loss: training diverged.

    Per module (M distinct weights the products read, :mod:`.modules`; empty for a history without them):
    ``module_names`` as PEFT matches them, ``module_shapes`` (stored shape), ``module_feeds`` (the products
    each is a factor of, ``"<product>:a"``/``":b"``), and at the Tm records in ``module_steps``:
    ``module_norms[t, m]`` = ||W_m - W_m0||_F and ``module_spectra[t, m]`` its singular values (descending,
    zero padded to the widest module).
    """

    names: tuple[str, ...]  # product name per matrix, e.g. "blocks.0.attn.qk"
    heads: tuple[int, ...]
    max_rank: tuple[int, ...]
    product_rank: tuple[int, ...]  # min(d1, d2, k): the largest rank of the product itself
    steps: np.ndarray  # [T]
    losses: np.ndarray  # [T]
    delta_spectra: np.ndarray  # [T, P, r]
    initial_spectra: np.ndarray  # [P, r]
    finite: np.ndarray  # [T] bool
    module_names: tuple[str, ...] = ()
    module_shapes: tuple[tuple[int, int], ...] = ()
    module_feeds: tuple[tuple[str, ...], ...] = ()
    module_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [Tm]
    module_spectra: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))  # [Tm, M, r_m]
    module_norms: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [Tm, M]

    @property
    def diverged_step(self) -> int | None:
        """The first recorded step with non-finite weights or loss (None when training stayed finite)."""
        bad = np.flatnonzero(~self.finite)
        return int(self.steps[bad[0]]) if bad.size else None

    @property
    def labels(self) -> list[str]:
        return [f"{n}[h{h}]" for n, h in zip(self.names, self.heads)]

    def stable_rank(self) -> np.ndarray:
        """[T, P] stable rank of the change (NaN at the first record, where it is zero)."""
        return stable_rank(self.delta_spectra)

    def effective_rank(self) -> np.ndarray:
        return effective_rank(self.delta_spectra)

    def numerical_rank(self, rtol: float = NUMERICAL_RANK_RTOL) -> np.ndarray:
        return numerical_rank(self.delta_spectra, rtol)

    def initial_stable_rank(self) -> np.ndarray:
        """[P] stable rank of each product at the first record."""
        return stable_rank(self.initial_spectra)


