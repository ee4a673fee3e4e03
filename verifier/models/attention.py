"""Attention heads (THEORY.md §1): the paper's toy head with diagonal weights, and a head with full weights.

attn(X) = softmax_rowwise(temperature * X Wq Wk^T X^T) X Wv Wo^T  for tokens X in R^{n x d}.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from .base import DiagonalModel, Model


def attention(X: torch.Tensor, QK: torch.Tensor, VO: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(temperature * X QK X^T) X VO for X [N, n, d] and d x d matrices QK, VO."""
    scores = temperature * (X @ QK) @ X.transpose(-1, -2)
    return torch.softmax(scores, dim=-1) @ X @ VO


def diag_attention(X: torch.Tensor, qk: torch.Tensor, vo: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same head with QK = diag(qk), VO = diag(vo), without forming d x d matrices."""
    scores = temperature * (X * qk) @ X.transpose(-1, -2)
    return (torch.softmax(scores, dim=-1) @ X) * vo


_BLOCK = 1 << 18  # entries of the largest intermediate per tile on a CPU (2 MB): cache-sized, no page faults
_BLOCK_ACCEL = 1 << 24  # on an accelerator: large tiles, few kernel launches
_PAIRS_MAX = 1 << 24  # largest cached token-pair tensor of DiagAttention (entries; 128 MB in float64)


def _blocks(batch: int, N: int, per_pair: int, budget: int):
    """Tile (beta batch) x (N sequences) so that the largest intermediate, ``per_pair`` entries per
    (beta, sequence) pair, stays near ``budget`` entries: yields (beta slice, sequence slice)."""
    m = max(1, budget // per_pair)  # (beta, sequence) pairs per tile
    nb = max(1, min(batch, m // N))
    ns = N if nb > 1 else max(1, min(N, m))
    for b0 in range(0, batch, nb):
        for s0 in range(0, N, ns):
            yield slice(b0, b0 + nb), slice(s0, s0 + ns)


@dataclass(frozen=True, eq=False)
class DiagAttention(DiagonalModel):
    """The paper's toy (Section 5, Appendix A): Wq = diag(q), Wk = diag(k), Wv = diag(vv), Wo = diag(o).

    u = (q, vv), v = (k, o), beta = (q * k, vv * o) in R^{2d}; X, Y are [N, n, d]; square loss.
    """

    temperature: float = 1.0
    family = "toy-attention"

    @property
    def d(self) -> int:
        return self.X.shape[-1]

    @property
    def p(self) -> int:
        return 2 * self.d

    def coordinate_names(self) -> list[str]:
        return [f"qk[{i}]" for i in range(self.d)] + [f"vo[{i}]" for i in range(self.d)]

    def coordinate_structure(self) -> list[tuple[str, str, int]]:
        return [("", kind, i) for kind in ("qk", "vo") for i in range(self.d)]

    def predict_beta(self, beta: torch.Tensor) -> torch.Tensor:
        return diag_attention(self.X, beta[: self.d], beta[self.d :], self.temperature)

    def predict_uv(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = self.d
        Wq, Wv = torch.diag(u[:d]), torch.diag(u[d:])
        Wk, Wo = torch.diag(v[:d]), torch.diag(v[d:])
        return attention(self.X, Wq @ Wk.T, Wv @ Wo.T, self.temperature)

    # -- hand-derived derivatives of Lb (square loss), batched over beta -----------------------------
    # Per sequence, with c = temperature, A = softmax_r(c sum_j X_tj qk_j X_rj), P = A X, R = P vo - Y,
    # D_trj = X_rj - P_tj (tokens centred at the attention mean of query t) and Q_trj = X_tj D_trj:
    #   dP_te/dqk_l = c X_tl Cov_t(l, e),  Cov_t(l, e) = sum_r A_tr D_trl D_tre,
    #   d Cov_t(j, e)/dqk_l = c X_tl kappa_t(j, l, e),  kappa_t = sum_r A_tr D_trj D_trl D_tre,
    # the attention-weighted covariance and third central moment of the tokens. For Lb = (1/2N) sum R^2
    # (sums over the N sequences too), with W = vo R, z_tr = sum_e D_tre W_te, V = vo P + R:
    #   g_qk_j = (c/N) sum_{t,r} Q_trj A_tr z_tr,      g_vo_e = (1/N) sum_t R_te P_te,
    #   H[qk_j, qk_l] = (c^2/N) sum_{t,r,r'} Q_trj K_trr' Q_tr'l,
    #       K_trr' = A_tr M_trr' A_tr' + [r = r'] A_tr z_tr,  M_trr' = sum_e D_tre vo_e^2 D_tr'e
    #       (Gauss-Newton part, then the residual contracted with the third moment),
    #   H[qk_j, vo_f] = (c/N) sum_{t,r} Q_trj A_tr X_rf V_tf,   H[vo_e, vo_f] = [e = f] (1/N) sum_t P_te^2
    # (the mixed block uses sum_r A_tr D_trj = 0 to replace D_trf by X_rf). The gradient avoids the
    # [n, n, d] tensor Q: sum_r Q_trj A_tr z_tr = X_tj [(A o z) X]_tj, since sum_r A_tr z_tr = 0.
    # Every contraction over the (sequence, query, key) triples is one matrix product with the small
    # factor transposed (a transposed [N n^2, d] operand is many times slower on a CPU).
    # Other losses fall back to torch.func (the base class).

    def _forward(self, X: torch.Tensor, Y: torch.Tensor, qk: torch.Tensor, vo: torch.Tensor):
        """A [b, m, n, n], P [b, m, n, d] and R for qk, vo [b, d] on sequences X, Y [m, n, d]."""
        A = _softmax((X * (self.temperature * qk)[:, None, None, :]) @ X.transpose(-1, -2))
        P = A @ X
        return A, P, torch.addcmul(-Y, P, vo[:, None, None, :])

    def _head(self, X: torch.Tensor, Y: torch.Tensor, qk: torch.Tensor, vo: torch.Tensor):
        """:meth:`_forward` and Az = A o z [b, m, n, n]."""
        A, P, R = self._forward(X, Y, qk, vo)
        W = R * vo[:, None, None, :]
        return A, P, R, A * (W @ X.transpose(-1, -2) - (P * W).sum(-1, keepdim=True))

    @functools.cached_property
    def _pairs(self) -> torch.Tensor | None:
        """Z_trj = X_tj X_rj [N, n, n, d] for the Hessian (data only, so built once), or None when it
        would exceed _PAIRS_MAX entries (then each tile forms its own)."""
        N, n, d = self.X.shape
        return self.X[:, :, None, :] * self.X[:, None, :, :] if N * n * n * d <= _PAIRS_MAX else None

    def _tiles(self, batch: int, per_pair: int):
        """:func:`_blocks` with a tile size for the device: cache-sized on a CPU, large on an accelerator."""
        if self.X.device.type == "cpu":
            _keep_freed_blocks()
            return _blocks(batch, self.X.shape[0], per_pair, _BLOCK)
        return _blocks(batch, self.X.shape[0], per_pair, _BLOCK_ACCEL)

    def loss_b(self, beta: torch.Tensor) -> torch.Tensor:
        """Lb(beta) batched over leading dimensions, in tiles (no [batch, N, n, d] tensor at once)."""
        if self.loss != "square":
            return super().loss_b(beta)
        flat = beta.reshape(-1, self.p)
        N, n, d = self.X.shape
        out = flat.new_zeros(flat.shape[0])
        for bs, ss in self._tiles(flat.shape[0], n * max(n, d)):
            out[bs] += self._forward(self.X[ss], self.Y[ss], flat[bs, :d], flat[bs, d:])[2].pow(2).sum((1, 2, 3))
        return (0.5 * out / N).reshape(beta.shape[:-1])

    def grad_b(self, beta: torch.Tensor) -> torch.Tensor:
        """g(beta) by the closed form above: O(N n^2 d) per beta, no autograd."""
        if self.loss != "square":
            return super().grad_b(beta)
        flat = beta.reshape(-1, self.p)
        N, n, d = self.X.shape
        out = torch.zeros_like(flat)
        for bs, ss in self._tiles(flat.shape[0], n * max(n, d)):
            X = self.X[ss]
            A, P, R, Az = self._head(X, self.Y[ss], flat[bs, :d], flat[bs, d:])
            out[bs, :d] += (X * (Az @ X)).sum((1, 2))
            out[bs, d:] += (R * P).sum((1, 2))
        out[:, :d] *= self.temperature
        return (out / N).reshape(beta.shape)

    def hessian_columns(self, beta: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """H(beta)[:, columns], [..., p, K], by the closed form above: O(N n^2 d (1 + K)) per beta, the
        contractions over the N n^2 (sequence, query, key) triples as matrix products."""
        if self.loss != "square":
            return super().hessian_columns(beta, columns)
        flat = beta.reshape(-1, self.p)
        N, n, d = self.X.shape
        c = self.temperature
        columns = torch.as_tensor(columns, device=beta.device).reshape(-1)
        q_pos, v_pos = (columns < d).nonzero().squeeze(1), (columns >= d).nonzero().squeeze(1)
        lq, fv = columns[q_pos], columns[v_pos] - d  # qk columns l, vo columns f
        hq = flat.new_zeros(flat.shape[0], len(lq), self.p)  # H[qk_l, :] = H[:, qk_l]^T
        hv = flat.new_zeros(flat.shape[0], len(fv), d)  # H[vo_f, qk_j]
        pp = flat.new_zeros(flat.shape[0], d)  # sum_t P_te^2: H[vo_e, vo_e]
        # with every qk column asked for, H[qk_j, vo_f] = H[vo_f, qk_j] is already in hq (symmetry)
        by_symmetry = len(fv) > 0 and len(torch.unique(lq)) == d
        for bs, ss in self._tiles(flat.shape[0], n * n * (d + len(columns))):
            X, vo = self.X[ss], flat[bs, None, None, d:]  # vo [b, 1, 1, d]
            A, P, R, Az = self._head(X, self.Y[ss], flat[bs, :d], flat[bs, d:])
            b, m = A.shape[:2]
            V = torch.addcmul(R, P, vo)
            Z = self._pairs[ss] if self._pairs is not None else X[:, :, None, :] * X[:, None, :, :]
            if len(lq):
                XT, vo2, k = X.transpose(-1, -2), vo * vo, len(lq)
                h = (P * vo2) @ XT  # sum_e P_te vo_e^2 X_re, [b, m, t, r]
                Ql = X[:, :, None, lq] * (X[:, None, :, lq] - P[..., None, lq])  # Q[..., lq], [b, m, t, r, l]
                G = A[..., None] * Ql
                Gs = G.sum(3, keepdim=True)
                # K Q_l without forming K [b, m, t, r, r']: M G = (X vo^2 X^T) G - h sum_r G - sum_r h G + s sum_r G
                MG = (((X * vo2) @ XT) @ G.transpose(2, 3).reshape(b, m, n, n * k)).reshape(b, m, n, n, k)
                MG = (MG.transpose(2, 3) - h[..., None] * Gs - (h[..., None] * G).sum(3, keepdim=True)
                      + (P * P * vo2).sum(-1)[..., None, None] * Gs)
                hq[bs, :, :d] += (c * c) * _contract_q(Z, X, P, A[..., None] * MG + Az[..., None] * Ql)
                # H[vo_e, qk_l] = c sum_t V_te sum_r A_tr Q_trl X_re: for a few columns, rows (t, l) times X per
                # sequence; for many (crossover near d / 5), one product with right_tre = A_tr X_re V_te
                if 5 * k < d:
                    GX = G.transpose(-1, -2).reshape(b, m, n * k, n) @ X
                    hq[bs, :, d:] += c * (GX.reshape(b, m, n, k, d) * V[:, :, :, None, :]).sum((1, 2))
                else:
                    right = A[..., None] * (X[:, None, :, :] * V[:, :, :, None, :])
                    hq[bs, :, d:] += c * (Ql.reshape(b, -1, k).transpose(1, 2) @ right.reshape(b, -1, d))
            if len(fv) and not by_symmetry:
                right = A[..., None] * X[:, None, :, fv] * V[:, :, :, None, fv]  # A_tr X_rf V_tf
                hv[bs] += c * _contract_q(Z, X, P, right)
            pp[bs] += (P * P).sum((1, 2))
        if by_symmetry:
            where = torch.empty(d, dtype=torch.long, device=lq.device)
            where[lq] = torch.arange(len(lq), device=lq.device)
            hv = hq[:, where][..., d + fv].transpose(1, 2)
        out = flat.new_zeros(flat.shape[0], self.p, len(columns))
        out[..., q_pos] = hq.transpose(1, 2)
        out[:, :d, v_pos] = hv.transpose(1, 2)
        out[:, d + fv, v_pos] = pp[:, fv]
        return (out / N).reshape(*beta.shape[:-1], self.p, len(columns))


def _contract_q(Z: torch.Tensor, X: torch.Tensor, P: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """sum over sequences, queries t and keys r of Q_trj F_trk -> [b, k, d], with Q_trj = X_tj (X_rj - P_tj)
    = Z_trj - X_tj P_tj: one matrix product with the pair products Z [m, n, n, d] (data only), and a
    small one for the P part. X [m, n, d], P [b, m, n, d], F [b, m, n, n, k]."""
    b, k = F.shape[0], F.shape[-1]
    pairs = F.reshape(b, -1, k).transpose(1, 2) @ Z.reshape(-1, Z.shape[-1])
    own = F.sum(3).reshape(b, -1, k).transpose(1, 2) @ (X * P).reshape(b, -1, X.shape[-1])
    return pairs - own


@functools.cache
def _keep_freed_blocks() -> None:
    """Every tile of the loops above allocates a few MB-sized tensors; glibc hands freed blocks of that size
    back to the kernel (mmap threshold, heap trimming), so each new one page-faults afresh, ~40% of a
    gradient on a CPU. Once per process, raise glibc's mmap and trim thresholds (M_MMAP_THRESHOLD = 32 MB,
    its maximum; M_TRIM_THRESHOLD = 64 MB) so freed tiles are reused: at most 64 MB of free heap is kept.
    A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax over the last dimension (for rows of a few entries this is ~3x faster on a CPU
    than ``torch.softmax`` in float64)."""
    e = (scores - scores.amax(-1, keepdim=True)).exp_()
    return e.div_(e.sum(-1, keepdim=True))


@dataclass(frozen=True, eq=False)
class FullAttention(Model):
    """One head with full d x d weights Wq, Wk, Wv, Wo (outside the theory; the paper's Figure 2 right).

    theta = vec(Wq, Wk, Wv, Wo). Lemma 4.1 becomes matrix balancedness: Wq^T Wq - Wk^T Wk and
    Wv^T Wv - Wo^T Wo are constant along gradient flow.
    """

    temperature: float = 1.0
    family = "full-attention"

    @property
    def d(self) -> int:
        return self.X.shape[-1]

    @property
    def n_params(self) -> int:
        return 4 * self.d * self.d

    def weights(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = self.d
        return tuple(theta[..., i * d * d : (i + 1) * d * d].reshape(*theta.shape[:-1], d, d) for i in range(4))

    def loss_params(self, theta: torch.Tensor) -> torch.Tensor:
        Wq, Wk, Wv, Wo = self.weights(theta)
        return self._loss(attention(self.X, Wq @ Wk.T, Wv @ Wo.T, self.temperature))

    def conserved(self, theta: torch.Tensor) -> torch.Tensor:
        Wq, Wk, Wv, Wo = self.weights(theta)
        t = lambda W: W.transpose(-1, -2)  # noqa: E731
        qk = t(Wq) @ Wq - t(Wk) @ Wk
        vo = t(Wv) @ Wv - t(Wo) @ Wo
        return torch.cat([qk.flatten(-2), vo.flatten(-2)], dim=-1)

    def conserved_scale(self, theta: torch.Tensor) -> torch.Tensor:
        """|Wq|^T |Wq| + |Wk|^T |Wk| (and for Wv, Wo): the size of the terms that cancel in ``conserved``."""
        Wq, Wk, Wv, Wo = self.weights(theta.abs())
        t = lambda W: W.transpose(-1, -2)  # noqa: E731
        return torch.cat([(t(Wq) @ Wq + t(Wk) @ Wk).flatten(-2), (t(Wv) @ Wv + t(Wo) @ Wo).flatten(-2)], dim=-1)

    def init_params(self, alpha: float, generator: torch.Generator) -> torch.Tensor:
        """alpha * theta0, theta0 with i.i.d. N(0, 1/d) entries."""
        theta0 = torch.randn(self.n_params, generator=generator, dtype=torch.float64) / self.d**0.5
        return alpha * theta0.to(self.device)

    def products(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Wq Wk^T and Wv Wo^T, whose singular values the paper tracks (Figure 2, right)."""
        Wq, Wk, Wv, Wo = self.weights(theta)
        return Wq @ Wk.transpose(-1, -2), Wv @ Wo.transpose(-1, -2)

    def product_names(self) -> tuple[str, ...]:
        return ("Wq Wk^T", "Wv Wo^T")

    # -- the factor pairs of the lifted flow (dynamics/pair_flow.py, THEORY.md §8) -------------------------
    products_only = True  # the loss reads Wq, Wk, Wv, Wo only through Wq Wk^T and Wv Wo^T

    @property
    def factor_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(a, b, r) of every product U V^T with U [a, r], V [b, r]: (Wq, Wk) and (Wv, Wo), all d x d."""
        return ((self.d, self.d, self.d),) * 2

    def factors(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        Wq, Wk, Wv, Wo = self.weights(theta)
        return [(Wq, Wk), (Wv, Wo)]

    def join_factors(self, factors) -> torch.Tensor:
        """theta from [(Wq, Wk), (Wv, Wo)] (batched over leading dimensions): the inverse of :meth:`factors`."""
        (Wq, Wk), (Wv, Wo) = factors
        return torch.cat([W.flatten(-2) for W in (Wq, Wk, Wv, Wo)], dim=-1)
