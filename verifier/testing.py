"""Hypothesis strategies that build valid inputs for the theory's checks, for your own property suites.

Every strategy builds a valid input directly (nothing is filtered away):

* ``seeds()``: seeds for torch generators; random tensors are drawn from one seed, so a failing example
  shrinks to small sizes and one integer.
* ``teachers(p)``: sparse teacher vectors beta* (r nonzero entries of size in ``scale``, random signs).
* ``gaussian_designs(N, p)`` (X^T X / N != I: correlated, coordinates may leave and re-enter) and
  ``orthogonal_designs(N, p)`` (X^T X / N = I exactly: Algorithm 1 has a closed form, docs/THEORY.md §4).
* ``tokens(N, n, d)``: N sequences of n isotropic Gaussian tokens in R^d (attention data).
* ``inits(p, margin)``: theta0 = (u0, v0) with min_i min(|u0_i + v0_i|, |u0_i - v0_i|) >= margin, the
  non-degeneracy of Assumption 4.2(a) that the reduced flow needs (docs/THEORY.md §3, §5).
* ``log_inv_alphas()`` and ``alpha_texts()``: initialisation scales as L = log(1/alpha), the way alphas
  travel in verifier (alpha = exp(-10^4) underflows a float, L does not), and as the text the CLI reads
  ('1e-16' or 'exp(-10000)').
* ``linear_problems``, ``attention_problems``, ``transformer_problems``, ``full_attention_problems``: whole
  models of the four families (docs/THEORY.md §1) on generated data.

Sizes are ints or strategies. Example::

    from hypothesis import given
    from verifier.limit import algorithm1
    from verifier.testing import linear_problems

    @given(linear_problems(p=4, orthogonal=True))
    def test_stages_are_stationary(model):
        seq = algorithm1(model)
        for s in seq.stages[1:]:
            assert float(s.grad[list(s.support)].abs().max()) <= seq.gtol

Importing this module imports hypothesis; ``import verifier`` does not import it.
"""

from __future__ import annotations

import math
import sys

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from . import data as D
from .models import DiagAttention, DiagLinear, DiagTransformer, FullAttention
from .config import LOSSES
from .presets import frozen_feedforward

__all__ = [
    "seeds", "teachers", "gaussian_designs", "orthogonal_designs", "tokens", "inits", "log_inv_alphas",
    "alpha_texts", "linear_problems", "attention_problems", "transformer_problems", "full_attention_problems",
]

MIN_LOG_INV_ALPHA = math.log(10.0)  # alpha = 0.1
MAX_LOG_INV_ALPHA = 1e4  # alpha = exp(-10^4)


def _draw(draw, x):
    """A size given as a value or as a strategy."""
    return draw(x) if isinstance(x, st.SearchStrategy) else x


def seeds() -> st.SearchStrategy[int]:
    """Seeds of ``torch.Generator`` (0 <= seed < 2^31)."""
    return st.integers(min_value=0, max_value=2**31 - 1)


def log_inv_alphas(min_value: float = MIN_LOG_INV_ALPHA, max_value: float = MAX_LOG_INV_ALPHA) -> st.SearchStrategy[float]:
    """L = log(1/alpha) in [min_value, max_value]: alpha in [exp(-max_value), exp(-min_value)] within (0, 1)."""
    if not (0 < min_value <= max_value and math.isfinite(max_value)):
        raise InvalidArgument(f"log_inv_alphas needs 0 < min_value <= max_value < inf, got {min_value}, {max_value}")
    return st.floats(min_value=min_value, max_value=max_value)


def alpha_texts(min_value: float = MIN_LOG_INV_ALPHA, max_value: float = MAX_LOG_INV_ALPHA) -> st.SearchStrategy[str]:
    """One alpha as the CLI's ``--alphas`` reads it: a decimal ('1e-16', only where alpha is a normal float)
    or 'exp(-L)'; ``verifier.config.parse_alphas`` maps it back to L. Join a list with ',' for several."""

    @st.composite
    def build(draw):
        L = draw(log_inv_alphas(min_value, max_value))
        forms = [f"exp(-{L!r})"] + ([repr(math.exp(-L))] if math.exp(-L) >= sys.float_info.min else [])
        return draw(st.sampled_from(forms))

    return build()


@st.composite
def teachers(draw, p, r=None, scale: tuple[float, float] = (0.5, 2.0)) -> torch.Tensor:
    """beta* [p]: r nonzero entries (default: 1 to p) with magnitudes uniform in ``scale`` and random signs."""
    p = _draw(draw, p)
    r = _draw(draw, st.integers(1, p) if r is None else r)
    if not 0 <= r <= p:
        raise InvalidArgument(f"teachers needs 0 <= r <= p, got r={r}, p={p}")
    if not 0 < scale[0] <= scale[1] < math.inf:
        raise InvalidArgument(f"teachers needs scale = (lo, hi) with 0 < lo <= hi < inf, got {scale}")
    return D.sparse_vector(p, r, scale, D.generator(draw(seeds())))


@st.composite
def gaussian_designs(draw, N, p) -> torch.Tensor:
    """X [N, p] with i.i.d. N(0, 1) entries: a correlated design."""
    return D.gaussian_design(_draw(draw, N), _draw(draw, p), D.generator(draw(seeds())))


@st.composite
def orthogonal_designs(draw, N, p) -> torch.Tensor:
    """X [N, p] with X^T X / N = I exactly (needs N >= p)."""
    N, p = _draw(draw, N), _draw(draw, p)
    if N < p:
        raise InvalidArgument(f"an orthogonal design needs N >= p, got N={N}, p={p}")
    return D.orthogonal_design(N, p, D.generator(draw(seeds())))


@st.composite
def tokens(draw, N, n, d) -> torch.Tensor:
    """X [N, n, d]: N sequences of n isotropic Gaussian tokens in R^d."""
    return D.gaussian_tokens(_draw(draw, N), _draw(draw, n), _draw(draw, d), D.generator(draw(seeds())))


@st.composite
def inits(draw, p, margin: float = 0.5) -> torch.Tensor:
    """theta0 = (u0, v0) [2p], unit scale, with |u0_i +- v0_i| >= margin for every i (Assumption 4.2a).

    Per coordinate one weight has magnitude in [0.5, 1] and the other in [1 + margin, 2 + margin] (which is
    which, and both signs, are drawn), so ||u0_i| - |v0_i|| >= margin."""
    p = _draw(draw, p)
    if not (margin > 0 and math.isfinite(margin)):
        raise InvalidArgument(f"inits needs a finite margin > 0, got {margin}")
    u0, v0 = [], []
    for _ in range(p):
        small = draw(st.floats(0.5, 1.0)) * draw(st.sampled_from([-1.0, 1.0]))
        big = draw(st.floats(1.0 + margin, 2.0 + margin)) * draw(st.sampled_from([-1.0, 1.0]))
        u, v = (small, big) if draw(st.booleans()) else (big, small)
        u0.append(u), v0.append(v)
    return torch.tensor(u0 + v0, dtype=torch.float64)


@st.composite
def linear_problems(draw, p=st.integers(2, 6), N=None, r=None, orthogonal: bool | None = None,
                    scale: tuple[float, float] = (0.5, 2.0), loss: str = "square") -> DiagLinear:
    """A diagonal linear network (h(x; beta) = <x, beta>) on a Gaussian or orthogonal design (drawn when
    ``orthogonal`` is None) with a sparse teacher: y = X beta*, or labels sign(X beta*) in {-1, +1} for
    ``loss="logistic"`` (separable data: Assumption 4.3 fails there). N defaults to p + 2 ... 4p + 8."""
    if loss not in LOSSES:
        raise InvalidArgument(f"linear_problems needs loss in {LOSSES}, got {loss!r}")
    p = _draw(draw, p)
    N = _draw(draw, st.integers(p + 2, 4 * p + 8) if N is None else N)
    ortho = draw(st.booleans()) if orthogonal is None else orthogonal
    X = draw(orthogonal_designs(N, p) if ortho else gaussian_designs(N, p))
    y = X @ draw(teachers(p, r, scale))
    if loss == "logistic":
        y = torch.where(y >= 0, 1.0, -1.0).to(torch.float64)
    return DiagLinear(X, y, loss=loss)


@st.composite
def attention_problems(draw, d=st.integers(2, 4), n=st.integers(2, 4), N=st.integers(4, 24), r_qk=None, r_vo=None,
                       scale: tuple[float, float] = (1.0, 2.0)) -> DiagAttention:
    """The paper's toy head with diagonal weights (softmax temperature 1/sqrt(d)) on Gaussian tokens, with
    targets from a teacher head of the same kind: r_qk (default 0 to d) nonzero q*k entries and r_vo
    (default 1 to d, so the target is not zero) nonzero v*o entries."""
    d = _draw(draw, d)
    X = draw(tokens(N, n, d))
    qk = draw(teachers(d, st.integers(0, d) if r_qk is None else r_qk, scale))
    vo = draw(teachers(d, r_vo, scale))
    teacher = DiagAttention(X, X, temperature=d**-0.5)
    return DiagAttention(X, teacher.predict_beta(torch.cat([qk, vo])), temperature=d**-0.5)


@st.composite
def transformer_problems(draw, d=st.integers(2, 3), n=st.integers(2, 3), N=st.integers(4, 12),
                         layers=st.integers(1, 2), heads=st.integers(1, 2), width: int = 4,
                         activation: str = "gelu") -> DiagTransformer:
    """Example 3.2's transformer with diagonal attention weights and a frozen random feedforward (``relu``
    makes it a Definition 3.1 counterexample), on Gaussian tokens with Gaussian targets."""
    d, n, N = _draw(draw, d), _draw(draw, n), _draw(draw, N)
    gen = D.generator(draw(seeds()))
    X = D.gaussian_tokens(N, n, d, gen)
    A, B = frozen_feedforward(_draw(draw, layers), d, width, gen)
    return DiagTransformer(X, D.gaussian_tokens(N, n, d, gen), ff_in=A, ff_out=B, heads=_draw(draw, heads),
                           temperature=d**-0.5, activation=activation)


@st.composite
def full_attention_problems(draw, d=st.integers(2, 3), n=st.integers(2, 3), N=st.integers(4, 12)) -> FullAttention:
    """One head with full d x d weights (outside the theory, docs/THEORY.md §6) on Gaussian tokens with
    Gaussian targets."""
    d, n, N = _draw(draw, d), _draw(draw, n), _draw(draw, N)
    return FullAttention(draw(tokens(N, n, d)), draw(tokens(N, n, d)), temperature=d**-0.5)
