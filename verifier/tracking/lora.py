"""LoRA ranks recommended from the measured change of a full fine-tune (docs/LORA.md; THEORY.md §6).

A LoRA adapter replaces a module's change dW by B A of rank r. The rank a module's change *needs* is read off
its spectrum: the smallest r whose top singular values hold a share ``energy`` of ||dW||_F^2,

    r(energy) = min { r : s_1^2 + ... + s_r^2 >= energy * ||dW||_F^2 },

the best rank-r approximation's share of the change (Eckart-Young). The per-head products are the evidence of
*which* heads moved, and of whether the ranks suffice per head: with adapters of ranks r_q on q and r_k on k, each
head's d(Wq_h^T Wk_h) has rank <= min(r_q, k) + min(r_k, k) (docs/LORA.md), so a head whose measured change
has a larger numerical rank cannot be reproduced by those ranks.

Trust (``LoraRecommendation.judgement``): pass when no head gained numerical rank over the last ``tail`` of
the records (the rank has saturated, whether or not the loss still falls); inconclusive when some head is still
gaining rank (the ranks are a lower bound: record a longer pilot), when the run logged no loss, or for two
checkpoints (no trend to judge). Refused (:class:`~verifier.errors.InputError`, naming the input) when the
history cannot support a recommendation: no module spectra, fewer than ``MIN_RECORDS`` records, fewer than
``MIN_MODULE_RECORDS`` module measurements, a diverged run, or no module that changed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..results import Judgement
from .history import RankHistory
from .judge import SIZE_FLOOR
from .output_set import FOLDER, HISTORY_FILE, locate_history
from .spectra import numerical_rank

DEFAULT_ENERGY = 0.9
# One lora_alpha for every module, whatever its rank (the LoRA paper's convention, Hu et al. 2021, §4.1: with Adam
# a fixed alpha keeps adapters of different ranks at a comparable update scale without retuning the learning rate;
# alpha = scaling * r would make the effective step grow with r). No alpha_pattern.
DEFAULT_ALPHA = 16.0
DEFAULT_TAIL = 0.25  # the share of the records the saturation signal reads
MIN_RECORDS = 10  # head records (the reference included) a recommendation needs
MIN_TAIL = 3  # records in the tail, at least
MIN_MODULE_RECORDS = 2  # module measurements (so that a growing module rank can be seen)
LOSS_FALL = 0.01  # relative fall of the loss over the tail that counts as "the loss still falls"
HEAD_MOVED = 0.1  # a head moved when ||dM_h||_F >= this share of the largest head's of the same product
# A head's rank counts the directions of its change whose singular value is >= 10% of its largest. The tracker's
# numerical rank (1%) is the wrong scale here: Adam's per-step noise fills most of a head's 2k directions above
# 1% within a short fine-tune (measured in a 150-step fine-tune of docs/LORA.md's digits task: 26-30 of 32),
# so a rank "gained" at 1% is noise; at 10% it is a direction that carries weight (rank-increments' level, §6).
HEAD_RANK_RTOL = 0.1


class Reason(str, Enum):
    RANK_STILL_GROWING = "rank-still-growing"  # a head gained numerical rank over the tail: ranks are a lower bound
    NO_LOSS = "no-loss"  # the tail carries no loss: saturation cannot be told from convergence
    NO_TREND = "no-trend"  # two checkpoints: no records, so no trend to judge


class Saturation(str, Enum):
    SATURATED = "saturated"  # no head gains rank while the loss still falls
    CONVERGED = "converged"  # no head gains rank and the loss no longer falls
    GROWING = "growing"  # some head gains rank over the tail
    UNKNOWN = "unknown"  # not judged (no loss, or no records)


@dataclass(frozen=True)
class ProductEvidence:
    """One product a module is a factor of, at the last record: heads that ``moved`` (of ``heads``), the
    largest numerical rank of a head's change, and the bound min(r_a, k) + min(r_b, k) the recommended
    ranks put on it (None when a factor's module is not tracked)."""

    product: str
    heads: int
    moved: int
    max_head_rank: int
    bound: int | None

    @property
    def covered(self) -> bool | None:
        return None if self.bound is None else self.max_head_rank <= self.bound


@dataclass(frozen=True)
class ModuleRank:
    """One module's measured change and its recommended LoRA rank."""

    name: str
    shape: tuple[int, int]
    norm: float  # ||dW||_F at the last module measurement
    energy_rank: int  # r(energy); 0 for a module that did not change
    rank: int  # recommended: energy_rank clipped to [1, max_rank] (0: not a target)
    captured: float  # the share of ||dW||_F^2 the recommended rank holds
    stable_rank: float
    trend: tuple[int, ...]  # r(energy) at each module measurement
    products: tuple[ProductEvidence, ...] = ()

    @property
    def lora_parameters(self) -> int:
        """Trainable parameters of a rank-``rank`` adapter: A [r, in] and B [out, r]."""
        return self.rank * sum(self.shape)


@dataclass(frozen=True)
class LoraRecommendation:
    energy: float
    lora_alpha: float
    modules: tuple[ModuleRank, ...]
    saturation: Saturation
    judgement: Judgement
    source: dict = field(default_factory=dict)  # kind, records, steps, module steps, the input

    @property
    def targets(self) -> tuple[ModuleRank, ...]:
        return tuple(m for m in self.modules if m.rank > 0)

    @property
    def lora_parameters(self) -> int:
        return sum(m.lora_parameters for m in self.targets)

    def uniform_parameters(self, r: int) -> int:
        """Trainable parameters of rank r on the same target modules (for comparison)."""
        return sum(min(r, min(m.shape)) * sum(m.shape) for m in self.targets)

    def peft_ranks(self) -> dict[str, int]:
        """{PEFT target: rank}. An ``nn.MultiheadAttention`` (a target M beside a target M.out_proj) is adapted by
        PEFT as one module, in_proj and out_proj at one rank: M gets the larger of the two, M.out_proj none
        (PEFT ignores an adapter on it: the attention never calls out_proj's forward)."""
        ranks = {m.name: m.rank for m in self.targets}
        for name in [n for n in ranks if n + ".out_proj" in ranks]:
            ranks[name] = max(ranks[name], ranks.pop(name + ".out_proj"))
        return ranks

    def lora_config(self) -> dict:
        """Keyword arguments of ``peft.LoraConfig``: ``target_modules`` (full names: PEFT matches a name or its
        trailing components), ``r`` (the most common rank), ``rank_pattern`` (every target) and ``lora_alpha``
        (one for every module, ``DEFAULT_ALPHA``)."""
        ranks = self.peft_ranks()
        values = list(ranks.values())
        r = max(set(values), key=lambda v: (values.count(v), -v)) if values else 1
        return {"target_modules": list(ranks), "r": r, "lora_alpha": self.lora_alpha, "rank_pattern": dict(ranks)}

    def to_dict(self) -> dict:
        return {"energy": self.energy, "lora_alpha": self.lora_alpha, "saturation": self.saturation.value,
                "verdict": self.judgement.verdict.value, "reason": self.judgement.reason,
                "message": self.judgement.message, "lora_config": self.lora_config(),
                "lora_parameters": self.lora_parameters, "source": self.source,
                "modules": [{**asdict(m), "shape": list(m.shape), "trend": list(m.trend),
                             "lora_parameters": m.lora_parameters,
                             "products": [{**asdict(p), "covered": p.covered} for p in m.products]}
                            for m in self.modules]}

    def rows(self) -> list[list[str]]:
        """The table: one row per module (header first)."""
        out = [["module", "shape", "||dW||_F", f"r({self.energy:g})", "LoRA r", "share held", "stable rank",
                "r over time", "heads moved", "head rank <= bound"]]
        for m in self.modules:
            moved = ", ".join(f"{p.product.rsplit('.', 1)[-1]} {p.moved}/{p.heads}" for p in m.products)
            bound = ", ".join(f"{p.max_head_rank} <= {p.bound}" if p.bound is not None else f"{p.max_head_rank}"
                              for p in m.products)
            out.append([m.name, f"{m.shape[0]}x{m.shape[1]}", f"{m.norm:.3g}", str(m.energy_rank), str(m.rank),
                        f"{m.captured:.3f}", f"{m.stable_rank:.2f}", " ".join(map(str, m.trend[-6:])),
                        moved or "-", bound or "-"])
        return out

    def table(self) -> str:
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        total = self.lora_parameters
        same = [r for r in (1, 2, 4, 8, 16, 32, 64) if self.uniform_parameters(r) >= total]
        lines.append(f"trainable LoRA parameters: {total}" + (
            f" (uniform rank {same[0]} on the same modules: {self.uniform_parameters(same[0])})" if same else ""))
        lines.append(f"{self.judgement.verdict.value}: {self.judgement.message}")
        return "\n".join(lines)


# --- measurement ------------------------------------------------------------------------------------------

def energy_rank(spectrum: np.ndarray, norm: float, energy: float) -> int:
    """min r with s_1^2 + ... + s_r^2 >= energy * norm^2 (0 for a zero change; the spectrum's length when
    rounding keeps the sum just short of it)."""
    if not norm > 0:
        return 0
    captured = np.cumsum(np.asarray(spectrum, dtype=np.float64) ** 2)
    need = energy * norm**2 * (1 - 1e-12)
    hit = np.flatnonzero(captured >= need)
    return int(hit[0]) + 1 if hit.size else int(len(spectrum))


def _share(spectrum: np.ndarray, norm: float, r: int) -> float:
    return float(np.sum(np.asarray(spectrum[:r], dtype=np.float64) ** 2) / norm**2) if norm > 0 else 0.0


def _check_energy(energy) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not (0 < energy <= 1):
        raise InputError("energy", f"{energy!r}", "a share of the change's energy in (0, 1], e.g. 0.9")
    return float(energy)


def _check_options(lora_alpha, max_rank, tail) -> None:
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not (
            lora_alpha > 0 and math.isfinite(lora_alpha)):
        raise InputError("lora_alpha", f"{lora_alpha!r}", "a positive number (e.g. 16)")
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise InputError("max_rank", f"{max_rank!r}", "a positive integer or None")
    if isinstance(tail, bool) or not isinstance(tail, (int, float)) or not (0 < tail < 1):
        raise InputError("tail", f"{tail!r}", "a share of the records in (0, 1), e.g. 0.25")


def _saturation(history: RankHistory, tail: float) -> tuple[Saturation, Judgement, dict]:
    """No head gains numerical rank over the last ``tail`` of the records (a rank higher than any it had
    before the tail, counted from the record where its change reached a tenth of its largest size: before
    that, Adam's first sign-like steps are full rank and tiny, as gradual-rank-increase's SIZE_FLOOR says),
    and whether the loss still falls over the tail (its last quarter's mean at least LOSS_FALL below its first
    quarter's)."""
    T = len(history.steps)
    n_tail = min(max(MIN_TAIL, math.ceil(tail * T)), T - 2)  # at least one record besides the reference before it
    ranks = history.numerical_rank(HEAD_RANK_RTOL)  # [T, P]; NaN at the reference
    size = np.sqrt(np.sum(history.delta_spectra**2, axis=-1))  # [T, P]
    grown = size >= SIZE_FLOOR * np.max(size, axis=0)
    ranks = np.where(grown & ~np.isnan(ranks), ranks, -1)
    before, during = ranks[: T - n_tail].max(axis=0), ranks[T - n_tail:].max(axis=0)
    gained = [label for label, b, d in zip(history.labels, before, during) if d > b]
    losses = history.losses[T - n_tail:]
    losses = losses[np.isfinite(losses)]  # records at steps the trainer did not log carry none
    q = max(1, len(losses) // 4)
    first, last = losses[:q], losses[-q:]
    evidence = {"tail_records": n_tail, "tail_from_step": int(history.steps[T - n_tail]),
                "heads_gaining_rank": gained}
    if gained:
        shown = ", ".join(gained[:4]) + (f" and {len(gained) - 4} more" if len(gained) > 4 else "")
        return Saturation.GROWING, Judgement.inconclusive(
            Reason.RANK_STILL_GROWING, f"{len(gained)} of {len(history.labels)} heads gained a direction (a singular "
            f"value >= {HEAD_RANK_RTOL:g} of their largest) over the last {n_tail} records ({shown}): the change is "
            "still growing, so these ranks are a lower bound; track a longer pilot run"), evidence
    if len(losses) < 2:
        return Saturation.UNKNOWN, Judgement.inconclusive(
            Reason.NO_LOSS, f"no head gained a direction over the last {n_tail} records, but they carry no loss, so a "
            "saturated rank cannot be told from a finished run (log the loss at every record)"), evidence
    fall = 1 - float(np.mean(last)) / float(np.mean(first)) if np.mean(first) > 0 else 0.0
    evidence["tail_loss_fall"] = fall
    if fall >= LOSS_FALL:
        return Saturation.SATURATED, Judgement.passed(
            f"rank saturated: no head gained a direction over the last {n_tail} records while the loss still "
            f"fell {100 * fall:.1f}%"), evidence
    return Saturation.CONVERGED, Judgement.passed(
        f"converged: no head gained a direction over the last {n_tail} records and the loss fell "
        f"{100 * fall:.1f}% (< {100 * LOSS_FALL:g}%)"), evidence


def _product_evidence(history: RankHistory, feeds: tuple[str, ...], ranks: dict[str, int],
                      sides: dict[str, dict[str, str]]) -> tuple[ProductEvidence, ...]:
    names = np.array(history.names)
    last = history.delta_spectra[-1]
    out = []
    for product in dict.fromkeys(f.rsplit(":", 1)[0] for f in feeds):
        idx = np.flatnonzero(names == product)
        if not idx.size:
            continue
        s = last[idx]
        norms = np.sqrt(np.sum(s**2, axis=-1))
        moved = int(np.sum(norms >= HEAD_MOVED * norms.max())) if norms.max() > 0 else 0
        nr = numerical_rank(s, HEAD_RANK_RTOL)
        k = history.product_rank[idx[0]]
        a, b = sides[product].get("a"), sides[product].get("b")
        bound = (min(ranks[a], k) + min(ranks[b], k)) if a in ranks and b in ranks else None
        if bound is not None:
            bound = min(bound, history.max_rank[idx[0]])
        out.append(ProductEvidence(product, len(idx), moved, int(np.nanmax(nr)) if moved else 0, bound))
    return tuple(out)


def _module_ranks(names, shapes, feeds, spectra, norms, energy, max_rank, history=None) -> tuple[ModuleRank, ...]:
    """Rank per module from the last measurement; the trend from every measurement; per-head evidence from
    ``history`` when given."""
    ranks, rows = {}, []
    for i, name in enumerate(names):
        trend = tuple(energy_rank(spectra[t, i], norms[t, i], energy) for t in range(len(norms)))
        s, norm = spectra[-1, i], float(norms[-1, i])
        r_e = trend[-1]
        r = 0 if r_e == 0 else max(1, min(r_e, max_rank or r_e))
        ranks[name] = r
        stable = float(norm**2 / s[0] ** 2) if norm > 0 and s[0] > 0 else float("nan")
        rows.append((name, tuple(shapes[i]), norm, r_e, r, _share(s, norm, r), stable, trend))
    sides: dict[str, dict[str, str]] = {}
    for name, fs in zip(names, feeds):
        for f in fs:
            product, _, side = f.rpartition(":")
            sides.setdefault(product, {})[side] = name
    return tuple(ModuleRank(*row, products=_product_evidence(history, feeds[i], ranks, sides) if history else ())
                 for i, row in enumerate(rows))


def target_pattern(targets: str | None, field: str = "targets"):
    """``targets`` compiled (None: every module)."""
    try:
        return re.compile(targets) if targets is not None else None
    except (re.error, TypeError) as exc:
        raise InputError(field, f"{targets!r} is not a regular expression ({exc})",
                         "a regular expression the module names must contain, e.g. attn") from None


def recommend_from_history(history: RankHistory, energy: float = DEFAULT_ENERGY, *, lora_alpha: float = DEFAULT_ALPHA,
                           max_rank: int | None = None, tail: float = DEFAULT_TAIL, targets: str | None = None,
                           field: str = "history", source: dict | None = None) -> LoraRecommendation:
    """The recommendation from a RankHistory with module spectra (module docstring); refused with an
    InputError naming ``field`` when the history cannot support it."""
    energy = _check_energy(energy)
    _check_options(lora_alpha, max_rank, tail)
    pattern = target_pattern(targets)
    names = tuple(getattr(history, "module_names", ()) or ())
    if not names:
        raise InputError(field, "the history holds no per-module weight-change spectra (tracked by a verifier without "
                      "them, or a run that trained no attention weight directly, e.g. a PEFT adapter run)",
                      "the history of a full fine-tune tracked by RankTracker (module spectra are on by default)")
    T, Tm = len(history.steps), len(history.module_steps)
    if history.diverged_step is not None:
        raise InputError(field, f"training diverged at step {history.diverged_step}", "a run whose weights and loss "
                      "stayed finite")
    if T < MIN_RECORDS:
        raise InputError(field, f"{T} records; a recommendation needs at least {MIN_RECORDS} (the saturation signal "
                      f"reads the last {DEFAULT_TAIL:.0%} of them, at least {MIN_TAIL})",
                      f"a run tracked with >= {MIN_RECORDS} records (a smaller `every`, or more steps)")
    if Tm < MIN_MODULE_RECORDS:
        raise InputError(field, f"{Tm} module measurement(s) (at steps {list(map(int, history.module_steps))}); "
                      f"a recommendation needs at least {MIN_MODULE_RECORDS}",
                      "more records: module spectra are measured every `module_every`-th record")
    keep = [i for i, n in enumerate(names) if pattern is None or pattern.search(n)]
    if not keep:
        raise InputError("targets", f"{targets!r} matches none of the tracked modules ({', '.join(names[:3])}, ...)",
                         "a regular expression some module names contain")
    norms, spectra = np.asarray(history.module_norms)[:, keep], np.asarray(history.module_spectra)[:, keep]
    if not np.all(np.isfinite(norms)):
        raise InputError(field, "non-finite module spectra", "a run whose weights stayed finite")
    if not np.any(norms[-1] > 0):
        raise InputError(field, "no tracked module changed between the first record and the last module measurement",
                      "the history of a run that trained its attention weights")
    modules = _module_ranks([names[i] for i in keep], [history.module_shapes[i] for i in keep],
                            [history.module_feeds[i] for i in keep], spectra, norms, energy, max_rank, history)
    saturation, judgement, evidence = _saturation(history, tail)
    parts = [judgement]
    last, last_module = int(history.steps[-1]), int(history.module_steps[-1])
    if last_module < last:
        parts.append(Judgement.passed(f"module ranks measured at step {last_module}, the last record is at step "
                                      f"{last} (module spectra every `module_every` records)"))
    uncovered = [f"{p.product} ({p.max_head_rank} > {p.bound})" for m in modules for p in m.products
                 if p.covered is False]
    if uncovered:
        parts.append(Judgement.passed(f"the ranks bound {len(set(uncovered))} products' head changes below their "
                                      f"measured numerical rank: {', '.join(sorted(set(uncovered))[:3])}"))
    src = {"kind": "history", "records": T, "targets": targets, "first_step": int(history.steps[0]), "last_step": last,
           "module_steps": [int(s) for s in history.module_steps], **evidence, **(source or {})}
    return LoraRecommendation(energy, float(lora_alpha), modules, saturation, Judgement.compose(parts, "; "), src)


def recommend_from_checkpoints(before, after, energy: float = DEFAULT_ENERGY, *, lora_alpha: float = DEFAULT_ALPHA,
                               max_rank: int | None = None, targets: str | None = None,
                               flag: str = "") -> LoraRecommendation:
    """Ranks from the change between two checkpoints (:mod:`.checkpoints`): inconclusive ``no-trend``. Errors
    name ``before``/``after``/``targets`` after ``flag`` ("--" for ``verifier recommend-lora``)."""
    from .checkpoints import checkpoint_changes

    energy = _check_energy(energy)
    _check_options(lora_alpha, max_rank, 0.5)
    changes = checkpoint_changes(before, after, target_pattern(targets), targets, flag)
    modules = _module_ranks(list(changes.names), list(changes.shapes), [()] * len(changes.names), changes.spectra,
                            changes.norms, energy, max_rank)
    judgement = Judgement.inconclusive(Reason.NO_TREND, "two checkpoints carry no trend: whether the rank has "
                                       "saturated is not judged (track the run with RankTracker for that)")
    source = {"kind": "checkpoints", "before": str(before) if not isinstance(before, dict) else "state dict",
              "after": str(after) if not isinstance(after, dict) else "state dict", "targets": targets}
    return LoraRecommendation(energy, float(lora_alpha), modules, Saturation.UNKNOWN, judgement, source)


def recommend_lora(history_or_run, energy: float = DEFAULT_ENERGY, *, lora_alpha: float = DEFAULT_ALPHA,
                   max_rank: int | None = None, tail: float = DEFAULT_TAIL, before=None, after=None,
                   targets: str | None = None) -> LoraRecommendation:
    """Per-module LoRA ranks holding a share ``energy`` of each module's ||dW||_F^2 (module docstring).

    ``history_or_run``: a :class:`RankHistory` (``tracker.history()`` or ``RankHistory.load``), a callbacks'
    output folder (it finds ``rank-tracking/rank-history.npz`` in it), or a ``rank-history.npz`` file; or None
    with ``before``/``after``: two checkpoints (state dicts, or files/folders holding them: ``.safetensors``,
    ``.pt``/``.bin``, a Lightning ``.ckpt``, a Hugging Face model folder), every 2-d weight present in both
    (``targets``: a regular expression the module names must match, e.g. ``"attn"``). ``lora_alpha``: the one
    alpha of every module; ``max_rank``: the largest rank recommended; ``tail``: the share of the records the
    saturation signal reads."""
    if history_or_run is None:
        return recommend_from_checkpoints(before, after, energy, lora_alpha=lora_alpha, max_rank=max_rank, targets=targets)
    if before is not None or after is not None:
        raise InputError("before/after", "given with a history or run", "either a history/run or two checkpoints")
    if isinstance(history_or_run, RankHistory):
        return recommend_from_history(history_or_run, energy, lora_alpha=lora_alpha, max_rank=max_rank, tail=tail,
                                      targets=targets)
    path = find_history(history_or_run, "history_or_run")
    return recommend_from_history(load_history(path, "history_or_run"), energy, lora_alpha=lora_alpha, max_rank=max_rank,
                                  tail=tail, targets=targets, field=str(path), source={"history_file": str(path)})


def find_history(run, field: str) -> Path:
    """The rank-history.npz of a run: the file itself, ``RUN/rank-tracking/rank-history.npz``,
    ``RUN/rank-history.npz``, or the one ``rank-tracking/rank-history.npz`` up to three folders below RUN."""
    path = locate_history(run, field, f"a run's output folder or a {HISTORY_FILE}",
                          names=(f"{FOLDER}/{HISTORY_FILE}", HISTORY_FILE), depth=3)
    if path is None:
        raise InputError(field, f"no {FOLDER}/{HISTORY_FILE} in {run}",
                         f"the output folder of a run tracked with RankTrackerCallback, or a {HISTORY_FILE}")
    return path


def load_history(path: Path, field: str) -> RankHistory:
    """``RankHistory.load`` (no model needed), its errors as one InputError naming ``field``."""
    try:
        return RankHistory.load(path)
    except InputError as exc:
        raise InputError(field, str(exc)) from None
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(field, f"cannot read {path} ({exc})", f"a {HISTORY_FILE} written by RankHistory.save") from None


def recommendation_json(rec: LoraRecommendation) -> str:
    """recommendation.json: :meth:`LoraRecommendation.to_dict`, a non-finite number (the stable rank of a
    module that did not change) as null."""
    return json.dumps(_plain(rec.to_dict()), indent=1, allow_nan=False)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value

