"""Learning-rate shapes as pure functions of progress in [0, 1] (the elapsed fraction of the budget,
or of train.max_steps in a step-limited run). Nothing here reads a clock or counts steps.

Every shape rises from `start` to the peak over the first `warmup` of progress, then falls to `floor`:

    linear      linear rise from 0, linear fall (BERT)
    cosine      linear rise from 0, cosine fall
    triangular  linear rise from 0.25, linear fall: cramming's budget-triangle2 with warmup 0.75
    one_cycle   cosine rise from 0.04 (Smith's peak/25), cosine fall
    constant    linear rise from 0, flat, then a linear cooldown over the last `cooldown` (WSD)

`start` overrides the shape's own starting point.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from pretrain_bench.section import Section

Shape = Literal["linear", "cosine", "triangular", "one_cycle", "constant"]

# Where the warm-up starts, as a share of the peak, unless `start` is given.
DEFAULT_START: dict[str, float] = {"linear": 0.0, "cosine": 0.0, "triangular": 0.25, "one_cycle": 1 / 25,
                                   "constant": 0.0}


class ScheduleConfig(Section):
    """Warm up over the first `warmup` of progress, then follow `shape` down to `floor` x peak."""

    shape: Shape = Field("linear", description="linear, cosine, triangular (cramming), one_cycle (Smith) or "
                         "constant (with an optional cooldown); see docs/budget.md")
    warmup: float = Field(0.06, ge=0, lt=1, description="share of progress spent rising to the peak "
                          "(triangular and one_cycle: where the peak is)")
    start: float | None = Field(None, ge=0, le=1, description="learning rate at progress 0 as a share of the peak "
                                "(default: 0.25 triangular, 0.04 one_cycle, 0 otherwise)")
    floor: float = Field(0.0, ge=0, le=1, description="final learning rate as a share of the peak")
    cooldown: float = Field(0.0, ge=0, le=1, description="constant only: linear decay over the last share")

    @model_validator(mode="after")
    def _fits(self):
        if self.shape == "constant" and self.warmup + self.cooldown > 1:
            raise ValueError("warmup + cooldown exceed 1; shorten one")
        if self.shape == "constant" and self.floor and not self.cooldown:
            raise ValueError("shape 'constant' reaches its floor only through a cooldown; give cooldown or remove floor")
        if self.shape != "constant" and self.cooldown:
            raise ValueError(f"cooldown applies to shape 'constant' only, not '{self.shape}'; remove it")
        return self

    @property
    def start_share(self) -> float:
        return DEFAULT_START[self.shape] if self.start is None else self.start


def lr_factor(progress: float, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at `progress` (clamped to [0, 1])."""
    p = min(max(progress, 0.0), 1.0)
    w, start, floor = cfg.warmup, cfg.start_share, cfg.floor
    if p < w:
        rise = p / w
        if cfg.shape == "one_cycle":
            rise = (1 - math.cos(math.pi * rise)) / 2
        return start + (1 - start) * rise
    if cfg.shape == "constant":
        cooldown_start = 1 - cfg.cooldown
        if cfg.cooldown == 0 or p <= cooldown_start:
            return 1.0
        return 1 - (1 - floor) * (p - cooldown_start) / cfg.cooldown
    fall = (p - w) / (1 - w)
    if cfg.shape in ("cosine", "one_cycle"):
        return floor + (1 - floor) * (1 + math.cos(math.pi * fall)) / 2
    return 1 - (1 - floor) * fall  # linear, triangular
