"""LoRA ranks recommended from the measured change (verifier/tracking/modules.py, lora.py, checkpoints.py,
lora_command.py; docs/LORA.md): the module spectra against an independent SVD, the energy rank on analytic
spectra, planted low-rank changes recovered, the per-head bound r_q + r_k, the refusals and the inconclusive
cases (each with the counterexample it must flag), the saved history alone, and the CLI."""

import contextlib
import io
import itertools
import json
from dataclasses import fields

import numpy as np
import pytest
import torch
from torch import nn

from verifier import cli
from verifier.errors import InputError
from verifier.results import Verdict
from verifier.tracking import RankHistory, RankTracker
from verifier.tracking.lora import (MIN_RECORDS, Reason, Saturation, energy_rank, recommend_lora,
                                    recommendation_json)


# --- models -----------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """q_proj/k_proj/v_proj/o_proj, found by the tracker's q_proj layout."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))


class Block(nn.Module):
    def __init__(self, d=16, heads=2):
        super().__init__()
        self.attn = Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))


class Net(nn.Module):
    def __init__(self, d=16, heads=2, layers=1):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.head = nn.Linear(d, 3)


def _tiny_gpt2(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=13, n_positions=8, bos_token_id=0,
                                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def _planted(model, ranks, steps, grow=None, noise=1e-5, seed=1, module_every=1):
    """Track ``model`` while the named weights move along planted directions: weight w gets
    U_w diag(t * c) V_w^T (rank ranks[w]) at step t, plus ``noise`` * a fresh Gaussian matrix; ``grow``:
    {name: step}: from that step on the weight gains one more direction (a change still growing)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    tracker = RankTracker(model, module_every=module_every)
    tracker.record(0, 1.0)
    w0 = {n: params[n].detach().clone() for n in ranks}
    dirs = {}
    for n, r in ranks.items():
        m, k = params[n].shape
        u = torch.linalg.qr(torch.randn(m, r + 1, generator=g))[0]
        v = torch.linalg.qr(torch.randn(k, r + 1, generator=g))[0]
        dirs[n] = (u, v, torch.tensor([2.0 ** -i for i in range(r)] + [0.5 ** r]))
    for t in range(1, steps + 1):
        with torch.no_grad():
            for n, r in ranks.items():
                u, v, c = dirs[n]
                scale = c.clone()
                scale[r] = 0.0 if grow is None or n not in grow or t < grow[n] else (t - grow[n]) / t * 4
                params[n].copy_(w0[n] + 0.003 * t * (u * scale) @ v.T + noise * torch.randn(u.shape[0], v.shape[0],
                                                                                          generator=g))
        tracker.record(t, 1.0 / (1 + t))
    return tracker


# --- measurement -----------------------------------------------------------------------------------------------

def test_energy_rank_on_analytic_spectra():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    norm = np.sqrt(14.0)
    assert [energy_rank(s, norm, e) for e in (0.5, 9 / 14, 0.65, 0.9, 13 / 14, 0.95, 1.0)] == [1, 1, 2, 2, 2, 3, 3]
    assert energy_rank(np.zeros(4), 0.0, 0.9) == 0


def test_module_spectra_match_an_independent_svd():
    model = _tiny_gpt2()
    tracker = RankTracker(model, module_every=2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    w0 = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    tracker.record(0)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 5):
        x = torch.randint(0, 13, (4, 8), generator=g)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.record(step, loss)
    h = tracker.history()
    assert h.module_names == ("h.0.attn.c_attn", "h.0.attn.c_proj", "h.1.attn.c_attn", "h.1.attn.c_proj",
                              "h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj")
    assert h.module_feeds[0] == ("transformer.h.0.attn.qk:a", "transformer.h.0.attn.qk:b", "transformer.h.0.attn.vo:a")
    assert h.module_feeds[1] == ("transformer.h.0.attn.vo:b",) and h.module_feeds[4] == ()
    np.testing.assert_array_equal(h.module_steps, [2, 4])
    params = dict(model.named_parameters())
    for i, name in enumerate(h.module_names):
        delta = (params[f"transformer.{name}.weight"].detach().double() - w0[f"transformer.{name}.weight"]).numpy()
        s = np.linalg.svd(delta, compute_uv=False)
        assert h.module_shapes[i] == delta.shape
        np.testing.assert_allclose(h.module_norms[-1, i], np.linalg.norm(delta), rtol=1e-6)
        got = h.module_spectra[-1, i, : len(s)]
        # from the float32 Gram matrix: s_i^2 to ~1e-7 s_1^2, so every energy share to ~1e-6
        np.testing.assert_allclose(got**2, s**2, atol=1e-6 * s[0] ** 2)
        np.testing.assert_allclose(np.cumsum(got**2) / np.sum(got**2), np.cumsum(s**2) / np.sum(s**2), atol=1e-6)
        assert not h.module_spectra[-1, i, len(s):].any()


def test_module_names_drop_a_wrapper_prefix_and_skip_frozen_weights():
    class Wrapper(nn.Module):  # a LightningModule holds its model like this
        def __init__(self):
            super().__init__()
            self.model = Net(layers=2)

    tracker = RankTracker(Wrapper())
    names = [m.name for m in tracker._modules.modules]
    assert names[:4] == ["blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj", "blocks.0.attn.o_proj"]
    assert "blocks.1.mlp.0" in names and "head" not in names  # the MLP is in a block, the output head is not
    net = Net()
    net.blocks[0].attn.k_proj.weight.requires_grad_(False)
    assert "blocks.0.attn.k_proj" not in [m.name for m in RankTracker(net)._modules.modules]
    assert RankTracker(Net(), module_every=0)._modules.modules == []
    with pytest.raises(InputError, match="module_every"):
        RankTracker(Net(), module_every=-1)


def test_module_spectra_survive_a_checkpoint():
    """A tracker restored from state_dict() continues the module spectra from the run's W0: the same records as
    the tracker that was not interrupted."""
    model = Net()
    first = _planted(model, {"blocks.0.attn.q_proj.weight": 2}, 6, module_every=3)
    resumed = RankTracker(model, module_every=3)
    resumed.load_state_dict(first.state_dict())
    g = torch.Generator().manual_seed(5)
    for step in (7, 8, 9):
        with torch.no_grad():
            model.blocks[0].mlp[0].weight.add_(0.01 * torch.randn(32, 16, generator=g))
        first.record(step, 0.1)
        resumed.record(step, 0.1)
    a, b = first.history(), resumed.history()
    np.testing.assert_array_equal(b.module_steps, [3, 6, 9])
    np.testing.assert_allclose(b.module_spectra, a.module_spectra)
    np.testing.assert_allclose(b.module_norms, a.module_norms)
    old = first.state_dict()
    del old["modules"]  # a state written before module spectra existed
    legacy = RankTracker(Net())
    legacy.load_state_dict(old)
    assert legacy.history().module_names == ()


# --- the recommendation ----------------------------------------------------------------------------------------

PLANTED = {"blocks.0.attn.q_proj.weight": 2, "blocks.0.attn.k_proj.weight": 1, "blocks.0.attn.v_proj.weight": 3,
           "blocks.0.mlp.0.weight": 2}


def test_planted_ranks_are_recovered():
    """Each weight moves along r directions of energies 1, 1/4, 1/16, ... (one more of 4^-r, switched off):
    at energy 0.99 the rank is the planted one; o_proj and the second MLP layer never move: not targets."""
    h = _planted(Net(), PLANTED, 16).history()
    rec = recommend_lora(h, 0.99)
    got = {m.name: m.rank for m in rec.modules}
    assert got == {"blocks.0.attn.q_proj": 2, "blocks.0.attn.k_proj": 1, "blocks.0.attn.v_proj": 3,
                   "blocks.0.attn.o_proj": 0, "blocks.0.mlp.0": 2, "blocks.0.mlp.2": 0}
    assert rec.saturation is Saturation.SATURATED and rec.judgement.verdict is Verdict.PASS
    config = rec.lora_config()
    assert config["target_modules"] == ["blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj",
                                        "blocks.0.mlp.0"]
    assert config["rank_pattern"] == {"blocks.0.attn.q_proj": 2, "blocks.0.attn.k_proj": 1,
                                      "blocks.0.attn.v_proj": 3, "blocks.0.mlp.0": 2}
    assert rec.lora_parameters == (2 + 1 + 3) * 32 + 2 * 48
    # at 0.7 the first direction (1 of 1 + 1/4 + 1/16 = 1.3125: 0.76) is enough everywhere
    assert {m.rank for m in recommend_lora(h, 0.7).targets} == {1}
    qk = next(p for m in rec.modules if m.name == "blocks.0.attn.q_proj" for p in m.products)
    assert (qk.product, qk.heads, qk.bound) == ("blocks.0.attn.qk", 2, 2 + 1)
    assert max(m.rank for m in recommend_lora(h, 0.99, max_rank=1).modules) == 1


def test_multihead_attention_is_one_peft_target():
    """PEFT adapts an nn.MultiheadAttention's in_proj and out_proj at one rank through the attention module:
    the config names that module with the larger rank, and PEFT applies it."""
    peft = pytest.importorskip("peft")

    def encoder():
        torch.manual_seed(0)
        return nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 1,
                                     enable_nested_tensor=False)

    h = _planted(encoder(), {"layers.0.self_attn.in_proj_weight": 2, "layers.0.self_attn.out_proj.weight": 3,
                             "layers.0.linear1.weight": 1}, 16).history()
    # every parameter lives under layers.0 (one layer, nothing else): PEFT matches the trailing components
    assert h.module_names[:2] == ("self_attn", "self_attn.out_proj")
    config = recommend_lora(h, 0.99).lora_config()
    assert config["rank_pattern"] == {"self_attn": 3, "linear1": 1}
    model = peft.get_peft_model(encoder(), peft.LoraConfig(**config))
    attn = model.base_model.model.layers[0].self_attn
    assert attn.r["default"] == 3 and model.base_model.model.layers[0].linear1.r["default"] == 1
    model(torch.randn(2, 5, 16)).sum().backward()


def test_a_change_still_growing_is_inconclusive():
    """The counterexample of the saturation signal: q_proj gains a direction in the last quarter of the run."""
    h = _planted(Net(), PLANTED, 16, grow={"blocks.0.attn.q_proj.weight": 14}).history()
    rec = recommend_lora(h, 0.9)
    assert rec.saturation is Saturation.GROWING
    assert rec.judgement.verdict is Verdict.INCONCLUSIVE and rec.judgement.reason == Reason.RANK_STILL_GROWING.value
    assert "blocks.0.attn.qk[h" in rec.judgement.message


def test_a_run_that_no_longer_learns_converged_and_no_loss_is_inconclusive():
    tracker = _planted(Net(), PLANTED, 16)
    h = tracker.history()
    flat = RankHistory(**{**{f.name: getattr(h, f.name) for f in fields(h)}, "losses": np.ones_like(h.losses)})
    assert recommend_lora(flat).saturation is Saturation.CONVERGED
    none = RankHistory(**{**{f.name: getattr(h, f.name) for f in fields(h)}, "losses": np.full_like(h.losses, np.nan)})
    rec = recommend_lora(none)
    assert rec.judgement.verdict is Verdict.INCONCLUSIVE and rec.judgement.reason == Reason.NO_LOSS.value
    every_other = h.losses.copy()
    every_other[1::2] = np.nan  # records at steps the trainer did not log
    sparse = RankHistory(**{**{f.name: getattr(h, f.name) for f in fields(h)}, "losses": every_other})
    assert recommend_lora(sparse).saturation is Saturation.SATURATED
    assert recommend_lora(h, tail=0.99).source["tail_records"] == len(h.steps) - 2


@pytest.mark.parametrize("case, match", [
    ("few-records", f"records; a recommendation needs at least {MIN_RECORDS}"),
    ("no-modules", "no per-module weight-change spectra"),
    ("one-module-record", "module measurement"),
    ("diverged", "diverged at step"),
    ("no-change", "no tracked module changed"),
    ("energy", "energy"),
    ("targets", "targets"),
])
def test_refusals_name_what_is_missing(case, match):
    steps = MIN_RECORDS - 2 if case == "few-records" else 16
    every = {"no-modules": 0, "one-module-record": 10}.get(case, 1)
    ranks = {} if case == "no-change" else PLANTED
    h = _planted(Net(), ranks, steps, module_every=every).history()
    if case == "diverged":
        h = RankHistory(**{**{f.name: getattr(h, f.name) for f in fields(h)},
                           "finite": np.r_[h.finite[:-1], False]})
    kwargs = {"energy": 1.5} if case == "energy" else {"targets": "nothing-like-this"} if case == "targets" else {}
    with pytest.raises(InputError, match=match):
        recommend_lora(h, **kwargs)


def test_head_change_rank_is_at_most_rq_plus_rk():
    """docs/LORA.md: adapters of ranks r_q on q and r_k on k change each head's Wq_h^T Wk_h by a matrix of rank
    <= r_q + r_k (generically equal); the tracker's per-head spectra of the change show it."""
    peft = pytest.importorskip("peft")
    net = Net(d=16, heads=2)
    model = peft.get_peft_model(net, peft.LoraConfig(target_modules=["q_proj", "k_proj"], r=8,
                                                     rank_pattern={"q_proj": 2, "k_proj": 3}, init_lora_weights=False))
    base = Net(d=16, heads=2)
    tracker = RankTracker(base, module_every=0)
    tracker.record(0)
    with torch.no_grad():
        for name in ("q_proj", "k_proj"):
            layer = getattr(model.base_model.model.blocks[0].attn, name)
            getattr(base.blocks[0].attn, name).weight.add_(layer.get_delta_weight("default"))
    tracker.record(1)
    h = tracker.history()
    qk = [i for i, n in enumerate(h.names) if n.endswith(".qk")]
    s = h.delta_spectra[1, qk]
    numerical = (s > 1e-4 * s[:, :1]).sum(axis=1)
    assert list(numerical) == [5, 5]


# --- reproducible from the saved history alone -------------------------------------------------------------------

def test_the_saved_history_alone_gives_the_same_recommendation(tmp_path):
    h = _planted(Net(), PLANTED, 16).history()
    h.save(tmp_path / "rank-history.npz")
    loaded = RankHistory.load(tmp_path / "rank-history.npz")
    again = recommend_lora(tmp_path / "rank-history.npz")
    assert recommendation_json(recommend_lora(loaded)) == recommendation_json(recommend_lora(h))
    assert again.lora_config() == recommend_lora(h).lora_config()


# --- two checkpoints -------------------------------------------------------------------------------------------

def test_two_checkpoints(tmp_path):
    net = Net()
    before = {f"model.{k}": v.clone() for k, v in net.state_dict().items()}  # a Lightning .ckpt's keys
    tracker = _planted(net, PLANTED, 16)
    after = {f"model.{k}": v.clone() for k, v in net.state_dict().items()}
    torch.save({"state_dict": before, "epoch": 0}, tmp_path / "a.ckpt")
    torch.save({"state_dict": after, "epoch": 1}, tmp_path / "b.ckpt")
    rec = recommend_lora(None, 0.99, before=tmp_path / "a.ckpt", after=tmp_path / "b.ckpt", targets=r"^blocks")
    assert {m.name: m.rank for m in rec.targets} == {"blocks.0.attn.q_proj": 2, "blocks.0.attn.k_proj": 1,
                                                     "blocks.0.attn.v_proj": 3, "blocks.0.mlp.0": 2}
    assert rec.judgement.reason == Reason.NO_TREND.value
    from_history = recommend_lora(tracker.history(), 0.99)
    assert rec.lora_config()["rank_pattern"] == from_history.lora_config()["rank_pattern"]
    with pytest.raises(InputError, match="after"):
        recommend_lora(None, before=tmp_path / "a.ckpt", after=tmp_path / "a.ckpt")


# --- the command -----------------------------------------------------------------------------------------------

def _cli(capsys, *argv):
    code = cli.main(["recommend-lora", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, field", [
    (["{run}", "--energy", "abc"], "--energy"),
    (["{run}", "--energy", "0"], "--energy"),
    (["{run}", "--lora-alpha", "-1"], "--lora-alpha"),
    (["{run}", "--max-rank", "1.5"], "--max-rank"),
    (["{run}", "--tail", "1"], "--tail"),
    (["{run}", "--targets", "("], "--targets"),
    (["{run}", "--out", "{file}"], "--out"),
    (["{run}", "--before", "{file}", "--after", "{file}"], "RUN"),
    (["--before", "{file}"], "--after"),
    (["--before", "{file}", "--after", "{file}"], "--out"),
    (["{tmp}/missing"], "RUN"),
    ([], "RUN"),
    (["{empty}"], "RUN"),
])
def test_cli_bad_input_exits_2_naming_the_argument_before_any_work(tmp_path, capsys, argv, field):
    run = tmp_path / "run" / "rank-tracking"
    run.mkdir(parents=True)
    _planted(Net(), PLANTED, 16).history().save(run / "rank-history.npz")
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    names = {"run": tmp_path / "run", "file": tmp_path / "file", "tmp": tmp_path, "empty": tmp_path / "empty"}
    code, out, err = _cli(capsys, *(a.format(**names) for a in argv))
    assert code == cli.EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and err.startswith(f"verifier: error: {field}")
    assert not (tmp_path / "run" / "lora-recommendation").exists()


def test_cli_refuses_a_short_history_with_one_line(tmp_path, capsys):
    _planted(Net(), PLANTED, 4).history().save(tmp_path / "rank-history.npz")
    code, out, err = _cli(capsys, tmp_path / "rank-history.npz")
    assert code == cli.EXIT_USAGE and err.count("\n") == 1
    assert f"5 records; a recommendation needs at least {MIN_RECORDS}" in err
    assert not (tmp_path / "lora-recommendation").exists()


def test_cli_writes_the_set_whole_and_exits_by_the_judgement(tmp_path, capsys):
    run = tmp_path / "run" / "rank-tracking"
    run.mkdir(parents=True)
    _planted(Net(), PLANTED, 16).history().save(run / "rank-history.npz")
    code, out, _ = _cli(capsys, tmp_path / "run", "--energy", "0.99")
    folder = tmp_path / "run" / "lora-recommendation"
    assert code == cli.EXIT_OK and sorted(p.name for p in folder.iterdir()) == [
        "lora-config.json", "recommendation.json", "report.html"]
    config = json.loads((folder / "lora-config.json").read_text())
    assert config["rank_pattern"]["blocks.0.attn.v_proj"] == 3 and "blocks.0.attn.v_proj" in out
    assert json.loads((folder / "recommendation.json").read_text())["verdict"] == "pass"
    assert "<script" not in (folder / "report.html").read_text()
    # again into the same folder: the previous set is replaced; a folder holding other files is refused
    assert _cli(capsys, tmp_path / "run", "--energy", "0.7")[0] == cli.EXIT_OK
    assert set(json.loads((folder / "lora-config.json").read_text())["rank_pattern"].values()) == {1}
    (folder / "notes.txt").write_text("mine")
    assert _cli(capsys, tmp_path / "run")[0] == cli.EXIT_USAGE and (folder / "notes.txt").exists()
    # a still-growing change: written, exit 3
    grow = tmp_path / "grow.npz"
    _planted(Net(), PLANTED, 16, grow={"blocks.0.attn.q_proj.weight": 14}).history().save(grow)
    assert _cli(capsys, grow, "--out", tmp_path / "g")[0] == cli.EXIT_INCONCLUSIVE
    assert json.loads((tmp_path / "g" / "recommendation.json").read_text())["reason"] == "rank-still-growing"


# --- Hugging Face and Lightning runs: the config PEFT accepts and applies ----------------------------------------

def _history_file(folder, tracker):
    """The callbacks wrote <run>/rank-tracking/rank-history.npz (docs/TRACKING.md); the run folder to read."""
    assert (folder / "rank-tracking" / "rank-history.npz").is_file()
    return folder


def _apply(config_file, model):
    peft = pytest.importorskip("peft")
    config = json.loads(config_file.read_text())
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**config))
    got = {name.removeprefix("base_model.model."): module.r["default"] for name, module in peft_model.named_modules()
           if hasattr(module, "lora_A") and "default" in getattr(module, "r", {})}
    return peft_model, config, got


def test_hf_run_folder_gives_a_config_peft_applies(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from verifier.tracking.hf import RankTrackerCallback

    model = _tiny_gpt2()
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 13, (96, 8), generator=g)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=24, per_device_train_batch_size=8,
                                          learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to=[],
                                          use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    callback = RankTrackerCallback(every=1)
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    run = _history_file(tmp_path / "hf", callback.tracker)
    code, out, err = _cli(capsys, run, "--energy", "0.5")
    assert code in (cli.EXIT_OK, cli.EXIT_INCONCLUSIVE), err
    peft_model, config, got = _apply(run / "lora-recommendation" / "lora-config.json", _tiny_gpt2())
    assert got == {f"transformer.{k}": v for k, v in config["rank_pattern"].items()}
    assert set(config["target_modules"]) >= {"h.0.attn.c_attn", "h.1.attn.c_proj"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x = torch.randint(0, 13, (2, 8))
    peft_model(input_ids=x, labels=x).loss.backward()


def test_lightning_run_folder_gives_a_config_peft_applies(tmp_path, capsys):
    lightning = pytest.importorskip("lightning")
    from verifier.tracking.lightning import RankTrackerCallback

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _tiny_gpt2()

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    g = torch.Generator().manual_seed(1)
    loader = torch.utils.data.DataLoader(torch.randint(0, 13, (96, 8), generator=g), batch_size=8)
    callback = RankTrackerCallback(every=1, log=False)
    trainer = lightning.Trainer(max_steps=24, default_root_dir=str(tmp_path / "pl"), callbacks=[callback],
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu")
    trainer.fit(Module(), loader)
    run = _history_file(tmp_path / "pl", callback.tracker)
    code, out, err = _cli(capsys, run, "--energy", "0.5")
    assert code in (cli.EXIT_OK, cli.EXIT_INCONCLUSIVE), err
    config = json.loads((run / "lora-recommendation" / "lora-config.json").read_text())
    assert all(not name.startswith("model.") for name in config["target_modules"])  # the wrapper's prefix is gone
    # applied to the inner model, as a LightningModule that wraps it with PEFT would
    _, _, got = _apply(run / "lora-recommendation" / "lora-config.json", _tiny_gpt2())
    assert got == {f"transformer.{k}": v for k, v in config["rank_pattern"].items()}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_module_spectra_on_cuda_match_cpu():
    cpu, gpu = Net(), Net().cuda()
    trackers = [RankTracker(m, module_every=1) for m in (cpu, gpu)]
    for t in trackers:
        t.record(0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p, q in zip(cpu.parameters(), gpu.parameters()):
            step = 0.05 * torch.randn(p.shape, generator=g)
            p.add_(step)
            q.add_(step.cuda())
    for t in trackers:
        t.record(1)
    a, b = (t.history() for t in trackers)
    assert a.module_names == b.module_names
    np.testing.assert_allclose(b.module_norms, a.module_norms, rtol=1e-5)
    np.testing.assert_allclose(b.module_spectra**2, a.module_spectra**2, atol=1e-5 * a.module_spectra.max() ** 2)


def test_cli_fuzz_options_never_crash_and_write_whole_sets(tmp_path_factory):
    """Random option values: exit 0, 2 or 3 (never 4, the bug code); exit 2 is one line; the output folder
    holds the whole set or does not exist, and nothing temporary is left beside it."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    base = tmp_path_factory.mktemp("fuzz")
    run = base / "run" / "rank-tracking"
    run.mkdir(parents=True)
    _planted(Net(), PLANTED, 16).history().save(run / "rank-history.npz")
    values = ["0", "-1", "1", "0.5", "0.99", "2", "nan", "inf", "1e400", "", " ", "abc", "3", "1.5", "attn", "(",
              "^blocks", "\x00", "-"]
    options = ["--energy", "--lora-alpha", "--max-rank", "--tail", "--targets"]

    fresh = itertools.count()

    @settings(max_examples=25, deadline=None, derandomize=True, database=None)
    @given(st.lists(st.tuples(st.sampled_from(options), st.sampled_from(values)), max_size=3))
    def check(pairs):
        out = base / f"out{next(fresh)}"
        argv = ["recommend-lora", str(base / "run"), "--out", str(out)]
        for flag, value in pairs:
            argv += [f"{flag}={value}"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
        assert code in (cli.EXIT_OK, cli.EXIT_USAGE, cli.EXIT_INCONCLUSIVE), err.getvalue()
        if code == cli.EXIT_USAGE:
            assert err.getvalue().count("\n") == 1 and not out.exists()
        else:
            assert sorted(p.name for p in out.iterdir()) == ["lora-config.json", "recommendation.json", "report.html"]
        assert not [p for p in base.iterdir() if p.name.startswith(".")]

    check()
