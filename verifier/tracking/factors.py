"""Exact singular values of products of thin factors, without forming the d1 x d2 product (THEORY.md §6).

A head's product M = A B^T (A [d1, k], B [d2, k]) has rank <= k. With A = Qa Ra and B = Qb Rb (thin QR, Q with
orthonormal columns), M = Qa (Ra Rb^T) Qb^T, and multiplying by matrices with orthonormal columns keeps the
singular values: sv(M) = sv(Ra Rb^T), an SVD of a core of at most k x k. The change of a product since a
reference (A0, B0) is (A - A0) B^T + A0 (B - B0)^T = [A - A0, A0] [B, B - B0]^T: the same with 2k columns, and
no cancellation of two O(1) products. Cost per matrix O((d1 + d2) k^2 + k^3) instead of O(d1 d2 min(d1, d2)):
at GPT-2-small width (d = 768, k = 64) about 25x fewer operations than ``svdvals`` of the 768 x 768 matrix.

During training the reference is fixed, so :class:`ChangeBasis` factors it once: with A0 = Qa Ra and
dA = A - A0, C = Qa^T dA and dA - Qa C = Q1 R1 (one projection; what it leaves unorthogonal is of the size of the
rounding of dA, the error a QR of [A0, dA] makes too), [A0, dA] = [Qa, Q1] [[Ra, C], [0, R1]]; likewise
[B0, dB] = [Qb, Q2] [[Rb, D], [0, R2]]. The change is A0 dB^T + dA B^T = [A0, dA] [dB, B]^T with
[dB, B] = [B0, dB] [[0, I], [I, I]], so its singular values are those of the 2k x 2k core
[[Ra, C], [0, R1]] ([[Rb, D], [0, R2]] [[0, I], [I, I]])^T. Per record: four batched [d, k] x [k, k] products
and two QRs of k columns, instead of two QRs of 2k columns (each four times the work) and the copies that
build [A - A0, A0] (benchmarks/README.md, "RankTracker threads").

Everything is batched over the leading axis and stays on the factors' device (no host synchronisation).
Half-precision factors are computed in float32 (QR has no half kernels). A matrix with a non-finite factor
entry gets NaN singular values: the QR carries the NaN into the small core, which is checked (cheap, k x k)
and zeroed before the SVD, so one diverged head cannot stop the batch.
"""

from __future__ import annotations

import torch


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _core_svdvals(core: torch.Tensor) -> torch.Tensor:
    """Singular values of each core; NaN for a core with a non-finite entry (zeroed for the SVD, so one diverged
    matrix cannot stop the batch)."""
    finite = torch.isfinite(core).flatten(1).all(1)
    s = torch.linalg.svdvals(torch.where(finite[:, None, None], core, torch.zeros((), dtype=core.dtype,
                                                                                  device=core.device)))
    return torch.where(finite[:, None], s, torch.full((), float("nan"), dtype=s.dtype, device=s.device))


def product_svdvals(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, min(d1, d2, k)] singular values (descending) of a_i b_i^T, for a [N, d1, k] and b [N, d2, k]."""
    a, b = _wide(a), _wide(b)
    ra = torch.linalg.qr(a, mode="r").R  # [N, min(d1, k), k]; a non-finite input gives a non-finite R
    rb = torch.linalg.qr(b, mode="r").R
    return _core_svdvals(ra @ rb.transpose(1, 2))


class ChangeBasis:
    """Reference factors a0 [N, d1, k], b0 [N, d2, k] with their thin QR, for the singular values of
    a_i b_i^T - a0_i b0_i^T at many later (a, b) (module docstring)."""

    def __init__(self, a0: torch.Tensor, b0: torch.Tensor):
        self.a0, self.b0 = _wide(a0), _wide(b0)
        self._qa, self._ra = torch.linalg.qr(self.a0)
        self._qb, self._rb = torch.linalg.qr(self.b0)

    @staticmethod
    def _r(q0: torch.Tensor, r0: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """R of [X0, dX] = [Q0, Q1] R, from X0 = Q0 R0: [[R0, Q0^T dX], [0, R1]]."""
        c = q0.transpose(1, 2) @ d
        r1 = torch.linalg.qr(d - q0 @ c, mode="r").R
        zeros = torch.zeros((*r1.shape[:-1], r0.shape[-1]), dtype=d.dtype, device=d.device)
        return torch.cat([torch.cat([r0, c], -1), torch.cat([zeros, r1], -1)], -2)

    def svdvals(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[N, min(d1, d2, 2k)] singular values (descending) of a_i b_i^T - a0_i b0_i^T."""
        k = a.shape[-1]
        rf = self._r(self._qa, self._ra, _wide(a) - self.a0)
        rg = self._r(self._qb, self._rb, _wide(b) - self.b0)
        rg = torch.cat([rg[..., k:], rg[..., :k] + rg[..., k:]], -1)  # R of [dB, B] = [B0, dB] [[0, I], [I, I]]
        # rows beyond min(d, 2k) belong to a rank-deficient block: singular values 0 up to rounding
        return _core_svdvals(rf @ rg.transpose(1, 2))[..., : min(a.shape[-2], b.shape[-2], 2 * k)]


def change_svdvals(a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
    """[N, min(d1, d2, 2k)] singular values of a_i b_i^T - a0_i b0_i^T from its rank-2k factorisation."""
    return ChangeBasis(a0, b0).svdvals(a, b)
