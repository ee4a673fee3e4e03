"""``verifier track --preset gpt2-tiny``: a small Hugging Face GPT-2, built from a config (nothing is downloaded),
trained with the ``Trainer`` and :class:`verifier.tracking.hf.RankTrackerCallback` on a language task
generated in-process, once per init scale (THEORY.md §6).

The task is copying: a sequence of ``2 m`` tokens whose second half repeats its first (m tokens drawn
uniformly from the vocabulary V). The first half cannot be predicted (loss log V per token); the second can
be read back through attention (an induction-style head), so the causal-LM loss falls from log V towards
(log V) / 2 as attention learns the copy. Held-out accuracy is next-token accuracy on the second halves.
The init scale multiplies every parameter but the token and position embeddings (the token mapper, as the
ViT's patch embedding; GPT-2's output layer shares the token embedding).
"""

from __future__ import annotations

import time

import torch

from ... import seeds
from .track_config import TrackConfig
from .trained_run import TrainedRun

SEQUENCES, TEST_SEQUENCES = 2048, 256


def copy_task(n: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """[n, length] token ids: random first halves, repeated."""
    half = torch.randint(0, vocab, (n, length // 2), generator=generator)
    return torch.cat([half, half], dim=1)


def build_gpt2(config: TrackConfig, scale: float):
    """The preset's GPT-2 (dropout off) with the seed's initial weights, all but the embeddings times ``scale``."""
    import transformers

    arch = config.spec.architecture
    gpt2_config = transformers.GPT2Config(**arch, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                          bos_token_id=0, eos_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + seeds.TRACK_INIT)
        model = transformers.GPT2LMHeadModel(gpt2_config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith(("transformer.wte.", "transformer.wpe.")):
                param.mul_(scale)
    return model


def train_gpt2(config: TrackConfig, scale: float, device: torch.device, workdir: str,
               progress: bool = True) -> TrainedRun:
    import transformers

    from ..hf import RankTrackerCallback

    arch = config.spec.architecture
    gen = torch.Generator().manual_seed(config.seed + seeds.TRACK_SPLIT)
    train = copy_task(SEQUENCES, arch["n_positions"], arch["vocab_size"], gen)
    test = copy_task(TEST_SEQUENCES, arch["n_positions"], arch["vocab_size"], gen)
    model = build_gpt2(config, scale)
    args = transformers.TrainingArguments(
        output_dir=workdir, num_train_epochs=config.n_epochs, per_device_train_batch_size=config.spec.batch_size,
        learning_rate=config.step_size, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch" if config.optimizer == "adam" else "sgd", logging_steps=config.record_every,
        save_strategy="no", report_to=[], use_cpu=device.type == "cpu", disable_tqdm=not progress,
        seed=(config.seed + seeds.TRACK_BATCHES) % 2**32, dataloader_num_workers=0)
    callback = RankTrackerCallback(every=config.record_every, init_scale=scale, log=False, write=False)
    trainer = transformers.Trainer(model=model, args=args, callbacks=[callback],
                                   train_dataset=[{"input_ids": x, "labels": x} for x in train])
    if not progress:  # with tqdm off, the Trainer prints every log line instead
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    history = callback.history()
    steps_per_epoch = -(-SEQUENCES // config.spec.batch_size)
    last_epoch = [e["loss"] for e in trainer.state.log_history
                  if "loss" in e and e["step"] > trainer.state.global_step - steps_per_epoch]
    model.eval()
    with torch.no_grad():
        x = test.to(model.device)
        predicted = model(input_ids=x).logits[:, :-1].argmax(-1)
        half = arch["n_positions"] // 2
        accuracy = float((predicted[:, half - 1:] == x[:, half:]).float().mean())
    record_s = callback.session.record_s
    return TrainedRun(scale, history, sum(last_epoch) / max(1, len(last_epoch)), accuracy,
                      trainer.state.global_step, wall - record_s, record_s)
