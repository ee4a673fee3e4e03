"""Exact gradient flow of full-weight models at any alpha: the lifted flow (THEORY.md §8).

A product U V^T with U [a, r], V [b, r] and Gamma = dL/dM at M = U V^T flows as U' = -L Gamma V,
V' = -L Gamma^T U in rescaled time tau = t / L, L = log(1/alpha). Stacked, W = [U; V] [n = a + b, r] obeys
W' = A W with the symmetric A = -L [[0, Gamma], [Gamma^T, 0]]. The loss reads W only through K = W W^T (M is
its off-diagonal block), so any W with the same K will do: we start from the thin SVD, W = Q0 diag(s0) (k =
min(n, r) columns), and integrate its continuous QR factorisation W = Q diag(e^l) R, Q [n, k] orthonormal,
R unit upper triangular (the method Dieci, Russell & Van Vleck use for Lyapunov exponents):

    H = Q^T A Q,  T = triu(H) + triu(H, 1)  (T_ii = H_ii, T_ij = 2 H_ij for i < j),
    Q' = A Q - Q T - kappa/2 Q (Q^T Q - I),   l' = diag(H),   R'_ij = sum_{i < m <= j} T_im e^{l_m - l_i} R_mj
    (the kappa term vanishes on orthonormal Q and makes orthonormality attracting).

Every mode keeps its own scale: the i-th mode is a unit column of Q with a log-size l_i, never a number below
rounding beside an O(1) weight, so alpha = exp(-10^4) is as exact as alpha = 1e-2; alpha enters only through
l(0) = log s0 - L. Gram-Schmidt order keeps the modes graded (l_1 >= l_2 >= ... up to O(1) factors, for any
initialisation whose leading minors do not vanish), so e^{l_m - l_i}, m > i, stays bounded, and nothing
divides by a difference of two sizes (an eigendecomposition of K would: its rotation rate is
coth(l_i - l_j), singular where two modes cross). A Q needs Gamma Q_V and Gamma^T Q_U: Gamma itself is one
gradient of the model's own loss at (U, V) = ([M, 0], [I, 0]) when r >= b (or ([I, 0], [M^T, 0]) when r >= a);
otherwise dL/dU at (Q_U G G^T, Q_V) is Gamma Q_V and dL/dV at (Q_U, Q_V G G^T) is Gamma^T Q_U (G = diag(e^l) R),
two factorisations of the same products. Either way the loss must read the pairs only through U V^T
(``exact_path``). The flow is stiff on plateaus like the reduced flow of THEORY.md §3 and is solved by the
same batched Rosenbrock integrator, with the same step cap on the modes' sizes (``max_step``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.func import grad, jacfwd, vmap

from ..config import SolverConfig
from . import rosenbrock
from .flow import NEGLIGIBLE_COLUMN, _dense, onset_cap
from .trajectory import Status

F64 = torch.float64
# A singular value of a product is read from the float64 SVD of M where it is above RESOLVED x the largest
# (rounding of the SVD is ~1e-16 of the largest); below, from the graded estimate of :meth:`LiftedFlow.log_sv`.
RESOLVED = 1e-10
# The W-method's matrix includes the change of Gamma through a mode only where the mode's weight in the
# products, times L, is at least JAC_ACTIVE (``LiftedFlow.jac``): below, that term's rate is non-stiff.
JAC_ACTIVE = 1e-2
# Gram-Schmidt order keeps l_1 >= l_2 >= ... up to O(1) (measured max l_m - l_i, m > i: 0.36-2.7, 0.77, 0.48 on the
# two-layer network, linear-attention and full-attention, at 1e-8 and exp(-1e4)); past MISORDER_LIMIT the entries
# of R would carry e^{l_m - l_i} and lose digits: rank-increments then says so (inconclusive, never a verdict).
MISORDER_LIMIT = 20.0
# ROS34PW2 refreshes its matrix after a rejected step with an old one, or after this many accepted steps: on
# full-attention at alpha = 1e-8 (tau to 3.3, rtol = atol = 1e-6) 12 instead of the reduced flow's 4 took 34
# matrices instead of 92 and 10.9 instead of 18.3 CPU seconds for 371 steps instead of 358; 40 took 433 steps.
JACOBIAN_POLICY = rosenbrock.JacobianPolicy(max_age=12)
# The loss must read the pairs only through U V^T to within this (relative), measured by ``product_mismatch``.
PRODUCT_TOL = 1e-10


def _pad(X: torch.Tensor, r: int) -> torch.Tensor:
    """X [..., m, c] with zero columns appended up to r."""
    return torch.cat([X, X.new_zeros(*X.shape[:-1], r - X.shape[-1])], dim=-1) if r > X.shape[-1] else X


def _upper(k: int, like: torch.Tensor) -> torch.Tensor:
    """[k (k - 1) / 2, k * k]: row j puts the j-th strict-upper entry (row-major) in its place of a flat k x k
    matrix (out of place, so that vmap can batch it)."""
    iu = torch.triu_indices(k, k, 1, device=like.device)
    E = torch.zeros(iu.shape[1], k * k, dtype=like.dtype, device=like.device)
    E[torch.arange(iu.shape[1], device=like.device), iu[0] * k + iu[1]] = 1.0
    return E


def product_mismatch(model, points: int = 3, seed: int = 0) -> float:
    """max |L(U G, V G^-T) - L(U, V)| / |L| over random factor points and random invertible G per pair
    (G = O1 diag(e^z) O2, z ~ U(-0.7, 0.7)): zero to rounding when the loss reads every pair only through U V^T,
    which the lifted flow needs (weight decay on one factor, say, is not; it survives an orthogonal G)."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(points):
        theta = model.init_params(0.5, gen)
        turned = []
        for U, V in model.factors(theta):
            r = U.shape[-1]
            O1, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=F64))
            O2, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=F64))
            z = 1.4 * torch.rand(r, generator=gen, dtype=F64) - 0.7
            G = (O1 * torch.exp(z)) @ O2
            turned.append((U @ G.to(U.device), V @ torch.linalg.inv(G).T.to(V.device)))
        a, b = float(model.loss_params(theta)), float(model.loss_params(model.join_factors(turned)))
        worst = max(worst, abs(a - b) / max(abs(a), 1e-300))
    return worst


def exact_path(model) -> str | None:
    """None when the lifted flow applies to ``model``, else why not (one sentence)."""
    if not hasattr(model, "factor_shapes"):
        return f"{model.family} has no factor pairs"
    if not model.products_only:
        return "a vector pair u * v is not the product U V^T of one matrix pair"
    mismatch = product_mismatch(model)
    if not mismatch <= PRODUCT_TOL:
        return (f"the loss does not read the pairs only through U V^T (L(U G, V G^-T) differs from L(U, V) by "
                f"{mismatch:.3g} relative for an invertible G)")
    return None


@dataclass(frozen=True, eq=False)
class LiftedFlow:
    """The lifted flow of a batch of B runs of ``model``: pair p has ``ks[p]`` modes; the state of a run is
    (Q_p flattened, l_p, the strict upper triangle of R_p) for every pair p, concatenated. ``L`` [B]: the time
    rescaling (1 for plain time)."""

    model: Any
    ks: tuple[int, ...]
    L: torch.Tensor
    jac_floor: float = 0.0  # the Jacobian keeps a mode's change of Gamma where L e^{2 l} >= this (``jac``)

    @property
    def shapes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(self.model.factor_shapes)

    @property
    def size(self) -> int:
        return sum((a + b + 1) * k + k * (k - 1) // 2 for (a, b, _), k in zip(self.shapes, self.ks))

    @classmethod
    def initial_state(cls, model, factors, time_scale, log_shift=None, ks=None) -> tuple["LiftedFlow", torch.Tensor]:
        """The flow (rescaled time tau = t / time_scale_b, [B]) and its state [B, size] at ``factors``
        ([(U [B, a, r], V [B, b, r])] per pair) times exp(-log_shift_b) (default log_shift = time_scale: the
        initialisation alpha theta0 with L = log(1/alpha)): W = [U; V] = Q0 diag(s0) P^T (thin SVD) is replaced by
        Q0 diag(s0), which has the same W W^T, so Q = Q0, l = log s0 - shift, R = I. ``ks``: modes per pair
        (default min(a + b, r), every mode of a generic W); the first ks[p] singular directions are kept (a W of
        rank k: its zero modes stay zero)."""
        L = torch.as_tensor(list(time_scale), dtype=F64, device=model.device)
        shift = L if log_shift is None else torch.as_tensor(list(log_shift), dtype=F64, device=model.device)
        shapes = tuple(model.factor_shapes)
        ks = tuple(min(a + b, r) for a, b, r in shapes) if ks is None else tuple(ks)
        parts = []
        for (U, V), k in zip(factors, ks):
            Q, s, _ = torch.linalg.svd(torch.cat([U, V], dim=-2), full_matrices=False)
            Q, s = Q[..., :k], s[..., :k]
            parts += [Q.flatten(-2), s.log() - shift[:, None], s.new_zeros(*s.shape[:-1], k * (k - 1) // 2)]
        return cls(model, ks, L), torch.cat(parts, dim=-1)

    # -- the state ----------------------------------------------------------------------------------------
    def unpack(self, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """[(Q [..., n, k], l [..., k], R [..., k, k] unit upper triangular)] per pair, batched over y's leading
        dimensions."""
        out, off = [], 0
        lead = y.shape[:-1]
        for (a, b, _), k in zip(self.shapes, self.ks):
            n = a + b
            Q = y[..., off : off + n * k].reshape(*lead, n, k)
            off += n * k
            l = y[..., off : off + k]
            off += k
            m = k * (k - 1) // 2
            R = torch.eye(k, dtype=y.dtype, device=y.device) + (y[..., off : off + m] @ _upper(k, y)).reshape(*lead, k, k)
            off += m
            out.append((Q, l, R))
        return out

    def _graded(self, l: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """G = diag(e^l) R (entries below float64's range underflow to 0, as they must)."""
        return torch.exp(l)[..., :, None] * R

    def factor_pairs(self, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(U, V) = (Q_U G, Q_V G) per pair, zero-padded to r columns: W = Q G itself."""
        out = []
        for (Q, l, R), (a, _, r) in zip(self.unpack(y), self.shapes):
            G = self._graded(l, R)
            out.append((_pad(Q[..., :a, :] @ G, r), _pad(Q[..., a:, :] @ G, r)))
        return out

    def theta(self, y: torch.Tensor) -> torch.Tensor:
        """A parameter vector with the state's products (the factors W = Q G)."""
        return self.model.join_factors(self.factor_pairs(y))

    def products(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """M_p = (Q_U G)(Q_V G)^T per pair."""
        return tuple(U @ V.transpose(-1, -2) for U, V in self.factor_pairs(y))

    def log_sv(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """log singular values of every product [..., min(a, b)], for display at every scale: from the float64
        SVD of M where a value is above RESOLVED x the largest; below, the graded estimate
        2 l_j + log|Ra_jj| + log|Rb_jj| (modes sorted by size, Ra, Rb the QR factors of their U and V halves),
        which is a mode's size to a factor of order one; -inf beyond the number of modes."""
        out = []
        for (Q, l, _), (a, b, _), M in zip(self.unpack(y), self.shapes, self.products(y)):
            m = min(a, b)
            sv = torch.linalg.svdvals(M)[..., :m]
            order = torch.argsort(l, dim=-1, descending=True)
            ls = torch.gather(l, -1, order)
            Qs = torch.gather(Q, -1, order[..., None, :].expand_as(Q))
            ra = torch.linalg.qr(Qs[..., :a, :])[1].diagonal(dim1=-2, dim2=-1).abs()
            rb = torch.linalg.qr(Qs[..., a:, :])[1].diagonal(dim1=-2, dim2=-1).abs()
            j = min(m, ls.shape[-1], ra.shape[-1], rb.shape[-1])
            est = torch.full_like(sv, -math.inf)
            est[..., :j] = 2 * ls[..., :j] + ra[..., :j].clamp_min(1e-300).log() + rb[..., :j].clamp_min(1e-300).log()
            out.append(torch.where(sv > RESOLVED * sv[..., :1], sv.clamp_min(1e-300).log(), est))
        return tuple(out)

    # -- the ODE ------------------------------------------------------------------------------------------
    @property
    def full_gamma(self) -> bool:
        """Every pair has r >= min(a, b), so Gamma_p itself is one gradient away (``gammas``)."""
        return all(r >= min(a, b) for a, b, r in self.shapes)

    def _products1(self, y: torch.Tensor) -> list[torch.Tensor]:
        return list(self.products(y))

    def gammas(self, Ms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Gamma_p = dL/dM_p at the products Ms (one run): dL/dU at (U, V) = ([M, 0], [I, 0]) is Gamma [I, 0]
        when r >= b (else dL/dV at ([I, 0], [M^T, 0]) is Gamma^T [I, 0]); one gradient for every pair."""
        facs = []
        for M, (a, b, r) in zip(Ms, self.shapes):
            if r >= b:
                facs.append((_pad(M, r), _pad(torch.eye(b, dtype=M.dtype, device=M.device), r)))
            else:
                facs.append((_pad(torch.eye(a, dtype=M.dtype, device=M.device), r), _pad(M.T, r)))
        g = self.model.factors(grad(self.model.loss_params)(self.model.join_factors(facs)))
        return [gu[:, :b] if r >= b else gv[:, :a].T for (gu, gv), (a, b, r) in zip(g, self.shapes)]

    def _alg(self, y: torch.Tensor, sides: list[tuple[torch.Tensor, torch.Tensor]], L: torch.Tensor) -> torch.Tensor:
        """The right-hand side from (Gamma Q_V, Gamma^T Q_U) per pair: the algebra of the module docstring."""
        out = []
        for (Q, l, R), (GQv, GtQu) in zip(self.unpack(y), sides):
            k = Q.shape[-1]
            AQ = -L * torch.cat([GQv, GtQu], dim=0)
            H = Q.T @ AQ
            H = (H + H.T) / 2
            T = torch.triu(H) + torch.triu(H, 1)
            # Orthonormality is invariant, not attracting: E = Q^T Q - I obeys E' = -(E T + T^T E), which grows
            # at -2 H_ii for a shrinking mode (rates ~ L: full-attention at alpha = exp(-1e4) lost it at tau 1.1).
            # The term -kappa/2 Q E vanishes on E = 0 (the flow is unchanged) and makes it attracting at rate
            # kappa = 2 max(0, -min H_ii) + 1 (THEORY.md §8.1; + L instead of + 1 cost 1.6x the steps there).
            E = Q.T @ Q - torch.eye(k, dtype=Q.dtype, device=Q.device)
            kappa = 2 * torch.cat([-torch.diagonal(H), H.new_zeros(1)]).max() + 1.0  # (a pair may have no mode)
            dQ = AQ - Q @ T - 0.5 * kappa * (Q @ E)
            scaled = T * torch.exp(l[None, :] - l[:, None])  # T_im e^{l_m - l_i}, m >= i
            dR = torch.triu(scaled, 1) @ R
            iu = torch.triu_indices(k, k, 1, device=y.device)
            out += [dQ.reshape(-1), torch.diagonal(H), dR[iu[0], iu[1]]]
        return torch.cat(out)

    def _alg_gamma(self, y: torch.Tensor, Gs: list[torch.Tensor], L: torch.Tensor) -> torch.Tensor:
        sides = [(G @ Q[a:], G.T @ Q[:a]) for (Q, _, _), G, (a, _, _) in zip(self.unpack(y), Gs, self.shapes)]
        return self._alg(y, sides, L)

    def sides_from_gradients(self, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(Gamma Q_V, Gamma^T Q_U) per pair from two factorisations of the same products (one run):
        dL/dU at (Q_U G G^T, Q_V) and dL/dV at (Q_U, Q_V G G^T), G = diag(e^l) R (module docstring)."""
        side_u, side_v = [], []
        for (Q, l, R), (a, _, r) in zip(self.unpack(y), self.shapes):
            G = self._graded(l, R)
            GG = G @ G.T
            side_u.append((_pad(Q[:a] @ GG, r), _pad(Q[a:], r)))
            side_v.append((_pad(Q[:a], r), _pad(Q[a:] @ GG, r)))
        g = vmap(grad(self.model.loss_params))(torch.stack([self.model.join_factors(side_u),
                                                             self.model.join_factors(side_v)]))
        gu, gv = self.model.factors(g[0]), self.model.factors(g[1])
        return [(gu[p][0][:, :k], gv[p][1][:, :k]) for p, k in enumerate(self.ks)]

    def _rhs1(self, y: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        if self.full_gamma:
            return self._alg_gamma(y, self.gammas(self._products1(y)), L)
        return self._alg(y, self.sides_from_gradients(y), L)

    def rhs(self, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return vmap(self._rhs1)(y, self.L[idx])

    def _mode_columns(self) -> list[torch.Tensor]:
        """The state entries of every mode i (its Q column, l_i and row i of R, which G scales by e^{l_i}), in
        the order of ``_log_sizes``."""
        cols, off = [], 0
        for (a, b, _), k in zip(self.shapes, self.ks):
            n = a + b
            iu = torch.triu_indices(k, k, 1)
            for i in range(k):
                row = (iu[0] == i).nonzero().squeeze(1) + off + (n + 1) * k
                cols.append(torch.cat([torch.arange(n) * k + i + off, torch.tensor([off + n * k + i]), row]))
            off += (n + 1) * k + k * (k - 1) // 2
        return cols

    def jac(self, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The matrix of the W-method (THEORY.md §8). With every Gamma_p one gradient away (``full_gamma``):
        the Jacobian of the algebra at fixed Gamma (no model call; it holds the stiff rotation of every mode
        towards its direction), plus, in the columns of the modes whose weight in the products is not small
        (L e^{2 l_i} >= ``jac_floor``, set by :func:`with_jacobian_for`), the change of Gamma through them: one
        forward-over-reverse pass per such column, none for a dormant mode. The columns left out are small,
        non-stiff terms L e^{2 l_i} dGamma/dM of dormant modes. Otherwise the exact Jacobian by forward mode."""
        L = self.L[idx]
        if not self.full_gamma:
            return vmap(jacfwd(self._rhs1))(y, L)
        Gs = vmap(lambda y1: self.gammas(self._products1(y1)))(y)
        J = vmap(jacfwd(self._alg_gamma))(y, Gs, L)
        keep = torch.exp(2 * self._log_sizes(y)) * L[:, None] >= self.jac_floor
        modes = self._mode_columns()
        sets, group = torch.unique(keep, dim=0, return_inverse=True)
        for g, mask in enumerate(sets):
            if not bool(mask.any()):
                continue
            cols = torch.cat([modes[i] for i in mask.nonzero().squeeze(1).tolist()]).to(y.device)
            rows = (group == g).nonzero().squeeze(1)

            def via_gamma(v, y1, L1):
                moved = self.gammas(self._products1(y1.index_put((cols,), v)))
                return self._alg_gamma(y1, moved, L1)

            extra = vmap(jacfwd(via_gamma))(y[rows][:, cols], y[rows], L[rows])
            J[rows[:, None, None], torch.arange(J.shape[1], device=y.device)[:, None], cols] += extra
        return J

    def misorder(self, y: torch.Tensor) -> torch.Tensor:
        """max over pairs and m > i of l_m - l_i at states y [..., size]: O(1) while Gram-Schmidt order keeps the
        modes graded; large means R's entries e^{l_m - l_i} R carry that factor and lose digits (MISORDER_LIMIT)."""
        out = torch.full(y.shape[:-1], -math.inf, dtype=y.dtype, device=y.device)
        for _, l, _ in self.unpack(y):
            k = l.shape[-1]
            if k > 1:
                iu = torch.triu_indices(k, k, 1, device=y.device)
                out = torch.maximum(out, (l[..., iu[1]] - l[..., iu[0]]).amax(-1))
        return out

    def _log_sizes(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([l for _, l, _ in self.unpack(y)], dim=-1)

    def max_step(self, y: torch.Tensor, f: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The reduced flow's step cap (THEORY.md §3) on the modes' sizes q = 2 l (log of a mode's weight in
        the products): no growing q below ONSET_LEVEL passes it in one step, none above grows by more than
        ONSET_GROWTH."""
        return onset_cap(2 * self._log_sizes(y), 2 * self._log_sizes(f))


@dataclass(frozen=True)
class PairTrajectory:
    """B runs on a shared grid of rescaled times tau [T]: per product p, singular values ``sv[p]`` [B, T, m_p]
    (float64 SVD of M) and their exact logarithms ``log_sv[p]`` (graded where float64 cannot hold them), the
    products ``products[p]`` [B, T, a, b]; ``loss`` [B, T]; ``state`` [B, T, size] of the lifted flow (None for
    a run in theta); gradient and Jacobian evaluations and a :class:`Status` per run; ``method`` names how it
    was integrated."""

    method: str
    log_inv_alpha: torch.Tensor
    tau: torch.Tensor
    sv: tuple[torch.Tensor, ...]
    log_sv: tuple[torch.Tensor, ...]
    products: tuple[torch.Tensor, ...]
    loss: torch.Tensor
    nfev: torch.Tensor
    njev: torch.Tensor
    status: tuple[Status, ...]
    state: torch.Tensor | None = None
    rtol: float | None = None
    atol: float | None = None
    misorder: torch.Tensor | None = None  # [B]: max over the run of l_m - l_i, m > i (grading, ``LiftedFlow``)

    @property
    def ok(self) -> bool:
        return all(s is Status.SUCCESS for s in self.status)

    def message(self) -> str:
        bad = [(b, s) for b, s in enumerate(self.status) if s is not Status.SUCCESS]
        return "; ".join(f"run {b}: {s.value} ({s.message})" for b, s in bad)


def _grid_values(flow: LiftedFlow, states: torch.Tensor):
    """Products, singular values, their logs and the loss at states [B, T, size]."""
    B, T, S = states.shape
    flat = states.reshape(B * T, S)
    finite = torch.isfinite(flat).all(-1)
    safe = torch.where(finite[:, None], flat, flow_fill(flow, flat))
    prods = flow.products(safe)
    logs = flow.log_sv(safe)
    loss = torch.cat([vmap(flow.model.loss_params)(chunk) for chunk in flow.theta(safe).split(512)])
    nan = torch.tensor(math.nan, dtype=F64, device=flat.device)

    def shape(x, tail):
        x = torch.where(finite.reshape(-1, *([1] * len(tail))), x, nan)
        return x.reshape(B, T, *tail).cpu()

    sv = tuple(shape(torch.linalg.svdvals(M)[..., : min(M.shape[-2:])], (min(M.shape[-2:]),)) for M in prods)
    return (tuple(shape(M, tuple(M.shape[-2:])) for M in prods), sv,
            tuple(shape(x, (x.shape[-1],)) for x in logs), shape(loss, ()))


def flow_fill(flow: LiftedFlow, like: torch.Tensor) -> torch.Tensor:
    """A finite stand-in state (orthonormal Q, l = 0, R = I) for rows past a failed run's end (their values become NaN)."""
    parts = []
    for (a, b, _), k in zip(flow.shapes, flow.ks):
        eye = torch.eye(a + b, k, dtype=F64, device=like.device)
        parts += [eye.flatten().expand(like.shape[0], -1), like.new_zeros(like.shape[0], k + k * (k - 1) // 2)]
    return torch.cat(parts, dim=-1)


def with_jacobian_for(flow: LiftedFlow, solver: SolverConfig) -> LiftedFlow:
    """The flow whose ``jac`` suits ``solver.method``: the W-method (ROS34PW2) keeps its order with any matrix,
    so its matrix leaves out the change of Gamma through modes with L e^{2 l} < JAC_ACTIVE (non-stiff terms);
    Rodas4 needs the Jacobian, so only the terms below its error tolerance are left out (L e^{2 l} <
    NEGLIGIBLE_COLUMN atol / L, the reduced flow's rule, THEORY.md §3)."""
    if solver.method == "ros34pw2":
        return replace(flow, jac_floor=JAC_ACTIVE)
    return replace(flow, jac_floor=NEGLIGIBLE_COLUMN * solver.atol / float(flow.L.max()))


def integrate_lifted(flow: LiftedFlow, y0: torch.Tensor, horizon: float, solver: SolverConfig = SolverConfig(),
                     n_out: int = 401, t0: float = 0.0, progress=None
                     ) -> tuple[PairTrajectory, rosenbrock.Solution]:
    """Integrate the lifted flow from states y0 [B, size] at rescaled time t0 to ``horizon``, sampled on n_out
    times (rows past a failed run's last accepted step are NaN); with the solver's accepted steps, whose Hermite
    interpolant is the dense output (``flow._dense``)."""
    flow = with_jacobian_for(flow, solver)
    sol = rosenbrock.solve(flow.rhs, flow.jac, y0, horizon - t0, rtol=solver.rtol, atol=solver.atol,
                           max_steps=solver.max_steps, progress=progress, max_step=flow.max_step,
                           method=rosenbrock.METHODS[solver.method], jacobian_policy=JACOBIAN_POLICY)
    tau = torch.linspace(t0, horizon, n_out, dtype=F64, device=y0.device)
    states = _dense(sol, tau - t0)
    prods, sv, logs, loss = _grid_values(flow, states)
    misorder = torch.nan_to_num(flow.misorder(states), nan=-math.inf).amax(-1)
    return PairTrajectory("lifted", flow.L.cpu(), tau.cpu(), sv, logs, prods, loss, sol.nfev.cpu(),
                          sol.njev.cpu(), sol.status, states.cpu(), solver.rtol, solver.atol, misorder.cpu()), sol


def solve_lifted(model, theta0: torch.Tensor, log_inv_alphas, horizon: float,
                 solver: SolverConfig = SolverConfig(), n_out: int = 401, progress=None
                 ) -> tuple[LiftedFlow, PairTrajectory]:
    """The flow from alpha_b theta0 (theta0 [n] of unit scale, shared) for every L_b in ``log_inv_alphas`` to
    rescaled time ``horizon``: one batched Rosenbrock solve whose cost does not grow with log(1/alpha)."""
    L = list(log_inv_alphas)
    th = theta0.to(model.device, F64).expand(len(L), -1)
    flow, y0 = LiftedFlow.initial_state(model, model.factors(th), L)
    return flow, integrate_lifted(flow, y0, horizon, solver, n_out, progress=progress)[0]
