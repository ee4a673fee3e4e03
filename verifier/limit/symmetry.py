"""Exact ties that come from a symmetry of the loss (THEORY.md §5, Assumption 4.2b).

Two coordinates i, j of beta can tie in Algorithm 1 (equal Delta, margin 0) because the loss cannot tell them
apart: Lb(pi beta) = Lb(beta) for a permutation pi of the coordinates that maps i to j. Then the tie is exact
at every stage and for every data draw of that form, the alpha -> 0 limit does not pick one of them, and a
flat direction appears once both are on the support. We test candidate permutations numerically at N_PROBES
random beta ~ N(0, PROBE_SCALE^2) (the scale of beta along training) and accept one when the largest relative
change of the loss is <= SYMMETRY_TOL (rounding is ~1e-15).

Candidates, from the model's ``coordinate_structure()`` — (group, pair, index) per coordinate, e.g.
("head 0 of layer 1", "vo", 2) — in this order:
1. exchange the groups of i and j entry by entry (two heads of one layer: the transformer of Example 3.2,
   whose heads have the same functional form);
2. within one group, exchange indices i and j in every pair (two token dimensions the data cannot tell apart);
3. exchange i and j alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SYMMETRY_TOL = 1e-10
N_PROBES = 3
PROBE_SCALE = 0.5


@dataclass(frozen=True)
class Symmetry:
    """Lb(beta[permutation]) = Lb(beta) to ``max_change`` (relative) at the probes; ``description`` says what
    is exchanged, e.g. 'heads 0 and 1 of layer 1 are exchangeable'."""

    i: int
    j: int
    permutation: tuple[int, ...]
    description: str
    max_change: float


def exchange_text(a: str, b: str) -> str:
    """'head 0 of layer 1', 'head 1 of layer 1' -> 'heads 0 and 1 of layer 1'; else 'a and b'."""
    wa, wb = a.split(), b.split()
    diff = [k for k in range(len(wa)) if len(wa) == len(wb) and wa[k] != wb[k]]
    if len(diff) == 1 and diff[0] >= 1:
        k = diff[0]
        return " ".join(wa[: k - 1] + [f"{wa[k - 1]}s {wa[k]} and {wb[k]}"] + wa[k + 1 :])
    return f"{a or 'the top level'} and {b or 'the top level'}"


def candidates(model, i: int, j: int) -> list[tuple[tuple[int, ...], str]]:
    """Permutations (involutions mapping i to j) to test, with what each exchanges (module docstring)."""
    st = model.coordinate_structure()
    where = {s: k for k, s in enumerate(st)}
    (gi, _, ki), (gj, _, kj) = st[i], st[j]
    names = model.coordinate_names()
    out: list[tuple[tuple[int, ...], str]] = []

    def swapped(pairs_of_indices):
        perm = list(range(len(st)))
        for a, b in pairs_of_indices:
            perm[a], perm[b] = b, a
        return tuple(perm)

    if gi != gj:
        swaps = [(k, where[(gj, pair, idx)]) for k, (g, pair, idx) in enumerate(st)
                 if g == gi and (gj, pair, idx) in where]
        out.append((swapped(swaps), f"{exchange_text(gi, gj)} are exchangeable"))
    elif ki != kj:
        swaps = [(k, where[(g, pair, kj)]) for k, (g, pair, idx) in enumerate(st)
                 if g == gi and idx == ki and (g, pair, kj) in where]
        out.append((swapped(swaps), f"dimensions {ki} and {kj} are exchangeable in every weight of "
                                    f"{gi or 'the model'}"))
    out.append((swapped([(i, j)]), f"{names[i]} and {names[j]} are exchangeable"))
    return [(perm, text) for perm, text in out if perm[i] == j]


def find_symmetry(model, i: int, j: int, seed: int = 0) -> Symmetry | None:
    """The first candidate permutation exchanging i and j that leaves Lb invariant at random beta, or None."""
    if i == j:
        return None
    gen = torch.Generator().manual_seed(seed)
    beta = (PROBE_SCALE * torch.randn(N_PROBES, model.p, generator=gen, dtype=torch.float64)).to(model.device)
    base = model.loss_b(beta)
    for perm, text in candidates(model, i, j):
        moved = model.loss_b(beta[:, list(perm)])
        change = float(((moved - base).abs() / base.abs().clamp_min(1e-300)).max())
        if change <= SYMMETRY_TOL:
            return Symmetry(i, j, perm, text, change)
    return None


@dataclass(frozen=True)
class Tie:
    """Stage k of Algorithm 1 chose ``i`` with ``j`` the runner-up at argmin margin ``margin``;
    ``symmetry`` explains it when the loss cannot tell them apart. ``exact``: margin 0 or a symmetry."""

    k: int
    i: int
    j: int
    margin: float
    symmetry: Symmetry | None

    @property
    def exact(self) -> bool:
        return self.margin == 0.0 or self.symmetry is not None


def ties(model, seq, margin_tol: float, seed: int = 0) -> list[Tie]:
    """The stages of ``seq`` whose argmin margin is below ``margin_tol``, each with its runner-up and the
    symmetry (if any) that exchanges the two."""
    out = []
    for s in seq.stages[1:]:
        if s.margin is None or s.margin >= margin_tol:
            continue
        j = seq.runner_up(s.k)
        if j is not None:
            out.append(Tie(s.k, s.coordinate, j, s.margin, find_symmetry(model, s.coordinate, j, seed)))
    return out


def explain(sym: Symmetry) -> str:
    """The sentence the checks append to a tie or a flat direction."""
    return (f"{sym.description} (the loss is invariant under exchanging them: relative change "
            f"{sym.max_change:.1g} at {N_PROBES} random beta), so the tie is exact for every data set of this form")
