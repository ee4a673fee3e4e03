"""The ``verifier`` command line.

Exit codes: 0 every check passed (or the command succeeded); 1 a check failed (``run``) or a gated
result got worse (``gate``); 2 bad input or usage, with one line naming the field and the allowed
values; 3 nothing failed but some check was inconclusive.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InputError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        raise InputError("usage", message)


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="a named problem (see `verifier presets`); default toy-attention")
    p.add_argument("--model", help="model family for --data: diag-linear, toy-attention, diag-transformer, full-attention")
    p.add_argument("--data", help=".npz with X, Y (linear: X [N,p], y [N]; attention: X, Y [N,n,d])")
    p.add_argument("--loss", default="square", help="square (default) or logistic (diag-linear only)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, teacher and initialisation (default 0)")
    p.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verifier", description="Check the assumptions of 'Transformers learn through "
                                                  "gradual rank increase' on a model, data and optimizer.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="run checks, write DIR/results.json and DIR/report.html")
    _add_problem_args(run)
    run.add_argument("--checks", help="comma-separated check ids (default: every check that applies)")
    run.add_argument("--alphas", help="initialisation scales, e.g. 1e-4,1e-16,exp(-10000)")
    run.add_argument("--horizon", type=float, help="rescaled time horizon (default: 1.25 x last stage of Algorithm 1)")
    run.add_argument("--optimizer", default="flow", help="flow (default), gd, sgd, adam")
    run.add_argument("--lr", type=float, default=0.01, help="step size for gd/sgd/adam (default 0.01)")
    run.add_argument("--steps", type=int, default=2000, help="updates for gd/sgd/adam (default 2000)")
    run.add_argument("--batch-size", type=int, default=32, help="minibatch size for sgd (default 32)")
    run.add_argument("--momentum", type=float, default=0.0, help="heavy-ball momentum for gd/sgd (default 0)")
    run.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay for gd/sgd (default 0)")
    run.add_argument("--rtol", type=float, default=1e-8, help="flow integrator relative tolerance (default 1e-8)")
    run.add_argument("--atol", type=float, default=1e-7, help="flow integrator absolute tolerance on S (default 1e-7)")
    run.add_argument("--noise", type=float, default=0.1, help="relative noise of Assumption 4.3/4.4 perturbations")
    run.add_argument("--negligible", type=float, default=1e-3, help="|beta_i| below this is negligible (4.3/4.4)")
    run.add_argument("--perturb-epochs", type=int, default=1000, help="training epochs after a perturbation")
    run.add_argument("--out", help="output folder (default reports/<timestamp>, mirrored to reports/latest)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    track = sub.add_parser("track", help="train a small ViT at several init scales, track the rank of its attention "
                                         "changes, write DIR/results.json and DIR/report.html")
    track.add_argument("--preset", default="vit-digits", help="vit-digits (default, CPU), vit-digits-wide (GPU), "
                                                              "vit-digits-tiny (seconds)")
    track.add_argument("--init-scales", help="factors of the initial weights, e.g. 1,0.3,0.1 (default: the preset's)")
    track.add_argument("--optimizer", default="adam", help="adam (default) or sgd")
    track.add_argument("--epochs", type=int, help="training epochs per init scale (default: the preset's)")
    track.add_argument("--lr", type=float, help="step size (default: the preset's for the optimizer)")
    track.add_argument("--every", type=int, help="record every N optimizer steps (default: the preset's; 1 on CPU)")
    track.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda")
    track.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and the batches")
    track.add_argument("--out", help="output folder (default reports/<timestamp>, mirrored to reports/latest)")
    track.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    sub.add_parser("presets", help="list presets and their defaults")
    sub.add_parser("checks", help="list check ids and the claims they test")

    lim = sub.add_parser("limit", help="Algorithm 1 (the alpha -> 0 limit): print the stages")
    _add_problem_args(lim)
    lim.add_argument("--json", help="also write the stages as JSON to this file")

    rep = sub.add_parser("report", help="re-render report.html from a stored results.json")
    rep.add_argument("results")
    rep.add_argument("-o", "--output", required=True)

    gate = sub.add_parser("gate", help="compare results with a baseline: exit 1 if anything got worse")
    gate.add_argument("--baseline", required=True)
    gate.add_argument("new")
    return parser


def _run(args, argv) -> int:
    from .checks import Verdict, resolve_ids
    from .config import OptimizerConfig, RunConfig, SolverConfig, parse_alphas
    from .context import Context
    from .report import summary_table
    from .runner import default_out_dir, run_checks, write_outputs

    if args.horizon is not None and not args.horizon > 0:
        raise InputError("--horizon", f"{args.horizon!r} must be positive", "a float > 0")
    for name in ("noise", "negligible"):
        if not getattr(args, name) > 0:
            raise InputError(f"--{name}", f"{getattr(args, name)!r} must be positive", "a float > 0")
    if args.perturb_epochs < 1:
        raise InputError("--perturb-epochs", f"{args.perturb_epochs!r} must be >= 1", "an integer >= 1")
    config = RunConfig(
        preset=args.preset, model=args.model, data=args.data, loss=args.loss, seed=args.seed, device=args.device,
        log_inv_alphas=parse_alphas(args.alphas), horizon=args.horizon,
        solver=SolverConfig(rtol=args.rtol, atol=args.atol),
        optimizer=OptimizerConfig(name=args.optimizer, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                                  momentum=args.momentum, weight_decay=args.weight_decay),
        noise=args.noise, negligible=args.negligible, perturb_epochs=args.perturb_epochs,
    )
    if config.preset is None and config.model is None:
        config = RunConfig(**{**config.__dict__, "preset": "toy-attention"})
    ctx = Context(config, argv=["verifier", *argv])
    ids = resolve_ids(args.checks, ctx.model)
    out = Path(args.out) if args.out else default_out_dir()
    latest = None if args.out else out.parent / "latest"
    results = run_checks(ctx, ids, progress=not args.no_progress)
    paths = write_outputs(results, out, latest)
    print(summary_table(results))
    print(f"wrote {paths[0]} and {paths[1]}" + (f" (also {latest}/)" if latest else ""))
    verdict = results.verdict
    return {Verdict.PASS: EXIT_OK, Verdict.FAIL: EXIT_FAIL, Verdict.INCONCLUSIVE: EXIT_INCONCLUSIVE}[verdict]


def _track(args, argv) -> int:
    from .checks import Verdict
    from .config import resolve_device
    from .report import summary_table
    from .runner import default_out_dir, write_outputs
    from .tracking.config import TrackConfig, parse_scales
    from .tracking.run import run_track

    config = TrackConfig(preset=args.preset, init_scales=parse_scales(args.init_scales), optimizer=args.optimizer,
                         epochs=args.epochs, lr=args.lr, device=args.device, seed=args.seed, every=args.every)
    resolve_device(config.device)
    out = Path(args.out) if args.out else default_out_dir()
    latest = None if args.out else out.parent / "latest"
    results = run_track(config, argv=["verifier", *argv], progress=not args.no_progress)
    paths = write_outputs(results, out, latest)
    print(summary_table(results))
    print(f"wrote {paths[0]} and {paths[1]}" + (f" (also {latest}/)" if latest else ""))
    return {Verdict.PASS: EXIT_OK, Verdict.FAIL: EXIT_FAIL, Verdict.INCONCLUSIVE: EXIT_INCONCLUSIVE}[results.verdict]


def _presets() -> int:
    from .presets import PRESETS

    for p in PRESETS.values():
        defaults = ", ".join(f"{k}={v}" for k, v in p.defaults.items())
        print(f"{p.name:18} {p.description}\n{'':18} defaults: {defaults}")
    return EXIT_OK


def _checks() -> int:
    from .checks import REGISTRY, check_ids

    for i in check_ids():
        print(f"{i:16} {REGISTRY[i].claim}")
    return EXIT_OK


def _limit(args) -> int:
    from .config import resolve_device
    from .limit import algorithm1
    from .presets import build_model
    from .results import atomic_write_text

    model = build_model(args.preset, args.model, args.data, args.loss, args.seed, resolve_device(args.device))
    if not model.diagonal:
        raise InputError("--model", f"Algorithm 1 needs diagonal weights; {model.family} has full weights",
                         "diag-linear, toy-attention, diag-transformer")
    stages = algorithm1(model)
    print(stages.table())
    if args.json:
        import json

        atomic_write_text(args.json, json.dumps(stages.to_dict(), indent=1))
    return EXIT_OK


def _report(args) -> int:
    from .report import write_report
    from .results import ResultsFormatError, read_results

    try:
        results = read_results(args.results)
    except ResultsFormatError as exc:
        raise InputError("RESULTS.json", str(exc)) from None
    write_report(results, args.output)
    print(f"wrote {args.output}")
    return EXIT_OK


def _gate(args) -> int:
    from .gate import compare
    from .results import ResultsFormatError, read_results

    try:
        base, new = read_results(args.baseline), read_results(args.new)
    except ResultsFormatError as exc:
        raise InputError("gate", str(exc)) from None
    outcome = compare(base, new)
    print(outcome.table())
    return EXIT_OK if outcome.ok else EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return EXIT_USAGE
        if args.command == "run":
            return _run(args, argv)
        if args.command == "track":
            return _track(args, argv)
        if args.command == "presets":
            return _presets()
        if args.command == "checks":
            return _checks()
        if args.command == "limit":
            return _limit(args)
        if args.command == "report":
            return _report(args)
        return _gate(args)
    except InputError as exc:
        print(f"verifier: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("verifier: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
