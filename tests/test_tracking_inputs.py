"""RankTracker's inputs refused at the boundary (issue 29): its state, ``device=``, layout specs, meta-device models,
parameters read by name, and its own thread count (issue 26)."""

import re

import numpy as np
import pytest
import torch

from verifier.errors import InputError
from verifier.tracking import AttentionSpec, RankTracker, Weight
from verifier.tracking.factors import ChangeBasis


def _mha(E=8, H=2, seed=0):
    torch.manual_seed(seed)
    return torch.nn.MultiheadAttention(E, H, batch_first=True)


def _perturb(module, size=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(size * torch.randn(p.shape, generator=g))


def _recorded(E=8, steps=2):
    mha = _mha(E)
    tracker = RankTracker(mha)
    for step in range(steps):
        tracker.record(step, loss=1.0 / (step + 1))
        _perturb(mha, seed=step)
    return mha, tracker


def _exact(message):
    return "^" + re.escape(message) + "$"


# --- load_state_dict: keys, lengths, types and shapes checked against the model --------------------------------

def _tampered(change):
    _, tracker = _recorded()
    state = tracker.state_dict()
    change(state)
    return state


CASES = {
    "not a dict": (lambda s: None, "RankTracker.load_state_dict: state: a list, not a dict (allowed: the dict "
                   "RankTracker.state_dict() returns (format 1) for this model)"),
    "truncated": (lambda s: s.pop("spectra"), "RankTracker.load_state_dict: state['spectra']: missing (allowed: "
                  "the dict RankTracker.state_dict() returns (format 1) for this model)"),
    "format": (lambda s: s.update(format=7), "RankTracker.load_state_dict: state['format']: 7 (allowed: 1)"),
    "names": (lambda s: s.update(names=["x.qk", "x.vo"]), "RankTracker.load_state_dict: state['names']: 2 entries: "
              "x.qk, x.vo, ... (another model's tracker?) (allowed: this tracker's 2 products: attention.qk, "
              "attention.vo, ...)"),
    "steps": (lambda s: s.update(steps=[0, "1"]), "RankTracker.load_state_dict: state['steps']: entry 1 is str '1' "
              "(allowed: integers)"),
    "steps order": (lambda s: s.update(steps=[1, 1]), "RankTracker.load_state_dict: state['steps']: steps that do "
                    "not increase (allowed: increasing optimizer steps)"),
    "losses length": (lambda s: s["losses"].pop(), "RankTracker.load_state_dict: state['losses']: 1 entries "
                      "(allowed: 2 numbers)"),
    "last_step": (lambda s: s.update(last_step=0), "RankTracker.load_state_dict: state['last_step']: 0 (allowed: "
                  "None with no steps, else an integer >= the last step)"),
    "reference count": (lambda s: s["reference"].pop(), "RankTracker.load_state_dict: state['reference']: 1 "
                        "entries (allowed: 2 (A, B) pairs)"),
    "reference shape": (lambda s: s["reference"].__setitem__(1, (s["reference"][1][0], torch.zeros(2, 8, 3))),
                        "RankTracker.load_state_dict: state['reference'][1][1]: shape (2, 8, 3) (allowed: shape "
                        "(2, 8, 4) of attention.vo for this model)"),
    "reference dtype": (lambda s: s["reference"].__setitem__(0, (s["reference"][0][0].long(), s["reference"][0][1])),
                        "RankTracker.load_state_dict: state['reference'][0][0]: a Tensor of torch.int64 (allowed: a "
                        "floating-point tensor)"),
    "spectra shape": (lambda s: s["spectra"].__setitem__(0, s["spectra"][0][:1]), "RankTracker.load_state_dict: "
                      "state['spectra'][0]: shape (1, 4, 8) (allowed: shape (2, 4, 8) for this model)"),
    "initial": (lambda s: s.update(initial=[]), "RankTracker.load_state_dict: state['initial']: 0 entries (allowed: "
                "1 tensors)"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_load_state_dict_refuses_a_bad_state_naming_the_key(case):
    change, message = CASES[case]
    state = [] if case == "not a dict" else _tampered(change)
    mha, tracker = _recorded()
    before = tracker.history()
    with pytest.raises(InputError, match=_exact(message)):
        tracker.load_state_dict(state)
    after = tracker.history()  # nothing changed: the tracker goes on as before
    np.testing.assert_array_equal(after.delta_spectra, before.delta_spectra)
    np.testing.assert_array_equal(after.steps, before.steps)
    assert tracker.record(5)


def test_load_state_dict_of_another_width_names_the_reference():
    """A tracker of the same layout at another width (names and heads agree): the reference's shape differs."""
    _, wide = _recorded(E=12)
    _, tracker = _recorded(E=8)
    with pytest.raises(InputError, match=_exact(
            "RankTracker.load_state_dict: state['reference'][0][0]: shape (2, 12, 6) (allowed: shape (2, 8, 4) of "
            "attention.qk for this model)")):
        tracker.load_state_dict(wide.state_dict())


def test_a_valid_state_round_trips_through_torch_save(tmp_path):
    """The state a tracker writes passes its own validation after torch.save / torch.load(weights_only=True)."""
    mha, tracker = _recorded(steps=3)
    torch.save(tracker.state_dict(), tmp_path / "rank_tracker.pt")
    fresh = RankTracker(mha)
    fresh.load_state_dict(torch.load(tmp_path / "rank_tracker.pt", weights_only=True))
    np.testing.assert_array_equal(fresh.history().delta_spectra, tracker.history().delta_spectra)
    assert fresh.record(4) and fresh.n_records == 4
    empty = RankTracker(mha)
    fresh.load_state_dict(empty.state_dict())  # the state before any record
    assert fresh.n_records == 0 and fresh.record(0)


# --- device, specs, meta-device models ---------------------------------------------------------------------------

DEVICE_ALLOWED = "cpu, cuda, cuda:N, mps, a torch.device, or None for the device of the model's weights"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_at_construction():
    with pytest.raises(InputError, match=_exact(
            f"device: 'cuda' but torch.cuda.is_available() is False (allowed: {DEVICE_ALLOWED})")):
        RankTracker(_mha(), device="cuda")


@pytest.mark.parametrize("device, problem", [
    ("gpu", "Expected one of cpu, cuda"),
    (3.5, "3.5 is not a device"),
    ("meta", "'meta' holds no values to measure"),
])
def test_bad_device_names_the_argument(device, problem):
    with pytest.raises(InputError, match=r"^device: " + re.escape(problem)):
        RankTracker(_mha(), device=device)


def test_attention_spec_fields_are_validated_when_built():
    with pytest.raises(InputError, match=_exact(
            "AttentionSpec(None).q: 123 is not a weight (allowed: a Weight, an attribute path such as 'wq.weight', "
            "or a tuple of them (candidates))")):
        AttentionSpec(q=123)
    with pytest.raises(InputError, match=r"^AttentionSpec\('mine'\)\.k: None is not a weight"):
        AttentionSpec("mine", q="wq.weight")
    with pytest.raises(InputError, match=_exact(
            "AttentionSpec('mine').q: 123 is not a weight (allowed: a Weight, an attribute path such as 'wq.weight', "
            "or a tuple of them (candidates))")):
        AttentionSpec("mine", q=123, k="wk.weight", v="wv.weight", o="wo.weight", heads="n_heads")
    with pytest.raises(InputError, match=_exact(
            "AttentionSpec('mine').heads: 4 is not an attribute path (allowed: an attribute path such as 'num_heads' "
            "or 'config.head_dim', or a tuple of them)")):
        AttentionSpec("mine", q="wq.weight", k="wk.weight", v="wv.weight", o="wo.weight", heads=4)
    with pytest.raises(InputError, match=r"^AttentionSpec\('mine'\)\.o: \(\) is not a weight"):
        AttentionSpec("mine", q="wq.weight", k="wk.weight", v="wv.weight", o=(), heads="n")
    with pytest.raises(InputError, match=_exact("AttentionSpec.name: None (allowed: a non-empty name for the layout)")):
        AttentionSpec(None, q="wq.weight", k="wk.weight", v="wv.weight", o="wo.weight", heads="n")
    with pytest.raises(InputError, match=_exact(
            "Weight.path: 'a..b' is not an attribute path (allowed: a dotted attribute path from the attention "
            "module, e.g. 'c_attn.weight')")):
        Weight("a..b")
    with pytest.raises(InputError, match=_exact("Weight.parts: 1.5 is not an integer (allowed: an integer)")):
        Weight("w", parts=1.5)


def test_a_meta_device_model_is_refused():
    mha = torch.nn.MultiheadAttention(8, 2, device="meta")
    with pytest.raises(InputError, match=_exact(
            "module: the weights of attention.qk ('in_proj_weight') are on the meta device: there are no values "
            "to measure (allowed: a model whose weights hold values (materialise it with "
            "model.to_empty(device=...) and load its weights first))")):
        RankTracker(mha)


# --- parameters read by name --------------------------------------------------------------------------------------

class HandWritten(torch.nn.Module):
    def __init__(self, d=6, heads=2, k=3):
        super().__init__()
        self.query = torch.nn.Parameter(torch.randn(d, heads * k))
        self.key = torch.nn.Parameter(torch.randn(d, heads * k))


def test_a_replaced_parameter_is_read_not_lost():
    """Training code that assigns a new Parameter between records (a re-initialisation, a weight swap): the
    tracker reads the parameter the module holds now, so the change is the real one, not 0."""
    torch.manual_seed(0)
    m = HandWritten()
    tracker = RankTracker(m, {"qk": ("query", "key", 2)})
    tracker.record(0)
    before = m.query.detach().clone(), m.key.detach().clone()
    m.key = torch.nn.Parameter(m.key.detach() + 0.1 * torch.randn_like(m.key))  # a new object
    tracker.record(1)
    cols = [slice(0, 3), slice(3, 6)]
    want = [np.linalg.svd((m.query[:, c] @ m.key[:, c].T - before[0][:, c] @ before[1][:, c].T).detach().numpy(),
                          compute_uv=False) for c in cols]
    got = tracker.history().delta_spectra[1]
    assert got[:, 0].min() > 0.01
    np.testing.assert_allclose(got[:, :6], np.stack(want), rtol=1e-4, atol=1e-6)


def test_a_replaced_attention_weight_is_read():
    mha = _mha()
    tracker = RankTracker(mha)
    tracker.record(0)
    mha.in_proj_weight = torch.nn.Parameter(mha.in_proj_weight.detach() * 1.5)
    tracker.record(1)
    assert tracker.history().delta_spectra[1, :, 0].min() > 0


def test_a_weight_that_changes_shape_is_refused_naming_the_product():
    torch.manual_seed(0)
    m = HandWritten()
    tracker = RankTracker(m, {"qk": ("query", "key", 2)})
    tracker.record(0)
    m.key = torch.nn.Parameter(torch.randn(8, 6))
    with pytest.raises(InputError, match=_exact(
            "module: the weights of qk changed shape since the first record ((2, 6, 3), (2, 6, 3) -> (2, 6, 3), "
            "(2, 8, 3)) (allowed: weights that keep their shape during training)")):
        tracker.record(1)


# --- the tracker's own thread count (issue 26) --------------------------------------------------------------------

@pytest.fixture
def three_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def _spy_threads(monkeypatch, fail=False):
    """The torch thread count while record() computes the spectra of the change."""
    seen = []
    real = ChangeBasis.svdvals

    def spy(*args):
        seen.append(torch.get_num_threads())
        if fail:
            raise FloatingPointError("raised inside record")
        return real(*args)

    monkeypatch.setattr(ChangeBasis, "svdvals", spy)
    return seen


@pytest.mark.parametrize("threads, inside", [(None, 1), (2, 2)])
def test_record_runs_at_its_own_thread_count_and_restores_it(monkeypatch, three_threads, threads, inside):
    seen = _spy_threads(monkeypatch)
    tracker = RankTracker(_mha(), threads=threads)
    tracker.record(0)
    tracker.products()
    assert seen == [inside] and torch.get_num_threads() == three_threads


def test_the_thread_count_is_restored_when_record_raises(monkeypatch, three_threads):
    _spy_threads(monkeypatch, fail=True)
    tracker = RankTracker(_mha())
    with pytest.raises(FloatingPointError):
        tracker.record(0)
    assert torch.get_num_threads() == three_threads


@pytest.mark.parametrize("threads, problem", [(0, "0 threads"), (1.5, "1.5 is not an integer"),
                                              (True, "True is not an integer")])
def test_bad_threads_are_refused(threads, problem):
    with pytest.raises(InputError, match=_exact(
            f"threads: {problem} (allowed: a positive integer, or None for the tracker's default (1))")):
        RankTracker(_mha(), threads=threads)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_thread_count_is_left_alone(monkeypatch, three_threads):
    seen = _spy_threads(monkeypatch)
    tracker = RankTracker(_mha().cuda())
    tracker.record(0)
    assert seen == [three_threads] and torch.get_num_threads() == three_threads
