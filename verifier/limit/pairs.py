"""The alpha -> 0 limit of full-weight (matrix-pair) models: saddle to saddle, one rank per jump (THEORY.md §8).

**Greedy limit** (``greedy_limit``, in the style of Kunin et al.'s alternating gradient flows), for any model
whose loss reads its factor pairs (U_p [a, r], V_p [b, r]) only through the products M_p = U_p V_p^T. At
stage k the products sit at a stationary point M^k with gradients Gamma_p = dL/dM_p. The dormant part of pair
p (its columns outside the active modes, of size ~alpha) has a graded spectrum: its j-th singular value is
alpha^{1 - b_pj}, and on a plateau it grows at the rate of the j-th singular value sigma_j(Gamma_p), so
b_pj grows at sigma_j(Gamma_p) per unit of rescaled time (the exterior-power argument of §8: the top-j volume
of the dormant columns grows at sigma_1 + ... + sigma_j, whatever the basis). Stage A: the next jump is the
pair p whose top dormant mode reaches b = 1 first, after Delta_k = min_p (1 - b_p1) / sigma_1(Gamma_p); every b
moves by sigma_j Delta_k; the new mode leaves the dormant list and the others move up one rank. Stage B: from
M^k with the new mode switched on at size eps along the top singular pair of -Gamma_p (balanced factors, every
dormant column exactly zero), the gradient flow of the factors (the lifted flow in plain time,
``dynamics/pair_flow.py``) runs to a stationary point M^{k+1}. The jump raises the rank of M_p by one.

**Closed forms.** Two-layer linear networks f(x) = M x with square loss (a model whose loss is
1/2 tr(M Sxx M^T) - tr(M Syx^T) + c, detected by ``linear_network``): the plateaus are
M^k = P_{U_k} Syx Sxx^{-1} with U_k the top-k eigenvectors of Syx Sxx^{-1} Syx^T (eigenvalues mu), losses
L(0) - 1/2 sum_{i <= k} mu_i, and the jump times solve sum_{i < k} sigma_{i, k-1-i} (T_{i+1} - T_i) = 1 with
sigma_{i, j} the j-th singular value of (I - P_{U_i}) Syx (Kunin et al.'s Conjecture 4.1; T_k = 1 / sigma_k(Syx)
when Sxx commutes with Syx^T Syx, the case Saxe et al. and Gidel et al. prove). A model may also carry its own
closed form (:func:`linear_attention_limit`, the linear-attention preset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch.func import grad, vmap

from ..config import SolverConfig
from ..dynamics.pair_flow import LiftedFlow, exact_path, integrate_lifted
from ..models.linear_attention import LinearAttention

F64 = torch.float64
# A gradient singular value at or below GTOL_REL * max(1, sigma_1(Gamma at 0)) counts as zero (no growth).
GTOL_REL = 1e-8
# Two jump times whose relative margin (Delta_runner-up - Delta) / Delta is below TIE_MARGIN are one jump: the
# limit itself says the two ranks rise together (a tie, e.g. two equal singular values of the target).
TIE_MARGIN = 1e-6
# Stage B: the new mode's share of the product at the start (the limit is eps -> 0), the flow's tolerances,
# the gradient (relative to max(1, |Gamma(0)|)) below which it has converged, and its longest total time.
STAGE_B_EPS = 1e-6
STAGE_B_SOLVER = SolverConfig(rtol=1e-6, atol=1e-6, max_steps=3000, method="ros34pw2")
STAGE_B_GTOL = 1e-9
STAGE_B_MAX_TIME = 1e6
# A singular value of a product at or below RANK_TOL * max(1, its largest) is zero: a mode that shrank there
# in stage B left (the rank fell), which the greedy limit does not follow further (status ``mode-left``).
RANK_TOL = 1e-6


class LimitStatus(str, Enum):
    """Why the limit stopped."""

    COMPLETE = "complete"  # no dormant mode can grow: every gradient singular value is zero
    MAX_STAGES = "max_stages"
    STAGE_B_FAILED = "stage_b_failed"  # a stage B found no stationary point
    MODE_LEFT = "mode-left"  # a mode shrank to zero in stage B: the rank fell; not followed further


@dataclass(frozen=True)
class PairStage:
    """Stage k: the plateau after the k-th jump, at rescaled time T (0 for stage 0). ``product``: which product
    gained a rank at T (None at stage 0); ``products``: the stationary point M^k_p (CPU); ``margin``: the
    relative margin of the jump's argmin ((runner-up - Delta) / Delta; inf with no runner-up), ``runner_up``
    its description; ``rates``: the singular values of -Gamma_p at M^k (the growth rates of the dormant
    modes on this plateau)."""

    k: int
    T: float
    product: int | None
    products: tuple[torch.Tensor, ...]
    loss: float
    margin: float | None = None
    runner_up: str | None = None
    rates: tuple[tuple[float, ...], ...] = ()

    def singular_values(self) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(torch.linalg.svdvals(M).tolist()) for M in self.products)

    def ranks(self) -> tuple[int, ...]:
        out = []
        for M in self.products:
            s = torch.linalg.svdvals(M)
            out.append(int((s > RANK_TOL * max(1.0, float(s.max()) if len(s) else 1.0)).sum()))
        return tuple(out)


@dataclass(frozen=True)
class Jump:
    """The k-th jump of the limit: singular value ``index`` (1-based) of product ``product`` rises at T."""

    k: int
    T: float
    product: int
    index: int
    margin: float | None


@dataclass(frozen=True)
class PairLimit:
    """The stages of the limit in time order. ``kind``: "closed-form" or "greedy"; ``basis``: "proven",
    "derived" or "conjecture" (THEORY.md §8 says which holds where), ``reference``: the sentence a verdict
    quotes; ``status`` why it stopped."""

    stages: tuple[PairStage, ...]
    status: LimitStatus
    message: str
    kind: str
    basis: str
    reference: str
    names: tuple[str, ...]
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "status", LimitStatus(self.status))

    def jumps(self) -> list[Jump]:
        seen = [0] * len(self.names)
        out = []
        for s in self.stages[1:]:
            seen[s.product] += 1
            out.append(Jump(s.k, s.T, s.product, seen[s.product], s.margin))
        return out

    def ties(self) -> list[int]:
        """Stages k whose jump ties with another (margin < TIE_MARGIN: with its runner-up, or a jump of zero
        length after the previous one, as Algorithm 1 counts a Delta of 0): the limit says they merge."""
        return [s.k for s in self.stages[1:] if s.margin is not None and s.margin < TIE_MARGIN]

    @property
    def last_T(self) -> float:
        return self.stages[-1].T

    def to_dict(self) -> dict:
        def num(x):
            return x if x is None or math.isfinite(x) else ("inf" if x > 0 else "-inf")

        return {"kind": self.kind, "basis": self.basis, "reference": self.reference, "status": self.status.value,
                "message": self.message, "products": list(self.names),
                "stages": [{"k": s.k, "T": s.T, "product": None if s.product is None else self.names[s.product],
                            "loss": s.loss, "margin": num(s.margin), "runner_up": s.runner_up,
                            "singular_values": {n: list(v) for n, v in zip(self.names, s.singular_values())}}
                           for s in self.stages]}

    def table(self) -> str:
        """One line per stage: time, the product that gained a rank, loss, margin, singular values."""
        head = f"{'k':>3} {'T_k':>10} {'jump':>16} {'loss':>11} {'margin':>9}  singular values"
        lines = [f"limit: {self.kind} ({self.basis}): {self.reference}", head, "-" * (len(head) + 30)]
        jumps = {j.k: j for j in self.jumps()}
        for s in self.stages:
            margin = "-" if s.margin is None else ("inf" if math.isinf(s.margin) else f"{s.margin:.3g}")
            jump = "-" if s.k not in jumps else f"s{jumps[s.k].index}({self.names[jumps[s.k].product]})"
            svs = "; ".join(f"{n}: " + ", ".join(f"{v:.4g}" for v in sv if v > RANK_TOL * max(1.0, sv[0]))
                            for n, sv in zip(self.names, s.singular_values()))
            lines.append(f"{s.k:>3} {s.T:>10.5g} {jump:>16} {s.loss:>11.4e} {margin:>9}  {svs}")
        lines.append(f"status: {self.status.value} ({self.message})")
        return "\n".join(lines)


# -- gradients and losses at given products ------------------------------------------------------------------
def _balanced(M: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Balanced factors (X sqrt(S), Y sqrt(S)) of M's nonzero part, padded to r columns, and its rank."""
    X, S, Yh = torch.linalg.svd(M, full_matrices=False)
    k = int((S > RANK_TOL * max(1.0, float(S.max()) if len(S) else 1.0)).sum())
    if k > r:
        raise ValueError(f"a product of rank {k} does not fit {r} columns")
    root = S[:k].sqrt()
    U = torch.cat([X[:, :k] * root, M.new_zeros(M.shape[0], r - k)], 1)
    V = torch.cat([Yh[:k].T * root, M.new_zeros(M.shape[1], r - k)], 1)
    return U, V, k


def loss_at(model, Ms) -> float:
    facs = [_balanced(M, r)[:2] for M, (_, _, r) in zip(Ms, model.factor_shapes)]
    return float(model.loss_params(model.join_factors(facs)))


def gradients(model, Ms) -> list[torch.Tensor]:
    """Gamma_p = dL/dM_p at the products Ms, for every pair. dL/dU at factors (U, V) with U V^T = M_p is
    Gamma_p V: with U = [X S, 0] and V = [Y, C] (Y the row space of M_p, C orthonormal directions of its
    complement, as many as the r - rank free columns hold) it is Gamma_p [Y, C]; the complement is covered in
    ceil((b - rank) / (r - rank)) factor points, all in one vmapped gradient call. A pair with no free column
    has Gamma_p known on its row space only (its complement would need a column it does not have)."""
    shapes = model.factor_shapes
    plans = []
    for M, (a, b, r) in zip(Ms, shapes):
        X, S, Yh = torch.linalg.svd(M)
        k = int((S > RANK_TOL * max(1.0, float(S.max()) if len(S) else 1.0)).sum())
        Y = Yh.T
        free = r - k
        C = Y[:, k:]
        groups = [C[:, i : i + free] for i in range(0, C.shape[1], free)] if free > 0 else []
        plans.append((X[:, :k] * S[:k], Y[:, :k], groups, k))
    count = max([1] + [len(g) for *_, g, _ in plans])
    points = []
    for t in range(count):
        facs = []
        for (XS, Yk, groups, k), (a, b, r) in zip(plans, shapes):
            Cg = groups[t] if t < len(groups) else Yk.new_zeros(b, 0)
            U = torch.cat([XS, XS.new_zeros(a, r - k)], 1)
            V = torch.cat([Yk, Cg, Yk.new_zeros(b, r - k - Cg.shape[1])], 1)
            facs.append((U, V))
        points.append(model.join_factors(facs))
    g = vmap(grad(model.loss_params))(torch.stack(points))
    out = []
    for p, ((XS, Yk, groups, k), (a, b, r)) in enumerate(zip(plans, shapes)):
        gu = [model.factors(g[t])[p][0] for t in range(count)]
        G = gu[0][:, :k] @ Yk.T
        for t, Cg in enumerate(groups):
            G = G + gu[t][:, k : k + Cg.shape[1]] @ Cg.T
        out.append(G)
    return out


# -- the greedy limit -----------------------------------------------------------------------------------------
def _rates(G: torch.Tensor, slots: int) -> list[float]:
    s = torch.linalg.svdvals(G).tolist()
    return (s + [0.0] * slots)[:slots]


def stage_b(model, Ms, new: int, G: torch.Tensor, scale: float, eps: float = STAGE_B_EPS):
    """From the products Ms with a mode of size eps switched on in pair ``new`` along the top singular pair of
    -G (balanced factors), the flow of the factors in plain time, in chunks of doubling length (the first
    twice the time eps needs to grow to order one), until the factors' gradient is at most STAGE_B_GTOL *
    scale. Returns (products, ok, why)."""
    X, S, Yh = torch.linalg.svd(-G)
    x, y, sigma = X[:, 0], Yh[0], float(S[0])
    facs, ks = [], []
    for p, (M, (a, b, r)) in enumerate(zip(Ms, model.factor_shapes)):
        U, V, k = _balanced(M, r)
        if p == new:
            U, V = U.clone(), V.clone()
            U[:, k], V[:, k] = math.sqrt(eps) * x, math.sqrt(eps) * y
            k += 1
        facs.append((U[None], V[None]))
        ks.append(k)
    flow, y0 = LiftedFlow.initial_state(model, facs, [1.0], [0.0], ks)
    chunk, total = math.log(1.0 / eps) / sigma, 0.0
    g = grad(model.loss_params)
    while total < STAGE_B_MAX_TIME:
        traj = integrate_lifted(flow, y0, chunk, STAGE_B_SOLVER, n_out=2)[0]
        if not traj.ok:
            return Ms, False, f"the flow stopped: {traj.message()}"
        y0 = traj.state[:, -1].to(y0.device)
        total += chunk
        if float(g(flow.theta(y0)[0]).abs().max()) <= STAGE_B_GTOL * scale:
            return [P[0] for P in flow.products(y0)], True, ""
        chunk *= 2.0
    return Ms, False, f"no stationary point within flow time {STAGE_B_MAX_TIME:g}"


def greedy_limit(model, eps: float = STAGE_B_EPS, max_stages: int | None = None, progress=None) -> PairLimit:
    """The greedy saddle-to-saddle limit of a factor-pair model (module docstring; THEORY.md §8)."""
    why = exact_path(model)
    if why is not None:
        raise ValueError(f"no greedy limit: {why}")
    shapes = tuple(model.factor_shapes)
    names = tuple(model.product_names())
    dev = model.device
    Ms = [torch.zeros(a, b, dtype=F64, device=dev) for a, b, _ in shapes]
    Gs = gradients(model, Ms)
    scale = max([1.0] + [float(torch.linalg.svdvals(G)[0]) for G in Gs])
    gtol = GTOL_REL * scale
    dormant = [[0.0] * min(r, a, b) for a, b, r in shapes]  # b_pj of the dormant modes, largest first
    max_stages = sum(len(d) for d in dormant) if max_stages is None else max_stages
    rates = [_rates(G, len(d)) for G, d in zip(Gs, dormant)]
    stages = [PairStage(0, 0.0, None, tuple(M.cpu() for M in Ms), loss_at(model, Ms), None, None,
                        tuple(tuple(r) for r in rates))]
    status, message = LimitStatus.COMPLETE, "no dormant mode can grow (every gradient singular value is zero)"
    T = 0.0
    while True:
        cands = sorted((max(0.0, 1.0 - d[j]) / rt[j], p, j) for p, (d, rt) in enumerate(zip(dormant, rates))
                       for j in range(min(2, len(d))) if rt[j] > gtol)
        if not cands:
            break
        if len(stages) > max_stages:
            status, message = LimitStatus.MAX_STAGES, f"stopped after {max_stages} jumps"
            break
        delta, p, _ = cands[0]
        margin = math.inf
        runner = None
        if len(cands) > 1:
            second, q, j = cands[1]
            margin = (second - delta) / delta if delta > TIE_MARGIN * (T + delta) else 0.0
            runner = f"sigma_{stages[-1].ranks()[q] + j + 1}({names[q]})"
        T += delta
        for d, rt in zip(dormant, rates):
            for j in range(len(d)):
                d[j] += rt[j] * delta
        label = f"full-weight limit: stage {len(stages)} (T={T:.4g}, {names[p]})"
        if progress is not None:
            progress(label, None)
        Ms_new, ok, why = stage_b(model, Ms, p, Gs[p], scale, eps)
        if not ok:
            status, message = LimitStatus.STAGE_B_FAILED, f"stage {len(stages)} ({names[p]}): {why}"
            break
        dormant[p].pop(0)
        before = stages[-1].ranks()
        Ms = Ms_new
        Gs = gradients(model, Ms)
        rates = [_rates(G, len(d)) for G, d in zip(Gs, dormant)]
        stage = PairStage(len(stages), T, p, tuple(M.detach().cpu() for M in Ms), loss_at(model, Ms), margin,
                          runner, tuple(tuple(r) for r in rates))
        stages.append(stage)
        after = stage.ranks()
        want = tuple(n + (1 if i == p else 0) for i, n in enumerate(before))
        if after != want:
            status, message = (LimitStatus.MODE_LEFT, f"stage {stage.k}: the ranks went from {before} to {after} "
                               f"instead of {want} (a mode shrank to zero); the greedy limit stops here")
            break
    return PairLimit(tuple(stages), status, message, "greedy", "conjecture",
                     "the greedy saddle-to-saddle limit (alternating gradient flows; a conjecture beyond linear "
                     "networks, THEORY.md §8)", names)


# -- two-layer linear networks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearNetwork:
    """L(M) = 1/2 tr(M Sxx M^T) - tr(M Syx^T) + loss0 - (for ``transposed``, the same in M^T)."""

    Sxx: torch.Tensor
    Syx: torch.Tensor
    loss0: float
    transposed: bool


def linear_network(model, rel: float = 1e-9) -> LinearNetwork | None:
    """The (Sxx, Syx) of a one-pair model whose loss is that of a two-layer linear network with square loss
    (Gamma(M) = M Sxx - Syx, or (S M - B) for the transposed layout), measured from gradients at zero and at
    b (or a) rank-one probes and confirmed at two random products (gradient and loss, to ``rel``); None
    otherwise (then the greedy limit applies)."""
    shapes = tuple(model.factor_shapes)
    if len(shapes) != 1 or exact_path(model) is not None:
        return None
    a, b, r = shapes[0]
    if a * b > 4096:
        return None
    dev = model.device
    zero = torch.zeros(a, b, dtype=F64, device=dev)
    G0 = gradients(model, [zero])[0]
    L0 = loss_at(model, [zero])
    gen = torch.Generator().manual_seed(0)
    tests = [torch.randn(a, 1, generator=gen, dtype=F64).to(dev) @ torch.randn(1, b, generator=gen, dtype=F64).to(dev)
             for _ in range(2)]
    for transposed in (False, True):
        n = a if transposed else b
        S = torch.zeros(n, n, dtype=F64, device=dev)
        for i in range(n):
            E = torch.zeros(a, b, dtype=F64, device=dev)
            if transposed:
                E[i, 0] = 1.0
                S[:, i] = (gradients(model, [E])[0] - G0)[:, 0]
            else:
                E[0, i] = 1.0
                S[:, i] = (gradients(model, [E])[0] - G0)[0]
        ok = torch.allclose(S, S.T, rtol=rel, atol=rel * float(S.abs().max()))
        for M in tests:
            pred = (S @ M if transposed else M @ S) + G0
            G = gradients(model, [M])[0]
            quad = L0 + float((G0 * M).sum()) + 0.5 * float((M * (S @ M if transposed else M @ S)).sum())
            ok = ok and bool((G - pred).abs().max() <= rel * max(1.0, float(G.abs().max())))
            ok = ok and abs(loss_at(model, [M]) - quad) <= rel * max(1.0, abs(quad))
        if ok and float(torch.linalg.eigvalsh(S)[0]) > 1e-12 * float(S.abs().max()):
            return LinearNetwork(S, -(G0.T if transposed else G0), L0, transposed)
    return None


def linear_network_limit(net: LinearNetwork, width: int, names: tuple[str, ...]) -> PairLimit:
    """The closed-form limit of a two-layer linear network of hidden width ``width`` (module docstring)."""
    Sxx, Syx = net.Sxx.cpu(), net.Syx.cpu()
    ols = Syx @ torch.linalg.inv(Sxx)
    Omega = ols @ Syx.T
    mu, Uo = torch.linalg.eigh((Omega + Omega.T) / 2)
    mu, Uo = mu.flip(0), Uo.flip(1)
    gtol = GTOL_REL * max(1.0, float(torch.linalg.svdvals(Syx)[0]))
    K = min(width, int((mu > gtol).sum()))
    proj = [Uo[:, :i] @ Uo[:, :i].T for i in range(K + 1)]
    sig = [torch.linalg.svdvals(Syx - P @ Syx).tolist() + [0.0] * (K + 2) for P in proj]
    inc = [0.0] * (K + 2)
    stages = []
    T = 0.0
    commuting = bool(torch.allclose(Sxx @ Syx.T @ Syx, Syx.T @ Syx @ Sxx, atol=1e-10 * max(1.0, float(Sxx.abs().max()))
                                    * max(1.0, float((Syx.T @ Syx).abs().max()))))
    if commuting:  # modes decouple and grow at |Syx^T u_i|: the closed form's mu-order must be the rate order
        rates = torch.linalg.vector_norm(Syx.T @ Uo[:, :K], dim=0)
        if bool((rates[1:] > rates[:-1] * (1 + 1e-9)).any()):
            raise ValueError("the eigenvalues mu of Syx Sxx^-1 Syx^T and the growth rates |Syx^T u_i| are not in the "
                             "same order: the plateaus are not the top-mu projections (use the greedy limit)")
    status, message = LimitStatus.COMPLETE, "every eigenvalue of Syx Sxx^-1 Syx^T is learned (or the width is full)"
    for k in range(K + 1):
        M = proj[k] @ ols
        if net.transposed:
            M = M.T
        margin, runner = None, None
        if k >= 1:
            acc = sum(sig[i][k - 1 - i] * inc[i + 1] for i in range(k - 1))
            if sig[k - 1][0] <= gtol:
                K = k - 1
                break
            inc[k] = max(0.0, (1.0 - acc) / sig[k - 1][0])
            T += inc[k]
            if k < K and sig[k - 1][1] > gtol:  # the next mode, had this plateau gone on
                acc2 = sum(sig[i][k - i] * inc[i + 1] for i in range(k - 1))
                other = max(0.0, (1.0 - acc2) / sig[k - 1][1])
                margin = (other - inc[k]) / inc[k] if inc[k] > TIE_MARGIN * T else 0.0
                runner = f"sigma_{k + 1}({names[0]})"
            else:
                margin = math.inf
        loss = net.loss0 - 0.5 * float(mu[:k].sum())
        stages.append(PairStage(k, T, None if k == 0 else 0, (M,), loss, margin, runner,
                                ((tuple(sig[k][: max(0, width - k)]),))))
    basis = "proven" if commuting else "derived"
    ref = ("the closed-form limit of a two-layer linear network (Saxe et al. 2014; Gidel et al. 2019: jump times "
           "1/sigma_k(Syx), Sxx commuting with the target)" if commuting else
           "the closed-form limit of a two-layer linear network (plateaus P_Uk Syx Sxx^-1, Baldi-Hornik stationary "
           "points; jump times by the recursion of Kunin et al.'s Conjecture 4.1, derived in THEORY.md §8)")
    return PairLimit(tuple(stages), status, message, "closed-form", basis, ref, names,
                     {"mu": mu.tolist(), "commuting": commuting})


def linear_attention_limit(model: LinearAttention) -> PairLimit:
    """The closed form of :mod:`verifier.models.linear_attention` (its module docstring): mode i (Lambda's
    eigenvalue lambda_i, in decreasing order) jumps at T_i = 1 / lambda_i^2 to m_i = lambda_i / phi_i; at most
    ``heads`` modes."""
    lam, E = torch.linalg.eigh(model.X.cpu())
    lam, E = lam.flip(0), E.flip(1)
    phi = (E.T @ model.Y.cpu() @ E).diagonal()  # Phi = Y shares Lambda's eigenvectors (LinearAttention.build)
    m = lam / phi
    K = min(model.heads, model.D)
    T = [0.0] + [1.0 / float(x) ** 2 for x in lam[:K]]
    stages = []
    for k in range(K + 1):
        M = (E[:, :k] * m[:k]) @ E[:, :k].T
        margin = runner = None
        if k >= 1:
            margin = (T[k + 1] - T[k]) / (T[k] - T[k - 1]) if k < K else math.inf
            runner = f"sigma_{k + 1}(K Q^T)" if k < K else None
        stages.append(PairStage(k, T[k], None if k == 0 else 0, (M,), float(model.loss_of_product(M.to(model.device))),
                                margin, runner, (tuple((lam[k:K] ** 2).tolist()),)))
    return PairLimit(tuple(stages), LimitStatus.COMPLETE, f"{K} heads: {K} principal components learned",
                     "closed-form", "derived",
                     "the closed-form limit of linear attention with separate rank-one key/query heads "
                     "(Zhang et al. 2025; the modes decouple in Lambda's eigenbasis: T_i = 1/lambda_i^2)",
                     model.product_names(), {"eigenvalues": lam.tolist(), "m": m.tolist()})


def full_limit(model, progress=None) -> PairLimit:
    """The limit ``rank-increments`` and ``verifier limit`` use: the model's own closed form if it has one, the
    two-layer linear network's closed form if its loss is one, else the greedy limit."""
    if isinstance(model, LinearAttention):
        return linear_attention_limit(model)
    net = linear_network(model)
    if net is not None:
        try:
            return linear_network_limit(net, model.factor_shapes[0][2], tuple(model.product_names()))
        except ValueError:  # a commuting network whose rate order is not its mu order: the greedy limit follows it
            pass
    return greedy_limit(model, progress=progress)
