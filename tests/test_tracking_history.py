"""RankHistory.save / RankHistory.load (one .npz, no pickle, validated on load) and `verifier track-compare`'s
refusals: every bad input is one line naming the file (or argument) and the field, exit 2, nothing written."""

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from verifier.cli import main
from verifier.errors import InputError
from verifier.tracking import RankHistory, RankTracker
from verifier.tracking.history import METADATA


def _history(steps=6, loss=lambda t: 2.0 - 0.1 * t, seed=0, info=None):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(16, 2)
    tracker = RankTracker(mha)
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.randn(48, 1, generator=gen), torch.randn(1, 16, generator=gen)
    for t in range(steps + 1):
        if t:
            with torch.no_grad():
                mha.in_proj_weight.add_(0.05 * u @ v + 0.001 * torch.randn(48, 16, generator=gen))
        tracker.record(t, loss(t))
    history = tracker.history()
    return dataclasses.replace(history, info=info if info is not None else {"init_scale": 1.0, "model": "MHA"})


def _same(a: RankHistory, b: RankHistory):
    for f in dataclasses.fields(RankHistory):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def test_save_load_round_trip(tmp_path):
    h = _history(loss=lambda t: float("nan") if t == 2 else 2.0 - 0.1 * t)
    path = h.save(tmp_path / "rank-history.npz")
    assert path == tmp_path / "rank-history.npz" and [p.name for p in tmp_path.iterdir()] == ["rank-history.npz"]
    loaded = RankHistory.load(path)
    _same(h, loaded)
    assert isinstance(loaded.names, tuple) and isinstance(loaded.heads[0], int)
    np.testing.assert_array_equal(loaded.stable_rank(), h.stable_rank())  # NaN where the change is zero
    with np.load(path, allow_pickle=False) as npz:  # readable without pickle, metadata a JSON string
        meta = json.loads(str(npz[METADATA][()]))
    assert meta["format"] == "verifier.rank-history" and meta["version"] == 1 and meta["values"]["info"]["model"] == "MHA"


def _rewrite(path, drop=(), replace=None, meta=None):
    """A copy of a saved history with arrays dropped or replaced and the metadata edited."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    m = json.loads(str(arrays.pop(METADATA)[()]))
    for k in drop:
        arrays.pop(k, None)
    arrays.update(replace or {})
    if meta is not None:
        meta(m)
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{METADATA: np.array(json.dumps(m))})
    out = path.with_name("edited.npz")
    out.write_bytes(buf.getvalue())
    return out


def test_a_field_added_later_is_optional_and_unknown_fields_are_ignored(tmp_path):
    """Files written before a field existed (here: no info) load with its default; a file from a later
    version's extra fields loads here with them ignored."""
    path = _history().save(tmp_path / "h.npz")

    def older(m):
        del m["kinds"]["info"], m["values"]["info"]
        m["kinds"]["a_later_field"] = "array"

    edited = _rewrite(path, replace={"a_later_field": np.ones((3, 2, 4))}, meta=older)
    loaded = RankHistory.load(edited)
    assert loaded.info == {} and not hasattr(loaded, "a_later_field")
    np.testing.assert_array_equal(loaded.delta_spectra, RankHistory.load(path).delta_spectra)


@pytest.mark.parametrize("edit, field", [
    (dict(drop=["delta_spectra"]), "delta_spectra"),
    (dict(replace={"steps": np.array([0, 2, 1, 3, 4, 5, 6])}), "steps"),
    (dict(replace={"steps": np.arange(7.0)}), "steps"),
    (dict(replace={"losses": np.zeros(3)}), "losses"),
    (dict(replace={"delta_spectra": np.zeros((7, 3, 16))}), "delta_spectra"),
    (dict(replace={"delta_spectra": -np.ones((7, 4, 16))}), "delta_spectra"),
    (dict(replace={"initial_spectra": np.zeros((2, 16))}), "initial_spectra"),
    (dict(replace={"heads": np.array([0, 1, 0])}), "heads"),
    (dict(replace={"names": np.array([1, 2, 3, 4])}), "names"),
    (dict(replace={"max_rank": np.array([0, 1, 1, 1])}), "max_rank"),
    (dict(replace={"finite": np.ones(7)}), "finite"),
    (dict(meta=lambda m: m.update(format="other")), "format"),
    (dict(meta=lambda m: m.update(version=99)), "version"),
    (dict(meta=lambda m: m["values"].update(info=[1, 2])), "info"),
    (dict(meta=lambda m: m["kinds"].update(steps="pickle")), "steps"),
    (dict(meta=lambda m: m.pop("kinds")), METADATA),
])
def test_a_tampered_file_names_the_file_and_the_field(tmp_path, edit, field):
    edited = _rewrite(_history().save(tmp_path / "h.npz"), **edit)
    with pytest.raises(InputError) as err:
        RankHistory.load(edited)
    assert str(err.value).startswith(f"{edited}, field {field!r}:"), str(err.value)
    assert "\n" not in str(err.value)


def test_files_that_are_not_a_history_name_the_file(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, names=np.array([{"a": 1}], dtype=object))  # an object array: never unpickled
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00garbage")
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(_history().npz_bytes()[:300])
    damaged = tmp_path / "damaged.npz"
    raw = bytearray(_history().npz_bytes())
    raw[200:260] = bytes(60)  # inside the first member: the zip's CRC no longer matches
    damaged.write_bytes(bytes(raw))
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(2))
    for path, says in [(pickled, "can only read by unpickling"), (garbage, "is not a .npz (zip) archive"),
                       (npy, "single .npy array"), (truncated, "is not a .npz (zip) archive"),
                       (damaged, "is a damaged .npz (BadZipFile"),
                       (plain, f"field {METADATA!r}: missing"), (tmp_path / "missing.npz", "no such file"),
                       (tmp_path, "is a folder")]:
        with pytest.raises(InputError) as err:
            RankHistory.load(path)
        assert str(err.value).startswith(str(path)) and says in str(err.value), str(err.value)
    assert zipfile.is_zipfile(plain)


def test_save_refuses_a_field_that_would_need_pickle(tmp_path):
    h = dataclasses.replace(_history(), info={"ok": 1})
    object.__setattr__(h, "names", ({"a": 1},) * len(h.names))
    with pytest.raises(TypeError, match="'names'"):
        h.save(tmp_path / "h.npz")
    assert not list(tmp_path.iterdir())  # nothing half-written


# --- verifier track-compare -----------------------------------------------------------------------------------

@pytest.fixture
def two_runs(tmp_path):
    a = tmp_path / "a" / "rank-tracking"
    a.mkdir(parents=True)
    _history(info={"init_scale": 1.0, "model": "MHA"}).save(a / "rank-history.npz")
    b = tmp_path / "b.npz"
    _history(seed=1, info={"model": "MHA"}).save(b)  # no init scale recorded
    return tmp_path / "a", b


def test_track_compare_runs_from_files(tmp_path, two_runs, capsys):
    a, b = two_runs
    out = tmp_path / "out"
    code = main(["track-compare", str(a), f"{b}:0.1", "--heads", "attention.qk[h1]", "--out", str(out)])
    data = json.loads((out / "results.json").read_text())
    assert code == {"pass": 0, "fail": 1, "inconclusive": 3}[min((c["verdict"] for c in data["checks"]),
                                                               key=["fail", "inconclusive", "pass"].index)]
    assert data["run"]["config"] == {"runs": {"1": str(a / "rank-tracking" / "rank-history.npz"), "0.1": str(b)},
                                     "heads": ["attention.qk[h1]"]}
    ids = [f["id"] for c in data["checks"] for f in c["evidence"]["figures"]]
    assert "change-spectrum-attention.qk[h1]-scale-0.1" in ids and "stable-rank-vs-loss" in ids
    assert not any("[h0]" in i for i in ids if i.startswith("change-spectrum"))  # only the chosen head


@pytest.mark.parametrize("make, says", [
    (lambda a, b, t: [str(a), str(t / "nowhere")], "does not exist"),
    (lambda a, b, t: [str(a), str(t)], "no rank-history.npz in"),
    (lambda a, b, t: [str(a), str(b)], "records no init scale"),
    (lambda a, b, t: [str(a), f"{b}:x"], "scale 'x' is not a number"),
    (lambda a, b, t: [str(a), f"{b}:0"], "scale 0.0"),
    (lambda a, b, t: [str(a), f"{b}:nan"], "scale nan"),
    (lambda a, b, t: [str(a), f"{b}:1"], "init scale 1 is also"),
    (lambda a, b, t: [str(a)], "1 run given"),
    (lambda a, b, t: [str(a), f"{t / 'garbage.npz'}:0.1"], "is not a .npz (zip) archive"),
    (lambda a, b, t: [str(a), f"{t / 'ckpt'}:0.1"], "holds rank_tracker.pt but no rank-history.npz"),
    (lambda a, b, t: [str(a), f"{b}:0.1", "--heads", "nope[h0]"], "--heads: 'nope[h0]' is not a tracked head"),
    (lambda a, b, t: [str(a), f"{b}:0.1", "--out", str(t / "file")], "--out:"),
])
def test_track_compare_bad_input_exits_2_naming_it_and_writes_nothing(tmp_path, two_runs, capsys, make, says):
    a, b = two_runs
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "rank_tracker.pt").write_bytes(b"state")
    (tmp_path / "file").write_text("x")
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["track-compare", *make(a, b, tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert sorted(p for p in tmp_path.rglob("*")) == before
