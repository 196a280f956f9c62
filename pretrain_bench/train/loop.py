"""The training loop. It knows the Objective protocol only: inputs in, {'loss', **metrics} out.

Order at every optimizer-step boundary: bookkeeping, learning rate and batch size for the next step,
log, evaluate, snapshot, checkpoint, then the stop checks (signal, budget, divergence). The deadline is
also checked after every micro-batch.
"""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from pydantic import Field

from pretrain_bench.errors import PREEMPTED_EXIT_CODE, RunStopped
from pretrain_bench.section import Beta, Section
from pretrain_bench.train.budget import Budget
from pretrain_bench.train.schedules import ScheduleConfig, lr_factor
from pretrain_bench.train.tracker import MetricWindow, Tracker

# A second signal within this many seconds of the first is the same request: the deepspeed launcher
# forwards a Ctrl-C or a cluster's SIGTERM to ranks that have already received it from the terminal
# or the scheduler, and the ranks must still save their checkpoint.
SAME_SIGNAL_WINDOW_S = 1.0


class TrainConfig(Section):
    """Optimisation, precision, parallelism and what the run writes."""

    max_steps: int | None = Field(None, ge=1, description="optimizer steps: the stop of a run without a budget; "
                                  "with one, an optional cap (null: the budget alone decides)")
    micro_batch_size: int = Field(32, ge=1, description="rows per micro-batch per rank")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step (after any ramp)")
    lr: float = Field(5e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay (not on biases and norms)")
    adam_betas: tuple[Beta, Beta] = Field((0.9, 0.98), description="AdamW betas, each in [0, 1)")
    adam_eps: float = Field(1e-6, gt=0, description="AdamW epsilon")
    grad_clip: float = Field(1.0, ge=0, description="global gradient-norm clip (0: off)")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX); fp32 on other CPUs; "
        "auto: bf16 where it is native, else fp32; exports hold fp32 weights")
    zero_stage: int = Field(1, ge=1, le=3, description="DeepSpeed ZeRO stage (1-3; 1 also skips non-finite steps)")
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes running the corruption")
    threads: int | None = Field(None, ge=1, description="torch threads per rank (default: cores / ranks)")
    keep_freed_memory: bool = Field(True, description="CPU runs on Linux (glibc): keep freed blocks in the process "
                                    "for the next step's tensors instead of returning them to the kernel (on a "
                                    "2-core EPYC, 9-14% more tokens/s); the process holds its peak memory until exit")
    log_every: int = Field(10, ge=1, description="optimizer steps per metrics.jsonl line")
    eval_every: int | None = Field(None, ge=1, description="held-out evaluation every N steps")
    eval_at: list[float] = Field([0.25, 0.5, 0.75, 1.0], description="held-out evaluation at these progress points")
    eval_batches: int = Field(16, ge=1, description="validation micro-batches per evaluation")
    snapshot_at: list[float] = Field([], description="export a transformers snapshot at these progress points")
    checkpoint_every: int | None = Field(None, ge=1, description="engine checkpoint every N steps")
    checkpoint_every_minutes: float | None = Field(30.0, gt=0, description="engine checkpoint every N minutes of training")
    keep_checkpoints: int = Field(2, ge=1, description="engine checkpoints kept (oldest removed first)")
    max_nonfinite_steps: int = Field(5, ge=1, description="non-finite steps in a row that end the run")
    collective_timeout_s: float = Field(600.0, gt=0, description="how long a rank waits in a collective for the "
                                        "others before it fails (multi-rank runs; the launcher then stops all)")
    peak_flops: float | None = Field(None, gt=0, description="MFU denominator in FLOP/s (default: measured)")
    deepspeed: dict = Field({}, description="extra DeepSpeed config keys, merged last, key by key into nested sections")

    def problems(self, run) -> list[str]:
        issues = []
        if run.budget.mode == "steps" and self.max_steps is None:
            issues.append("neither train.max_steps nor a budget is set; give train.max_steps or one of "
                          "budget.hours, budget.minutes, budget.tokens")
        if run.budget.batch_size_ramp and self.grad_accum_steps == 1:
            issues.append("budget.batch_size_ramp grows accumulation from 1 to train.grad_accum_steps, which is 1; "
                          "raise train.grad_accum_steps or remove the ramp")
        for stage in run.budget.seq_len_curriculum:
            if run.data.seq_len % stage.seq_len:
                issues.append(f"budget.seq_len_curriculum seq_len {stage.seq_len} does not divide data.seq_len "
                              f"{run.data.seq_len}; use a divisor")
        if run.data.seq_len > run.model.max_position_embeddings:
            issues.append(f"data.seq_len {run.data.seq_len} exceeds model.max_position_embeddings "
                          f"{run.model.max_position_embeddings}; raise the latter")
        for name in ("eval_at", "snapshot_at"):
            if any(not 0 < p <= 1 for p in getattr(self, name)):
                issues.append(f"train.{name} values must lie in (0, 1]")
        return issues


@dataclass
class LoopState:
    """What a checkpoint must hold besides the engine: positions, counters, fired events."""

    micro_batches: int = 0  # consumed at the last optimizer-step boundary (the data position)
    skipped_steps: int = 0
    nonfinite_in_a_row: int = 0
    fired: dict[str, list[float]] = field(default_factory=lambda: {"eval": [], "snapshot": []})
    last_checkpoint_s: float = 0.0


class Trainer:
    """Drives one engine through the budget. Built by `train.run.train`, which also exports."""

    def __init__(self, *, cfg, engine, budget: Budget, tracker: Tracker, checkpoints, make_batches,
                 evaluate: Callable[[], dict], snapshot: Callable[[float], None], state: LoopState,
                 flops_per_micro_batch: Callable[[int], float], peak_flops: float, world: int,
                 all_reduce: Callable[[torch.Tensor], None], save_state: Callable[[], dict]):
        self.cfg, self.train_cfg = cfg, cfg.train
        self.engine, self.budget, self.tracker, self.checkpoints = engine, budget, tracker, checkpoints
        self.make_batches, self.evaluate, self.snapshot = make_batches, evaluate, snapshot
        self.state, self.flops_per_micro_batch, self.peak_flops = state, flops_per_micro_batch, peak_flops
        self.world, self.all_reduce, self.save_state = world, all_reduce, save_state
        self.position = state.micro_batches  # micro-batches consumed, including an unfinished window
        self.in_window = 0  # micro-batches of the current optimizer step so far
        self.window = MetricWindow()
        self.window_tokens = self.window_flops = self.window_wait_s = 0  # window_wait_s: waiting for data
        self.window_start_s = budget.training_seconds()
        self.clock_s = budget.training_seconds()  # the training clock as the ranks last agreed on it
        self.signal_name: str | None = None
        self.seq_len = cfg.data.seq_len
        self.stage_flops = 0.0  # FLOPs of one micro-batch at the current sequence length
        self.logged_step = self.saved_step = budget.steps

    # --- the loop ---
    def fit(self) -> str:
        """Train until the budget is spent; returns why it stopped ('budget' or 'max_steps')."""
        self._set_step_hyperparameters(self.budget.progress(self.clock_s))
        reason = self._stop_reason()  # a resumed run may have spent its budget already
        with self._signals():
            self.budget.start()
            while reason is None:  # one pass per sequence-length stage
                self.seq_len = self.budget.seq_len(self.cfg.data.seq_len, self.step_progress)
                with self.budget.paused():  # counting FLOPs is measurement, not training
                    self.stage_flops = self.flops_per_micro_batch(self.seq_len)
                batches = iter(self.make_batches(self.seq_len, self.position))  # endless
                while True:
                    asked = self.budget.now()
                    inputs, num_tokens = next(batches)
                    self.window_wait_s += self.budget.now() - asked
                    reason = self.micro_step(inputs, num_tokens)
                    if reason or (self.in_window == 0 and
                                  self.budget.seq_len(self.cfg.data.seq_len, self.step_progress) != self.seq_len):
                        break
            self.budget.stop()
        return reason

    def finish(self) -> None:
        """After the stop: log the last steps, evaluate at the end, save the final checkpoint."""
        if self.budget.steps > self.logged_step:
            self.log()
        if 1.0 in self.train_cfg.eval_at and 1.0 not in self.state.fired["eval"]:
            self.state.fired["eval"].append(1.0)
            self.run_eval()
        if 1.0 in self.train_cfg.snapshot_at and 1.0 not in self.state.fired["snapshot"]:
            self.state.fired["snapshot"].append(1.0)
            self.snapshot(1.0)
        if self.budget.steps > self.saved_step:
            self._save()

    def micro_step(self, inputs: dict, num_tokens: int) -> str | None:
        self.in_window += 1
        boundary = self.in_window >= self.engine.gradient_accumulation_steps()
        self.engine.set_gradient_accumulation_boundary(boundary)  # set before backward: ZeRO reduces there
        out = self.engine(**{k: v.to(self.engine.device, non_blocking=True) for k, v in inputs.items()})
        self.engine.backward(out["loss"])
        self.engine.step()
        self.window.add(out)
        self.position += 1
        self.window_flops += self.stage_flops
        tokens, signalled, self.clock_s = self._agree(num_tokens)
        self.budget.tokens += tokens
        self.window_tokens += tokens
        if boundary:
            self.in_window = 0
            self.on_boundary()
            if signalled:
                if self.budget.steps > self.logged_step:  # the metrics of the steps since the last line
                    self.log()
                if self.budget.steps > self.saved_step:
                    self._save()
                raise RunStopped(f"{signalled} received: checkpoint saved at step {self.budget.steps}; "
                                 "continue with --resume", PREEMPTED_EXIT_CODE)
        return self._stop_reason()  # after every micro-batch; a partial window is dropped

    def _stop_reason(self) -> str | None:
        if self.budget.exhausted(self.clock_s):
            return "max_steps" if self.budget.capped() else "budget"
        return None

    def on_boundary(self) -> None:
        self.budget.steps += 1
        self.state.micro_batches = self.position
        self._count_nonfinite()
        progress = self.budget.progress(self.clock_s)  # one value, the same on every rank, for every decision
        self._set_step_hyperparameters(progress)
        self.tracker.progress(progress)
        checkpoint_due = self._checkpoint_due()
        if self.budget.steps % self.train_cfg.log_every == 0 or checkpoint_due:
            message = self.budget.diverged(self.log()["loss"], progress)
            if message:
                self._save()
                raise RunStopped(f"{message}; checkpoint kept in {self.checkpoints.folder}")
        every = self.train_cfg.eval_every
        if self._fires("eval", self.train_cfg.eval_at, progress) or (every and self.budget.steps % every == 0):
            self.run_eval()
        for point in self._fires("snapshot", self.train_cfg.snapshot_at, progress):
            with self.budget.paused():
                self.snapshot(point)
        if checkpoint_due:
            self._save()

    # --- helpers ---
    def _count_nonfinite(self) -> None:
        """ZeRO skips a step whose gradient norm is not finite; count those and stop after too many."""
        if self.engine.was_step_applied():
            self.state.nonfinite_in_a_row = 0
            return
        self.state.skipped_steps += 1
        self.state.nonfinite_in_a_row += 1
        self.tracker.message(f"step {self.budget.steps}: non-finite loss or gradient, step skipped "
                             f"({self.state.nonfinite_in_a_row} in a row)")
        if self.state.nonfinite_in_a_row >= self.train_cfg.max_nonfinite_steps:
            raise RunStopped(f"{self.state.nonfinite_in_a_row} non-finite steps in a row (train.max_nonfinite_steps); "
                             f"the last good checkpoint is in {self.checkpoints.folder}; lower train.lr or check the data")

    def _set_step_hyperparameters(self, progress: float) -> None:
        self.step_progress = progress
        self.lr = self.train_cfg.lr * lr_factor(progress, self.train_cfg.schedule)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = self.lr
        accum = self.budget.grad_accum_steps(self.train_cfg.grad_accum_steps, progress)
        if accum != self.engine.gradient_accumulation_steps():
            self.engine.set_train_batch_size(self.train_cfg.micro_batch_size * accum * self.world)

    def _agree(self, tokens: int) -> tuple[int, str | None, float]:
        """Global tokens of this micro-batch, any rank's signal and the ranks' mean training clock. Ranks adopt
        that clock, and every decision until the next micro-batch reads this one value: clocks read again
        would differ between ranks, and a rank that stopped alone would leave the others in a collective."""
        if self.world == 1:
            return tokens, self.signal_name, self.budget.training_seconds()
        shared = torch.tensor([float(tokens), float(self.signal_name is not None), self.budget.training_seconds()],
                              dtype=torch.float64, device=self.engine.device)  # NCCL reduces GPU tensors only
        self.all_reduce(shared)
        agreed = shared[2].item() / self.world
        self.budget.set_training_seconds(agreed)
        return int(shared[0]), (self.signal_name or "signal on another rank") if shared[1] > 0 else None, agreed

    def _fires(self, kind: str, points: list[float], progress: float) -> list[float]:
        """The points reached by `progress` that have not fired yet (now marked as fired)."""
        due = [p for p in points if p <= progress + 1e-9 and p not in self.state.fired[kind]]
        self.state.fired[kind] += due
        return due

    def _checkpoint_due(self) -> bool:
        every, minutes = self.train_cfg.checkpoint_every, self.train_cfg.checkpoint_every_minutes
        if every and self.budget.steps % every == 0:
            return True
        return bool(minutes) and self.clock_s - self.state.last_checkpoint_s >= minutes * 60

    def log(self) -> dict:
        """A metrics line. Its progress is the value at the step's boundary, from which the learning rate,
        accumulation and length were set; elapsed_s is the clock now."""
        seconds = max(self.budget.training_seconds() - self.window_start_s, 1e-9)
        metrics = self.window.reduce(self.all_reduce if self.world > 1 else None)
        record = {"split": "train", "step": self.budget.steps, "tokens": self.budget.tokens,
                  "elapsed_s": round(self.budget.training_seconds(), 3), "progress": round(self.step_progress, 6),
                  "lr": self.lr, "loss": metrics.pop("loss", math.nan), "tokens_per_s": self.window_tokens / seconds,
                  "step_s": seconds / max(self.budget.steps - self.logged_step, 1),
                  "data_wait": self.window_wait_s / seconds,
                  "mfu": self.window_flops * self.world / seconds / self.peak_flops,
                  "grad_norm": _float(self.engine.get_global_grad_norm()),
                  "grad_accum": self.engine.gradient_accumulation_steps(), "seq_len": self.seq_len,
                  "skipped_steps": self.state.skipped_steps, **metrics}
        self.tracker.log(record)
        self.logged_step = self.budget.steps
        self.window_tokens = self.window_flops = self.window_wait_s = 0
        self.window_start_s = self.budget.training_seconds()
        return record

    def run_eval(self) -> None:
        with self.budget.paused():
            metrics = self.evaluate()
        self.tracker.log({"split": "eval", "step": self.budget.steps, "tokens": self.budget.tokens,
                          "elapsed_s": round(self.budget.training_seconds(), 3),
                          "progress": round(self.budget.progress(), 5),
                          **{f"eval_{k}": v for k, v in metrics.items()}})

    def _save(self) -> None:
        with self.budget.paused():
            self.state.last_checkpoint_s = self.clock_s
            self.checkpoints.save(f"step{self.budget.steps:08d}", self.save_state())
            self.saved_step = self.budget.steps

    @contextmanager
    def _signals(self):
        """First SIGTERM/SIGINT: checkpoint at the next step boundary and exit 75. Second: exit now."""
        first_at = 0.0

        def handler(signum, _frame):
            nonlocal first_at
            if self.signal_name is not None:
                if time.monotonic() - first_at > SAME_SIGNAL_WINDOW_S:
                    os._exit(128 + signum)
                return
            first_at = time.monotonic()
            self.signal_name = signal.Signals(signum).name
            self.tracker.message(f"{self.signal_name}: saving a checkpoint at the next step boundary "
                                 "(send it again to exit at once)")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None

