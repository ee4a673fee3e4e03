"""``verifier recommend-lora`` (its options are declared in ``verifier/cli.py``): options checked before any work, the recommendation, and its output folder
written whole (docs/LORA.md, docs/CLI.md).

The folder (``--out``; default ``<run>/lora-recommendation`` beside the run's ``rank-tracking/``) holds
``lora-config.json`` (keyword arguments of ``peft.LoraConfig``), ``recommendation.json`` (every measured value,
the judgement, the settings and the input) and ``report.html`` (the table), written whole by an
:class:`~verifier.outputs.OutputSet` (a temporary folder beside the target renamed into place, a previous set
swapped out); a target holding other files is refused.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

from ..errors import InputError
from ..outputs import OutputSet, _where, check_name
from .lora import (DEFAULT_ALPHA, DEFAULT_ENERGY, DEFAULT_TAIL, LoraRecommendation, find_history,
                   recommend_from_checkpoints,
                   load_history, recommend_from_history, recommendation_json)
from .output_set import FOLDER

OUTPUT_FILES = ("lora-config.json", "recommendation.json", "report.html")
DEFAULT_FOLDER = "lora-recommendation"


def _number(text: str | None, flag: str, default, kind, allowed: str, ok):
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise InputError(flag, f"{text!r} is not a number", allowed) from None
    if not ok(value):
        raise InputError(flag, f"{text!r} is out of range", allowed)
    return value


def _check_out(out: str) -> OutputSet:
    """The set's folder checked before any work (:meth:`OutputSet.for_out`: new, empty, or holding only a
    previous set), and the folder it will be created in writable; opened only once the recommendation is made."""
    output = OutputSet.for_out(out, flag="--out", files=OUTPUT_FILES)
    parent = next(p for p in output.target.parents if p.exists())
    if not os.access(parent, os.W_OK):
        raise InputError("--out", f"cannot write in {parent}", _where(OUTPUT_FILES))
    return output


def render_report(rec: LoraRecommendation) -> str:
    """A self-contained HTML page: the judgement, the settings, the table and the LoraConfig arguments."""
    rows = rec.rows()
    cell = lambda tag, v: f"<{tag}>{html.escape(v)}</{tag}>"  # noqa: E731
    table = "\n".join("<tr>" + "".join(cell("th" if i == 0 else "td", v) for v in row) + "</tr>"
                      for i, row in enumerate(rows))
    source = ", ".join(f"{k}: {v}" for k, v in rec.source.items() if not isinstance(v, (list, dict)))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LoRA ranks recommended by verifier</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}pre{{background:#f5f5f5;padding:1em}}
.pass{{color:#070}}.inconclusive{{color:#a60}}</style></head><body>
<h1>LoRA ranks from the measured change</h1>
<p class="{rec.judgement.verdict.value}"><b>{html.escape(rec.judgement.verdict.value)}</b>{
    f" ({html.escape(rec.judgement.reason)})" if rec.judgement.reason else ""}: {html.escape(rec.judgement.message)}</p>
<p>Rank per module: the smallest r whose top singular values hold {rec.energy:g} of ||dW||_F<sup>2</sup>
(docs/LORA.md). Trainable LoRA parameters: {rec.lora_parameters}. Saturation: {html.escape(rec.saturation.value)}.</p>
<p>{html.escape(source)}</p>
<table>
{table}
</table>
<h2>peft.LoraConfig(**lora-config.json)</h2>
<pre>{html.escape(json.dumps(rec.lora_config(), indent=1))}</pre>
</body></html>
"""


def run_recommend_lora(args) -> tuple[LoraRecommendation, list[Path]]:
    """The command: every option checked first (InputError naming it), then the recommendation (refused with
    an InputError naming RUN when the history cannot support it), then the set written whole."""
    energy = _number(args.energy, "--energy", DEFAULT_ENERGY, float, "a share in (0, 1], e.g. 0.9",
                      lambda v: 0 < v <= 1)
    alpha = _number(args.lora_alpha, "--lora-alpha", DEFAULT_ALPHA, float, "a positive number, e.g. 16",
                    lambda v: v > 0 and math.isfinite(v))
    max_rank = _number(args.max_rank, "--max-rank", None, int, "a positive integer", lambda v: v >= 1)
    tail = _number(args.tail, "--tail", DEFAULT_TAIL, float, "a share of the records in (0, 1), e.g. 0.25",
                   lambda v: 0 < v < 1)
    from .lora import target_pattern

    target_pattern(args.targets, "--targets")
    checkpoints = args.before is not None or args.after is not None
    if checkpoints:
        if args.run is not None:
            raise InputError("RUN", "given with --before/--after", "either RUN or two checkpoints")
        for flag, value in (("--before", args.before), ("--after", args.after)):
            if value is None:
                raise InputError(flag, "missing", "both --before and --after (checkpoints of the same model)")
            check_name(value, flag)
            if not Path(value).exists():
                raise InputError(flag, f"{value} does not exist", "a checkpoint file or a Hugging Face model folder")
        if args.out is None:
            raise InputError("--out", "missing", "an output folder (required with --before/--after)")
        out = _check_out(args.out)
        rec = recommend_from_checkpoints(args.before, args.after, energy, lora_alpha=alpha, max_rank=max_rank,
                                         targets=args.targets, flag="--")
    else:
        if args.run is None:
            raise InputError("RUN", "missing", "a run's output folder or a rank-history.npz (or --before/--after)")
        check_name(args.run, "RUN")
        path = find_history(args.run, "RUN")
        folder = path.parent.parent if path.parent.name == FOLDER else path.parent
        out = _check_out(args.out if args.out is not None else str(folder / DEFAULT_FOLDER))
        rec = recommend_from_history(load_history(path, "RUN"), energy, lora_alpha=alpha, max_rank=max_rank,
                                     tail=tail, targets=args.targets, field=f"RUN {path}",
                                     source={"history_file": str(path)})
    texts = {"lora-config.json": json.dumps(rec.lora_config(), indent=1) + "\n",
             "recommendation.json": recommendation_json(rec) + "\n", "report.html": render_report(rec)}
    out.open()
    try:
        paths = out.commit_texts(texts)
    finally:
        out.discard()
    return rec, paths
