"""The budget: wall-clock time or tokens (or, without one, train.max_steps) define progress in [0, 1],
and progress drives everything else: the learning rate, the batch-size ramp, the sequence-length
curriculum, evaluation and snapshots, early termination and the stop.

Training time is counted by a pausable clock that is stored in checkpoints: evaluation, checkpointing
and export do not eat into the budget, time spent down between a kill and a resume is not counted.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable

from pydantic import Field, model_validator

from pretrain_bench.section import Section


class CurriculumStage(Section):
    until: float = Field(gt=0, lt=1, description="progress at which this stage ends")
    seq_len: int = Field(ge=8, description="row length during this stage (divides data.seq_len)")


class EarlyStopConfig(Section):
    at: float = Field(gt=0, lt=1, description="progress at which the check happens")
    loss_above: float = Field(gt=0, description="stop if the running training loss is above this")


AMOUNTS = ("hours", "minutes", "tokens")  # the ways to give a budget, at most one at a time


class BudgetConfig(Section):
    """At most one of hours, minutes, tokens; none means a step-limited run (train.max_steps)."""

    hours: float | None = Field(None, gt=0, description="wall-clock training budget in hours (evaluation, "
                                "checkpoints, export and time spent down are not counted)")
    minutes: float | None = Field(None, gt=0, description="wall-clock training budget in minutes (as hours)")
    tokens: int | None = Field(None, gt=0, description="budget in non-padding training tokens over all ranks "
                               "(runs repeat exactly)")
    batch_size_ramp: float = Field(0.0, ge=0, le=1, description="share of progress over which gradient "
                                   "accumulation grows from 1 to train.grad_accum_steps (cramming)")
    seq_len_curriculum: list[CurriculumStage] = Field(
        default_factory=list, description="shorter rows early on; the last stage's 'until' ends before 1")
    early_stop: EarlyStopConfig | None = Field(None, description="end a diverging run early")

    @model_validator(mode="after")
    def _one_budget(self):
        given = [k for k in AMOUNTS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(AMOUNTS)}, not {' and '.join(given)}")
        untils = [s.until for s in self.seq_len_curriculum]
        if untils != sorted(untils) or len(set(untils)) != len(untils):
            raise ValueError("seq_len_curriculum stages must have increasing 'until'")
        return self

    @property
    def mode(self) -> str:
        if self.tokens is not None:
            return "tokens"
        return "time" if self.hours is not None or self.minutes is not None else "steps"

    @property
    def seconds(self) -> float | None:
        if self.hours is not None:
            return self.hours * 3600
        return self.minutes * 60 if self.minutes is not None else None

    def describe(self, max_steps: int | None) -> str:
        if self.mode == "tokens":
            return f"{self.tokens:,} tokens"
        if self.mode == "time":
            return f"{self.hours:g} hours" if self.hours is not None else f"{self.minutes:g} minutes"
        return f"{max_steps:,} steps"


class Budget:
    """Counts training time, tokens and optimizer steps, and answers every progress question.

    `now` is injectable so tests drive the deadline without waiting.
    """

    def __init__(self, cfg: BudgetConfig, max_steps: int | None, now: Callable[[], float] = time.monotonic):
        self.cfg, self.max_steps, self.now = cfg, max_steps, now
        self.elapsed_s = 0.0
        self.tokens = 0
        self.steps = 0
        self._since: float | None = None  # clock start while running

    # --- the clock ---
    def start(self) -> None:
        if self._since is None:
            self._since = self.now()

    def stop(self) -> None:
        if self._since is not None:
            self.elapsed_s += self.now() - self._since
            self._since = None

    @contextmanager
    def paused(self):
        """Time spent inside does not count as training (evaluation, checkpoints, export)."""
        running = self._since is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()

    def set_training_seconds(self, seconds: float) -> None:
        """Adopt a clock value agreed between ranks, so that every rank sees the same progress."""
        self.elapsed_s = seconds
        if self._since is not None:
            self._since = self.now()

    def training_seconds(self) -> float:
        return self.elapsed_s + (self.now() - self._since if self._since is not None else 0.0)

    # --- progress ---
    def progress(self, seconds: float | None = None) -> float:
        """Progress now, or at `seconds` of training: a reading that every rank agreed on, so that ranks whose
        clocks tick on apart still take every decision alike."""
        mode = self.cfg.mode
        if mode == "time":
            return (self.training_seconds() if seconds is None else seconds) / self.cfg.seconds
        if mode == "tokens":
            return self.tokens / self.cfg.tokens
        return self.steps / self.max_steps

    def capped(self) -> bool:
        """train.max_steps reached (the stop of a step-limited run, a safety cap otherwise)."""
        return self.max_steps is not None and self.steps >= self.max_steps

    def exhausted(self, seconds: float | None = None) -> bool:
        return self.progress(seconds) >= 1.0 or self.capped()

    def grad_accum_steps(self, final: int, progress: float | None = None) -> int:
        """Gradient accumulation at `progress` (default: now): grows linearly from 1 to `final` over
        cfg.batch_size_ramp, reaching `final` at the ramp's end."""
        ramp = self.cfg.batch_size_ramp
        if ramp == 0 or final == 1:
            return final
        p = self.progress() if progress is None else progress
        return max(1, min(final, 1 + math.floor((final - 1) * p / ramp)))

    def seq_len(self, full: int, progress: float | None = None) -> int:
        """Row length at `progress` (default: now): the first curriculum stage not yet ended, else `full`."""
        p = self.progress() if progress is None else progress
        for stage in self.cfg.seq_len_curriculum:
            if p < stage.until:
                return stage.seq_len
        return full

    def diverged(self, loss: float, progress: float) -> str | None:
        """A message if the early-termination rule fires for this running loss at `progress`, else None."""
        rule = self.cfg.early_stop
        if rule and progress >= rule.at and not loss <= rule.loss_above:
            return (f"early termination: training loss {loss:.3f} is above budget.early_stop.loss_above="
                    f"{rule.loss_above} at {progress:.0%} of the budget (rule from {rule.at:.0%}); "
                    "lower train.lr or check the data")
        return None

    # --- resume ---
    def state_dict(self) -> dict:
        return {"elapsed_s": self.training_seconds(), "tokens": self.tokens, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.elapsed_s, self.tokens, self.steps = state["elapsed_s"], state["tokens"], state["steps"]
