"""LoRA ranks recommended from a tracked full fine-tune, measured on two local transfer tasks (docs/LORA.md).

Not a timed test: a script that trains, for each task and seed,

1. a model pre-trained on the source data (cached in OUT/pretrained/),
2. full fine-tuning on the target data, tracked by ``RankTracker`` (head and module spectra),
3. LoRA (PEFT) on the tracked attention modules at uniform ranks ``--ranks``, and
4. LoRA at the pattern ``recommend_lora(history, energy)`` gives for each ``--energy``,

all with the same steps and batches, and writes OUT/<task>.json and OUT/table.md: final metric against
trainable parameters, mean and spread over the seeds, and the criterion of issue 27 (the recommended pattern
reaches >= 98% of full fine-tuning's accuracy, or a loss within 2% of it, with no more trainable parameters than
the smallest uniform rank that does).

Tasks (nothing downloaded):

* ``vit-digits``: a ViT (separate q/k/v/o projections) pre-trained on scikit-learn's digits 0-4, fine-tuned on
  5-9 (labels 5-9 mapped to 0-4; a new classification head, trained in every variant); metric: test accuracy.
* ``char-gpt``: a character-level GPT-2 (Hugging Face, from a config) pre-trained on Python source (the
  interpreter's standard library modules ``SOURCE_MODULES``), fine-tuned on English prose (the help topics in
  ``pydoc_data/topics.py``); metric: held-out cross-entropy (nats per character).

    OMP_NUM_THREADS=1 nohup python benchmarks/lora_transfer.py --out /tmp/lora-bench > /tmp/lora-bench.log 2>&1 &
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from verifier.tracking import RankTracker
from verifier.tracking.lora import DEFAULT_ALPHA, recommend_lora

SOURCE_MODULES = ("argparse.py", "ast.py", "collections/__init__.py", "configparser.py", "dataclasses.py",
                  "difflib.py", "enum.py", "functools.py", "inspect.py", "json/decoder.py", "json/encoder.py",
                  "logging/__init__.py", "pathlib.py", "pickle.py", "shutil.py", "subprocess.py", "tarfile.py",
                  "textwrap.py", "threading.py", "typing.py", "zipfile.py")


# --- tasks ------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v, o projections (the q_proj/.../o_proj layout)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        n, t, _ = x.shape
        split = lambda y: y.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        out = nn.functional.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                                         split(self.v_proj(x)))
        return self.o_proj(out.transpose(1, 2).reshape(n, t, -1))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, dim=64, depth=3, heads=4, mlp=128, patch=2, classes=5):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (8 // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        p = self.patch
        x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        x = self.embed(x)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.head(self.ln(self.blocks(x)[:, 0]))


@dataclass(frozen=True)
class Task:
    name: str
    metric: str  # "accuracy" (higher is better) or "loss" (lower is better)
    pretrain_steps: int
    finetune_steps: int
    batch: int
    lr_pretrain: float
    lr_full: float
    lr_lora: float
    every: int  # tracker records every N fine-tuning steps
    head: tuple[str, ...]  # modules trained in every variant (PEFT modules_to_save)


TASKS = {
    "vit-digits": Task("vit-digits", "accuracy", 400, 200, 64, 2e-3, 1e-3, 3e-3, 2, ("head",)),
    "char-gpt": Task("char-gpt", "loss", 800, 200, 16, 2e-3, 5e-4, 2e-3, 4, ()),
}
CONTEXT = 64


def digits(seed):
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(raw.target)
    g = torch.Generator().manual_seed(seed)

    def split(mask, shift):
        idx = torch.nonzero(mask).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = (2 * len(idx)) // 5
        return (x[idx[n_test:]], y[idx[n_test:]] - shift), (x[idx[:n_test]], y[idx[:n_test]] - shift)

    return split(y < 5, 0), split(y >= 5, 5)


def texts():
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = "\n".join((lib / m).read_text(encoding="utf-8") for m in SOURCE_MODULES)
    namespace: dict = {}
    exec((lib / "pydoc_data" / "topics.py").read_text(encoding="utf-8"), namespace)
    prose = "\n".join(namespace["topics"][k] for k in sorted(namespace["topics"]))

    def encode(s):
        return torch.tensor([min(ord(c), 127) for c in s], dtype=torch.long)

    code, prose = encode(code), encode(prose)
    cut = int(0.9 * len(prose))
    return code, prose[:cut], prose[cut:]


def gpt(seed):
    import transformers

    config = transformers.GPT2Config(vocab_size=128, n_positions=CONTEXT, n_embd=64, n_layer=3, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


# --- training -----------------------------------------------------------------------------------------------

class Data:
    """Batches for one task: ``batch(step)`` (seeded by the step: every variant sees the same ones) and
    ``evaluate(model)`` on the held-out split."""

    def __init__(self, task: Task, seed: int, source: bool):
        self.task, self.seed = task, seed
        if task.name == "vit-digits":
            (src, src_test), (tgt, tgt_test) = digits(seed)
            self.train, self.test = (src, src_test) if source else (tgt, tgt_test)
        else:
            code, prose_train, prose_test = texts()
            self.train, self.test = (code, None) if source else (prose_train, prose_test)

    def batch(self, step: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        if self.task.name == "vit-digits":
            idx = torch.randint(0, len(self.train[1]), (self.task.batch,), generator=g)
            return self.train[0][idx], self.train[1][idx]
        start = torch.randint(0, len(self.train) - CONTEXT - 1, (self.task.batch,), generator=g)
        return torch.stack([self.train[s : s + CONTEXT] for s in start.tolist()]), None

    def loss(self, model, x, y):
        if self.task.name == "vit-digits":
            return nn.functional.cross_entropy(model(x), y)
        return model(input_ids=x, labels=x).loss

    @torch.no_grad()
    def evaluate(self, model) -> float:
        model.eval()
        try:
            if self.task.name == "vit-digits":
                x, y = self.test
                return float((model(x).argmax(1) == y).float().mean())
            text = self.test
            starts = range(0, len(text) - CONTEXT - 1, CONTEXT)
            losses = [float(model(input_ids=w, labels=w).loss) for w in
                      torch.stack([text[s : s + CONTEXT] for s in starts]).split(256)]
            return float(np.mean(losses))
        finally:
            model.train()


def train(model, data: Data, steps: int, lr: float, tracker: RankTracker | None = None) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if tracker is not None:
        tracker.record(0)
    for step in range(1, steps + 1):
        x, y = data.batch(step)
        loss = data.loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.record(step, loss)
    return data.evaluate(model) if data.test is not None else float("nan")


def build(task: Task, seed: int):
    torch.manual_seed(seed)
    return ViT() if task.name == "vit-digits" else gpt(seed)


def pretrained(task: Task, seed: int, cache: Path):
    model = build(task, seed)
    path = cache / f"{task.name}-seed{seed}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    source = Data(task, seed, source=True)
    train(model, source, task.pretrain_steps, task.lr_pretrain)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def fresh_head(model, task: Task, seed: int):
    """A new classification head for the target classes (the ViT), the same in every variant of a seed."""
    if task.name == "vit-digits":
        torch.manual_seed(seed + 7)
        model.head.reset_parameters()
    return model


def lora(model, task: Task, config: dict):
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(**config, lora_dropout=0.0,
                                                      modules_to_save=list(task.head) or None))


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


TARGETS_ONLY = "full, LoRA modules only"


def full_of_targets(task: Task, seed: int, targets: list[str], cache: Path) -> dict:
    """Full fine-tuning of the LoRA target modules' weights only (and the task head, as in every variant):
    what a LoRA of those modules could reach with unlimited rank."""
    model = fresh_head(copy.deepcopy(pretrained(task, seed, cache)), task, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) or name in task.head:
            for p in (module.parameters() if name in task.head else [module.weight]):
                p.requires_grad_(True)
    t0 = time.perf_counter()
    metric = train(model, Data(task, seed, source=False), task.finetune_steps, task.lr_full)
    return {"metric": metric, "trainable": trainable(model), "wall_s": time.perf_counter() - t0}


def run_seed(task: Task, seed: int, ranks: list[int], energies: list[float], cache: Path, log) -> dict:
    base = pretrained(task, seed, cache)
    target = Data(task, seed, source=False)
    rows = {}
    before = target.evaluate(fresh_head(copy.deepcopy(base), task, seed))
    model = fresh_head(copy.deepcopy(base), task, seed)
    tracker = RankTracker(model, every=task.every)
    t0 = time.perf_counter()
    full = train(model, target, task.finetune_steps, task.lr_full, tracker)
    history = tracker.history()
    rows["full"] = {"metric": full, "trainable": trainable(model), "wall_s": time.perf_counter() - t0}
    log(f"{task.name} seed {seed}: before {before:.4f}, full {full:.4f} ({rows['full']['trainable']} params)")
    recs = {e: recommend_lora(history, e) for e in energies}
    head_params = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in task.head)
    configs = {f"uniform r={r}": {"target_modules": recs[energies[0]].lora_config()["target_modules"], "r": r,
                                  "lora_alpha": DEFAULT_ALPHA} for r in ranks}
    configs.update({f"recommended e={e:g}": rec.lora_config() for e, rec in recs.items()})
    for name, config in configs.items():
        t0 = time.perf_counter()
        peft_model = lora(fresh_head(copy.deepcopy(base), task, seed), task, config)
        metric = train(peft_model, target, task.finetune_steps, task.lr_lora)
        n = trainable(peft_model)
        rows[name] = {"metric": metric, "trainable": n, "adapter": n - head_params,
                      "wall_s": time.perf_counter() - t0}
        if name.startswith("recommended"):
            rows[name]["ranks"] = config["rank_pattern"]
        log(f"{task.name} seed {seed}: {name}: {metric:.4f} ({n} trainable)")
    return {"seed": seed, "before": before, "rows": rows,
            "recommendations": {f"{e:g}": rec.to_dict() for e, rec in recs.items()},
            "tables": {f"{e:g}": rec.table() for e, rec in recs.items()}}


# --- the table ----------------------------------------------------------------------------------------------

def reaches(task: Task, metric: float, full: float) -> bool:
    return metric >= 0.98 * full if task.metric == "accuracy" else metric <= 1.02 * full


REFERENCES = {"full": "full fine-tuning (every weight)",
              TARGETS_ONLY: "full fine-tuning of the LoRA target modules only (the best a LoRA of them can hope for)"}


def _judge(task: Task, runs: list[dict], summary: dict, reference: str) -> list[str]:
    """Issue 27's criterion against ``reference``: the recommended pattern reaches >= 98% of its accuracy (or
    a loss within 2%) on the mean over seeds, with no more trainable parameters than the smallest uniform rank
    that does."""
    ref = np.mean([r["rows"][reference]["metric"] for r in runs])
    ok = {n: bool(reaches(task, summary[n]["mean"], ref)) for n in summary if n not in REFERENCES}
    uniform = [n for n in ok if n.startswith("uniform") and ok[n]]
    smallest = min(uniform, key=lambda n: summary[n]["trainable"]) if uniform else None
    out = []
    for n in (n for n in ok if n.startswith("recommended")):
        if not ok[n]:
            out.append(f"{n}: does not reach it" + ("" if smallest else " (no uniform rank does)"))
        elif smallest is None:
            out.append(f"{n}: reaches it; no uniform rank does: criterion met")
        else:
            fewer = summary[n]["trainable"] <= summary[smallest]["trainable"]
            out.append(f"{n}: reaches it with {summary[n]['trainable']:,.0f} trainable parameters, "
                       f"{'<=' if fewer else '>'} {summary[smallest]['trainable']:,.0f} of the smallest uniform rank "
                       f"that does ({smallest}): criterion {'met' if fewer else 'NOT met'}")
    bound = f">= {0.98 * ref:.4f}" if task.metric == "accuracy" else f"<= {1.02 * ref:.4f}"
    return [f"Against {REFERENCES[reference]} ({task.metric} {ref:.4f}; reaching means a mean {bound}):"] + [
        f"- {v}" for v in out]


def summarise(task: Task, runs: list[dict]) -> tuple[list[str], dict]:
    names = [n for n in REFERENCES if n in runs[0]["rows"]] + [n for n in runs[0]["rows"] if n not in REFERENCES]
    full, targets = ([np.mean([r["rows"][ref]["metric"] for r in runs])] for ref in REFERENCES)
    lines = [f"| {task.name}: variant | {task.metric} (mean ± sd, {len(runs)} seeds) | per seed | trainable "
             "parameters (adapter) | reaches full / full of the targets |", "| --- | --- | --- | --- | --- |"]
    summary = {}
    for name in names:
        vals = [r["rows"][name]["metric"] for r in runs]
        params = [r["rows"][name]["trainable"] for r in runs]
        adapter = [r["rows"][name].get("adapter", r["rows"][name]["trainable"]) for r in runs]
        summary[name] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                         "trainable": float(np.mean(params)), "adapter": float(np.mean(adapter))}
        marks = "-" if name in REFERENCES else " / ".join(
            "yes" if reaches(task, summary[name]["mean"], ref[0]) else "no" for ref in (full, targets))
        p = f"{np.mean(params):,.0f}" + ("" if name in REFERENCES else f" ({np.mean(adapter):,.0f})")
        lines.append(f"| {name} | {np.mean(vals):.4f} ± {summary[name]['sd']:.4f} | "
                     f"{', '.join(f'{v:.4f}' for v in vals)} | {p} | {marks} |")
    verdicts = {ref: _judge(task, runs, summary, ref) for ref in REFERENCES}
    lines += [""] + verdicts["full"] + [""] + verdicts[TARGETS_ONLY]
    return lines, {"summary": summary, "verdicts": verdicts}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", default="vit-digits,char-gpt")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ranks", default="1,2,4,8,16")
    p.add_argument("--energy", default="0.9,0.7,0.5")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    energies = [float(e) for e in args.energy.split(",")]
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:7.1f} s] {msg}", flush=True)

    table = [f"Command: `{' '.join(['python', 'benchmarks/lora_transfer.py', *(argv or sys.argv[1:])])}`; "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
             f"load average at start {os.getloadavg()[0]:.1f}", ""]
    for name in args.tasks.split(","):
        task = TASKS[name]
        runs = []
        for s in seeds:  # each seed's rows are kept, so a stopped run resumes where it stopped
            path = out / f"{name}-seed{s}.json"
            if not path.is_file():
                path.write_text(json.dumps(run_seed(task, s, ranks, energies, out / "pretrained", log), indent=1))
            run = json.loads(path.read_text())
            if TARGETS_ONLY not in run["rows"]:
                targets = run["recommendations"][f"{energies[0]:g}"]["lora_config"]["target_modules"]
                run["rows"][TARGETS_ONLY] = full_of_targets(task, s, targets, out / "pretrained")
                log(f"{name} seed {s}: {TARGETS_ONLY}: {run['rows'][TARGETS_ONLY]['metric']:.4f} "
                    f"({run['rows'][TARGETS_ONLY]['trainable']} trainable)")
                path.write_text(json.dumps(run, indent=1))
            runs.append(run)
        lines, summary = summarise(task, runs)
        (out / f"{name}.json").write_text(json.dumps({"task": task.__dict__, "runs": runs, **summary}, indent=1))
        table += lines + [""]
        log("\n".join(lines))
    table.append(f"wall {time.perf_counter() - start:.0f} s, load average at end {os.getloadavg()[0]:.1f}")
    (out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
