"""The ``verifier`` command line.

Exit codes: 0 every check passed (or the command succeeded; ``verifier`` alone prints the help on stdout);
1 a check failed (``run``) or a gated result got worse (``gate``); 2 bad input or usage, with one line on
stderr naming the field and the allowed values, before any work and with nothing written; 3 nothing failed
but some check was inconclusive; 4 internal error (a bug in verifier: one line naming the exception,
``VERIFIER_TRACEBACK=1`` prints the traceback); 130 interrupted (Ctrl-C), with nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback

from .errors import InputError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
SURVEY_ROOT = "reports/surveys"  # verifier survey without --out: reports/surveys/<timestamp>, .../latest


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's own usage errors: one line, exit 2, naming the option when there is one."""
        head, sep, rest = message.partition(": ")
        if head.startswith("argument -") and sep:
            option = head[len("argument "):].split("/")[-1]
            if rest == "expected one argument":
                rest = f"expected a value (one that starts with '-' is written {option}=VALUE)"
            raise InputError(option, rest)
        raise InputError("usage", message)


# Options that go to RunConfig / SolverConfig / OptimizerConfig when given (as text: the config converts and
# checks it, so every entry point gets the same messages); absent options take the dataclass defaults.
PROBLEM_FIELDS = ("preset", "model", "data", "model_file", "loss", "seed", "device")
RUN_FIELDS = ("horizon", "noise", "negligible", "perturb_epochs")
SOLVER_FIELDS = ("rtol", "atol")
OPTIMIZER_FIELDS = {"optimizer": "name", "lr": "lr", "steps": "steps", "batch_size": "batch_size",
                    "momentum": "momentum", "weight_decay": "weight_decay"}


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    from .config import RunConfig
    from .presets import DEFAULT_PRESET

    p.add_argument("--preset", help=f"a named problem (see `verifier presets`); default {DEFAULT_PRESET}")
    p.add_argument("--model", help="model family for --data: diag-linear, toy-attention, diag-transformer, full-attention")
    p.add_argument("--data", help=".npz with X, Y (linear: X [N,p], y [N]; attention: X, Y [N,n,d])")
    p.add_argument("--model-file", help="PATH.py:FACTORY: FACTORY() returns your model (verifier.from_module, "
                                        "verifier.from_loss or a built-in one)")
    p.add_argument("--loss", help=f"square or logistic (diag-linear only); default {RunConfig.loss}")
    p.add_argument("--seed", help=f"seed of data, teacher and initialisation, an int64; default {RunConfig.seed}")
    p.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda")


def build_parser() -> argparse.ArgumentParser:
    from .config import OptimizerConfig as O, RunConfig as R, SolverConfig as S

    parser = _Parser(prog="verifier", description="Check the assumptions of 'Transformers learn through "
                                                  "gradual rank increase' on a model, data and optimizer.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="run checks, write DIR/results.json and DIR/report.html")
    _add_problem_args(run)
    run.add_argument("--checks", help="comma-separated check ids (default: every check that applies)")
    run.add_argument("--alphas", help="initialisation scales, e.g. 1e-4,1e-16,exp(-10000)")
    run.add_argument("--horizon", help="rescaled time horizon (default: 1.25 x last stage of Algorithm 1)")
    run.add_argument("--optimizer", help="flow (default), gd, sgd, adam")
    run.add_argument("--lr", help=f"step size for gd/sgd/adam (default {O.lr})")
    run.add_argument("--steps", help=f"updates for gd/sgd/adam (default {O.steps})")
    run.add_argument("--batch-size", help=f"minibatch size for sgd (default {O.batch_size})")
    run.add_argument("--momentum", help=f"heavy-ball momentum for gd/sgd (default {O.momentum})")
    run.add_argument("--weight-decay", help=f"L2 weight decay for gd/sgd (default {O.weight_decay})")
    run.add_argument("--rtol", help=f"flow integrator relative tolerance (default {S.rtol})")
    run.add_argument("--atol", help=f"flow integrator absolute tolerance on S (default {S.atol})")
    run.add_argument("--noise", help=f"relative noise of Assumption 4.3/4.4 perturbations (default {R.noise})")
    run.add_argument("--negligible", help=f"|beta_i| below this is negligible (4.3/4.4; default {R.negligible})")
    run.add_argument("--perturb-epochs", help=f"training epochs after a perturbation (default {R.perturb_epochs})")
    run.add_argument("--out", help="output folder: new, empty, or holding a previous output set (default "
                                   "reports/<timestamp>, with reports/latest linking to it)")
    run.add_argument("--workers", help="processes that run groups of checks side by side: N (1 to 1024; 1: this "
                                       "process) or auto (default, or $VERIFIER_WORKERS: one per core)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    sv = sub.add_parser("survey", help="draw N problems of a preset, run the checks on each: rates with intervals, "
                                       "metric histograms, closest passes, every failure with its command")
    sv.add_argument("--preset", help="the family to draw from (default toy-attention)")
    sv.add_argument("--model-file", help="PATH.py:FACTORY, a factory that takes seed=S and draws your data and "
                                         "teacher from it (instead of --preset)")
    sv.add_argument("--n", type=int, default=64, help="number of draws (default 64)")
    sv.add_argument("--checks", help="comma-separated check ids (default: every check that applies)")
    sv.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda")
    sv.add_argument("--seed", type=int, default=0, help="survey seed S; draw i uses a seed derived from S and i")
    sv.add_argument("--batch", type=int, help="draws per batched flow solve (default: 1 on a CPU, 16 on a GPU)")
    sv.add_argument("--out", help="output folder (default reports/surveys/<timestamp>, linked from reports/surveys/latest)")
    sv.add_argument("--workers", help="local worker processes: N (1 to 1024; 1: in this process) or auto (default, "
                                      "or $VERIFIER_WORKERS: one per core; one per GPU with --device cuda)")
    sv.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://HOST:PORT) whose workers run the "
                                        "draws (needs pip install 'verifier[distributed]')")
    sv.add_argument("--resume", action="store_true", help="finish the survey whose journal is in --out DIR "
                                                          "(DIR/draws.jsonl): only the missing draws run")
    sv.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    track = sub.add_parser("track", help="train a small ViT (or GPT-2) at several init scales, track the rank of its "
                                         "attention changes, write DIR/results.json and DIR/report.html")
    track.add_argument("--preset", default="vit-digits", help="vit-digits (default, CPU), vit-digits-wide (GPU), "
                                                              "vit-digits-tiny (seconds), gpt2-tiny (Hugging Face "
                                                              "Trainer, hf extra)")
    track.add_argument("--init-scales", help="factors of the initial weights, e.g. 1,0.3,0.1 (default: the preset's)")
    track.add_argument("--optimizer", default="adam", help="adam (default) or sgd")
    track.add_argument("--epochs", type=int, help="training epochs per init scale (default: the preset's)")
    track.add_argument("--lr", type=float, help="step size (default: the preset's for the optimizer)")
    track.add_argument("--every", type=int, help="record every N optimizer steps (default: the preset's; 1 on CPU)")
    track.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda")
    track.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the batches")
    track.add_argument("--out", help="output folder: new, empty, or holding a previous output set (default "
                                     "reports/<timestamp>, with reports/latest linking to it)")
    track.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    tc = sub.add_parser("track-compare", help="judge runs tracked in separate jobs at several init scales together "
                                              "(the callbacks' output folders): DIR/results.json and DIR/report.html")
    tc.add_argument("runs", nargs="+", metavar="RUN[:SCALE]", help="a callback's rank-tracking/ folder (or the folder "
                    "holding it, a checkpoint folder, a rank-history.npz); SCALE: its init scale (default: recorded)")
    tc.add_argument("--heads", help="comma-separated labels of the heads whose spectra are drawn, e.g. "
                                    "h.0.attn.qk[h1] (default: per kind, the head that learned most)")
    tc.add_argument("--out", help="output folder: new, empty, or holding a previous output set (default "
                                  "reports/<timestamp>, with reports/latest linking to it)")

    rl = sub.add_parser("recommend-lora", help="LoRA ranks per module from a tracked full fine-tune (or two "
                                               "checkpoints): DIR/lora-config.json, recommendation.json, report.html")
    rl.add_argument("run", nargs="?", metavar="RUN", help="a run's output folder (holding rank-tracking/"
                                                           "rank-history.npz) or a rank-history.npz")
    rl.add_argument("--before", help="checkpoint before the fine-tune (with --after, instead of RUN)")
    rl.add_argument("--after", help="checkpoint after the fine-tune")
    rl.add_argument("--energy", help="share of each module's ||dW||_F^2 the rank must hold (default 0.9)")
    rl.add_argument("--lora-alpha", help="lora_alpha of every module (default 16)")
    rl.add_argument("--max-rank", help="the largest rank recommended (default: none)")
    rl.add_argument("--tail", help="share of the records the saturation signal reads (default 0.25)")
    rl.add_argument("--targets", help="a regular expression the module names must contain (default: every module)")
    rl.add_argument("--out", help="output folder (default RUN/lora-recommendation; required with --before/--after)")

    sub.add_parser("presets", help="list presets and every default")
    sub.add_parser("checks", help="list check ids and the claims they test")

    lim = sub.add_parser("limit", help="the alpha -> 0 limit: Algorithm 1 (diagonal weights) or the saddle-to-saddle "
                                       "limit (full weights): print the stages")
    _add_problem_args(lim)
    lim.add_argument("--json", help="also write the stages as JSON to this file")

    rep = sub.add_parser("report", help="re-render report.html from a stored results.json")
    rep.add_argument("results")
    rep.add_argument("-o", "--output", required=True)

    gate = sub.add_parser("gate", help="compare results with a baseline: exit 1 if anything got worse")
    gate.add_argument("--baseline", required=True)
    gate.add_argument("new")
    return parser


def _given(args, names) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


# The optimizers an option of ``run`` acts on (given with another one, it would be silently ignored: refused).
OPTIMIZER_OPTIONS = {"lr": ("gd", "sgd", "adam"), "steps": ("gd", "sgd", "adam"), "batch_size": ("sgd",),
                     "momentum": ("gd", "sgd"), "weight_decay": ("gd", "sgd")}


def _refuse_ignored(args) -> None:
    """Every option applies or is refused, naming it and why (an option that silently does nothing would be
    recorded in results.json as if it had been used). The run options each check uses are declared on its
    CheckSpec (``options``)."""
    if getattr(args, "model_file", None) is not None and args.loss is not None:
        raise InputError("--loss", "a --model-file model computes its own loss, so --loss would be ignored",
                         "leave --loss out (write the loss in the model file)")
    if args.command != "run":
        return
    from .checks.registry import RUN_OPTIONS, users_of

    chosen = {c.strip() for c in args.checks.split(",") if c.strip()} if args.checks else None
    for name in RUN_OPTIONS:
        users = users_of(name)
        if getattr(args, name) is not None and chosen is not None and not chosen & set(users):
            flag = "--" + name.replace("_", "-")
            raise InputError(flag, f"no check in --checks {args.checks} uses it", f"{flag} with {' or '.join(users)}")
    optimizer = args.optimizer
    for name, users in OPTIMIZER_OPTIONS.items():
        if getattr(args, name, None) is not None and (optimizer or "flow") not in users:
            flag = "--" + name.replace("_", "-")
            raise InputError(flag, f"does nothing with --optimizer {optimizer or 'flow'}",
                             f"{flag} with --optimizer {' or '.join(users)}")


def _config(args):
    """The RunConfig of ``args`` (``run`` and ``limit``): every value checked there, once."""
    from .config import OptimizerConfig, RunConfig, SolverConfig, parse_alphas

    if args.command == "limit":
        config = RunConfig(**_given(args, PROBLEM_FIELDS))
    else:
        opt = {key: getattr(args, name) for name, key in OPTIMIZER_FIELDS.items() if getattr(args, name) is not None}
        config = RunConfig(**_given(args, PROBLEM_FIELDS + RUN_FIELDS), log_inv_alphas=parse_alphas(args.alphas),
                           solver=SolverConfig(**_given(args, SOLVER_FIELDS)), optimizer=OptimizerConfig(**opt))
    _refuse_ignored(args)  # after the values are checked: a bad value is named as such first
    return config


def _run(args, argv) -> int:
    from .checks import resolve_ids
    from .context import Context
    from .outputs import OutputSet
    from .pool import parse_workers, usable_cores
    from . import runner

    config = _config(args)
    choice = parse_workers(args.workers)
    workers = choice.processes(usable_cores())
    output = OutputSet.for_out(args.out)
    ctx = Context(config, argv=["verifier", *argv])
    if args.workers is not None and workers > 1 and (why := runner.can_split(ctx)) is not None:
        raise InputError("--workers", f"{workers} processes asked for, but {why}: the checks run in one process",
                         "leave --workers out, or 1")
    ids = resolve_ids(args.checks, ctx.model)
    _require_memory(config, ctx.model, ids)
    return _write(output, lambda: runner.run_checks(ctx, ids, progress=not args.no_progress, workers=workers))


def _problem_field(config) -> str:
    return "--model-file" if config.model_file else "--data" if config.data else "--preset"


def _require_memory(config, model, ids) -> None:
    """Refuse before work a model too large for the dense flow the chosen checks integrate (verifier/memory.py;
    which checks integrate one: ``CheckSpec.flow``)."""
    from dataclasses import replace

    from .checks.registry import check_ids, integrating_flow
    from .config import OptimizerConfig
    from .memory import require_dense_fits

    dense = integrating_flow(ids, config)
    if dense:
        free = [i for i in check_ids() if i not in integrating_flow([i], config)]
        try:  # the checks a discrete optimizer would make flow-free (none where its alphas are too small for one)
            steps = replace(config, optimizer=OptimizerConfig("gd"))
            discrete = [i for i in check_ids() if i not in free and not integrating_flow([i], steps)]
        except InputError:
            discrete = []
        instead = "checks that integrate no flow" + (f": --checks {','.join(free)}" if free else "") + "".join(
            f", or {i} with --optimizer gd/sgd/adam" for i in discrete)
        require_dense_fits(model, _problem_field(config), f"the gradient flow of {', '.join(dense)}", instead)


def _survey(args, argv) -> int:
    """Exit codes as ``run``, over every draw: 0 all passed, 1 some check failed on some draw, 3 none failed
    but some was inconclusive; 130 when interrupted (Ctrl-C or SIGTERM: the draws that finished are written,
    and DIR/draws.jsonl keeps them for --resume)."""
    from .pool import parse_workers
    from .survey import SurveyConfig
    from .survey.session import SurveyOutput, survey_session

    checks = None if args.checks is None else tuple(c.strip() for c in args.checks.split(",") if c.strip())
    config = SurveyConfig(preset=args.preset, n=args.n, checks=checks, device=args.device, seed=args.seed,
                          batch=args.batch, model_file=args.model_file)
    output = SurveyOutput.for_survey(args.out, root=SURVEY_ROOT)
    results, paths, interrupted = survey_session(config, output, workers=parse_workers(args.workers),
                                                 scheduler=args.scheduler,
                                                 resume=args.resume, progress=not args.no_progress,
                                                 argv=["verifier", *argv])
    if results is None:
        print("verifier: interrupted before any draw finished; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    from .results import Verdict
    from .survey.report import survey_table

    _say(survey_table(results), f"wrote {paths[0]} and {paths[1]}")
    if interrupted:
        print(f"verifier: interrupted; the same command with --out {paths[0].parent} --resume runs the "
              f"{results.survey['config']['n'] - len(results.draws)} draw(s) left", file=sys.stderr)
        return EXIT_INTERRUPTED
    verdicts = {o.verdict for d in results.draws for o in d.outcomes.values()}
    return EXIT_FAIL if Verdict.FAIL in verdicts else EXIT_INCONCLUSIVE if Verdict.INCONCLUSIVE in verdicts else EXIT_OK


def _track(args, argv) -> int:
    from .outputs import OutputSet
    from .tracking.demo.track_config import TrackConfig, parse_scales
    from .tracking.demo.track_command import run_track

    config = TrackConfig(preset=args.preset, init_scales=parse_scales(args.init_scales), optimizer=args.optimizer,
                         epochs=args.epochs, lr=args.lr, device=args.device, seed=args.seed, every=args.every)
    output = OutputSet.for_out(args.out)
    return _write(output, lambda: run_track(config, argv=["verifier", *argv], progress=not args.no_progress))


def _track_compare(args, argv) -> int:
    from .outputs import OutputSet
    from .tracking.compare import compare_runs, load_runs

    heads = None if args.heads is None else [h.strip() for h in args.heads.split(",") if h.strip()]
    runs, sources = load_runs(args.runs)
    if heads is not None:
        from .tracking.figures import shown_matrices

        for history in runs.values():
            shown_matrices(history, heads, "--heads")  # an unknown label: exit 2, before any work
    output = OutputSet.for_out(args.out)
    return _write(output, lambda: compare_runs(runs, sources, heads, argv=["verifier", *argv]))


def _recommend_lora(args) -> int:
    from .results import Verdict
    from .tracking.lora_command import run_recommend_lora

    rec, paths = run_recommend_lora(args)
    _say(rec.table(), f"wrote {', '.join(str(p) for p in paths)}")
    return EXIT_OK if rec.judgement.verdict is Verdict.PASS else EXIT_INCONCLUSIVE


def _write(output, compute) -> int:
    """Open the output set, compute the results, write them whole; print the summary; exit by the verdict."""
    from .checks import Verdict
    from .report import summary_table

    output.open()
    try:
        results = compute()
        paths = output.commit(results)
    finally:
        output.discard()
    latest = f" ({output.shown_root / 'latest'} links to it)" if output.new_run and not output.warnings else ""
    _say(summary_table(results), f"wrote {paths[0]} and {paths[1]}{latest}")
    for warning in output.warnings:
        print(f"verifier: warning: {_printable(warning)}", file=sys.stderr)
    return {Verdict.PASS: EXIT_OK, Verdict.FAIL: EXIT_FAIL, Verdict.INCONCLUSIVE: EXIT_INCONCLUSIVE}[results.verdict]


def _say(*lines: str, written: bool = True) -> None:
    """Print to stdout. After a command's files are ``written``, stdout that cannot take the closing lines (a
    full disk, a closed pipe, closed) is a warning on stderr, never a failure that would hide the finished
    work; when stdout is the only output, it is an InputError naming stdout."""
    try:
        if _STDOUT_CLOSED:
            raise OSError("closed")
        print(_printable("\n".join(lines), sys.stdout), flush=True)
    except OSError as exc:
        if not written:
            raise InputError("stdout", f"cannot be written ({exc.strerror or exc})", "a stdout with room") from None
        print(f"verifier: warning: could not print the summary to stdout ({exc.strerror or exc}); "
              "the output is written", file=sys.stderr)


def _presets() -> int:
    from .config import defaults_table
    from .presets import PRESETS

    lines = [f"{p.name:18} {p.description}\n{'':18} defaults: {', '.join(f'{k}={v}' for k, v in p.defaults.items())}"
             for p in PRESETS.values()]
    rows = defaults_table()
    width = max(len(name) for name, _, _ in rows)
    lines.append("\nsettings (verifier run --OPTION; the library's RunConfig, SolverConfig, OptimizerConfig):")
    lines += [f"  {name:{width}}  default {default}; allowed: {allowed}" for name, default, allowed in rows]
    _say(*lines, written=False)
    return EXIT_OK


def _checks() -> int:
    from .checks import REGISTRY, check_ids

    _say(*(f"{i:16} {REGISTRY[i].claim}" for i in check_ids()), written=False)
    return EXIT_OK


def _limit(args) -> int:
    import json

    from .limit import algorithm1
    from .memory import require_dense_fits
    from .outputs import check_output_file, write_output_file
    from .presets import build_model

    config = _config(args)
    out = check_output_file(args.json, "--json", inputs=(config.data,)) if args.json is not None else None
    model = build_model(config.preset, config.model, config.data, config.loss, config.seed, config.torch_device,
                        config.model_file, keep_unmovable=config.device == "auto")
    if not model.diagonal:  # full weights: the saddle-to-saddle limit (THEORY.md §8)
        from .dynamics.pair_flow import exact_path
        from .limit.pairs import full_limit

        why = exact_path(model)
        if why is not None:
            raise InputError("--model-file" if config.model_file else "--model",
                             f"the full-weight limit needs a loss that reads its factor pairs only through U V^T: {why}",
                             "matrix pairs (U, V) whose loss depends on U V^T only")
        limit = full_limit(model)
    else:
        require_dense_fits(model, _problem_field(config), "Algorithm 1 (its stage B is a gradient flow)",
                           "a smaller p, or `verifier run --checks definition-3.1`, which needs no flow")
        limit = algorithm1(model)
    if out is not None:
        write_output_file(out, json.dumps(limit.to_dict(), indent=1), "--json")
    _say(limit.table(), written=out is not None)
    return EXIT_OK


def _input_file(path: str, field: str) -> str:
    """A results file to read: a name the file system can hold (checked before any file-system call)."""
    from .paths import check_name

    if "\x00" in path:
        raise InputError(field, f"{path!r} is not a file path", "a results.json")
    check_name(path, field)
    return path


def _report(args) -> int:
    from .outputs import check_output_file, write_output_file
    from .report import render_html
    from .results import ResultsFormatError, read_results

    out = check_output_file(args.output, "-o", inputs=(args.results,))
    try:
        results = read_results(_input_file(args.results, "RESULTS.json"))
    except ResultsFormatError as exc:
        raise InputError("RESULTS.json", str(exc)) from None
    write_output_file(out, render_html(results), "-o")
    _say(f"wrote {out}")
    return EXIT_OK


def _gate(args) -> int:
    from .gate import compare
    from .results import ResultsFormatError, read_results

    try:
        base, new = read_results(_input_file(args.baseline, "--baseline")), read_results(_input_file(args.new, "NEW.json"))
    except ResultsFormatError as exc:
        raise InputError("gate", str(exc)) from None
    if not base.checks:
        raise InputError("--baseline", f"{args.baseline} holds no checks: nothing to compare",
                         "a results.json with at least one check")
    outcome = compare(base, new)
    _say(outcome.table(), written=False)
    return EXIT_OK if outcome.ok else EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with _sigterm_as_interrupt():
        return _main(argv)


def thread_policy(environ, cores: int, load: float) -> dict[str, str]:
    """The OpenMP settings the ``verifier`` command sets before torch is imported (docs/ARCHITECTURE.md,
    "Threads"), for the variables the user did not set. torch's OpenMP team spins while it waits for work
    (OMP_WAIT_POLICY=ACTIVE, its default): fastest on an idle machine, a collapse on a busy one, where spinning
    threads take the cores the others need. So: when the 1-minute load average leaves at least two cores
    idle, a team of that many threads (at most ``cores``) with the default (active) waiting; otherwise one
    thread, PASSIVE (nothing left to spin). Returns the variables to set."""
    idle = int(cores - load + 0.5)  # the nearest whole number of idle cores
    if idle >= 2:
        want = {"OMP_NUM_THREADS": str(min(cores, idle))}
    else:
        want = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return {k: v for k, v in want.items() if k not in environ}


def machine_load() -> tuple[int, float]:
    """(usable cores, 1-minute load average; inf where the platform has none: assume busy)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        return cores, os.getloadavg()[0]
    except OSError:
        return cores, float("inf")


def _set_thread_policy() -> None:
    os.environ.update(thread_policy(os.environ, *machine_load()))


def console() -> None:
    """The ``verifier`` command: :func:`main`, then exit with its code.

    First, standard streams that are closed get ``/dev/null`` (a file the run opens must never become fd 0-2,
    where a print or a worker process would write into it) and stderr becomes best-effort (a full or closed
    stderr drops messages, never changes an exit code); then the thread policy (:func:`thread_policy`),
    before anything imports torch. An interrupt before main's own handling exits 130; one after it (the
    output set is then complete or discarded) leaves main's code. The process ends with ``os._exit`` after
    flushing: threads or child processes the user's code started cannot keep it alive past the verdict, and
    nothing at the interpreter's shutdown can print over a finished run (docs/TRUST.md)."""
    code = EXIT_INTERRUPTED
    # multiprocessing's resource tracker (a process started with the worker pool, with these warning options)
    # unlinks the named semaphores of workers stopped by a Ctrl-C, and would warn about each on stderr after
    # our last line: the clean-up is its job, the warning noise about our own workers.
    sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
    try:
        _standard_streams()
        if "torch" not in sys.modules:
            _set_thread_policy()
            if set(sys.argv[1:2]) & {"run", "survey", "track", "limit"}:
                _import_torch()
        code = main()
    except KeyboardInterrupt:  # before main's own handling (main handles its own)
        print("verifier: interrupted (nothing written)", file=sys.stderr)
    finally:
        _exit(code)


def _import_torch() -> None:
    """Import torch (and numpy under it) with Ctrl-C and SIGTERM held until it is done, then acted on: an
    interrupt in the middle of those imports can leave half-made modules that torch's C extension swallows
    the error of, and the command would fail later with a misleading internal error."""
    held = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        import torch  # noqa: F401
    except Exception:  # not importable: the command says so where it needs it
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        raise KeyboardInterrupt


def _exit(code: int) -> None:
    while True:  # from here on nothing is left to interrupt
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            break
        except KeyboardInterrupt:
            continue
    if "multiprocessing" in sys.modules:  # its own clean-up (a worker pool's named semaphores), without
        with contextlib.suppress(Exception):  # joining anyone's child processes
            import multiprocessing.util

            multiprocessing.util._run_finalizers(0)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a full disk, a closed pipe: what is left is dropped
            stream.flush()
    os._exit(code)


_STDOUT_CLOSED = False  # fd 1 was closed when the command started (`verifier ... >&-`)


class _BestEffort:
    """A text stream whose failures (a full disk, a closed pipe) are dropped: what goes to stderr is a
    courtesy that must never change an exit code."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _standard_streams() -> None:
    """fds 0, 1 and 2 open (a closed one gets /dev/null), sys.stdout and sys.stderr streams (Python makes
    them None for a closed fd), stderr best-effort (:class:`_BestEffort`)."""
    global _STDOUT_CLOSED
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _STDOUT_CLOSED = _STDOUT_CLOSED or fd == 1
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    if not isinstance(sys.stderr, _BestEffort):
        sys.stderr = _BestEffort(sys.stderr)


def _default_terminate_in_forked_child() -> None:
    """After a fork by the user's code (a model file's ``multiprocessing`` pool): the child gets SIGTERM's
    default back, so that its parent can terminate it without a KeyboardInterrupt traceback."""
    if signal.getsignal(signal.SIGTERM) is signal.default_int_handler:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_FORK_HOOK = []  # registered once per process (os.register_at_fork cannot unregister)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops a command like Ctrl-C (KeyboardInterrupt): output sets are discarded (a survey keeps
    the draws that finished) and the exit code is 130. The handler never reaches a process the user's code
    forks (:func:`_default_terminate_in_forked_child`). Signal handlers can only be set in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_default_terminate_in_forked_child)
        _FORK_HOOK.append(True)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse's --help (its errors are InputErrors, see _Parser.error)
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        if args.command is None:
            parser.print_help()
            return EXIT_OK
        commands = {"run": lambda: _run(args, argv), "survey": lambda: _survey(args, argv),
                    "track": lambda: _track(args, argv), "track-compare": lambda: _track_compare(args, argv),
                    "presets": _presets,
                    "checks": _checks, "limit": lambda: _limit(args), "report": lambda: _report(args),
                    "gate": lambda: _gate(args), "recommend-lora": lambda: _recommend_lora(args)}
        return commands[args.command]()
    except InputError as exc:
        print(f"verifier: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("verifier: interrupted (nothing half-written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (Exception, SystemExit) as exc:  # a bug: one line, its own exit code (never 0/1/3, a verdict's);
        return _internal_error(exc)  # a SystemExit here escaped the guards around user code


def _internal_error(exc: BaseException) -> int:
    print(f"verifier: internal error: {type(exc).__name__}: {_one_line(exc)} -- this is a bug in verifier, "
          "please report it with the command line (VERIFIER_TRACEBACK=1 prints the traceback)", file=sys.stderr)
    if os.environ.get("VERIFIER_TRACEBACK"):
        traceback.print_exc()
    return EXIT_INTERNAL


def _printable(text: str, stream=None) -> str:
    """``text`` with a non-UTF-8 path's bytes (surrogate escapes, os.fsdecode) as \\xNN escapes, and what the
    stream's encoding lacks (PYTHONIOENCODING=ascii) as escapes too: never a UnicodeEncodeError after the
    work is done."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text


def _one_line(exc: BaseException) -> str:
    text = _printable(" ".join(str(exc).split()))
    return text if len(text) <= 500 else text[:497] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
