"""Check ``rank-increments``: full-weight products learn one rank at a time (the paper's Figure 2 right;
outside the theory, THEORY.md §6).

Measurement. Gradient flow of the model's own parameters from alpha theta0 for every alpha of a ladder (one
batched solve, :mod:`verifier.dynamics.param_flow`: explicit DOP853 with per-alpha absolute tolerances; the
reduced flow of THEORY.md §3 needs diagonal weights). Along it, the singular values of every product the model
trains (``model.products``: Wq Wk^T and Wv Wo^T of a head, U V^T of a ``from_module`` matrix pair). The
numerical rank of a product is the number of its singular values above RANK_FRACTION times the largest singular
value of any product at any time of that run. An *event* is the j-th singular value of a product crossing that
level (up: the rank rises to j; down: it falls to j - 1), located by log-linear interpolation on the grid.
The horizon is ``--horizon`` or automatic (:func:`auto_horizon`).

Judgement. Stages are the stretches between consecutive events of the smallest alpha; for each two
consecutive events we take their gap in rescaled time at every alpha and fit gap = Delta + c / log(1/alpha).
Separate jumps keep a positive gap as alpha -> 0 (Delta > 0); two singular values that rise together (a tie,
e.g. from a symmetry) have gaps that close like 1/log(1/alpha) (Delta ~ 0): those two events are one jump,
which raises the rank of one product by two or of two products at once. Pass: every consecutive pair has
Delta >= LIMIT_GAP_FRACTION x its gap at the smallest alpha (then each jump raises the rank of at most one
product by at most one). Fail: some pair does not. Inconclusive: the flow did not finish, nothing crossed the
level, or an event is seen at fewer than two alphas (nothing to extrapolate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from ..dynamics.param_flow import ATOL_FRACTION, ParamTrajectory, growth_rate, solve_param_flow
from ..config import format_alpha
from ..dynamics.trajectory import Status
from ..figures import Figure, Mark, Series
from ..results import CheckResult, CommonReason, Metric, Verdict
from .registry import register

ID = "rank-increments"
CLAIM = ("Full weights (outside the theory): as alpha -> 0 each jump raises the numerical rank of at most one "
         "product (Wq Wk^T, Wv Wo^T) by at most one, and jumps separate in rescaled time")
LADDER = tuple(math.log(10.0) * e for e in (2, 4, 8))  # alpha = 1e-2, 1e-4, 1e-8 (cost grows like log(1/alpha))
RANK_FRACTION = 0.1
LIMIT_GAP_FRACTION = 0.5
RTOL = 1e-8
CHUNK = 2.0  # the automatic horizon grows in chunks of CHUNK / lambda_max(H(0)) (twice the first stage time)
MAX_CHUNKS = 24
SETTLED_LOSS = 1e-2  # a chunk is settled when the loss fell by less than this fraction of the initial loss ...
GROWTH_FLOOR = 1e-6  # ... and no singular value between GROWTH_FLOOR x largest and the level grew 2x
N_OUT_PER_CHUNK = 200


class Reason(str, Enum):
    """rank-increments' failure kinds (docs/THEORY.md §5.0)."""

    JUMPS_NOT_SEPARATED = "jumps-not-separated"  # fail: two rank changes merge into one jump as alpha -> 0
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


@dataclass(frozen=True)
class RankMeasurement:
    """Singular values ``sv[P]`` [B, T, r_P] along ``traj``; ``levels`` [B] the rank levels; ``events[b]``
    in time order; ``growth_rate`` = lambda_max of the Hessian at theta = 0 (first stage at ~1 / it);
    ``log_inv_alphas``: the ladder as asked for (run b is its b-th entry)."""

    names: tuple[str, ...]
    traj: ParamTrajectory
    sv: tuple[torch.Tensor, ...]
    levels: torch.Tensor
    events: tuple[tuple[Event, ...], ...]
    growth_rate: float
    horizon: float
    log_inv_alphas: tuple[float, ...]

    @property
    def smallest(self) -> int:
        """The run of the smallest alpha."""
        return int(np.argmax(self.log_inv_alphas))


def singular_values(model, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Singular values (descending) of every product, [B, T, r_P] for theta [B, T, n]; NaN rows stay NaN."""
    finite = torch.isfinite(theta).all(-1, keepdim=True)
    prods = model.products(torch.where(finite, theta, 0.0).to(model.device))
    return tuple(torch.where(finite, torch.linalg.svdvals(P).cpu(), math.nan) for P in prods)


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


def _settled(chunk: ParamTrajectory, sv, loss0: torch.Tensor) -> bool:
    """Nothing changed in this chunk at any alpha: the loss fell by less than SETTLED_LOSS x the initial
    loss ``loss0`` [B], and no singular value below the level grew (a plateau always has a mode growing
    towards its jump)."""
    loss = chunk.loss
    if bool(((loss[:, 0] - loss[:, -1]) > SETTLED_LOSS * loss0).any()):
        return False
    big = torch.stack([s.flatten(1).amax(1) for s in sv]).amax(0)  # [B]
    for s in sv:
        start, end = s[:, 0], s[:, -1]
        floor = (GROWTH_FLOOR * big)[:, None]
        level = (RANK_FRACTION * big)[:, None]
        watched = (end > floor) & (end < level)
        if bool((watched & (end > 2 * torch.maximum(start, floor))).any()):
            return False
    return True


def auto_horizon_run(model, theta0: torch.Tensor, log_inv_alphas, rate: float,
                     horizon: float | None) -> ParamTrajectory:
    """The flow to ``horizon``, or (None) in chunks of CHUNK / rate until a chunk is settled (at most
    MAX_CHUNKS): the end of training is a point where nothing grows any more."""
    if horizon is not None:
        return solve_param_flow(model, theta0, log_inv_alphas, horizon, rtol=RTOL, n_out=4 * N_OUT_PER_CHUNK + 1)
    chunk = CHUNK / rate
    parts: list[ParamTrajectory] = []
    for k in range(MAX_CHUNKS):
        start = parts[-1].theta[:, -1] if parts else None
        part = solve_param_flow(model, theta0, log_inv_alphas, (k + 1) * chunk, rtol=RTOL,
                                n_out=N_OUT_PER_CHUNK + 1, start=start, t0=k * chunk)
        parts.append(part)
        if part.status is not Status.SUCCESS or _settled(part, singular_values(model, part.theta),
                                                         parts[0].loss[:, 0]):
            break
    return _join(parts)


def _join(parts: list[ParamTrajectory]) -> ParamTrajectory:
    cut = [slice(None)] + [slice(1, None)] * (len(parts) - 1)  # chunk k starts where k - 1 ended
    last = parts[-1]
    return ParamTrajectory(
        last.log_inv_alpha, torch.cat([p.tau[c] for p, c in zip(parts, cut)]),
        torch.cat([p.theta[:, c] for p, c in zip(parts, cut)], dim=1),
        torch.cat([p.loss[:, c] for p, c in zip(parts, cut)], dim=1), sum(p.nfev for p in parts), last.status,
        last.message)


def measure(model, theta0: torch.Tensor, log_inv_alphas, horizon: float | None = None) -> RankMeasurement:
    """Run the ladder and detect the events (module docstring)."""
    rate = growth_rate(model)
    names = tuple(model.product_names())
    if not rate > 0:
        empty = torch.zeros(len(log_inv_alphas), 1, model.n_params, dtype=torch.float64)
        traj = ParamTrajectory(torch.tensor(list(log_inv_alphas)), torch.zeros(1), empty,
                               torch.zeros(len(log_inv_alphas), 1), 0, Status.SUCCESS, "")
        return RankMeasurement(names, traj, (), torch.zeros(len(log_inv_alphas)), ((),) * len(log_inv_alphas),
                               0.0, 0.0, tuple(float(L) for L in log_inv_alphas))
    traj = auto_horizon_run(model, theta0, log_inv_alphas, rate, horizon)
    sv = singular_values(model, traj.theta)
    big = torch.stack([s.flatten(1).nan_to_num(0.0).amax(1) for s in sv]).amax(0)
    levels = RANK_FRACTION * big
    evs = tuple(events(traj.tau, tuple(s[b] for s in sv), float(levels[b])) for b in range(len(levels)))
    return RankMeasurement(names, traj, sv, levels, evs, rate, float(traj.tau[-1]),
                           tuple(float(L) for L in log_inv_alphas))


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
    order = np.argsort(m.traj.log_inv_alpha.numpy())
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
                L.append(float(m.traj.log_inv_alpha[b]))
                g.append(evs[k2].tau - evs[k1].tau)
        out.append(Gap(e1, e2, tuple(L), tuple(g), fit_limit(L, g)))
    return out


def sigma(m: RankMeasurement, e: Event) -> str:
    return f"sigma_{e.index}({m.names[e.product]})"


def describe(m: RankMeasurement, e: Event) -> str:
    return f"{sigma(m, e)} {'rises above' if e.up else 'falls below'} the level"


def judged_gaps(m: RankMeasurement) -> list[Gap]:
    """The gaps the judgement reads: none when nothing is learned, the flow failed or nothing crossed the level
    at the smallest alpha."""
    small = int(np.argmax([float(x) for x in m.traj.log_inv_alpha]))
    if m.growth_rate == 0 or m.traj.status is not Status.SUCCESS or not m.events[small]:
        return []
    return gaps(m)


def judge(m: RankMeasurement) -> tuple[Verdict, Reason | None, str]:
    """Verdict, reason and message from a measurement (module docstring)."""
    L = [float(x) for x in m.traj.log_inv_alpha]
    small = int(np.argmax(L))
    if m.growth_rate == 0:
        return (Verdict.INCONCLUSIVE, Reason.NOTHING_TO_TEST,
                "the gradient vanishes at zero: nothing is learned (is the teacher zero?)")
    if m.traj.status is not Status.SUCCESS:
        return Verdict.INCONCLUSIVE, Reason.SOLVER_FAILED, f"the flow did not reach the horizon: {m.traj.message}"
    evs = m.events[small]
    if not evs:
        return (Verdict.INCONCLUSIVE, Reason.NO_JUMP, f"no singular value crossed {RANK_FRACTION:g} x the largest by "
                f"tau = {m.horizon:.3g} at alpha={format_alpha(L[small])} (raise --horizon)")
    gs = gaps(m)
    ties, short = [], []
    for gp in gs:
        if gp.limit is None:
            short.append(f"{describe(m, gp.second)} at fewer than two alphas")
        elif not gp.ratio >= LIMIT_GAP_FRACTION:
            same = gp.first.product == gp.second.product
            what = (f"raises the rank of {m.names[gp.first.product]} by two" if same and gp.first.up == gp.second.up
                    else f"changes the ranks of {m.names[gp.first.product]} and {m.names[gp.second.product]} "
                         "at once" if not same else f"moves the rank of {m.names[gp.first.product]} twice")
            trend = ", ".join(f"{g:.3g}" for g in gp.gaps)
            ties.append(f"{describe(m, gp.first)} at tau={gp.first.tau:.4g} and {describe(m, gp.second)} at "
                        f"tau={gp.second.tau:.4g}: the gap closes like 1/log(1/alpha) ({trend} from the largest "
                        f"to the smallest alpha, extrapolated to {gp.limit:.3g} < {LIMIT_GAP_FRACTION:g} x "
                        f"{gp.gaps[-1]:.3g}), so one jump {what}")
    falls = [e for e in evs if not e.up]
    note = (f"; {len(falls)} rank decrease(s): " + ", ".join(f"{describe(m, e)} at tau={e.tau:.3g}" for e in falls)
            if falls else "")
    if ties:
        return Verdict.FAIL, Reason.JUMPS_NOT_SEPARATED, "jumps do not separate: " + "; ".join(ties) + note
    if short:
        return (Verdict.INCONCLUSIVE, Reason.LADDER_TOO_SHORT,
                "cannot extrapolate: " + "; ".join(short) + " (widen the ladder)")
    ranks = [int((s[small, -1] > m.levels[small]).sum()) for s in m.sv]
    worst = min((gp.ratio for gp in gs), default=math.inf)
    return Verdict.PASS, None, (
        f"{len(evs)} jump(s) at alpha={format_alpha(L[small])}, each raising the rank of one product by one ("
        + ", ".join(f"{sigma(m, e)} at tau={e.tau:.3g}" for e in evs)
        + "); final ranks " + ", ".join(f"{n} {r}" for n, r in zip(m.names, ranks))
        + (f"; gaps between jumps keep >= {worst:.2f} of their size as alpha -> 0" if gs else "") + note)


def _subsample(tau: torch.Tensor, y: torch.Tensor, n: int = 300) -> tuple[list[float], list[float]]:
    step = max(1, math.ceil(len(tau) / n))
    return tau[::step].tolist(), y[::step].tolist()


MAX_SERIES_PER_PRODUCT = 6


def figures(m: RankMeasurement) -> list[Figure]:
    """Singular values against rescaled time per alpha with the level and the detected events; the gaps
    between consecutive events against 1 / log(1/alpha) with their fits (the extrapolation judged)."""
    out = []
    for b, L in enumerate(m.traj.log_inv_alpha.tolist()):
        series = []
        for P, s in enumerate(m.sv):
            for j in range(min(s.shape[-1], MAX_SERIES_PER_PRODUCT)):
                x, y = _subsample(m.traj.tau, s[b, :, j])
                series.append(Series(f"sigma_{j + 1}({m.names[P]})", x, y, "-" if P == 0 else "--"))
        out.append(Figure(
            f"singular-values-{b}", f"Singular values of the products at alpha={format_alpha(L)}", "line",
            "tau = t / log(1/alpha)", "singular value", tuple(series), yscale="log",
            vlines=tuple(Mark(e.tau, sigma(m, e)) for e in m.events[b]),
            hlines=(Mark(float(m.levels[b]), f"{RANK_FRACTION:g} x largest"),),
            caption="Plateaus and jumps (paper Fig. 2 right): the numerical rank of a product counts its singular "
                    "values above the level; vertical lines are the detected events (a singular value crossing "
                    "the level)."))
    fits = []
    for gp in judged_gaps(m):
        x = [1.0 / L for L in gp.log_inv_alphas]
        label = f"{sigma(m, gp.first)} -> {sigma(m, gp.second)}"
        fits.append(Series(label, x, gp.gaps, "o-"))
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
    """The smallest limit / gap ratio (judged), the events, gaps and final ranks (info), the cost."""
    gs = judged_gaps(m)
    ratios = [gp.ratio for gp in gs if gp.ratio is not None]
    small = m.smallest
    alphas = [format_alpha(L) for L in m.log_inv_alphas]
    return {
        "min_limit_gap_ratio": Metric.at_least(min(ratios) if ratios else (math.inf if m.events[small] else None),
                                               LIMIT_GAP_FRACTION),
        "jumps": Metric.info(len(m.events[small])),
        "final_ranks": Metric.info({n: int((s[small, -1] > m.levels[small]).sum()) for n, s in zip(m.names, m.sv)}
                                   if m.sv else {}),
        "events": Metric.info({a: _event_rows(m, b) for b, a in enumerate(alphas)}),
        "gaps": Metric.info([{"between": [sigma(m, gp.first), sigma(m, gp.second)], "gaps": list(gp.gaps),
                              "limit": gp.limit, "ratio": gp.ratio} for gp in gs]),
        "alphas": Metric.info(alphas),
        "horizon": Metric.info(m.horizon),
        "nfev": Metric.lower(m.traj.nfev, gate=None),
    }


@register(ID, CLAIM, reasons=Reason, diagonal_only=False, full_only=True, order=60, options=("alphas", "horizon"))
def check_rank_increments(ctx) -> CheckResult:
    m = measure(ctx.model, ctx.theta0(1)[0], ctx.config.log_inv_alphas or LADDER, ctx.config.horizon)
    verdict, reason, message = judge(m)
    settings = {"rank_fraction": RANK_FRACTION, "limit_gap_fraction": LIMIT_GAP_FRACTION, "rtol": RTOL,
                "atol": f"rtol x {ATOL_FRACTION:g} x alpha", "integrator": "scipy DOP853 on theta, batched over alphas",
                "growth_rate": m.growth_rate, "horizon": "given" if ctx.config.horizon else "automatic"}
    return CheckResult(ID, CLAIM, verdict, message, declare(m), "min_limit_gap_ratio", settings,
                       {"figures": figures(m)}, reason=reason)
