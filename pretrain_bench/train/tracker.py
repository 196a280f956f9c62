"""What a person reads during and after a run: metrics.jsonl, TensorBoard events and a progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from pretrain_bench.train.checkpoint import atomic_write_text


class MetricWindow:
    """Objective metrics (detached tensors) gathered over micro-batches; reduced once per log line,
    across ranks too, so the loop never waits on a device sync per step."""

    def __init__(self):
        self.values: dict[str, list[torch.Tensor]] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Scalar entries of a module's output; keys starting with '_' are side outputs, not metrics."""
        for key, value in metrics.items():
            if not key.startswith("_"):
                self.values.setdefault(key, []).append(value.detach().float().reshape(()))

    def reduce(self, all_reduce=None) -> dict[str, float]:
        """Mean of each metric over the window (NaN entries skipped), averaged over ranks."""
        keys = sorted(self.values)
        if not keys:
            return {}
        stacked = [torch.stack(self.values[k]) for k in keys]
        sums = torch.stack([torch.nan_to_num(v, nan=0.0).sum() for v in stacked])
        counts = torch.stack([(~v.isnan()).sum().float() for v in stacked])
        both = torch.cat([sums, counts])  # on the metrics' device: NCCL reduces GPU tensors only
        if all_reduce is not None:
            all_reduce(both)
        both = both.cpu()
        self.values.clear()
        sums, counts = both[: len(keys)], both[len(keys):]
        return {k: (s / c).item() for k, s, c in zip(keys, sums, counts) if c > 0}


def _logged_step(line: str) -> int | None:
    """The step of a metrics line; None for a line cut short when the disk filled or the run was killed."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


class Tracker:
    """Rank 0 writes; other ranks hold a Tracker that does nothing."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.bar = None
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():  # drop lines the killed run wrote after its checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if (step := _logged_step(line)) is not None and step <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                purge_step=None if resume_step is None else resume_step + 1)
        self.bar = tqdm(total=1000, desc="train", unit="‰", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}‰ [{elapsed}<{remaining}{postfix}]")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        prefix = record.get("split", "train")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "split"):
                self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])
        if prefix == "train":
            self.bar.set_postfix_str(f"loss {record['loss']:.3f}, {record['tokens_per_s']:,.0f} tok/s"
                                     if record.get("loss") is not None else "")

    def progress(self, fraction: float) -> None:
        if self.bar is not None:
            target = min(1000, int(fraction * 1000))
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text, file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.file.close()
            self.tb.close()
