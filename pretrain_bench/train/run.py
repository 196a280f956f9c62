"""`train`: a config in, a trained and exported encoder out. Builds every part, resumes, exports."""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data_prep import durable
from data_prep.prepare import prepare
from pretrain_bench import objectives
from pretrain_bench.data import MicroBatches, Rows, loader
from pretrain_bench.errors import RunStopped, UserError
from pretrain_bench.objectives.base import Objective, Vocab
from pretrain_bench.train import rundir
from pretrain_bench.train.budget import Budget
from pretrain_bench.train.checkpoint import TMP_PREFIX, CheckpointManager, atomic_write_text
from pretrain_bench.train.engine import (build_engine, cpu_has_native_bf16, deepspeed_config, init_distributed,
                                         parameter_groups, resolved_precision)
from pretrain_bench.train.host_memory import keep_freed_memory
from pretrain_bench.train.loop import LoopState, Trainer
from pretrain_bench.train.throughput import machine, matmul_peak_flops, random_state_kept, training_flops
from pretrain_bench.train.tracker import MetricWindow, Tracker

EXPORT_INFO = "pretrain_bench.json"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export(objective: Objective, module: torch.nn.Module, tokenizer, folder: Path, info: dict,
           zero_stage: int, precision: str, is_main: bool) -> list[Path]:
    """transformers checkpoints of the module (with the tokenizer in each) under `folder`, atomically."""
    import deepspeed

    tmp = folder.with_name(f"{TMP_PREFIX}{folder.name}")
    gather = (deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
              if zero_stage == 3 else nullcontext())
    models = []
    with gather, _fp32_masters(module, precision):
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            models = objective.export(module, tmp)
            for model_dir in models:
                tokenizer.save_pretrained(str(model_dir))
            (tmp / EXPORT_INFO).write_text(json.dumps(
                {**info, "models": [str(m.relative_to(tmp)) for m in models]}, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            durable.replace(tmp, folder)
    return [folder / m.relative_to(tmp) for m in models]


def _check_flash_attention(use_cuda: bool, precision: str) -> None:
    fix = "or use model.attn_implementation sdpa (which picks flash kernels itself where it can)"
    if not use_cuda or precision != "bf16":
        raise UserError(f"model.attn_implementation flash_attention_2 runs on a GPU in bf16 only, and this run is "
                        f"{precision} on the {'GPU' if use_cuda else 'CPU'}; set train.precision bf16 on a GPU {fix}")
    if importlib.util.find_spec("flash_attn") is None:  # transformers would fetch a kernel from the hub instead
        raise UserError(f"model.attn_implementation flash_attention_2 needs the flash-attn package; "
                        f"pip install flash-attn, {fix}")


@contextmanager
def _fp32_masters(module: torch.nn.Module, precision: str):
    """The module holding its fp32 weights. DeepSpeed's bf16 trains bf16 copies of fp32 masters kept by
    the optimizer: an export of the copies would be rounded to 8 bits of mantissa, and transformers would
    load it, and the fine-tuning harness train it, in bf16."""
    if precision != "bf16":
        yield
        return
    from deepspeed.utils import safe_get_full_fp32_param

    params = list(module.parameters())  # a shared parameter once
    trained = [p.data for p in params]
    masters = [safe_get_full_fp32_param(p) for p in params]  # collective under ZeRO-3: every rank calls it
    for p, master in zip(params, masters):
        p.data = master if master is not None else p.data.float()  # None: not trained (no optimizer state)
    try:
        yield
    finally:
        for p, data in zip(params, trained):
            p.data = data


def train(cfg, *, resume: bool = False, overwrite: bool = False, now: Callable[[], float] = time.monotonic,
          log: Callable[[str], None] | None = None) -> dict:
    """Pre-train per `cfg` (a validated RunConfig); returns the summary also written to final/."""
    run_dir = Path(cfg.run_dir)
    final_dir = run_dir / "final"
    if os.environ.get("RANK", "0") == "0":  # refuse a taken run folder before any start-up or data work;
        rundir.check(run_dir, cfg.model_dump(mode="json"), resume, overwrite)  # write nothing until verified
    rank, world = init_distributed(cfg.train.collective_timeout_s)
    is_main = rank == 0
    say = (log or (lambda m: print(m, file=sys.stderr, flush=True))) if is_main else (lambda m: None)
    if resume and (final_dir / EXPORT_INFO).exists():
        say(f"run {run_dir} is already complete; nothing to resume")
        return json.loads((final_dir / EXPORT_INFO).read_text())

    import deepspeed.comm as dist

    barrier = dist.barrier
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // local_world))
    use_cuda = torch.cuda.is_available()
    if cfg.train.keep_freed_memory and not use_cuda:
        keep_freed_memory()
    precision = resolved_precision(cfg.train.precision)
    if cfg.model.attn_implementation == "flash_attention_2":  # else the first forward fails, after data prep
        _check_flash_attention(use_cuda, precision)

    objective_cls = objectives.get(cfg.objective.name)
    prepared = prepare(cfg.data, objective_cls.packing(cfg.objective), objective_cls.artifacts_needed(cfg.objective), say)
    barrier()
    prepared.verify()
    rundir.claim(run_dir, cfg.model_dump(mode="json"), resume, overwrite, is_main)
    tokenizer = prepared.tokenizer
    vocab = Vocab.from_tokenizer(tokenizer)
    objective = objective_cls(cfg.objective, vocab, prepared.artifacts)

    torch.manual_seed(cfg.seed)
    module = objective.build(cfg.model)
    t = cfg.train
    if t.precision == "auto":
        say(f"train.precision auto: {precision} on this {'GPU' if use_cuda else 'CPU'}")
    if precision == "bf16" and not use_cuda and not cpu_has_native_bf16():
        say("train.precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so its bf16 matmuls are "
            "emulated, far slower than fp32 (about 150x on a 2-core Xeon); train.precision=fp32 is faster here")
    # fused on the CPU too, as the Trainer baseline: 7 ms a step against foreach's 43 ms for 11.5M parameters on a
    # 2-core EPYC (benchmarks/README.md)
    optimizer = torch.optim.AdamW(parameter_groups(module, t.weight_decay), lr=t.lr, betas=t.adam_betas,
                                  eps=t.adam_eps, fused=True)
    budget = Budget(cfg.budget, t.max_steps, now)
    start_accum = budget.grad_accum_steps(t.grad_accum_steps)
    engine = build_engine(module, optimizer, deepspeed_config(
        micro_batch=t.micro_batch_size, grad_accum=start_accum, world=world, zero_stage=t.zero_stage,
        precision=precision, grad_clip=t.grad_clip, parameters=sum(p.numel() for p in module.parameters()),
        extra=t.deepspeed))

    state = LoopState()
    checkpoints = CheckpointManager(run_dir / "checkpoints", engine, t.keep_checkpoints, is_main, barrier, say)
    resume_step = None
    if resume:
        loaded = checkpoints.load_latest()
        if loaded is None:
            say(f"no usable checkpoint in {checkpoints.folder}; starting from step 0")
        else:
            tag, client = loaded
            if client["tokenizer_hash"] != prepared.manifest["tokenizer_hash"]:
                raise UserError(f"{checkpoints.folder / tag}: trained with another tokenizer than the prepared data "
                                f"({prepared.root}); resume with the data config the run was started with")
            budget.load_state_dict(client["budget"])
            state = LoopState(**client["loop"])
            _set_rng_state(client["rng"][rank] if rank < len(client["rng"]) else client["rng"][0])
            resume_step = budget.steps
            say(f"resumed from {checkpoints.folder / tag} (step {budget.steps}, {budget.tokens} tokens, "
                f"{budget.training_seconds():.1f}s of training)")

    def save_state() -> dict:
        rng = [_rng_state()]
        if world > 1:  # every rank's generators: dropout differs per rank
            rng = [None] * world
            dist.all_gather_object(rng, _rng_state())
        return {"budget": budget.state_dict(), "loop": asdict(state), "rng": rng,
                "tokenizer_hash": prepared.manifest["tokenizer_hash"], "config_hash": cfg.fingerprint()}

    train_rows, val_rows = Rows(prepared, "train"), Rows(prepared, "validation")

    def batches(seq_len: int, split_rows: Rows, seed: int) -> MicroBatches:
        return MicroBatches(split_rows, objective.corrupt, vocab.pad_id, t.micro_batch_size, seed, rank, world, seq_len)

    def make_batches(seq_len: int, start: int):
        return loader(batches(seq_len, train_rows, cfg.seed), start, t.num_workers, use_cuda)

    eval_set = batches(cfg.data.seq_len, val_rows, cfg.seed + 1)  # the same random validation rows every time
    eval_count = math.ceil(t.eval_batches / world)

    def evaluate() -> dict:
        window = MetricWindow()
        engine.module.eval()
        with random_state_kept(engine.device), torch.no_grad():
            for m in range(eval_count):
                inputs, _ = eval_set[m]
                window.add(engine(**{k: v.to(engine.device) for k, v in inputs.items()}))
        engine.module.train()
        return window.reduce(dist.all_reduce if world > 1 else None)

    flops_cache: dict[int, float] = {}

    def flops_per_micro_batch(seq_len: int) -> float:
        if seq_len not in flops_cache:
            inputs, _ = batches(seq_len, train_rows, cfg.seed)[0]
            flops_cache[seq_len] = training_flops(engine.module, {k: v.to(engine.device) for k, v in inputs.items()})
        return flops_cache[seq_len]

    peak = t.peak_flops or matmul_peak_flops("cuda" if use_cuda else "cpu",
                                            torch.bfloat16 if precision == "bf16" else torch.float32)
    info = {"objective": cfg.objective.name, "config_hash": cfg.fingerprint(), "precision": precision,
            "tokenizer_hash": prepared.manifest["tokenizer_hash"], "data": str(prepared.root),
            "machine": machine(engine.device), "torch": torch.__version__}

    def snapshot(point: float) -> None:
        """A transformers export named by the budget fraction it stands for (quality against hours)."""
        export(objective, engine.module, tokenizer, run_dir / "snapshots" / f"p{point:.2f}",
               {**info, "point": point, "progress": budget.progress(), "steps": budget.steps, "tokens": budget.tokens,
                "training_seconds": budget.training_seconds()}, t.zero_stage, precision, is_main)
        barrier()

    tracker = Tracker(run_dir, is_main, resume_step)
    trainer = Trainer(cfg=cfg, engine=engine, budget=budget, tracker=tracker, checkpoints=checkpoints,
                      make_batches=make_batches, evaluate=evaluate, snapshot=snapshot, state=state,
                      flops_per_micro_batch=flops_per_micro_batch, peak_flops=peak, world=world,
                      all_reduce=dist.all_reduce, save_state=save_state)
    try:
        reason = trainer.fit()
        trainer.finish()
        start = time.perf_counter()
        summary = {**info, "stop_reason": reason, "steps": budget.steps, "tokens": budget.tokens,
                   "training_seconds": round(budget.training_seconds(), 3), "progress": round(budget.progress(), 6),
                   "skipped_steps": state.skipped_steps, "world_size": world}
        export(objective, engine.module, tokenizer, final_dir, summary, t.zero_stage, precision, is_main)
        summary["export_seconds"] = round(time.perf_counter() - start, 3)
        if is_main:  # known only once the export is written
            info_file = final_dir / EXPORT_INFO
            atomic_write_text(info_file, json.dumps({**json.loads(info_file.read_text()), **summary}, indent=1))
        barrier()
        tracker.message(f"done: {reason}; {budget.steps} steps, {budget.tokens:,} tokens, "
                        f"{budget.training_seconds():.1f}s training, export {summary['export_seconds']:.1f}s -> {final_dir}")
        return summary
    except OSError as e:  # a full disk while logging or exporting (a failed checkpoint save says so itself)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        saved = checkpoints.complete_tags()
        kept = f"the last checkpoint {checkpoints.folder / saved[-1]} is intact" if saved else "no checkpoint was saved yet"
        raise RunStopped(f"disk full writing {e.filename or run_dir} ({e.strerror}); {kept}; free disk space and "
                         "resume with --resume") from None
    finally:
        tracker.close()
