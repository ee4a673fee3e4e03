"""RankTracker: which products it forms, that they are the head's bilinear forms, and its spectra."""

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.tracking import Product, RankTracker
from verifier.tracking.spectra import effective_rank, numerical_rank, stable_rank


def _svdvals(matrices, r=None):
    """The singular values of each matrix, the first r (the tracker keeps min(d1, d2, 2k): the rest are 0)."""
    return np.stack([np.linalg.svd(m.detach().double().numpy(), compute_uv=False)[:r] for m in matrices])


def _mha(E=12, H=3, seed=0):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True)
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.3)
    return mha


def _explicit_heads(mha):
    """Wq_h^T Wk_h and Wv_h^T Wo[:, h]^T from row and column slices, head by head."""
    E, H = mha.embed_dim, mha.num_heads
    k = E // H
    Wq, Wk, Wv = mha.in_proj_weight.detach().split(E)
    Wo = mha.out_proj.weight.detach()
    rows = [slice(h * k, (h + 1) * k) for h in range(H)]
    qk = [Wq[r].T @ Wk[r] for r in rows]
    vo = [Wv[r].T @ Wo[:, r].T for r in rows]
    return qk, vo


def test_mha_products_are_the_heads_bilinear_forms():
    """With zero biases, head h's attention is softmax(x qk[h] x^T / sqrt(k)) and the layer's output is
    sum_h A_h x vo[h]: the products the tracker forms are the ones the layer computes with."""
    mha = _mha()
    with torch.no_grad():
        mha.in_proj_bias.zero_()
        mha.out_proj.bias.zero_()
    qk, vo = _explicit_heads(mha)
    x = torch.randn(2, 5, 12)
    out, weights = mha(x, x, x, need_weights=True, average_attn_weights=False)
    k = 12 // 3
    A = [torch.softmax(x @ qk[h] @ x.transpose(1, 2) / k**0.5, dim=-1) for h in range(3)]
    torch.testing.assert_close(weights, torch.stack(A, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, sum(A[h] @ x @ vo[h] for h in range(3)), rtol=1e-5, atol=1e-6)


def test_mha_slicing_matches_explicit_per_head_matrices():
    mha = _mha()
    qk0, vo0 = _explicit_heads(mha)
    tracker = RankTracker(mha)
    tracker.record(0)
    with torch.no_grad():
        for p in mha.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tracker.record(1)
    qk1, vo1 = _explicit_heads(mha)
    h = tracker.history()
    assert h.names == ("attention.qk",) * 3 + ("attention.vo",) * 3
    assert h.heads == (0, 1, 2, 0, 1, 2)
    assert h.max_rank == (8,) * 6  # min(d1, d2, 2k): a change of both k-column factors has rank <= 2k
    assert h.product_rank == (4,) * 6
    np.testing.assert_allclose(h.initial_spectra, _svdvals(qk0 + vo0, 8), rtol=1e-4, atol=1e-6)
    changes = [a - b for a, b in zip(qk1 + vo1, qk0 + vo0)]
    np.testing.assert_allclose(h.delta_spectra[1], _svdvals(changes, 8), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(h.delta_spectra[0], 0.0)
    assert np.isnan(h.stable_rank()[0]).all()  # the zero change has no rank


def test_mha_separate_projection_weights():
    """kdim/vdim != embed_dim: torch keeps q_proj_weight, k_proj_weight, v_proj_weight apart."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, kdim=6, vdim=5, batch_first=True)
    tracker = RankTracker(mha)
    tracker.record(0)
    h = tracker.history()
    k = 4
    qk = [mha.q_proj_weight[h * k:(h + 1) * k].T @ mha.k_proj_weight[h * k:(h + 1) * k] for h in range(2)]
    vo = [mha.v_proj_weight[h * k:(h + 1) * k].T @ mha.out_proj.weight[:, h * k:(h + 1) * k].T for h in range(2)]
    assert [tuple(m.shape) for m in qk + vo] == [(8, 6)] * 2 + [(5, 8)] * 2
    np.testing.assert_allclose(h.initial_spectra[:2, :6], _svdvals(qk), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(h.initial_spectra[2:, :5], _svdvals(vo), rtol=1e-4, atol=1e-6)
    assert h.max_rank == (6, 6, 5, 5)


class HandWrittenAttention(torch.nn.Module):
    """A user's multi-head attention with its own names: q/k/v/o weights [d, heads * k] (the paper's layout)."""

    def __init__(self, d=10, heads=2, k=3):
        super().__init__()
        self.heads = heads
        self.query = torch.nn.Parameter(torch.randn(d, heads * k))
        self.key = torch.nn.Parameter(torch.randn(d, heads * k))
        self.value = torch.nn.Parameter(torch.randn(d, heads * k))
        self.output = torch.nn.Parameter(torch.randn(d, heads * k))


def test_hand_written_attention_named_products():
    torch.manual_seed(1)
    m = HandWrittenAttention()
    tracker = RankTracker(m, {"qk": ("query", "key", 2), "vo": ("value", "output", 2)})
    tracker.record(0)
    cols = [slice(0, 3), slice(3, 6)]
    qk0 = [m.query[:, c] @ m.key[:, c].T for c in cols]
    vo0 = [m.value[:, c] @ m.output[:, c].T for c in cols]
    with torch.no_grad():
        m.key.add_(0.1 * torch.randn_like(m.key))
        m.output.add_(0.1 * torch.randn_like(m.output))
    tracker.record(1)
    h = tracker.history()
    qk = [m.query[:, c] @ m.key[:, c].T for c in cols]
    vo = [m.value[:, c] @ m.output[:, c].T for c in cols]
    changes = [a - b for a, b in zip(qk + vo, qk0 + vo0)]
    np.testing.assert_allclose(h.delta_spectra[1], _svdvals(changes, 6), rtol=1e-4, atol=1e-5)
    assert h.labels == ["qk[h0]", "qk[h1]", "vo[h0]", "vo[h1]"]
    assert h.max_rank == (6,) * 4


def test_nn_linear_layout_with_transposed_factors():
    """q/k/v/o as nn.Linear layers (weights [out, in]): the same products with the transposed flags."""
    torch.manual_seed(2)
    d, H, k = 8, 2, 4
    m = torch.nn.ModuleDict({n: torch.nn.Linear(d, H * k) for n in "qkv"} | {"o": torch.nn.Linear(H * k, d)})
    tracker = RankTracker(m, {
        "qk": Product("q.weight", "k.weight", heads=H, a_transposed=True, b_transposed=True),
        "vo": Product("v.weight", "o.weight", heads=H, a_transposed=True),
    })
    tracker.record(0)
    rows = [slice(0, k), slice(k, 2 * k)]
    qk = [m["q"].weight[r].T @ m["k"].weight[r] for r in rows]
    vo = [m["v"].weight[r].T @ m["o"].weight[:, r].T for r in rows]
    np.testing.assert_allclose(tracker.history().initial_spectra, _svdvals(qk + vo), rtol=1e-4, atol=1e-5)


def test_full_attention_model_weights():
    """The ``full-attention`` family (one head, theta = vec(Wq, Wk, Wv, Wo)): the tracker takes its weights as
    explicit parameter products and sees the model's own Wq Wk^T and Wv Wo^T."""
    from verifier.presets import PRESETS

    model = PRESETS["full-attention"].build(seed=0)
    theta = model.init_params(1.0, torch.Generator().manual_seed(0))
    holder = torch.nn.Module()
    for name, W in zip(("Wq", "Wk", "Wv", "Wo"), model.weights(theta)):
        holder.register_parameter(name, torch.nn.Parameter(W.clone()))
    tracker = RankTracker(holder, {"qk": ("Wq", "Wk"), "vo": ("Wv", "Wo")})
    tracker.record(0)
    np.testing.assert_allclose(tracker.history().initial_spectra, _svdvals(model.products(theta)), rtol=1e-10)


def test_every_and_losses():
    mha = _mha()
    tracker = RankTracker(mha, every=3)
    recorded = [tracker.record(s, loss=torch.tensor(float(s))) for s in range(1, 8)]
    assert recorded == [True, False, True, False, False, True, False]  # the first call always records
    h = tracker.history()
    np.testing.assert_array_equal(h.steps, [1, 3, 6])
    np.testing.assert_array_equal(h.losses, [1.0, 3.0, 6.0])


@pytest.mark.parametrize("products, field", [
    ({"qk": ("nope", "key")}, "products['qk']"),
    ({"qk": ("query", "key", 4)}, "products['qk']"),  # 4 heads do not divide k = 6
    ({"qk": "query"}, "products['qk']"),
])
def test_bad_products_name_the_field(products, field):
    with pytest.raises(InputError, match=field.replace("[", r"\[").replace("]", r"\]")):
        RankTracker(HandWrittenAttention(), products)


def test_no_attention_to_find():
    with pytest.raises(InputError, match="products"):
        RankTracker(torch.nn.Linear(3, 3))
    with pytest.raises(InputError, match="every"):
        RankTracker(_mha(), every=0)


def test_rank_measures():
    s = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.001]])
    np.testing.assert_allclose(stable_rank(s)[:2], [1.0, 3.0])
    np.testing.assert_allclose(effective_rank(s)[:2], [1.0, 3.0])
    np.testing.assert_allclose(numerical_rank(s), [1, 3, np.nan, 2])
    assert np.isnan(stable_rank(s)[2]) and np.isnan(effective_rank(s)[2])
    np.testing.assert_allclose(stable_rank(s)[3], 1 + 0.25 + 1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tracker_on_cuda_matches_cpu():
    mha = _mha()
    cpu = RankTracker(mha)
    cpu.record(0)
    gpu_mha = _mha().cuda()
    gpu = RankTracker(gpu_mha)
    gpu.record(0)
    with torch.no_grad():
        for p, q in zip(mha.parameters(), gpu_mha.parameters()):
            step = 0.05 * torch.randn_like(p)
            p.add_(step)
            q.add_(step.cuda())
    cpu.record(1)
    import warnings

    loss = torch.tensor(1.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as syncs:
            warnings.simplefilter("always")
            gpu.record(1, loss=loss)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # at most what svdvals itself does, once per shape group (qk and vo here): never once per product or head
    assert len([w for w in syncs if "synchroniz" in str(w.message)]) <= 2
    assert gpu.device.type == "cuda"
    a, b = cpu.history(), gpu.history()
    np.testing.assert_allclose(b.delta_spectra, a.delta_spectra, rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(b.losses, [np.nan, 1.0])


def test_bfloat16_model_tracked_in_float32():
    """The change of a bfloat16 weight is formed in float32 from the stored values: 1 + 2^-7 -> -1 is a step of
    -2.0078125, which bfloat16 (8 significant bits) would round to -2 or -2.015625."""
    mha = _mha().to(torch.bfloat16)
    with torch.no_grad():
        mha.in_proj_weight[0, 0] = 1 + 2**-7
    tracker = RankTracker(mha)
    tracker.record(0)
    with torch.no_grad():
        mha.in_proj_weight[0, 0] = -1.0  # one entry: a rank-one change of head 0's qk
    tracker.record(1)
    h = tracker.history()
    np.testing.assert_allclose(h.numerical_rank()[1, 0], 1)
    Wk = mha.in_proj_weight[12:16].float()
    np.testing.assert_allclose(h.delta_spectra[1, 0, 0], 2.0078125 * torch.linalg.norm(Wk[0]).item(), rtol=1e-6)


def test_the_tracker_never_imports_the_demo():
    """verifier/tracking/demo/ (the `verifier track` demo) sits above the tracker: no module of the tracker,
    its checks or its callbacks imports it (issue 28 item 4)."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "verifier" / "tracking"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([(node.module or "")] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any("demo" in n.split(".") for n in names), f"{path.name} imports the demo"
