"""Check ``rank-increments``: full-weight products learn one rank at a time, along the saddle-to-saddle limit
(the paper's Figure 2 right; outside Theorem 4.5, THEORY.md §6 and §8).

Measurement. Gradient flow of the model's factors from alpha theta0 for every alpha of a ladder, in one batched
solve. Where the loss reads its factor pairs only through the products U V^T (``pair_flow.exact_path``), the
lifted flow (:mod:`verifier.dynamics.pair_flow`): exact at any alpha, its cost flat in log(1/alpha); default
ladder 1e-4, 1e-8, 1e-16. Otherwise the flow of theta itself (:mod:`verifier.dynamics.param_flow`, DOP853),
which float64 limits to alpha >= THETA_FLOOR (default ladder 1e-2, 1e-4, 1e-8). Along it, the singular values of
every product; the limit (:func:`verifier.limit.pairs.full_limit`: a closed form, or the greedy saddle-to-saddle
limit) predicts the jumps (T_k, which singular value of which product rises), the plateau losses and the
products' singular values on every plateau. Jump k is measured at each alpha as the time its singular value
crosses JUMP_LEVEL of its plateau value after the jump (located on the solver's dense output); its error
e_k(alpha) = |tau_k(alpha) - T_k| converges like 1/log(1/alpha) (THEORY.md §8); the fitted jump time is the
intercept of tau_k = T + c / log(1/alpha) over the ladder. Plateau values are read at the middle of each
stage.

Judgement (THEORY.md §8, "rank-increments"). Separation: two consecutive predicted jumps with T_{k+1} - T_k <=
TIE_MARGIN T_{k+1} are one jump by the limit's own word: fail ``jumps-not-separated``. Predicted separate jumps
are resolved when eps_k + eps_{k+1} <= RESOLUTION_FRACTION (T_{k+1} - T_k) (eps: the larger of the error at the
smallest alpha and the fitted C / log(1/alpha) there); an unresolved pair extends the ladder (rungs of
``_ladder.EXTENSION_LOG_INV_ALPHAS``, lifted flow only) and is inconclusive at the cap, never a fail.
Agreement (as theorem-4.5 judges Algorithm 1): every jump-time error at the smallest alpha within TIME_FRACTION
of the shortest predicted stage and not above its value at the largest alpha; the plateau errors within
PLATEAU_TOL. An error above tolerance that still shrinks (rate >= RATE_MIN) extends the ladder; one that stalls
departs from the limit: a fail (``departs-from-limit``) against a closed form, inconclusive
(``departs-from-conjectured-limit``) against the greedy limit, which is a conjecture beyond linear networks.
Without a limit (no exact path, or the limit failed), the model-free rule: consecutive events of the smallest
alpha whose gaps, fitted as Delta + c / log(1/alpha), keep Delta >= LIMIT_GAP_FRACTION x the gap at the
smallest alpha are separate; otherwise they fail ``jumps-not-separated``. Alphas below THETA_FLOOR on a model
with no exact path are inconclusive (``below-float64-resolution``), never judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np
import torch

from ..config import SolverConfig, format_alpha
from ..dynamics import rosenbrock
from ..dynamics.flow import _dense
from ..dynamics.pair_flow import MISORDER_LIMIT, LiftedFlow, PairTrajectory, exact_path, integrate_lifted
from ..dynamics.param_flow import ATOL_FRACTION, ParamTrajectory, growth_rate, solve_param_flow
from ..dynamics.trajectory import Status
from ..figures import Figure, Mark, Series
from ..results import CheckResult, CommonReason, Gate, Judgement, Metric
from . import _ladder
from .registry import register

ID = "rank-increments"
CLAIM = ("Full weights: as alpha -> 0 each jump raises the rank of at most one product (Wq Wk^T, Wv Wo^T, "
         "U V^T) by one, jumps separate in rescaled time, and the flow follows the saddle-to-saddle limit")
LADDER = tuple(math.log(10.0) * e for e in (4, 8, 16))  # the lifted flow: its cost does not grow with L
THETA_LADDER = tuple(math.log(10.0) * e for e in (2, 4, 8))  # the flow of theta: cost ~ L, floor below
# The flow of theta holds a dormant mode of relative size alpha (before the first jump: every weight is ~alpha)
# beside O(1) weights after it; float64 keeps 16 digits, and 4 are needed to follow a mode's growth, so alpha
# must be >= 1e-12 there (THEORY.md §8: the false fail of issue 25 came from alphas 1e-32 and below).
THETA_FLOOR = math.log(1e12)
RANK_FRACTION = 0.1
LIMIT_GAP_FRACTION = 0.5
# Lifted-flow tolerances (rtol, atol; absolute in the log-sizes l): an error e in l moves a jump by
# e / (L sigma) in rescaled time and a plateau value by e relative, far below TIME_FRACTION and PLATEAU_TOL at
# 1e-6; the run's --rtol/--atol replace it when given.
LIFTED_TOLERANCES = (1e-6, 1e-6)
RTOL = 1e-8  # the flow of theta (DOP853)
JUMP_LEVEL = 0.5  # jump k is when its singular value crosses this fraction of its plateau value after the jump
TIME_FRACTION = 0.25  # jump-time tolerance: this fraction of the shortest predicted stage (as theorem-4.5)
PLATEAU_TOL = 1e-2  # plateau loss (relative to L(0)) and singular values (relative to max(1, largest))
RATE_MIN = 0.5  # a shrinking error must shrink at least like L^-RATE_MIN
RESOLUTION_FRACTION = 0.5
TIE_MARGIN = 1e-6
HORIZON_FACTOR = 1.5  # default horizon: this times the last predicted jump
JUDGED_FRACTION = 0.9  # jumps (and plateaus) the limit puts after this fraction of the horizon are not judged
CHUNK = 2.0  # without a limit the horizon grows in chunks of CHUNK / lambda_max(H(0)) (twice the first stage time)
MAX_CHUNKS = 24
SETTLED_LOSS = 1e-2  # a chunk is settled when the loss fell by less than this fraction of the initial loss ...
GROWTH_FLOOR = 1e-6  # ... and no singular value between GROWTH_FLOOR x largest and the level grew 2x
N_OUT_PER_CHUNK = 200
N_OUT = 801


class Reason(str, Enum):
    """rank-increments' failure kinds (docs/THEORY.md §5.0)."""

    JUMPS_NOT_SEPARATED = "jumps-not-separated"  # fail: two rank changes merge into one jump as alpha -> 0
    DEPARTS_FROM_LIMIT = "departs-from-limit"  # fail: the flow does not converge to a closed-form limit
    DEPARTS_FROM_CONJECTURED_LIMIT = "departs-from-conjectured-limit"  # inconclusive: ... to the greedy limit
    BELOW_FLOAT64_RESOLUTION = "below-float64-resolution"  # inconclusive: alpha below the theta flow's floor
    LADDER_EXHAUSTED = "ladder-exhausted"  # inconclusive: undecided at the ladder's cap
    NO_JUMP = "no-jump"  # inconclusive: no singular value crossed the level by the horizon
    LADDER_TOO_SHORT = "ladder-too-short"  # inconclusive: a gap is seen at fewer than two alphas
    SOLVER_FAILED = CommonReason.SOLVER_FAILED.value
    NOTHING_TO_TEST = CommonReason.NOTHING_TO_TEST.value  # the gradient vanishes at zero


@dataclass(frozen=True)
class Event:
    """Singular value ``index`` (1-based) of product ``product`` crossed the level at ``tau``, going ``up``."""

    product: int
    index: int
    up: bool
    tau: float

    @property
    def key(self) -> tuple[int, int, bool]:
        return (self.product, self.index, self.up)


# -- crossings -------------------------------------------------------------------------------------------
def crossings(tau: torch.Tensor, s: torch.Tensor, level: float) -> list[tuple[float, bool]]:
    """Times where s (positive, [T]) crosses ``level``, by linear interpolation of log s; (tau, going up)."""
    logs = torch.log(s.clamp_min(1e-300))
    x = logs - math.log(level)
    out = []
    for k in range(len(s) - 1):
        a, b = float(x[k]), float(x[k + 1])
        if not (math.isfinite(a) and math.isfinite(b)) or (a > 0) == (b > 0):
            continue
        w = a / (a - b)
        out.append((float(tau[k] + w * (tau[k + 1] - tau[k])), b > 0))
    return out


def events(tau: torch.Tensor, sv: tuple[torch.Tensor, ...], level: float) -> tuple[Event, ...]:
    """Every crossing of ``level`` by the j-th singular value of every product, in time order."""
    out = []
    for P, s in enumerate(sv):
        for j in range(s.shape[-1]):
            out += [Event(P, j + 1, up, t) for t, up in crossings(tau, s[:, j], level)]
    return tuple(sorted(out, key=lambda e: e.tau))


@dataclass(frozen=True)
class Dense:
    """The dense output of one lifted solve (its flow, solution, start time): states at any time, for locating
    a crossing to the solver's resolution instead of the output grid's."""

    flow: LiftedFlow
    sol: rosenbrock.Solution
    t0: float

    def singular_values(self, b: int, product: int, taus: torch.Tensor) -> torch.Tensor:
        one = rosenbrock.Solution(self.sol.t[b : b + 1], self.sol.y[b : b + 1], self.sol.f[b : b + 1],
                                  self.sol.count[b : b + 1], self.sol.nfev[b : b + 1], self.sol.njev[b : b + 1],
                                  self.sol.nsteps[b : b + 1], self.sol.status[b : b + 1])
        states = _dense(one, (taus - self.t0).to(self.sol.t.device))[0]
        return torch.linalg.svdvals(self.flow.products(states)[product]).cpu()

    def refine(self, b: int, product: int, index: int, level: float, up: bool, lo: float, hi: float,
               rounds: int = 2, points: int = 65) -> float:
        """The crossing of ``level`` by singular value ``index`` in [lo, hi], located on the dense output
        (``rounds`` times on ``points`` times each: 1/4000 of the grid interval)."""
        for _ in range(rounds):
            taus = torch.linspace(lo, hi, points, dtype=torch.float64)
            s = self.singular_values(b, product, taus)[:, index - 1]
            hits = [t for t, u in crossings(taus, s, level) if u == up]
            if not hits:
                return (lo + hi) / 2
            k = int(torch.searchsorted(taus, torch.tensor(hits[0], dtype=torch.float64))) - 1
            k = min(max(k, 0), points - 2)
            lo, hi = float(taus[k]), float(taus[k + 1])
        s = self.singular_values(b, product, torch.tensor([lo, hi], dtype=torch.float64))[:, index - 1]
        hit = crossings(torch.tensor([lo, hi], dtype=torch.float64), s, level)
        return hit[0][0] if hit else (lo + hi) / 2


def first_crossing(tau, s, level, up=True, dense: Dense | None = None, b=0, product=0, index=1) -> float:
    """The first crossing of ``level`` (going up or down) on the grid, refined on the dense output if any;
    NaN if there is none."""
    hits = [t for t, u in crossings(tau, s, level) if u == up]
    if not hits:
        return math.nan
    if dense is None:
        return hits[0]
    k = min(max(int(torch.searchsorted(tau, torch.tensor(hits[0], dtype=torch.float64))) - 1, 0), len(tau) - 2)
    return dense.refine(b, product, index, level, up, float(tau[k]), float(tau[k + 1]))


# -- the runs -------------------------------------------------------------------------------------------------
def _settled(traj: PairTrajectory, loss0: torch.Tensor) -> bool:
    """Nothing changed in this chunk at any alpha: the loss fell by less than SETTLED_LOSS x the initial loss
    ``loss0`` [B], and no singular value below the level grew (a plateau always has a mode growing towards its
    jump)."""
    loss = traj.loss
    if bool(((loss[:, 0] - loss[:, -1]) > SETTLED_LOSS * loss0).any()):
        return False
    big = torch.stack([s.flatten(1).nan_to_num(0.0).amax(1) for s in traj.sv]).amax(0)
    for s in traj.sv:
        start, end = s[:, 0], s[:, -1]
        floor = (GROWTH_FLOOR * big)[:, None]
        level = (RANK_FRACTION * big)[:, None]
        watched = (end > floor) & (end < level)
        if bool((watched & (end > 2 * torch.maximum(start, floor))).any()):
            return False
    return True


def _join(parts: list[PairTrajectory]) -> PairTrajectory:
    """Chunks of one batch in time order (chunk k starts where k - 1 ended)."""
    cut = [slice(None)] + [slice(1, None)] * (len(parts) - 1)
    last = parts[-1]

    def cat(get, dim=1):
        return torch.cat([get(p)[(slice(None),) * dim + (c,)] for p, c in zip(parts, cut)], dim=dim)

    n = len(last.sv)
    return replace(last, tau=torch.cat([p.tau[c] for p, c in zip(parts, cut)]),
                   sv=tuple(cat(lambda p, i=i: p.sv[i]) for i in range(n)),
                   log_sv=tuple(cat(lambda p, i=i: p.log_sv[i]) for i in range(n)),
                   products=tuple(cat(lambda p, i=i: p.products[i]) for i in range(n)),
                   loss=cat(lambda p: p.loss), nfev=sum(p.nfev for p in parts), njev=sum(p.njev for p in parts),
                   state=None if last.state is None else cat(lambda p: p.state),
                   misorder=None if last.misorder is None else torch.stack([p.misorder for p in parts]).amax(0))


def _from_theta(model, traj: ParamTrajectory) -> PairTrajectory:
    """A run of the flow of theta as a :class:`PairTrajectory` (singular values of the products on the grid)."""
    th = traj.theta
    finite = torch.isfinite(th).all(-1, keepdim=True)
    prods = model.products(torch.where(finite, th, 0.0).to(model.device))
    nan = torch.tensor(math.nan, dtype=torch.float64)
    sv = tuple(torch.where(finite, torch.linalg.svdvals(P).cpu(), nan) for P in prods)
    B = th.shape[0]
    status = (traj.status,) * B
    return PairTrajectory("theta (DOP853)", traj.log_inv_alpha, traj.tau, sv,
                          tuple(s.clamp_min(1e-300).log() for s in sv),
                          tuple(torch.where(finite[..., None], P.cpu(), nan) for P in prods), traj.loss,
                          torch.full((B,), traj.nfev), torch.zeros(B, dtype=torch.long), status)


def theta_run(model, theta0, log_inv_alphas, rate: float, horizon: float | None) -> PairTrajectory:
    """The flow of theta to ``horizon``, or (None) in chunks of CHUNK / rate until a chunk is settled."""
    if horizon is not None:
        return _from_theta(model, solve_param_flow(model, theta0, log_inv_alphas, horizon, rtol=RTOL, n_out=N_OUT))
    chunk = CHUNK / rate
    parts: list[PairTrajectory] = []
    start = None
    for k in range(MAX_CHUNKS):
        raw = solve_param_flow(model, theta0, log_inv_alphas, (k + 1) * chunk, rtol=RTOL,
                               n_out=N_OUT_PER_CHUNK + 1, start=start, t0=k * chunk)
        part = _from_theta(model, raw)
        parts.append(part)
        start = raw.theta[:, -1]
        if raw.status is not Status.SUCCESS or _settled(part, parts[0].loss[:, 0]):
            break
    return _join(parts)


def lifted_run(model, theta0, log_inv_alphas, horizon: float | None, rate: float, solver: SolverConfig,
               progress=None) -> tuple[PairTrajectory, list[Dense]]:
    """The lifted flow to ``horizon``, or (None) in chunks of CHUNK / rate until a chunk is settled; with the
    dense output of every chunk."""
    L = list(log_inv_alphas)
    th = theta0.to(model.device, torch.float64).expand(len(L), -1)
    flow, y = LiftedFlow.initial_state(model, model.factors(th), L)
    parts, dense = [], []
    ends = [horizon] if horizon is not None else [(k + 1) * CHUNK / rate for k in range(MAX_CHUNKS)]
    t0 = 0.0
    for k, end in enumerate(ends):
        n_out = N_OUT if horizon is not None else N_OUT_PER_CHUNK + 1
        part, sol = integrate_lifted(flow, y, end, solver, n_out, t0, progress)
        parts.append(part)
        dense.append(Dense(flow, sol, t0))
        if not part.ok or horizon is not None or _settled(part, parts[0].loss[:, 0]):
            break
        y, t0 = part.state[:, -1].to(model.device), end
    return _join(parts), dense


# -- what is measured -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JumpSeries:
    """Predicted jump k (singular value ``index`` of product ``product`` rising at T) and its measured times
    along the ladder (NaN: not seen by the horizon)."""

    k: int
    product: int
    index: int
    T: float
    level: float
    log_inv_alphas: tuple[float, ...]
    taus: tuple[float, ...]

    def errors(self, horizon: float) -> list[float]:
        return [abs(t - self.T) if math.isfinite(t) else abs(horizon - self.T) for t in self.taus]

    def fitted(self) -> float | None:
        """The intercept of tau = T + c / L over the alphas where the jump is seen (None below two)."""
        pts = [(L, t) for L, t in zip(self.log_inv_alphas, self.taus) if math.isfinite(t)]
        return fit_limit([L for L, _ in pts], [t for _, t in pts])


@dataclass(frozen=True)
class PlateauValues:
    """Stage k's predicted loss and singular values, and those measured at the middle of the stage, per alpha."""

    k: int
    tau: float
    loss: float
    sv: tuple[tuple[float, ...], ...]
    measured_loss: tuple[float, ...]
    measured_sv: tuple[tuple[tuple[float, ...], ...], ...]


@dataclass(frozen=True)
class RankMeasurement:
    """The run (``traj``, its ladder ``log_inv_alphas``), the events at the rank level, and, with a limit, the
    jump series and plateau values. ``path``: "lifted" or "theta"; ``no_exact``: why the lifted flow does not
    apply (None if it does); ``limit_error``: why there is no limit; ``rungs``: ladder rungs added."""

    names: tuple[str, ...]
    traj: PairTrajectory
    levels: torch.Tensor
    events: tuple[tuple[Event, ...], ...]
    growth_rate: float
    horizon: float
    log_inv_alphas: tuple[float, ...]
    path: str
    no_exact: str | None = None
    limit: object | None = None
    limit_error: str | None = None
    jumps: tuple[JumpSeries, ...] = ()
    plateaus: tuple[PlateauValues, ...] = ()
    rungs: tuple[dict, ...] = ()
    below_floor: tuple[float, ...] = ()

    @property
    def smallest(self) -> int:
        return int(np.argmax(self.log_inv_alphas))

    @property
    def loss0(self) -> float:
        return float(self.limit.stages[0].loss) if self.limit is not None else float(self.traj.loss[0, 0])


def _dense_for(dense: list[Dense], t: float) -> Dense | None:
    """The chunk of ``dense`` whose span holds rescaled time t (None without a dense output or a finite t)."""
    if not dense or not math.isfinite(t):
        return None
    return [d for d in dense if d.t0 <= t][-1] if any(d.t0 <= t for d in dense) else dense[0]


def judged_jumps(limit, horizon: float) -> list:
    """The limit's jumps the run can show: those before JUDGED_FRACTION of the horizon (a jump at finite alpha
    comes O(1/log(1/alpha)) after its limit time; one past the horizon is not measured, never counted missed)."""
    return [j for j in limit.jumps() if j.T < JUDGED_FRACTION * horizon]


def _jump_times(limit, traj: PairTrajectory, dense: list[Dense], samples: range, horizon: float) -> list[list[float]]:
    """[jump][sample] measured times of the judged jumps for ``samples`` of ``traj`` (their dense outputs are
    rows b - samples.start of ``dense``)."""
    out = []
    for j in judged_jumps(limit, horizon):
        level = _jump_level(limit, j)
        row = []
        for b in samples:
            s = traj.sv[j.product][b, :, j.index - 1]
            d = _dense_for(dense, _grid_hit(traj.tau, s, level))
            row.append(first_crossing(traj.tau, s, level, True, d, b - samples.start, j.product, j.index))
        out.append(row)
    return out


def _jump_level(limit, j) -> float:
    """JUMP_LEVEL of the value the jump's singular value takes on the plateau after it."""
    after = sorted(limit.stages[j.k].singular_values()[j.product], reverse=True)
    return JUMP_LEVEL * float(after[j.index - 1])


def _grid_hit(tau, s, level) -> float:
    hits = [t for t, u in crossings(tau, s, level) if u]
    return hits[0] if hits else math.nan


def _plateaus(limit, traj: PairTrajectory, horizon: float) -> list[tuple[int, float, list[float], list]]:
    """(k, tau, loss per sample, singular values per sample and product) at the middle of every stage of
    positive length (a stage between two tied jumps has none: it is not a plateau)."""
    out = []
    T = [s.T for s in limit.stages] + [max(horizon, limit.last_T)]
    for k in range(len(limit.stages)):
        if T[k + 1] - T[k] <= TIE_MARGIN * max(T[k + 1], 1e-300) or T[k] >= JUDGED_FRACTION * horizon:
            continue
        mid = 0.5 * (T[k] + T[k + 1])
        i = int(torch.argmin((traj.tau - mid).abs()))
        out.append((k, float(traj.tau[i]), traj.loss[:, i].tolist(),
                    [[s[b, i].tolist() for s in traj.sv] for b in range(traj.loss.shape[0])]))
    return out


def _limit_of(ctx):
    """The full-weight limit, computed once per context (None and why when there is none)."""
    cache = ctx.__dict__.setdefault("_full_limit", {})
    if "value" not in cache:
        from ..limit.pairs import full_limit

        try:
            cache["value"] = (full_limit(ctx.model, progress=ctx.progress), None)
        except Exception as exc:  # a limit that cannot be computed: the model-free rule judges
            cache["value"] = (None, f"{type(exc).__name__}: {exc}")
    return cache["value"]


def measure(model, theta0: torch.Tensor, log_inv_alphas=None, horizon: float | None = None, *,
            limit=None, limit_error: str | None = None, solver: SolverConfig | None = None, progress=None,
            exact: str | None = "unknown") -> RankMeasurement:
    """Run the ladder (lifted flow where it applies, else the flow of theta above THETA_FLOOR), detect the
    events, and measure the jumps and plateaus against ``limit`` (module docstring)."""
    names = tuple(model.product_names())
    no_exact = exact_path(model) if exact == "unknown" else exact
    path = "lifted" if no_exact is None else "theta"
    L = tuple(float(x) for x in (log_inv_alphas or (LADDER if path == "lifted" else THETA_LADDER)))
    rate = growth_rate(model) if limit is None else max([0.0] + [r[0] for r in limit.stages[0].rates if r])
    empty = PairTrajectory(path, torch.tensor(L), torch.zeros(1), (), (), (), torch.zeros(len(L), 1),
                           torch.zeros(len(L), dtype=torch.long), torch.zeros(len(L), dtype=torch.long),
                           (Status.SUCCESS,) * len(L))
    base = dict(names=names, levels=torch.zeros(len(L)), events=((),) * len(L), growth_rate=rate,
                log_inv_alphas=L, path=path, no_exact=no_exact, limit=limit, limit_error=limit_error)
    if path == "theta" and max(L) > THETA_FLOOR:
        return RankMeasurement(traj=empty, horizon=0.0, below_floor=tuple(x for x in L if x > THETA_FLOOR), **base)
    if not rate > 0:
        return RankMeasurement(traj=empty, horizon=0.0, **base)
    if horizon is None and limit is not None and limit.last_T > 0:
        horizon = HORIZON_FACTOR * limit.last_T
    if path == "lifted":
        solver = solver or SolverConfig(*LIFTED_TOLERANCES, method="ros34pw2")
        traj, dense = lifted_run(model, theta0, L, horizon, rate, solver, progress)
    else:
        traj, dense = theta_run(model, theta0, L, rate, horizon), []
    return _measured(RankMeasurement(traj=traj, horizon=float(traj.tau[-1]), **base), dense, 0)


def _measured(m: RankMeasurement, dense: list[Dense], offset: int) -> RankMeasurement:
    """Events, jump series and plateau values of ``m.traj`` for its samples from ``offset`` on (``dense``: their
    lifted solves; the samples before keep the values already in ``m``)."""
    traj = m.traj
    big = torch.stack([s.flatten(1).nan_to_num(0.0).amax(1) for s in traj.sv]).amax(0)
    levels = RANK_FRACTION * big
    evs = list(m.events[:offset])
    tau = traj.tau
    for b in range(offset, len(levels)):
        found = []
        for e in events(tau, tuple(s[b] for s in traj.sv), float(levels[b])):
            d = _dense_for(dense, e.tau)
            if d is not None:
                k = min(max(int(torch.searchsorted(tau, torch.tensor(e.tau, dtype=torch.float64))) - 1, 0), len(tau) - 2)
                e = replace(e, tau=d.refine(b - offset, e.product, e.index, float(levels[b]), e.up, float(tau[k]),
                                            float(tau[k + 1])))
            found.append(e)
        evs.append(tuple(sorted(found, key=lambda e: e.tau)))
    L = tuple(float(x) for x in traj.log_inv_alpha)
    m = replace(m, levels=levels, events=tuple(evs), log_inv_alphas=L)
    if m.limit is None or not traj.ok:
        return m
    times = _jump_times(m.limit, traj, dense, range(offset, len(levels)), m.horizon)
    old = {j.k: j for j in m.jumps}
    jumps = []
    for j, row in zip(judged_jumps(m.limit, m.horizon), times):
        before = list(old[j.k].taus) if j.k in old else []
        jumps.append(JumpSeries(j.k, j.product, j.index, j.T, _jump_level(m.limit, j), L, tuple(before[:offset] + row)))
    plats = []
    for k, t, loss, sv in _plateaus(m.limit, traj, m.horizon):
        st = m.limit.stages[k]
        plats.append(PlateauValues(k, t, st.loss, st.singular_values(), tuple(loss),
                                   tuple(tuple(tuple(x) for x in per) for per in sv)))
    return replace(m, jumps=tuple(jumps), plateaus=tuple(plats))


# -- judgement --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gap:
    """Two consecutive events of the smallest alpha: their gap at each alpha where both occur, and the fit
    gap = limit + c / log(1/alpha) (limit None when fewer than two alphas have both)."""

    first: Event
    second: Event
    log_inv_alphas: tuple[float, ...]
    gaps: tuple[float, ...]
    limit: float | None

    @property
    def ratio(self) -> float | None:
        """limit / gap at the smallest alpha: ~1 for separate jumps, ~0 for a tie."""
        if self.limit is None:
            return None
        return self.limit / self.gaps[-1] if self.gaps[-1] > 0 else 0.0


def fit_limit(L: list[float], gaps: list[float]) -> float | None:
    """Least-squares intercept of gap = limit + c / L (None with fewer than two distinct L)."""
    if len(set(L)) < 2:
        return None
    x = np.array([1.0 / l for l in L])
    c, limit = np.polyfit(x, np.array(gaps), 1)
    return float(limit)


def gaps(m: RankMeasurement) -> list[Gap]:
    """The gaps of consecutive events of the smallest alpha, followed along the ladder by event key (product,
    index, direction, and occurrence)."""
    order = np.argsort(np.array(m.log_inv_alphas))

    def keyed(evs):
        seen: dict = {}
        out = {}
        for e in evs:
            seen[e.key] = seen.get(e.key, 0) + 1
            out[(*e.key, seen[e.key])] = e
        return out

    per_alpha = [keyed(m.events[b]) for b in order]
    ref = list(per_alpha[-1].items())
    out = []
    for (k1, e1), (k2, e2) in zip(ref, ref[1:]):
        L, g = [], []
        for b, evs in zip(order, per_alpha):
            if k1 in evs and k2 in evs:
                L.append(float(m.log_inv_alphas[b]))
                g.append(evs[k2].tau - evs[k1].tau)
        out.append(Gap(e1, e2, tuple(L), tuple(g), fit_limit(L, g)))
    return out


def sigma(m: RankMeasurement, e) -> str:
    return f"sigma_{e.index}({m.names[e.product]})"


def describe(m: RankMeasurement, e: Event) -> str:
    return f"{sigma(m, e)} {'rises above' if e.up else 'falls below'} the level"


def judged_gaps(m: RankMeasurement) -> list[Gap]:
    """The model-free gaps: none when nothing is learned, the flow failed or nothing crossed the level."""
    if m.growth_rate == 0 or not m.traj.ok or not m.events or not m.events[m.smallest]:
        return []
    return gaps(m)


def _what(m: RankMeasurement, p1: int, p2: int, up1: bool = True, up2: bool = True) -> str:
    if p1 != p2:
        return f"changes the ranks of {m.names[p1]} and {m.names[p2]} at once"
    return f"raises the rank of {m.names[p1]} by two" if up1 == up2 else f"moves the rank of {m.names[p1]} twice"


def judge_model_free(m: RankMeasurement) -> Judgement:
    """Separation without a limit (module docstring)."""
    evs = m.events[m.smallest]
    L = m.log_inv_alphas
    if not evs:
        return Judgement.inconclusive(Reason.NO_JUMP, f"no singular value crossed {RANK_FRACTION:g} x the largest "
                                      f"by tau = {m.horizon:.3g} at alpha={format_alpha(L[m.smallest])} (raise --horizon)")
    gs = gaps(m)
    ties, short = [], []
    for gp in gs:
        if gp.limit is None:
            short.append(f"{describe(m, gp.second)} at fewer than two alphas")
        elif not gp.ratio >= LIMIT_GAP_FRACTION:
            trend = ", ".join(f"{g:.3g}" for g in gp.gaps)
            ties.append(f"{describe(m, gp.first)} at tau={gp.first.tau:.4g} and {describe(m, gp.second)} at "
                        f"tau={gp.second.tau:.4g}: the gap closes like 1/log(1/alpha) ({trend} from the largest "
                        f"to the smallest alpha, extrapolated to {gp.limit:.3g} < {LIMIT_GAP_FRACTION:g} x "
                        f"{gp.gaps[-1]:.3g}), so one jump "
                        f"{_what(m, gp.first.product, gp.second.product, gp.first.up, gp.second.up)}")
    falls = [e for e in evs if not e.up]
    note = (f"; {len(falls)} rank decrease(s): " + ", ".join(f"{describe(m, e)} at tau={e.tau:.3g}" for e in falls)
            if falls else "")
    if ties:
        return Judgement.failed(Reason.JUMPS_NOT_SEPARATED, "jumps do not separate: " + "; ".join(ties) + note)
    if short:
        return Judgement.inconclusive(Reason.LADDER_TOO_SHORT,
                                      "cannot extrapolate: " + "; ".join(short) + " (widen the ladder)")
    ranks = [int((s[m.smallest, -1] > m.levels[m.smallest]).sum()) for s in m.traj.sv]
    worst = min((gp.ratio for gp in gs), default=math.inf)
    return Judgement.passed(
        f"{len(evs)} jump(s) at alpha={format_alpha(L[m.smallest])}, each raising the rank of one product by one ("
        + ", ".join(f"{sigma(m, e)} at tau={e.tau:.3g}" for e in evs)
        + "); final ranks " + ", ".join(f"{n} {r}" for n, r in zip(m.names, ranks))
        + (f"; gaps between jumps keep >= {worst:.2f} of their size as alpha -> 0" if gs else "") + note)


@dataclass(frozen=True)
class Agreement:
    """The limit comparison's numbers: per jump its errors along the ladder, the fitted rate, the resolution
    eps (max of the error at the smallest alpha and the fitted C / L there) and the fitted time; the tolerance."""

    errors: tuple[tuple[float, ...], ...]
    rates: tuple[float | None, ...]
    eps: tuple[float, ...]
    fitted: tuple[float | None, ...]
    tolerance: float
    plateau_errors: tuple[tuple[float, ...], ...]  # per plateau, along the ladder: max(loss, singular values)
    plateau_rates: tuple[float | None, ...]

    def plateau_at(self, b: int) -> float:
        return max((e[b] for e in self.plateau_errors), default=0.0)


def agreement(m: RankMeasurement) -> Agreement:
    L = list(m.log_inv_alphas)
    positive = [b.T - a.T for a, b in zip(m.limit.stages, m.limit.stages[1:]) if b.T - a.T > TIE_MARGIN * b.T]
    tol = TIME_FRACTION * min(positive) if positive else TIME_FRACTION * max(m.limit.last_T, 1.0)
    errors, rates, eps, fitted = [], [], [], []
    s = m.smallest
    for j in m.jumps:
        e = j.errors(m.horizon)
        errors.append(tuple(e))
        rates.append(_ladder.fit_rate(L, e))
        C = float(np.mean([x * l for x, l in zip(e, L)]))
        eps.append(max(e[s], C / L[s]))
        fitted.append(j.fitted())
    plateau = []
    for p in m.plateaus:
        row = []
        for b in range(len(L)):
            worst = abs(p.measured_loss[b] - p.loss) / max(abs(m.loss0), 1e-300)
            for pred, meas in zip(p.sv, p.measured_sv[b]):
                scale = max(1.0, max(pred) if pred else 1.0)
                worst = max(worst, max(abs(x - y) for x, y in zip(sorted(pred, reverse=True), meas)) / scale)
            row.append(worst if math.isfinite(worst) else math.inf)
        plateau.append(tuple(row))
    return Agreement(tuple(errors), tuple(rates), tuple(eps), tuple(fitted), tol, tuple(plateau),
                     tuple(_ladder.fit_rate(L, list(e)) for e in plateau))


def _status(e: tuple[float, ...], r: float | None, tol: float, s: int, big: int) -> str:
    """"ok" (within tolerance at the smallest alpha, not above its largest-alpha value or the tolerance),
    "shrinking" (above, but smaller than at the largest alpha and fitted at rate >= RATE_MIN), or "departs"."""
    if e[s] <= tol and e[s] <= max(e[big], tol):
        return "ok"
    return "shrinking" if e[s] < e[big] and r is not None and r >= RATE_MIN else "departs"


def undecided(m: RankMeasurement) -> str | None:
    """Why more ladder would decide (None: decided): an error above tolerance that still shrinks, or a pair of
    separate predicted jumps not yet resolved."""
    if m.limit is None or not m.traj.ok or not m.jumps:
        return None
    if any(j2.T - j1.T <= TIE_MARGIN * j2.T for j1, j2 in zip(m.jumps, m.jumps[1:])):
        return None  # the limit itself says two jumps merge: decided (a fail), more ladder changes nothing
    a = agreement(m)
    s, big = m.smallest, int(np.argmin(m.log_inv_alphas))
    for j, e, r in zip(m.jumps, a.errors, a.rates):
        if _status(e, r, a.tolerance, s, big) == "shrinking":
            return (f"the time of jump {j.k} ({sigma(m, j)}) is {e[s]:.3g} from the limit's, above the tolerance "
                    f"{a.tolerance:.3g} and still shrinking (rate {r:.2f})")
    for p, e, r in zip(m.plateaus, a.plateau_errors, a.plateau_rates):
        if _status(e, r, PLATEAU_TOL, s, big) == "shrinking":
            return f"plateau {p.k}'s values are {e[s]:.3g} from the limit's, above {PLATEAU_TOL:g} and still shrinking"
    for (j1, e1), (j2, e2) in zip(zip(m.jumps, a.eps), list(zip(m.jumps, a.eps))[1:]):
        gap = j2.T - j1.T
        if gap > TIE_MARGIN * j2.T and e1 + e2 > RESOLUTION_FRACTION * gap:
            return (f"jumps {j1.k} and {j2.k} are predicted {gap:.3g} apart but the flow resolves them to "
                    f"{e1 + e2:.3g} only")
    return None


def judge_against_limit(m: RankMeasurement) -> Judgement:
    """Separation and agreement against the limit (module docstring)."""
    lim = m.limit
    a = agreement(m)
    s, big = m.smallest, int(np.argmin(m.log_inv_alphas))
    Ls = m.log_inv_alphas
    closed = lim.kind == "closed-form"
    parts = []
    # separation
    ties, unresolved = [], []
    for (j1, e1), (j2, e2) in zip(zip(m.jumps, a.eps), list(zip(m.jumps, a.eps))[1:]):
        gap = j2.T - j1.T
        if gap <= TIE_MARGIN * j2.T:
            measured = [t2 - t1 for t1, t2 in zip(j1.taus, j2.taus)]
            trend = ", ".join(f"{g:.3g}" for g in measured)
            ties.append(f"the limit puts {sigma(m, j1)} and {sigma(m, j2)} at the same time T={j1.T:.4g} (a tie: "
                        f"equal growth rates), so one jump {_what(m, j1.product, j2.product)}; measured gaps "
                        f"{trend} from the largest to the smallest alpha")
        elif e1 + e2 > RESOLUTION_FRACTION * gap:
            unresolved.append(f"{sigma(m, j1)} and {sigma(m, j2)}, predicted {gap:.3g} apart, resolved to "
                              f"{e1 + e2:.3g} only")
    if ties:
        parts.append(Judgement.failed(Reason.JUMPS_NOT_SEPARATED, "jumps do not separate: " + "; ".join(ties)))
    elif unresolved:
        parts.append(Judgement.inconclusive(Reason.LADDER_EXHAUSTED, f"jumps not yet resolved at alpha="
                                            f"{format_alpha(Ls[s])}: " + "; ".join(unresolved) + _ladder_note(m)))
    # agreement
    departs, shrinking = [], []
    for j, e, r in zip(m.jumps, a.errors, a.rates):
        status = _status(e, r, a.tolerance, s, big)
        if status != "ok":
            rate = "no rate" if r is None else f"rate {r:.2f}"
            (shrinking if status == "shrinking" else departs).append(
                f"jump {j.k} ({sigma(m, j)}): |tau - T| = {', '.join(f'{x:.3g}' for x in e)} along the ladder "
                f"(T = {j.T:.4g}, tolerance {a.tolerance:.3g}, {rate})")
    for p, e, r in zip(m.plateaus, a.plateau_errors, a.plateau_rates):
        status = _status(e, r, PLATEAU_TOL, s, big)
        if status != "ok":
            (shrinking if status == "shrinking" else departs).append(
                f"plateau {p.k} at tau={p.tau:.3g}: loss and singular values {', '.join(f'{x:.3g}' for x in e)} "
                f"from the limit's along the ladder (tolerance {PLATEAU_TOL:g})")
    if departs:
        msg = "the flow departs from " + lim.reference + ": " + "; ".join(departs)
        parts.append(Judgement.failed(Reason.DEPARTS_FROM_LIMIT, msg) if closed else
                     Judgement.inconclusive(Reason.DEPARTS_FROM_CONJECTURED_LIMIT,
                                            msg + " (the greedy limit is a conjecture here: no fail)"))
    elif shrinking:
        parts.append(Judgement.inconclusive(Reason.LADDER_EXHAUSTED, "errors above tolerance, still shrinking: "
                                            + "; ".join(shrinking) + _ladder_note(m)))
    if not any(p.verdict.value != "pass" for p in parts):
        fit = [f for f in a.fitted if f is not None]
        worst_fit = max((abs(f - j.T) / j.T for f, j in zip(a.fitted, m.jumps) if f is not None), default=None)
        parts.append(Judgement.passed(
            f"{len(m.jumps)} jump(s), each raising the rank of one product by one, at the times of {lim.reference} "
            f"({lim.basis}): " + ", ".join(f"{sigma(m, j)} T={j.T:.4g}" for j in m.jumps)
            + f"; errors at alpha={format_alpha(Ls[s])} <= {max((e[s] for e in a.errors), default=0):.3g} "
            f"(tolerance {a.tolerance:.3g})"
            + (f", fitted jump times within {worst_fit:.2g} (relative) of the limit" if fit else "")
            + f"; plateau losses and singular values within {a.plateau_at(s):.2g}"))
    if lim.status.value != "complete":
        parts.append(Judgement.passed(f"(the limit stopped early: {lim.message}; judged up to there)"))
    later = len(lim.jumps()) - len(m.jumps)
    if later:
        parts.append(Judgement.passed(f"({later} predicted jump(s) after {JUDGED_FRACTION:g} x the horizon "
                                      f"tau = {m.horizon:.3g} not judged: raise --horizon)"))
    return Judgement.compose(parts, " | ")


def _ladder_note(m: RankMeasurement) -> str:
    return " (the ladder reached its cap)" if m.rungs and m.rungs[-1]["log_inv_alpha"] >= _ladder.CAP_LOG_INV_ALPHA \
        else " (extend the ladder: --alphas)"


def judge(m: RankMeasurement) -> Judgement:
    """The verdict from a measurement (module docstring)."""
    if m.below_floor:
        return Judgement.inconclusive(Reason.BELOW_FLOAT64_RESOLUTION, (
            f"alpha={', '.join(format_alpha(x) for x in m.below_floor)} is below the floor alpha >= 1e-12 of the "
            f"flow of theta, which this model needs because {m.no_exact}: a mode of size alpha beside O(1) weights "
            f"is float64 rounding there (use --alphas with every alpha >= 1e-12)"))
    if m.growth_rate == 0:
        return Judgement.inconclusive(Reason.NOTHING_TO_TEST,
                                      "the gradient vanishes at zero: nothing is learned (is the teacher zero?)")
    if not m.traj.ok:
        return Judgement.inconclusive(Reason.SOLVER_FAILED, f"the flow did not reach the horizon: {m.traj.message()}")
    if m.traj.misorder is not None and float(m.traj.misorder.max()) > MISORDER_LIMIT:
        return Judgement.inconclusive(Reason.SOLVER_FAILED, (
            f"the lifted flow's modes lost their Gram-Schmidt order (a later mode e^{float(m.traj.misorder.max()):.3g} "
            f"times an earlier one; limit e^{MISORDER_LIMIT:g}), so its factor R carries that ratio in rounding "
            "(THEORY.md §8.1): no verdict on this initialisation (try another --seed)"))
    if m.limit is None or not m.jumps:
        out = judge_model_free(m)
        why = m.limit_error or (m.no_exact and f"no exact path: {m.no_exact}")
        return replace(out, message=out.message + (f" (model-free rule: no limit, {why})" if why else ""))
    return judge_against_limit(m)


# -- figures and metrics ---------------------------------------------------------------------------------------
def _subsample(tau: torch.Tensor, y: torch.Tensor, n: int = 300) -> tuple[list[float], list[float]]:
    step = max(1, math.ceil(len(tau) / n))
    return tau[::step].tolist(), y[::step].tolist()


MAX_SERIES_PER_PRODUCT = 6


def figures(m: RankMeasurement) -> list[Figure]:
    """Singular values (log10, exact at every scale) against rescaled time per alpha with the detected events
    and the limit's jumps; the jump times against 1 / log(1/alpha) with their fits (the extrapolation judged)."""
    out = []
    if not m.traj.sv:
        return out
    for b, L in enumerate(m.log_inv_alphas):
        series = []
        for P, s in enumerate(m.traj.log_sv):
            for j in range(min(s.shape[-1], MAX_SERIES_PER_PRODUCT)):
                x, y = _subsample(m.traj.tau, s[b, :, j] / math.log(10.0))
                y = [v if math.isfinite(v) else math.nan for v in y]
                series.append(Series(f"sigma_{j + 1}({m.names[P]})", x, y, "-" if P == 0 else "--"))
        marks = tuple(Mark(e.tau, sigma(m, e)) for e in m.events[b])
        marks += tuple(Mark(j.T, f"T_{j.k}") for j in m.jumps)
        out.append(Figure(
            f"singular-values-{b}", f"Singular values of the products at alpha={format_alpha(L)}", "line",
            "tau = t / log(1/alpha)", "log10 singular value", tuple(series),
            vlines=marks, hlines=(Mark(math.log10(max(float(m.levels[b]), 1e-300)), f"{RANK_FRACTION:g} x largest"),),
            caption="Plateaus and jumps (paper Fig. 2 right): log10 of every singular value, exact at every scale "
                    "(the lifted flow keeps each mode's size); the level counts the numerical rank; vertical lines: "
                    "detected events and the limit's jump times T_k."))
    fits = []
    if m.jumps:
        for j in m.jumps:
            pts = [(1.0 / L, t) for L, t in zip(m.log_inv_alphas, j.taus) if math.isfinite(t)]
            if not pts:
                continue
            fits.append(Series(f"{sigma(m, j)} (T={j.T:.3g})", [x for x, _ in pts], [t for _, t in pts], "o-"))
        if fits:
            out.append(Figure("jump-times", "Jump times against 1 / log(1/alpha)", "line", "1 / log(1/alpha)",
                              "tau of the jump", tuple(fits),
                              hlines=tuple(Mark(j.T, f"T_{j.k}") for j in m.jumps),
                              caption="Each jump's time along the ladder converges to the limit's T_k (horizontal "
                                      "lines) like 1/log(1/alpha) (THEORY.md §8)."))
        return out
    for gp in judged_gaps(m):
        x = [1.0 / L for L in gp.log_inv_alphas]
        fits.append(Series(f"{sigma(m, gp.first)} -> {sigma(m, gp.second)}", x, gp.gaps, "o-"))
        if gp.limit is not None and len(x) >= 2:
            slope = np.polyfit(x, gp.gaps, 1)[0]
            fits.append(Series(f"fit, limit {gp.limit:.3g}", [0.0, max(x)], [gp.limit, gp.limit + slope * max(x)], "k:"))
    if fits:
        out.append(Figure(
            "jump-gaps", "Gaps between consecutive jumps against 1 / log(1/alpha)", "line", "1 / log(1/alpha)",
            "gap in rescaled time", tuple(fits),
            caption=f"Dotted: least-squares fits gap = limit + c / log(1/alpha), extrapolated to alpha -> 0 (x = 0). "
                    f"Separate jumps keep a positive limit (>= {LIMIT_GAP_FRACTION:g} x the gap at the smallest "
                    "alpha); a tie closes to 0."))
    return out


def _event_rows(m: RankMeasurement, b: int) -> list[dict]:
    return [{"product": m.names[e.product], "sigma": e.index, "direction": "up" if e.up else "down",
             "tau": e.tau} for e in m.events[b]]


def declare(m: RankMeasurement) -> dict[str, Metric]:
    """Judged: the jump-time errors at the smallest alpha against the tolerance (with a limit) or the smallest
    limit / gap ratio (without); info: the limit's stages, jump times along the ladder and fitted, plateau losses
    and singular values, events, gaps, final ranks; the cost."""
    gs = judged_gaps(m)
    ratios = [gp.ratio for gp in gs if gp.ratio is not None]
    small = m.smallest
    alphas = [format_alpha(L) for L in m.log_inv_alphas]
    out = {
        "min_limit_gap_ratio": Metric.at_least(min(ratios) if ratios else (
            math.inf if m.events and m.events[small] else None), LIMIT_GAP_FRACTION,
            gate=None if m.limit is not None else Gate()),
        "jumps": Metric.info(len(m.events[small]) if m.events else 0),
        "final_ranks": Metric.info({n: int((s[small, -1] > m.levels[small]).sum()) for n, s in zip(m.names, m.traj.sv)}
                                   if m.traj.sv else {}),
        "events": Metric.info({a: _event_rows(m, b) for b, a in enumerate(alphas)} if m.events else {}),
        "gaps": Metric.info([{"between": [sigma(m, gp.first), sigma(m, gp.second)], "gaps": list(gp.gaps),
                              "limit": gp.limit, "ratio": gp.ratio} for gp in gs]),
        "alphas": Metric.info(alphas),
        "horizon": Metric.info(m.horizon),
        "path": Metric.info(m.path if m.no_exact is None else f"{m.path} ({m.no_exact})"),
        "nfev": Metric.lower([int(x) for x in m.traj.nfev.tolist()], gate=None),
    }
    if m.limit is not None:
        out["limit"] = Metric.info(m.limit.to_dict())
    if m.limit_error is not None:
        out["limit_error"] = Metric.info(m.limit_error)
    if m.limit is not None and m.jumps and m.traj.ok:
        a = agreement(m)
        out["jump_time_error_at_smallest_alpha"] = Metric.at_most(max(e[small] for e in a.errors), a.tolerance)
        out["jump_time_error"] = Metric.lower([max(e[b] for e in a.errors) for b in range(len(alphas))], gate=None)
        fits = [abs(f - j.T) / j.T for f, j in zip(a.fitted, m.jumps) if f is not None and j.T > 0]
        out["max_fitted_jump_time_error"] = Metric.info(max(fits) if fits else None)
        out["jump_times"] = Metric.info([
            {"k": j.k, "product": m.names[j.product], "sigma": j.index, "T": j.T, "level": j.level,
             "tau": dict(zip(alphas, j.taus)), "fitted": f, "rate": r}
            for j, f, r in zip(m.jumps, a.fitted, a.rates)])
        out["plateaus"] = Metric.info([
            {"k": p.k, "tau": p.tau, "loss": p.loss, "measured_loss": dict(zip(alphas, p.measured_loss)),
             "singular_values": {n: list(v) for n, v in zip(m.names, p.sv)},
             "measured_singular_values": {a_: {n: list(v) for n, v in zip(m.names, per)}
                                          for a_, per in zip(alphas, p.measured_sv)}}
            for p in m.plateaus])
        out["plateau_error_at_smallest_alpha"] = Metric.at_most(a.plateau_at(small), PLATEAU_TOL)
    if m.rungs:
        out["rungs_added"] = Metric.info(list(m.rungs))
    return out


def _extend(ctx, m: RankMeasurement, theta0, solver) -> RankMeasurement:
    """Add ladder rungs (lifted flow) while :func:`undecided` says why; each rung one more solve."""
    rungs = []
    while (why := undecided(m)) is not None:
        nxt = next((L for L in _ladder.EXTENSION_LOG_INV_ALPHAS if L > max(m.log_inv_alphas)), None)
        if nxt is None:
            break
        flow, y = LiftedFlow.initial_state(ctx.model, ctx.model.factors(theta0.to(ctx.model.device)[None]), [nxt])
        part, sol = integrate_lifted(flow, y, m.horizon, solver, len(m.traj.tau), 0.0,
                               lambda f: ctx.progress(f"rank-increments: alpha={format_alpha(nxt)}", f))
        if not torch.allclose(part.tau, m.traj.tau):
            break
        t = m.traj
        joined = replace(t, log_inv_alpha=torch.cat([t.log_inv_alpha, part.log_inv_alpha]),
                         sv=tuple(torch.cat([a, b]) for a, b in zip(t.sv, part.sv)),
                         log_sv=tuple(torch.cat([a, b]) for a, b in zip(t.log_sv, part.log_sv)),
                         products=tuple(torch.cat([a, b]) for a, b in zip(t.products, part.products)),
                         loss=torch.cat([t.loss, part.loss]), nfev=torch.cat([t.nfev, part.nfev]),
                         njev=torch.cat([t.njev, part.njev]), status=t.status + part.status, state=None,
                         misorder=None if t.misorder is None else torch.cat([t.misorder, part.misorder]))
        rungs.append({"alpha": format_alpha(nxt), "log_inv_alpha": nxt, "why": why})
        offset = len(m.log_inv_alphas)
        m = replace(m, traj=joined, log_inv_alphas=m.log_inv_alphas + (nxt,), rungs=tuple(rungs))
        m = _measured(m, [Dense(flow, sol, 0.0)], offset)
        if not part.ok:
            break
    return m


@register(ID, CLAIM, reasons=Reason, diagonal_only=False, full_only=True, order=60,
          options=("alphas", "horizon", "rtol", "atol"))
def check_rank_increments(ctx) -> CheckResult:
    model = ctx.model
    no_exact = exact_path(model)
    limit, limit_error = _limit_of(ctx) if no_exact is None else (None, None)
    given = ctx.config.solver != SolverConfig()
    solver = (replace(ctx.config.solver, method="ros34pw2") if given
              else SolverConfig(*LIFTED_TOLERANCES, method="ros34pw2"))
    theta0 = ctx.theta0(1)[0]
    m = measure(model, theta0, ctx.config.log_inv_alphas, ctx.config.horizon, limit=limit, limit_error=limit_error,
                solver=solver, exact=no_exact,
                progress=lambda f: ctx.progress("rank-increments: the alpha ladder", f))
    if m.path == "lifted" and m.limit is not None and m.traj.ok:
        m = _extend(ctx, m, theta0, solver)
    settings = {"rank_fraction": RANK_FRACTION, "limit_gap_fraction": LIMIT_GAP_FRACTION, "jump_level": JUMP_LEVEL,
                "time_fraction": TIME_FRACTION, "plateau_tol": PLATEAU_TOL, "rate_min": RATE_MIN,
                "tie_margin": TIE_MARGIN, "resolution_fraction": RESOLUTION_FRACTION,
                "integrator": ("lifted flow (continuous QR of [U; V], log-sized modes), batched ROS34PW2, "
                               f"rtol {solver.rtol:g}, atol {solver.atol:g}") if m.path == "lifted" else
                              f"scipy DOP853 on theta, rtol {RTOL:g}, atol rtol x {ATOL_FRACTION:g} x alpha",
                "floor": None if m.path == "lifted" else "alpha >= 1e-12",
                "growth_rate": m.growth_rate, "horizon": "given" if ctx.config.horizon else "automatic",
                "limit": None if m.limit is None else {"kind": m.limit.kind, "basis": m.limit.basis}}
    key = "jump_time_error_at_smallest_alpha" if (m.limit is not None and m.jumps and m.traj.ok) else "min_limit_gap_ratio"
    return CheckResult.judged(ID, CLAIM, judge(m), metrics=declare(m), key_metric=key, settings=settings,
                              evidence={"figures": figures(m)})
