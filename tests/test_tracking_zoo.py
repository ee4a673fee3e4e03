"""RankTracker on the model zoos, tiny models built from configs (nothing downloaded): the products it finds
equal the ones computed by hand from each family's weights, grouped-query heads paired right, and the
thin-factor spectra equal full svdvals."""

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.tracking import AttentionSpec, RankTracker, Weight, register_attention
from verifier.tracking.factors import change_svdvals, product_svdvals

transformers = pytest.importorskip("transformers")

D, H = 16, 4
K = D // H


def _rows(h, k=K):
    return slice(h * k, (h + 1) * k)


def _perturb(model, seed=0, size=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(size * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _close(tracker, name, expected, heads=None):
    got = tracker.products()[name]
    heads = range(len(expected)) if heads is None else heads
    for h in heads:
        torch.testing.assert_close(got[h], expected[h], rtol=1e-12, atol=1e-12)


def _linear_qkvo(q, k, v, o, heads, kv_heads):
    """Hand products of nn.Linear weights [out, in]: qk[h] = Wq_h^T Wk_g, vo[h] = Wv_g^T Wo[:, h]^T."""
    group = heads // kv_heads
    qk = [q[_rows(h)].T @ k[_rows(h // group)] for h in range(heads)]
    vo = [v[_rows(h // group)].T @ o[:, _rows(h)].T for h in range(heads)]
    return qk, vo


def _from_config(config):
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(config).double()


def test_gpt2_fused_conv1d():
    """GPT-2's c_attn is a Conv1D stored [in, out] = [d, 3d]: q, k, v are its column thirds; c_proj [d, d]
    takes head h's input from rows h*k:(h+1)*k."""
    model = _from_config(transformers.GPT2Config(n_embd=D, n_layer=2, n_head=H, vocab_size=11, n_positions=8))
    tracker = RankTracker(model)
    assert [t.name for t in tracker.tracked] == ["h.0.attn.qk", "h.0.attn.vo", "h.1.attn.qk", "h.1.attn.vo"]
    assert {t.layout for t in tracker.tracked} == {"hf-gpt2"}
    attn = model.h[1].attn
    W, P = attn.c_attn.weight, attn.c_proj.weight
    Wq, Wk, Wv = W[:, :D], W[:, D:2 * D], W[:, 2 * D:]
    _close(tracker, "h.1.attn.qk", [Wq[:, _rows(h)] @ Wk[:, _rows(h)].T for h in range(H)])
    _close(tracker, "h.1.attn.vo", [Wv[:, _rows(h)] @ P[_rows(h)] for h in range(H)])


def test_gpt2_qk_is_the_attention_score():
    """Orientation: with zero biases, GPT-2's pre-softmax score of tokens t, r in head h is
    x_t qk[h] x_r^T / sqrt(k) (x the block's normalised input), the paper's x^T Wq Wk^T x."""
    model = _from_config(transformers.GPT2Config(n_embd=D, n_layer=1, n_head=H, vocab_size=11, n_positions=8))
    attn = model.h[0].attn
    with torch.no_grad():
        attn.c_attn.bias.zero_()
    x = torch.randn(1, 5, D, dtype=torch.float64)
    q, k, _ = attn.c_attn(x).split(D, dim=2)
    scores = torch.stack([q[0, :, _rows(h)] @ k[0, :, _rows(h)].T for h in range(H)])
    qk = RankTracker(model).products()["h.0.attn.qk"]
    torch.testing.assert_close(scores, x[0] @ qk @ x[0].T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_bert_roberta_sibling_output(family):
    """query/key/value in attention.self, the output projection in the sibling attention.output.dense."""
    config_cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[family]
    model = _from_config(config_cls(hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                    intermediate_size=8, vocab_size=11))
    tracker = RankTracker(model)
    names = [t.name for t in tracker.tracked]
    assert names == [f"encoder.layer.{i}.attention.{p}" for i in range(2) for p in ("qk", "vo")]
    assert {t.layout for t in tracker.tracked} == {"hf-bert"}
    att = model.encoder.layer[0].attention
    qk, vo = _linear_qkvo(att.self.query.weight, att.self.key.weight, att.self.value.weight,
                          att.output.dense.weight, H, H)
    _close(tracker, "encoder.layer.0.attention.qk", qk)
    _close(tracker, "encoder.layer.0.attention.vo", vo)


def test_hf_vit():
    model = _from_config(transformers.ViTConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=H,
                                                intermediate_size=8, image_size=8, patch_size=4))
    tracker = RankTracker(model)
    (qk_t, vo_t) = tracker.tracked
    assert (qk_t.heads, qk_t.kv_heads, qk_t.d1, qk_t.d2, qk_t.k) == (H, H, D, D, K)
    att = model.get_submodule(qk_t.module)
    names = [n for n, _ in att.named_children()]
    q, k, v, o = ((att.q_proj, att.k_proj, att.v_proj, att.o_proj) if "q_proj" in names else
                  (att.attention.query, att.attention.key, att.attention.value, att.output.dense))
    qk, vo = _linear_qkvo(q.weight, k.weight, v.weight, o.weight, H, H)
    _close(tracker, qk_t.name, qk)
    _close(tracker, vo_t.name, vo)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_grouped_query_heads_pair_with_their_kv_head(family):
    """8 query heads share 2 key/value heads: query head h pairs with kv head h // 4, not h % 2."""
    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config}[family]
    heads, kv = 8, 2
    model = _from_config(config_cls(hidden_size=4 * heads, num_hidden_layers=1, num_attention_heads=heads,
                                    num_key_value_heads=kv, intermediate_size=8, vocab_size=11))
    tracker = RankTracker(model)
    qk_t, vo_t = tracker.tracked
    assert (qk_t.heads, qk_t.kv_heads, qk_t.k, qk_t.d1) == (heads, kv, 4, 32)
    assert "sharing 2 key/value heads" in tracker.describe()
    a = model.get_submodule(qk_t.module)
    qk, vo = _linear_qkvo(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight, heads, kv)
    _close(tracker, qk_t.name, qk)
    _close(tracker, vo_t.name, vo)
    wrong = a.q_proj.weight[_rows(1)].T @ a.k_proj.weight[_rows(1 % kv)]  # the h % kv pairing
    assert not torch.allclose(tracker.products()[qk_t.name][1], wrong)


def test_torch_transformer_encoder_layer():
    torch.manual_seed(0)
    model = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(D, H, 8, batch_first=True), 2,
                                        enable_nested_tensor=False).double()
    tracker = RankTracker(model)
    assert [t.module for t in tracker.tracked][::2] == ["layers.0.self_attn", "layers.1.self_attn"]
    mha = model.layers[1].self_attn
    Wq, Wk, Wv = mha.in_proj_weight.split(D)
    qk, vo = _linear_qkvo(Wq, Wk, Wv, mha.out_proj.weight, H, H)
    _close(tracker, "layers.1.self_attn.qk", qk)
    _close(tracker, "layers.1.self_attn.vo", vo)


class TimmLikeAttention(torch.nn.Module):
    """A stand-in with timm's ``Attention`` attribute layout (timm 1.0: ``qkv`` = Linear(d, 3d) fused in the
    order q, k, v with head h owning rows h*k:(h+1)*k of each third, ``proj`` = Linear(d, d), ``num_heads``,
    ``head_dim``), for machines where timm cannot be imported (it needs torchvision)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):  # timm's computation (without dropout and norms)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, C))


def _check_fused_qkv(attn, dim, heads):
    tracker = RankTracker(torch.nn.Sequential(attn))
    assert {t.layout for t in tracker.tracked} == {"timm-fused-qkv"}
    Wq, Wk, Wv = attn.qkv.weight.split(dim)
    k = dim // heads
    qk = [Wq[_rows(h, k)].T @ Wk[_rows(h, k)] for h in range(heads)]
    vo = [Wv[_rows(h, k)].T @ attn.proj.weight[:, _rows(h, k)].T for h in range(heads)]
    _close(tracker, "0.qk", qk)
    _close(tracker, "0.vo", vo)
    return tracker


def test_timm_layout_on_a_stand_in():
    torch.manual_seed(0)
    attn = TimmLikeAttention(D, H).double()
    tracker = _check_fused_qkv(attn, D, H)
    with torch.no_grad():  # the products are the ones the module computes with: its output, head by head
        attn.qkv.bias.zero_()
        attn.proj.bias.zero_()
    x = torch.randn(1, 5, D, dtype=torch.float64)
    qk, vo = tracker.products()["0.qk"], tracker.products()["0.vo"]
    A = torch.softmax(x[0] @ qk @ x[0].T * K**-0.5, dim=-1)
    torch.testing.assert_close(attn(x)[0], sum(A[h] @ x[0] @ vo[h] for h in range(H)), rtol=1e-10, atol=1e-12)


def test_timm_attention():
    timm = pytest.importorskip("timm")  # needs torchvision built for the installed torch
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(img_size=8, patch_size=4, embed_dim=D, depth=1,
                                                             num_heads=H).double()
    _check_fused_qkv(model.blocks[0].attn, D, H)


def test_register_attention_and_refusal():
    class Mine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.n_heads = 2
            self.wq, self.wk, self.wv = (torch.nn.Linear(6, 8, bias=False) for _ in range(3))
            self.wo = torch.nn.Parameter(torch.randn(8, 6))  # stored [in, out]

    model = torch.nn.Sequential(Mine(), Mine()).double()
    with pytest.raises(InputError, match="register_attention") as refused:
        RankTracker(model)
    assert "products" in str(refused.value)
    register_attention(Mine, AttentionSpec("mine", q="wq.weight", k="wk.weight", v="wv.weight",
                                           o=Weight("wo", stored="in_out"), heads="n_heads"))
    tracker = RankTracker(model)
    m = model[1]
    qk, vo = _linear_qkvo(m.wq.weight, m.wk.weight, m.wv.weight, m.wo.T, 2, 2)
    _close(tracker, "1.qk", [qk[0], qk[1]])
    _close(tracker, "1.vo", vo)
    lines = tracker.describe().splitlines()
    assert len(lines) == 4 and lines[1].split()[:2] == ["0.vo", "mine"] and "2 heads, 6 x 6, head dim 4" in lines[1]


@pytest.mark.parametrize("d1, d2, k", [(12, 9, 3), (7, 5, 4), (3, 10, 6), (64, 48, 16)])
def test_factor_spectra_equal_full_svdvals(d1, d2, k):
    """Including d < 2k (the QR's R is then wide) and d < k."""
    g = torch.Generator().manual_seed(d1 * 100 + k)
    a, a0 = (torch.randn(5, d1, k, generator=g, dtype=torch.float64) for _ in range(2))
    b, b0 = (torch.randn(5, d2, k, generator=g, dtype=torch.float64) for _ in range(2))
    a = a0 + 0.01 * a  # a small change, as in training
    for got, full, r in ((product_svdvals(a, b), a @ b.mT, min(d1, d2, k)),
                         (change_svdvals(a, b, a0, b0), a @ b.mT - a0 @ b0.mT, min(d1, d2, 2 * k))):
        want = torch.linalg.svdvals(full)
        assert got.shape == (5, r)
        err = (got - want[:, :r]).abs().amax(1) / want[:, 0]
        assert err.max() < 1e-10
        assert (want[:, r:] <= 1e-12 * want[:, :1]).all()  # nothing beyond the rank bound


def test_tracker_spectra_equal_full_svdvals_on_gpt2():
    model = _from_config(transformers.GPT2Config(n_embd=D, n_layer=2, n_head=2, vocab_size=11, n_positions=8))
    tracker = RankTracker(model)
    tracker.record(0)
    before = tracker.products()
    _perturb(model)
    tracker.record(1)
    after = tracker.products()
    h = tracker.history()
    full_initial = np.concatenate([torch.linalg.svdvals(before[t.name]).numpy() for t in tracker.tracked])
    full_change = np.concatenate([torch.linalg.svdvals(after[t.name] - before[t.name]).numpy()
                                  for t in tracker.tracked])
    r = h.delta_spectra.shape[-1]
    assert r == min(D, 2 * D // 2)  # min(d, d, 2k) with k = 8
    scale = full_change[:, :1]
    assert np.abs(h.delta_spectra[1] - full_change[:, :r]).max(initial=0) <= 1e-10 * scale.max()
    assert (np.abs(h.delta_spectra[1] - full_change[:, :r]) / scale).max() < 1e-10
    rk = D // 2
    assert (np.abs(h.initial_spectra[:, :rk] - full_initial[:, :rk]) / full_initial[:, :1]).max() < 1e-10


def test_a_non_finite_head_gets_nan_and_the_others_their_values():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 10, 2, generator=g), torch.randn(3, 9, 2, generator=g)
    want = product_svdvals(a, b)
    a[1, 4, 0] = float("nan")
    b[2, 0, 1] = float("inf")
    got = product_svdvals(a, b)
    assert torch.isnan(got[1:]).all()
    torch.testing.assert_close(got[0], want[0])


def test_t5_self_and_cross_attention():
    model = _from_config(transformers.T5Config(d_model=D, d_kv=K, num_heads=H, num_layers=1, d_ff=8,
                                               vocab_size=11))
    tracker = RankTracker(model)
    modules = [t.module for t in tracker.tracked][::2]
    assert modules == ["encoder.block.0.layer.0.SelfAttention", "decoder.block.0.layer.0.SelfAttention",
                       "decoder.block.0.layer.1.EncDecAttention"]
    a = model.decoder.block[0].layer[1].EncDecAttention
    qk, vo = _linear_qkvo(a.q.weight, a.k.weight, a.v.weight, a.o.weight, H, H)
    _close(tracker, modules[2] + ".qk", qk)
    _close(tracker, modules[2] + ".vo", vo)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_factor_spectra_on_cuda_equal_cpu():
    g = torch.Generator().manual_seed(5)
    a, a0 = (torch.randn(7, 96, 8, generator=g, dtype=torch.float64) for _ in range(2))
    b, b0 = (torch.randn(7, 80, 8, generator=g, dtype=torch.float64) for _ in range(2))
    cpu = change_svdvals(a, b, a0, b0)
    gpu = change_svdvals(*(t.cuda() for t in (a, b, a0, b0)))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d1, d2, k", [(12, 9, 3), (3, 10, 6), (64, 48, 16)])
def test_change_basis_when_the_change_lies_in_the_references_span_or_is_zero(d1, d2, k):
    """The fixed-reference factorisation (one projection of dA on the reference's Q, ChangeBasis) against full
    svdvals where it is hardest: dA = A0 X (inside span(A0): its residual after the projection is rounding
    only) with a tiny dB, and no change at all (exact zeros, not rounding)."""
    from verifier.tracking.factors import ChangeBasis

    g = torch.Generator().manual_seed(d1 + k)
    a0 = torch.randn(4, d1, k, generator=g, dtype=torch.float64)
    b0 = torch.randn(4, d2, k, generator=g, dtype=torch.float64)
    basis = ChangeBasis(a0, b0)
    a = a0 @ (torch.eye(k, dtype=torch.float64) + 1e-3 * torch.randn(k, k, generator=g, dtype=torch.float64))
    b = b0 + 1e-9 * torch.randn(b0.shape, generator=g, dtype=torch.float64)
    want = torch.linalg.svdvals(a @ b.mT - a0 @ b0.mT)
    r = min(d1, d2, 2 * k)
    got = basis.svdvals(a, b)
    assert got.shape == (4, r)
    assert ((got - want[:, :r]).abs().amax(1) / want[:, 0]).max() < 1e-12
    np.testing.assert_array_equal(basis.svdvals(a0.clone(), b0.clone()).numpy(), 0.0)
