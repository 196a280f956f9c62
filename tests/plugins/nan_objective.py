"""A user's own objective that injects numerical faults: MLM whose loss is NaN at chosen training forward
calls. Named in a config as 'tests.plugins.nan_objective:NaNAtCalls'; the product knows nothing of it."""

from pathlib import Path

from pydantic import Field
from torch import nn

from pretrain_bench.objectives.mlm import MLM, MLMConfig


class NaNConfig(MLMConfig):
    name: str = "tests.plugins.nan_objective:NaNAtCalls"
    nan_at_calls: list[int] = Field([], description="training forward calls (0-based, counted in this process) "
                                    "whose loss is multiplied by NaN")


class Poisoned(nn.Module):
    def __init__(self, inner: nn.Module, calls: list[int]):
        super().__init__()
        self.inner, self.calls, self.count = inner, set(calls), 0

    def forward(self, **inputs):
        out = self.inner(**inputs)
        if self.training:
            if self.count in self.calls:
                out = {**out, "loss": out["loss"] * float("nan")}
            self.count += 1
        return out


class NaNAtCalls(MLM):
    Config = NaNConfig
    summary = "test plug-in: MLM with NaN losses at chosen forward calls"

    def build(self, model):
        return Poisoned(super().build(model), self.config.nan_at_calls)

    def export(self, module, folder: Path):
        return super().export(module.inner, folder)
