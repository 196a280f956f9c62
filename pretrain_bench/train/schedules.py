"""Learning-rate shapes as pure functions of progress in [0, 1] (the elapsed fraction of the budget,
or of train.max_steps in a step-limited run). Nothing here reads a clock or counts steps."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from pretrain_bench.section import Section


class ScheduleConfig(Section):
    """Warm up over the first `warmup` of progress, then follow `shape` down to `floor` x peak."""

    shape: Literal["linear", "cosine", "triangular", "one_cycle", "constant"] = Field(
        "linear", description="decay after warm-up; triangular rises from the floor, one_cycle is cosine both ways")
    warmup: float = Field(0.06, ge=0, lt=1, description="share of progress spent warming up")
    floor: float = Field(0.0, ge=0, le=1, description="final learning rate as a share of the peak")
    cooldown: float = Field(0.0, ge=0, le=1, description="constant only: linear decay over the last share")

    @model_validator(mode="after")
    def _fits(self):
        if self.shape == "constant" and self.warmup + self.cooldown > 1:
            raise ValueError("warmup + cooldown exceed 1; shorten one")
        if self.shape != "constant" and self.cooldown:
            raise ValueError(f"cooldown applies to shape 'constant' only, not '{self.shape}'; remove it")
        return self


def lr_factor(progress: float, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at `progress` (clamped to [0, 1])."""
    p = min(max(progress, 0.0), 1.0)
    w, floor = cfg.warmup, cfg.floor
    if p < w:
        rise = p / w
        if cfg.shape == "triangular":
            return floor + (1 - floor) * rise
        if cfg.shape == "one_cycle":
            start = max(floor, 1 / 25)  # Smith's one-cycle starts at peak/25
            return start + (1 - start) * (1 - math.cos(math.pi * rise)) / 2
        return rise
    if cfg.shape == "constant":
        cooldown_start = 1 - cfg.cooldown
        if p <= cooldown_start or cfg.cooldown == 0:
            return 1.0
        return 1 - (1 - floor) * (p - cooldown_start) / cfg.cooldown
    fall = (p - w) / (1 - w)
    if cfg.shape in ("cosine", "one_cycle"):
        return floor + (1 - floor) * (1 + math.cos(math.pi * fall)) / 2
    return 1 - (1 - floor) * fall  # linear, triangular
