"""RankTracker on PEFT fine-tunes (issue 26): adapters read as the effective weight W0 + scaling B A per head, so
the tracked change is the adapter's; merged, unmerged and merge_and_unload agree; what is not a weight delta is
refused by name. Tiny models built from configs: nothing is downloaded."""

import copy
import re

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.tracking import RankTracker

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

D, H = 16, 4
K = D // H


def _gpt2(layers=2):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=D, n_layer=layers, n_head=H, vocab_size=11, n_positions=8)
    return transformers.GPT2LMHeadModel(config).double()


def _llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=D, num_hidden_layers=2, num_attention_heads=H, num_key_value_heads=2, intermediate_size=8,
        vocab_size=11)).double()


def _perturb_adapters(model, seed=1, size=0.1):
    """Random trainable (adapter) weights: B = 0 at init would make every adapter's delta zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(size * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _rows(h):
    return slice(h * K, (h + 1) * K)


def _hand_products(W, P):
    """qk[h] and vo[h] from GPT-2's Conv1D-stored c_attn W [d, 3d] and c_proj P [d, d], sliced by hand."""
    Wq, Wk, Wv = W[:, :D], W[:, D:2 * D], W[:, 2 * D:]
    return ([Wq[:, _rows(h)] @ Wk[:, _rows(h)].T for h in range(H)],
            [Wv[:, _rows(h)] @ P[_rows(h)] for h in range(H)])


def _svdvals(matrices, r):
    return np.stack([np.linalg.svd(m.detach().numpy(), compute_uv=False)[:r] for m in matrices])


def test_lora_fine_tune_of_gpt2_tracks_the_adapters_change():
    """A LoRA fine-tune (r=4 on c_attn of layer 0 only; Adam on a copying task): the tracked change of layer 0 is
    that of W0 + scaling B A sliced per head by hand, and layer 1, which has no adapter, does not change at all."""
    model = _gpt2()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True,
                             layers_to_transform=[0], lora_dropout=0.0)
    tuned = peft.get_peft_model(model, config)
    base = tuned.get_base_model()
    W0 = {i: base.transformer.h[i].attn.c_attn.weight.detach().clone() for i in range(2)}
    P0 = {i: base.transformer.h[i].attn.c_proj.weight.detach().clone() for i in range(2)}

    tracker = RankTracker(tuned)
    assert tracker.wrappers == ("PeftModel",)
    assert [t.name for t in tracker.tracked] == ["transformer.h.0.attn.qk", "transformer.h.0.attn.vo",
                                                 "transformer.h.1.attn.qk", "transformer.h.1.attn.vo"]
    lines = tracker.describe().splitlines()
    assert lines[0].endswith("; adapters: c_attn: LoRA 'default' r=4 scaling 2")
    assert "adapters" not in lines[2]

    opt = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.randint(0, 11, (8, 8), generator=torch.Generator().manual_seed(0))
    tracker.record(0)
    for step in range(1, 6):
        loss = tuned(input_ids=tokens, labels=tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.record(step, loss)

    layer = base.transformer.h[0].attn.c_attn
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    scaling = config.lora_alpha / config.r
    assert layer.scaling["default"] == scaling and (B != 0).any()
    for i in range(2):  # the base weights are frozen: the change is the adapter's
        torch.testing.assert_close(base.transformer.h[i].attn.c_attn.weight, W0[i], rtol=0, atol=0)
    W = W0[0] + (scaling * B @ A).T  # Conv1D stores [in, out]: the adapter's [out, in] delta transposed
    qk0, vo0 = _hand_products(W0[0], P0[0])
    qk, vo = _hand_products(W, P0[0])
    now = tracker.products()
    for h in range(H):
        torch.testing.assert_close(now["transformer.h.0.attn.qk"][h], qk[h], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(now["transformer.h.0.attn.vo"][h], vo[h], rtol=1e-12, atol=1e-12)
    history = tracker.history()
    changes = [a - b for a, b in zip(qk + vo, qk0 + vo0)]
    r = history.delta_spectra.shape[-1]
    np.testing.assert_allclose(history.delta_spectra[-1, :2 * H], _svdvals(changes, r), rtol=1e-9, atol=1e-12)
    assert history.delta_spectra[-1, :2 * H, 0].min() > 1e-3
    np.testing.assert_array_equal(history.delta_spectra[:, 2 * H:], 0.0)  # layer 1: no adapter, no change


def _tuned_gpt2(**lora):
    tuned = peft.get_peft_model(_gpt2(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                         fan_in_fan_out=True, **lora))
    _perturb_adapters(tuned)
    return tuned


def _assert_same(got, want, tol=1e-12):
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=tol, atol=tol)


def test_merged_unmerged_and_disabled_adapters():
    """merge_adapter() moves B A into the base weight: the tracker reads the same effective weight, so the
    record after a merge (or an unmerge) equals the one before; inside disable_adapter() it reads W0."""
    tuned = _tuned_gpt2()
    plain = RankTracker(_gpt2()).products()
    tracker = RankTracker(tuned)
    tracker.record(0)
    before = tracker.products()
    assert not torch.allclose(before["transformer.h.0.attn.qk"], plain["transformer.h.0.attn.qk"])
    tuned.merge_adapter()
    assert tuned.get_base_model().transformer.h[0].attn.c_attn.merged
    _assert_same(tracker.products(), before)
    tracker.record(1)
    tuned.unmerge_adapter()
    _assert_same(tracker.products(), before)
    tracker.record(2)
    with tuned.disable_adapter():
        _assert_same(tracker.products(), plain)
    tuned.merge_adapter()
    with tuned.disable_adapter():  # disabled while merged: PEFT's next forward unmerges; the tracker reads W0
        _assert_same(tracker.products(), plain, 1e-10)
    spectra = tracker.history().delta_spectra
    np.testing.assert_allclose(spectra[1], spectra[0], atol=1e-12)
    np.testing.assert_allclose(spectra[2], spectra[0], atol=1e-12)


def _rslora_patterns():
    return _llama, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True,
                                   rank_pattern={"layers.0.self_attn.q_proj": 2},
                                   alpha_pattern={"layers.1.self_attn.v_proj": 3})


ADAPTERS = {
    "lora-conv1d": lambda: (_gpt2, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                                                   fan_in_fan_out=True)),
    "lora-modules-to-save": lambda: (_gpt2, peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True,
                                                            modules_to_save=["c_proj"])),
    "dora-conv1d": lambda: (_gpt2, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                                                   fan_in_fan_out=True, use_dora=True)),
    "rslora-patterns": _rslora_patterns,
    "dora-linear": lambda: (_llama, peft.LoraConfig(r=4, target_modules=["q_proj", "o_proj"], use_dora=True)),
    "adalora": lambda: (_llama, peft.AdaLoraConfig(r=4, target_modules=["q_proj", "v_proj"], total_step=10)),
    "loha": lambda: (_llama, peft.LoHaConfig(r=4, target_modules=["q_proj", "o_proj"])),
    "lokr": lambda: (_llama, peft.LoKrConfig(r=4, target_modules=["q_proj", "o_proj"])),
    "vera": lambda: (_llama, peft.VeraConfig(r=4, target_modules=["q_proj", "k_proj"])),
}


@pytest.mark.parametrize("kind", list(ADAPTERS), ids=list(ADAPTERS))
def test_the_effective_weight_is_what_peft_merges(kind):
    """For every adapter family read, the tracker on the PEFT model gives the products of PEFT's own
    merge_and_unload() (an independent computation: PEFT's merge code, DoRA's norm, rank and alpha patterns,
    rsLoRA's scaling), and they differ from the base model's."""
    build, config = ADAPTERS[kind]()
    tuned = peft.get_peft_model(build(), config)
    _perturb_adapters(tuned)
    got = RankTracker(tuned).products()
    _assert_same(got, RankTracker(copy.deepcopy(tuned).merge_and_unload()).products())
    base = RankTracker(build()).products()
    assert any(not torch.allclose(got[n], base[n]) for n in got)


def test_rank_and_alpha_patterns_in_describe():
    build, config = _rslora_patterns()
    lines = RankTracker(peft.get_peft_model(build(), config)).describe().splitlines()
    assert lines[0].endswith(f"q_proj: LoRA 'default' r=2 scaling {8 / 2 ** 0.5:g}")
    assert lines[3].endswith(f"v_proj: LoRA 'default' r=4 scaling {3 / 4 ** 0.5:g}")


def test_two_active_adapters_add_up():
    tuned = _tuned_gpt2()
    tuned.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=2, target_modules=["c_attn"], fan_in_fan_out=True))
    tuned.base_model.set_adapter(["default", "second"])
    _perturb_adapters(tuned, seed=2)
    tracker = RankTracker(tuned)
    assert tracker.describe().splitlines()[0].endswith("c_attn: LoRA 'default' r=4 scaling 2, LoRA 'second' r=2 scaling 1")
    _assert_same(tracker.products(), RankTracker(copy.deepcopy(tuned).merge_and_unload(
        adapter_names=["default", "second"])).products())


@pytest.mark.parametrize("config, refused", [
    (lambda: peft.IA3Config(target_modules=["c_attn"], feedforward_modules=[], fan_in_fan_out=True),
     "transformer.h.0.attn.c_attn.weight: a PEFT peft.tuners.ia3.layer.Linear adapter is not a weight delta the "
     "tracker can read"),
    (lambda: peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, alora_invocation_tokens=[1, 2]),
     "transformer.h.0.attn.c_attn.weight: PEFT LoRA adapter 'default' uses the ALoraLinearVariant: not a weight delta "
     "the tracker can read"),
], ids=["ia3", "alora"])
def test_what_is_not_a_weight_delta_is_refused_by_name(config, refused):
    tuned = peft.get_peft_model(_gpt2(), config())
    with pytest.raises(InputError, match="^" + re.escape(f"module: {refused} (allowed: LoRA, DoRA, AdaLoRA, LoHa, "
                                                          "LoKr, VeRA)") + "$"):
        RankTracker(tuned)


def test_lora_on_a_torch_multihead_attention_is_refused():
    """PEFT's LoRA around a whole nn.MultiheadAttention adapts its fused in_proj_weight: not read, refused."""
    model = torch.nn.Sequential(torch.nn.MultiheadAttention(D, H))
    tuned = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(InputError, match=r"^module: 0\.base_layer\.in_proj_weight: a PEFT adapter "):
        RankTracker(tuned)


def test_adapters_added_after_the_tracker_are_read():
    """Weights are looked up by name at every record: PEFT wrapping c_attn after the tracker was built is seen."""
    model = _gpt2(layers=1)
    tracker = RankTracker(model)
    tracker.record(0)
    tuned = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    _perturb_adapters(tuned)
    tracker.record(1)
    assert tracker.history().delta_spectra[1, :, 0].min() > 1e-3
    _assert_same(tracker.products(), RankTracker(tuned).products())


def test_named_products_read_through_adapters():
    """Named products (a user's own layout) name the parameters as the model has them, with or without PEFT
    (``wq.weight`` or PEFT's ``wq.base_layer.weight``): both read the effective weight."""
    from verifier.tracking import Product

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"wq": torch.nn.Linear(D, D), "wk": torch.nn.Linear(D, D)}).double()
    tuned = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["wq"]))
    _perturb_adapters(tuned)
    merged = copy.deepcopy(tuned).merge_and_unload()
    spec = {"qk": Product("wq.weight", "wk.weight", heads=H, a_transposed=True, b_transposed=True)}
    want = RankTracker(merged, spec).products()
    _assert_same(RankTracker(tuned, spec).products(), want)
    base_named = {"qk": Product("wq.base_layer.weight", "wk.weight", heads=H, a_transposed=True, b_transposed=True)}
    _assert_same(RankTracker(tuned, base_named).products(), want)
    assert not torch.allclose(RankTracker(model.wq.base_layer, {"w": ("weight", "weight")}).products()["w"],
                              RankTracker(merged.wq, {"w": ("weight", "weight")}).products()["w"])
