"""`pretrain-bench budget-plan CONFIG`: what the budget buys on this machine, measured with the run's own code.

A probe run trains the configured model, objective, data, precision and engine through `train.run.train`
(so nothing is estimated from a model of the hardware) for two windows of a few optimizer steps at the full
batch: the first warms up (allocator, kernels, compilation), the second is measured. The plan then prints
the throughput, the tokens the budget buys, the optimizer steps that makes with the batch-size ramp, and
how many times that reads the prepared training data.

The probe lives in `<run_dir>.budget-plan/` (one path for every rank under the launcher) and is removed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from pretrain_bench.train.budget import Budget, BudgetConfig

MIN_WINDOW_STEPS = 2
MIN_WINDOW_MICRO_BATCHES = 16


def train_tokens(data_root: Path, pad_id: int) -> int:
    """Non-padding tokens in the prepared training split: what a budget of tokens is counted in."""
    manifest = json.loads((data_root / "manifest.json").read_text())
    total = 0
    for shard in manifest["splits"]["train"]["shards"]:
        ids = np.load(data_root / shard["files"]["input_ids"]["file"], mmap_mode="r")
        total += int(np.count_nonzero(ids != pad_id))
    return total


def steps_for(cfg: BudgetConfig, grad_accum: int, step_tokens: float, total_tokens: float) -> int:
    """Optimizer steps that `total_tokens` make when progress grows with tokens and the accumulation
    follows the ramp (a step at accumulation a holds a / grad_accum of a full step's tokens)."""
    budget = Budget(cfg, None)
    points = 1000
    per_point = total_tokens / points
    return round(sum(per_point * grad_accum / (step_tokens * budget.grad_accum_steps(grad_accum, (i + 0.5) / points))
                     for i in range(points)))


def budget_plan(cfg, out: Callable[[str], None] = print) -> dict:
    """Measure throughput with a probe run of `cfg`, print the plan (rank 0) and return its numbers."""
    from pretrain_bench.train.run import train

    t = cfg.train
    window = max(MIN_WINDOW_STEPS, math.ceil(MIN_WINDOW_MICRO_BATCHES / t.grad_accum_steps))
    scratch = Path(f"{cfg.run_dir.rstrip('/')}.budget-plan")
    probe = cfg.model_copy(update={
        "run_dir": str(scratch),
        "budget": BudgetConfig(),  # steps only: the full batch and length from the first step
        "train": t.model_copy(update={"max_steps": 2 * window, "log_every": window, "eval_at": [], "eval_every": None,
                                      "snapshot_at": [], "checkpoint_every": None, "checkpoint_every_minutes": None,
                                      "keep_checkpoints": 1})})
    summary = train(probe, overwrite=True)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    lines = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in lines if r["split"] == "train"][-1]  # the second window
    shutil.rmtree(scratch, ignore_errors=True)

    from data_prep import tokenizer as tokenizers_

    data_root = Path(summary["data"])
    pad_id = tokenizers_.load(data_root / "tokenizer").pad_token_id
    tokens_per_s = measured["tokens_per_s"]
    step_tokens = (measured["tokens"] - [r for r in lines if r["split"] == "train"][0]["tokens"]) / window
    b = cfg.budget
    if b.mode == "time":
        budget_tokens = tokens_per_s * b.seconds
    elif b.mode == "tokens":
        budget_tokens = b.tokens
    else:
        budget_tokens = t.max_steps * step_tokens
    seconds = budget_tokens / tokens_per_s
    data_tokens = train_tokens(data_root, pad_id)
    epochs = budget_tokens / data_tokens
    steps = t.max_steps if b.mode == "steps" else steps_for(b, t.grad_accum_steps, step_tokens, budget_tokens)
    world = summary["world_size"]

    out(f"budget-plan for {cfg.run_dir} ({b.describe(t.max_steps)})")
    out(f"  measured  {window} steps of {t.micro_batch_size} rows x {t.grad_accum_steps} micro-batches x {world} "
        f"rank(s) at length {cfg.data.seq_len}, after {window} warm-up steps: {tokens_per_s:,.0f} tokens/s, "
        f"{step_tokens / tokens_per_s:.3g} s/step, MFU {measured['mfu']:.1%}")
    out(f"  budget    {budget_tokens:,.0f} tokens in {_duration(seconds)} of training, about {steps:,} optimizer "
        f"steps" + (f" (batch ramp over the first {b.batch_size_ramp:.0%})" if b.batch_size_ramp else ""))
    if b.seq_len_curriculum:
        out("  note      measured at the full length; the shorter curriculum stages run faster")
    verdict = (f"covers it: the budget reads {epochs:.0%} of it" if epochs <= 1 else
               f"does not cover it: the budget reads it {epochs:.1f} times (repeated data); add text to "
               f"data.path or lower the budget")
    out(f"  data      {data_tokens:,} training tokens in {data_root}; {verdict}")
    return {"tokens_per_s": tokens_per_s, "step_tokens": step_tokens, "budget_tokens": budget_tokens,
            "seconds": seconds, "steps": steps, "train_tokens": data_tokens, "epochs": epochs,
            "mfu": measured["mfu"], "world_size": world}


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
