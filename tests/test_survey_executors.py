"""Surveys on executors: in-process, local worker processes and a Dask cluster give the same draws bit for
bit; the journal and --resume; a worker killed mid-draw; a model file's factory that raises for one seed."""

import concurrent.futures as cf
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from verifier.cli import main
from verifier.results import Verdict
from verifier.survey import SurveyConfig, draw_seed, read_survey, run_survey
from verifier.survey.journal import NAME
from verifier.survey.results import WORKER_DIED
from verifier.pool import LocalPool, usable_cores

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ("definition-3.1", "lemma-4.1")  # seconds a draw on diag-linear
COMPARED = (*CHEAP, "assumption-4.2")  # + a margin from Algorithm 1 and the alpha ladder (~5 s a draw)
CONFIG = SurveyConfig(preset="diag-linear", n=3, checks=COMPARED, device="cpu", seed=11)


def _key(results) -> list:
    """Draw for draw: index, seed, and per check the verdict, key metric (bits), threshold, reason, message."""
    return [(d.index, d.seed, d.command, {c: (o.verdict, o.metric, o.value, o.threshold, o.reason, o.message)
                                          for c, o in d.outcomes.items()}) for d in results.draws]


@pytest.fixture(scope="module")
def in_process():
    return run_survey(CONFIG, progress=False)


def _exit_code(results) -> int:
    verdicts = {o.verdict for d in results.draws for o in d.outcomes.values()}
    return 1 if Verdict.FAIL in verdicts else 3 if Verdict.INCONCLUSIVE in verdicts else 0


def test_two_local_workers_give_the_in_process_draws_bit_for_bit(in_process, tmp_path):
    """``verifier survey --workers 2`` against ``run_survey`` in this process (what ``--workers 1`` does)."""
    out = tmp_path / "survey"
    assert main(["survey", "--preset", "diag-linear", "--n", "3", "--checks", ",".join(COMPARED), "--device", "cpu",
                 "--seed", "11", "--workers", "2", "--out", str(out), "--no-progress"]) == _exit_code(in_process)
    res = read_survey(out / "results.json")
    assert [d.index for d in res.draws] == [0, 1, 2]
    assert _key(res) == _key(in_process)
    assert res.survey["executor"] == {"kind": "local-processes", "workers": 2, "gpus": None, "restarts": 0,
                                      "torch_threads": max(1, usable_cores() // 2)}  # the cores shared out
    assert in_process.survey["executor"] == {"kind": "in-process", "workers": 1}
    failed = [o for d in res.draws for o in d.outcomes.values() if o.verdict is not Verdict.PASS]
    assert failed and all(o.reason for o in failed)  # every fail carries its check's reason through the worker
    for o in failed:
        assert res.summary("assumption-4.2").reasons[o.verdict][o.reason].k >= 1
    workers = {d.worker for d in res.draws}
    assert all(w and w.split(":")[-1] != str(os.getpid()) for w in workers)  # ran in the pool's processes
    assert all(d.duration_s > 0 for d in res.draws)


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


_CLUSTER: list = []  # the processes of the running dask_cluster (scheduler first)


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int = 2):
    """``dask scheduler`` and ``workers`` ``dask worker`` processes on 127.0.0.1 (a free port), started here and
    always stopped; yields the scheduler's address once the workers have joined."""
    pytest.importorskip("distributed")
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    file = folder / "scheduler.json"
    procs = [_start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                     str(file)], folder / "scheduler.log")]
    _CLUSTER[:] = procs
    try:
        deadline = time.monotonic() + 300
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        address = json.loads(file.read_text())["address"]
        for k in range(workers):
            procs.append(_start([dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                                 "--name", f"w{k}"], folder / f"worker{k}.log"))
            _CLUSTER.append(procs[-1])
        with Client(address, timeout="120s") as client:
            client.wait_for_workers(workers, timeout=300)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_a_dask_cluster_of_two_worker_processes_gives_the_same_draws(in_process, tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (started here, stopped at the end),
    driven through ``verifier survey --scheduler``."""
    with dask_cluster(tmp_path) as address:
        out = tmp_path / "survey"
        code = main(["survey", "--preset", "diag-linear", "--n", "3", "--checks", ",".join(COMPARED), "--device", "cpu",
                     "--seed", "11", "--scheduler", address, "--out", str(out), "--no-progress"])
        assert code == _exit_code(in_process)
        res = read_survey(out / "results.json")
        assert _key(res) == _key(in_process)
        assert res.survey["executor"] == {"kind": "dask", "workers": 2, "scheduler": address}
        assert all(d.worker for d in res.draws)


def test_scheduler_without_distributed_is_refused_with_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code = main(["survey", "--preset", "diag-linear", "--n", "1", "--checks", "lemma-4.1", "--scheduler",
                 "tcp://127.0.0.1:1", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("verifier: error: --scheduler:") and "verifier[distributed]" in err
    assert not (tmp_path / "o").exists()


ARGS = ["survey", "--preset", "diag-linear", "--n", "4", "--checks", ",".join(CHEAP), "--device", "cpu", "--seed", "5",
        "--no-progress"]


def test_interrupted_survey_resumes_with_only_the_missing_draws(tmp_path, monkeypatch, capsys, comparable_survey):
    import verifier.survey.engine as E

    straight = tmp_path / "straight"
    assert main([*ARGS, "--out", str(straight)]) == 0
    ran, real = [], E.run_draws

    def stop_at_third(config, indices, ids, worker):
        if len(ran) == 2:
            raise KeyboardInterrupt
        ran.extend(indices)
        return real(config, indices, ids, worker)

    monkeypatch.setattr(E, "run_draws", stop_at_third)
    out = tmp_path / "resumed"
    assert main([*ARGS, "--out", str(out)]) == 130
    lines = (out / NAME).read_text().splitlines()
    assert len(lines) == 3 and [json.loads(x)["index"] for x in lines[1:]] == [0, 1]  # header + 2 finished draws
    with (out / NAME).open("a") as f:
        f.write('{"index": 2, "seed"')  # a line cut short by a crash: dropped on resume
    capsys.readouterr()
    assert main([*ARGS[:4], "5", *ARGS[5:], "--out", str(out), "--resume"]) == 2  # --n 5: not the journal's
    err = capsys.readouterr().err
    assert err.startswith("verifier: error: --n: ") and "--n 4" in err and "--n 5" in err
    assert main([*ARGS, "--out", str(out)]) == 2  # without --resume: the journal is not replaced
    assert "--resume" in capsys.readouterr().err

    ran.clear()
    monkeypatch.setattr(E, "run_draws", lambda c, i, ids, w: (ran.extend(i), real(c, i, ids, w))[1])
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert ran == [2, 3]  # only the missing draws ran
    assert comparable_survey(out / "results.json") == comparable_survey(straight / "results.json")
    resumed = json.loads((out / "results.json").read_text())["survey"]["resumed"]
    assert resumed["draws_from_journal"] == 2 and resumed["draws_run_now"] == 2
    lines = (out / NAME).read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines[1:]] == [0, 1, 2, 3]  # the cut line is gone, each line whole
    html = (out / "report.html").read_text()
    assert html.count("<svg") == len(CHEAP)


KILLER_MODEL_FILE = '''
import os
import signal
from pathlib import Path

import torch
from verifier.models import DiagLinear

FLAGS = Path({flags!r})
ONCE, ALWAYS, RAISES, EXITS = {once}, {always}, {raises}, {exits}


def make(seed):
    """A diagonal linear problem; some seeds kill the worker running them (SIGKILL), once or always, or raise."""
    if seed == ONCE and not (FLAGS / "once").exists():
        (FLAGS / "once").write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    if seed == ALWAYS:
        os.kill(os.getpid(), signal.SIGKILL)
    if seed == RAISES:
        raise ValueError("no data for this seed")
    if seed == EXITS:
        raise SystemExit(3)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    return DiagLinear(X, X @ torch.tensor([1.5, -0.7, 0.0], dtype=torch.float64))
'''


def _model_file(tmp_path: Path, once=-1, always=-1, raises=-1, exits=-1) -> str:
    (tmp_path / "flags").mkdir()
    (tmp_path / "killer.py").write_text(KILLER_MODEL_FILE.format(flags=str(tmp_path / "flags"), once=once,
                                                                 always=always, raises=raises, exits=exits))
    return f"{tmp_path / 'killer.py'}:make"


def test_a_worker_killed_mid_draw_does_not_lose_the_survey(tmp_path):
    """Draw 1 kills its worker once (SIGKILL): retried on a fresh worker, it finishes. Draw 2 kills every worker
    that runs it: recorded as inconclusive, reason worker-died. The other draws are untouched."""
    seed = 3
    spec = _model_file(tmp_path, once=draw_seed(seed, 1), always=draw_seed(seed, 2))
    config = SurveyConfig(model_file=spec, n=4, checks=("lemma-4.1",), device="cpu", seed=seed)
    pool = LocalPool(2, threads=1)
    try:
        res = run_survey(config, pool, progress=False)
    finally:
        pool.shutdown()
    assert (tmp_path / "flags" / "once").exists() and pool.restarts >= 2
    verdicts = [d.outcomes["lemma-4.1"].verdict for d in res.draws]
    assert [d.index for d in res.draws] == [0, 1, 2, 3]
    assert verdicts == [Verdict.PASS, Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.PASS]
    dead = res.draws[2].outcomes["lemma-4.1"]
    assert dead.reason == WORKER_DIED and "worker running this draw died on both tries" in dead.message
    assert res.summary("lemma-4.1").reasons[Verdict.INCONCLUSIVE][WORKER_DIED].k == 1


def test_a_factory_that_raises_for_one_seed_is_that_draws_user_code_error(tmp_path, capsys):
    seed = 0
    spec = _model_file(tmp_path, raises=draw_seed(seed, 1), exits=draw_seed(seed, 2))
    out = tmp_path / "s"
    code = main(["survey", "--model-file", spec, "--n", "3", "--checks", "lemma-4.1", "--seed", str(seed),
                 "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 3  # inconclusive draws, never exit 2 after work
    res = read_survey(out / "results.json")
    o = [d.outcomes["lemma-4.1"] for d in res.draws]
    assert [x.verdict for x in o] == [Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE]
    assert o[1].reason == o[2].reason == "user-code-error"
    for i, x in ((1, o[1]), (2, o[2])):
        assert "killer.py:make(" in x.message and f"draw {i}, seed {draw_seed(seed, i)}" in x.message
    assert "ValueError: no data for this seed" in o[1].message and "sys.exit(3)" in o[2].message
    assert "user-code-error 2/3" in printed  # the terminal table breaks the rate down by reason
    assert f"ERROR draw 1: {o[1].message}" in printed and f"ERROR draw 2: {o[2].message}" in printed


@pytest.mark.parametrize("given,expected", [("1", (1, None)), ("3", (3, None)), (2, (2, None)),
                                            ("auto", (usable_cores(), None)), (None, (usable_cores(), None))])
def test_workers_option(given, expected):
    from verifier.pool import parse_workers
    from verifier.survey.session import _local

    assert _local(parse_workers(given, {}), torch.device("cpu")) == expected


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--workers", "two"], ["--workers", "1.5"],
                                  ["--workers", "2147483647"], ["--workers", "99999999999"],
                                  ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], ["--resume"]])
def test_bad_executor_options_exit_2_before_work(argv, tmp_path, capsys):
    out = [] if argv == ["--resume"] else ["--out", str(tmp_path / "o")]
    code = main(["survey", "--preset", "diag-linear", "--n", "1", "--checks", "lemma-4.1", *argv, *out, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.split(": ")[2] in ("--workers", "--resume"), err
    assert not (tmp_path / "o").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_workers_pinned_to_gpus_give_the_in_process_verdicts():
    """``--workers auto --device cuda``: one process per GPU, each pinned (CUDA_VISIBLE_DEVICES); the draws'
    verdicts equal those of the same survey in this process on the GPU."""
    import torch

    from verifier.pool import parse_workers
    from verifier.survey.session import _local

    config = SurveyConfig(preset="diag-linear", n=2, checks=CHEAP, device="cuda", seed=11, batch=1)
    count, gpus = _local(parse_workers("auto", {}), "cuda")
    assert count == torch.cuda.device_count() and gpus == list(range(count))
    pool = LocalPool(count, threads=1, gpus=gpus)  # one GPU: the command runs in-process; here a pinned process
    try:
        res = run_survey(config, pool, progress=False)
    finally:
        pool.shutdown()
    alone = run_survey(config, progress=False)
    assert [{c: o.verdict for c, o in d.outcomes.items()} for d in res.draws] == \
        [{c: o.verdict for c, o in d.outcomes.items()} for d in alone.draws]
    assert all("/gpu:" in d.worker for d in res.draws)


def test_a_survey_folder_with_other_files_beside_its_journal_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / NAME).write_text("{}\n")
    (out / "notes.txt").write_text("mine")
    assert main([*ARGS, "--out", str(out), "--resume"]) == 2
    assert "holds other files" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_dask_worker_killed_mid_draw_does_not_lose_the_survey(tmp_path):
    """On Dask: draw 1 kills its worker once (the scheduler reschedules it), draw 2 kills every worker that runs
    it (KilledWorker after the scheduler's retries, then our one retry): recorded worker-died; the rest pass."""
    seed = 3
    spec = _model_file(tmp_path, once=draw_seed(seed, 1), always=draw_seed(seed, 2))
    with dask_cluster(tmp_path) as address:
        from distributed import Client

        with Client(address) as client:
            res = run_survey(SurveyConfig(model_file=spec, n=4, checks=("lemma-4.1",), device="cpu", seed=seed),
                             client.get_executor(pure=False), progress=False)
    verdicts = [d.outcomes["lemma-4.1"].verdict for d in res.draws]
    assert verdicts == [Verdict.PASS, Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.PASS]
    dead = res.draws[2].outcomes["lemma-4.1"]
    assert dead.reason == WORKER_DIED and "KilledWorker" in dead.message


# ---- a scheduler that fails cleanly (issue 29, "Scheduler") ------------------------------------------------------

@contextlib.contextmanager
def _server(kind: str):
    """A TCP server on 127.0.0.1 that is not a Dask scheduler: ``http`` (an HTTP server: it waits for a
    request), ``silent`` (accepts, never speaks) or ``chatty`` (speaks first, but not Dask). Yields its
    address."""
    import http.server
    import socket
    import threading

    if kind == "http":
        server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"tcp://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held = []

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)
            if kind == "chatty":
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("kind, says", [("http", "sent nothing in 2 s"), ("silent", "sent nothing in 2 s"),
                                        ("chatty", "is not a Dask scheduler: it answered b'SSH-2.0-")])
def test_a_server_that_is_not_dask_is_refused_naming_the_scheduler(kind, says, tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    import verifier.survey.workers as W

    monkeypatch.setattr(W, "SCHEDULER_TIMEOUT_S", 2.0)  # the probe's wait, short for the test (30 s by default)
    with _server(kind) as address:
        code = main(["survey", "--preset", "diag-linear", "--n", "1", "--checks", "lemma-4.1", "--scheduler", address,
                     "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("verifier: error: --scheduler: ") and says in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "nonsense", "tcp://127.0.0.1:99999", "tcp://:8786"])
def test_an_unreachable_or_malformed_scheduler_is_refused(address, tmp_path, capsys):
    pytest.importorskip("distributed")
    code = main(["survey", "--preset", "diag-linear", "--n", "1", "--checks", "lemma-4.1", "--scheduler", address,
                 "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("verifier: error: --scheduler: ") and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []


class _GoneAfter(cf.Executor):
    """An executor that runs ``k`` tasks (here, at once), then loses its scheduler: the rest never finish and
    :meth:`lost` says so, as a Dask client's executor does when its scheduler dies."""

    def __init__(self, k: int):
        self.k, self.gone = k, False

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        if self.k > 0:
            self.k -= 1
            fut.set_result(fn(*args, **kwargs))
        else:
            self.gone = True
        return fut

    def lost(self):
        return "the client is closed" if self.gone else None

    def shutdown(self, wait=True, *, cancel_futures=False):
        pass


def test_a_scheduler_lost_mid_survey_stops_it_and_resume_finishes_it(tmp_path, capsys, monkeypatch, comparable_survey):
    import verifier.survey.engine as E
    import verifier.survey.session as S

    straight = tmp_path / "straight"
    assert main([*ARGS, "--out", str(straight)]) == 0
    monkeypatch.setattr(S, "dask_executor", lambda address: _GoneAfter(2))
    monkeypatch.setattr(E, "LOST_POLL_S", 0.2)
    out = tmp_path / "lost"
    capsys.readouterr()
    assert main([*ARGS, "--scheduler", "tcp://10.0.0.1:8786", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("verifier: error: --scheduler: lost the Dask scheduler at tcp://10.0.0.1:8786 (the client "
                          f"is closed) after 2 of 4 draws; {out / NAME} keeps them: the same command with --out {out} "
                          "--resume finishes the survey") and "\n" not in err, err
    lines = (out / NAME).read_text().splitlines()
    assert sorted(json.loads(x)["index"] for x in lines[1:]) == [0, 1] and sorted(p.name for p in out.iterdir()) == [NAME]
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert comparable_survey(out / "results.json") == comparable_survey(straight / "results.json")


@pytest.mark.slow
def test_a_real_dask_scheduler_killed_mid_survey_keeps_the_journal(tmp_path, comparable_survey):
    """``verifier survey --scheduler`` as a real process; the scheduler SIGKILLed once a draw is journaled: exit 2,
    one line naming --scheduler and --resume, no traceback, every journaled line whole; --resume then finishes
    it with the straight survey's draws (in this process)."""
    args = [*ARGS[:4], "12", *ARGS[5:]]  # 12 draws, one at a time on one worker: the scheduler dies mid-survey
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0
    out = tmp_path / "lost"
    with dask_cluster(tmp_path, workers=1) as address:
        scheduler = next(p for p in _CLUSTER if "scheduler" in p.args)
        proc = subprocess.Popen([sys.executable, "-m", "verifier", *args, "--scheduler", address, "--out", str(out)],
                                cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / NAME).exists() and len((out / NAME).read_text().splitlines()) >= 2:
                break
            time.sleep(0.5)
        scheduler.kill()
        _, err = proc.communicate(timeout=900)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert err.strip().startswith("verifier: error: --scheduler: lost the Dask scheduler") and "--resume" in err
    lines = (out / NAME).read_text().splitlines(keepends=True)
    assert 2 <= len(lines) < 13 and all(x.endswith("\n") and json.loads(x) for x in lines)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert comparable_survey(out / "results.json") == comparable_survey(straight / "results.json")
