"""Loss heads shared by objectives: sparse MLM prediction and its metrics."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pretrain_bench.objectives.base import Corruption


def sparse_mlm(predict: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, labels: torch.Tensor,
               corruption_type: torch.Tensor, prefix: str = "mlm",
               kinds_reported=(Corruption.MASK, Corruption.RANDOM, Corruption.KEEP)) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy (fp32) over the selected positions only; logits are never computed elsewhere.

    Returns the mean loss over selected tokens and detached metrics: loss, accuracy, accuracy per
    corruption type in `kinds_reported` (NaN when absent: the step average skips it), selections per row;
    and the side outputs wrapping objectives (MPA) read: `_selected` bool[B, L], `_predicted` and
    `_targets` long[N] in `_selected.nonzero()` order.
    """
    selected = labels >= 0
    logits = predict(hidden[selected]).float()
    targets = labels[selected]
    count = targets.numel()
    loss = F.cross_entropy(logits, targets, reduction="sum") / max(count, 1)
    with torch.no_grad():
        predicted = logits.argmax(-1)
        correct = (predicted == targets).float()
        kinds = corruption_type[selected]
        metrics = {f"{prefix}_loss": loss.detach(), f"{prefix}_acc": correct.mean() if count else loss.new_tensor(float("nan")),
                   "selected_per_seq": loss.new_tensor(count / labels.shape[0]),
                   "_selected": selected, "_predicted": predicted, "_targets": targets}
        for kind in kinds_reported:
            metrics[f"{prefix}_acc_{kind.name.lower()}"] = correct[kinds == kind].mean()  # NaN if absent
    return loss, metrics
