"""Composable hypothesis strategies that build valid inputs directly (no heavy filtering).

Teachers, designs and token sets are drawn from a seed, so a failing example is one integer plus sizes;
initialisations satisfy u0 != +-v0 by construction (|u0| and |v0| are drawn from disjoint bands).
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from verifier import data as D
from verifier.models import DiagAttention, DiagLinear

seeds = st.integers(min_value=0, max_value=2**31 - 1)
log_inv_alphas = st.floats(min_value=math.log(10.0), max_value=1e4)  # alpha in [exp(-10^4), 0.1]


@st.composite
def inits(draw, p: int) -> torch.Tensor:
    """(u0, v0) [2p] with |u0_i| in [0.5, 1] and |v0_i| in [1.5, 2] (so u0 != +-v0), random signs."""
    mags = [draw(st.floats(0.5, 1.0)) for _ in range(p)] + [draw(st.floats(1.5, 2.0)) for _ in range(p)]
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(2 * p)]
    return torch.tensor([m * s for m, s in zip(mags, signs)], dtype=torch.float64)


@st.composite
def linear_problems(draw, max_p: int = 6, orthogonal: bool | None = None) -> DiagLinear:
    """A diagonal linear network on a Gaussian (or exactly orthogonal) design with a sparse teacher."""
    p = draw(st.integers(2, max_p))
    r = draw(st.integers(1, p))
    N = draw(st.integers(p + 2, 4 * p + 8))
    gen = D.generator(draw(seeds))
    ortho = draw(st.booleans()) if orthogonal is None else orthogonal
    X = D.orthogonal_design(N, p, gen) if ortho else D.gaussian_design(N, p, gen)
    beta_star = D.sparse_vector(p, r, (0.5, 2.0), gen)
    return DiagLinear(X, X @ beta_star)


@st.composite
def attention_problems(draw, max_d: int = 4) -> DiagAttention:
    """A small toy attention head (N <= 24 sequences of n <= 4 tokens in d <= max_d) with a sparse teacher."""
    d = draw(st.integers(2, max_d))
    n = draw(st.integers(2, 4))
    N = draw(st.integers(4, 24))
    gen = D.generator(draw(seeds))
    X = D.gaussian_tokens(N, n, d, gen)
    beta_star = torch.cat([D.sparse_vector(d, draw(st.integers(0, d)), (1.0, 2.0), gen),
                           D.sparse_vector(d, draw(st.integers(1, d)), (1.0, 2.0), gen)])
    teacher = DiagAttention(X, X, temperature=d**-0.5)
    return DiagAttention(X, teacher.predict_beta(beta_star), temperature=d**-0.5)
