"""Sizes against memory (issue 21, class 3) and the library builders' inputs (class 4): a model too large for
the dense flow is refused before work with the size, the memory and what to do instead; from_loss and
from_module raise InputError naming the field for any value, never a foreign exception."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import verifier
from verifier import memory
from verifier.cli import main
from verifier.errors import InputError

SQUARE = "import torch, verifier\ndef make():\n    return verifier.from_loss(lambda b: (b - 1).pow(2).sum(), {p})\n"


def _spec(tmp_path, p):
    path = tmp_path / "m.py"
    path.write_text(SQUARE.format(p=p))
    return f"{path}:make"


def test_limit_on_a_million_coordinates_is_refused_before_work(tmp_path, capsys):
    assert main(["limit", "--model-file", _spec(tmp_path, 10**6)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("verifier: error: --model-file: Algorithm 1")
    assert "p = 1000000" in err and "TiB" in err and "definition-3.1" in err


@pytest.mark.parametrize("checks,code", [(["--checks", "definition-3.1"], 0), ([], 2),
                                         (["--checks", "lemma-4.1"], 2),
                                         (["--checks", "lemma-4.1", "--optimizer", "gd", "--steps", "5"], 0)])
def test_run_refuses_only_checks_that_integrate_the_flow(checks, code, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10_000)  # room for n <= 20
    out = tmp_path / "o"
    assert main(["run", "--model-file", _spec(tmp_path, 50), *checks, "--no-progress", "--out", str(out)]) == code
    err = capsys.readouterr().err
    if code == 2:
        assert "p = 50" in err and "58.6 KiB" in err and "9.8 KiB is available" in err, err
        assert not out.exists()


def test_a_size_that_fits_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10**6)
    assert main(["limit", "--model-file", _spec(tmp_path, 50)]) == 0


class _Pair(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.u = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        self.v = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))


def test_from_module_on_the_meta_device_is_refused():
    with torch.device("meta"):
        module = _Pair()
    with pytest.raises(InputError, match="^module: .*meta device"):
        verifier.from_module(module, [("u", "v")], lambda m: (m.u * m.v).sum())


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(p=st.one_of(st.booleans(), st.floats(allow_nan=True), st.integers(-5, 5), st.text(max_size=3), st.none(),
                   st.just(np.int64(3)), st.just([3])),
       names=st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.text(max_size=2), max_size=4)),
       device=st.sampled_from(["cpu", "tpu", "meta", "", 3, None]))
def test_from_loss_raises_input_error_or_builds(p, names, device):
    try:
        model = verifier.from_loss(lambda b: (b - 1).pow(2).sum(), p, names=names, device=device)
    except InputError as exc:
        assert str(exc).split(":")[0] in {"p", "names", "device", "loss_beta"}, str(exc)
        return
    assert not isinstance(p, bool) and model.p == int(p) >= 1 and model.device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_memory_check_reads_the_gpus_free_memory():
    free = memory.available_bytes(torch.device("cuda"))
    assert free is not None and 0 < free <= torch.cuda.get_device_properties(0).total_memory
    n = int((free / 24) ** 0.5) + 1000  # just past what fits
    model = verifier.from_loss(lambda b: (b - 1).pow(2).sum(), n, device="cuda")
    with pytest.raises(InputError, match="available on cuda"):
        memory.require_dense_fits(model, "--model-file", "Algorithm 1", "a smaller p")
