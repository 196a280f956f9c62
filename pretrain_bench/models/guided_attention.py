"""Attention that lets an objective see the queries and keys of chosen layers (MPA's guided heads).

`mpa_hybrid` is registered with transformers' `AttentionInterface` and, with the same name, in its
`AttentionMaskInterface`. Every layer computes its output with transformers' own SDPA function; a
layer whose attention module carries a `GuidedHeads` (attribute `guided_heads`) first hands its
query, key and mask tensors to it. `GuidedHeads.log_rows` then recomputes, for the few query
positions an objective asks about, exactly the pre-dropout softmax rows that eager attention would
expose, differentiable with respect to the guided heads' queries and keys only. So the guided layers
keep the fused kernel and no [B, H, L, L] matrix is stored.

The mask function matters: a model creates its masks with the function registered under its
`_attn_implementation`; without one, the 2D padding mask reaches attention unexpanded and padded
keys get attention. We register transformers' `sdpa_mask` (boolean, True = attend), which is what
the SDPA path expects, and read the same mask when recomputing rows.

The layer index comes from the attention module's `layer_idx` (BERT, ELECTRA and ModernBERT set it),
so transformers is used unmodified.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

HYBRID = "mpa_hybrid"
ATTRIBUTE = "guided_heads"


def hybrid_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs):
    """transformers' SDPA attention; guided layers also record their queries, keys and mask."""
    guided = getattr(module, ATTRIBUTE, None)
    if guided is not None:
        guided.record(module.layer_idx, query, key, attention_mask, scaling or query.shape[-1] ** -0.5)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


AttentionInterface.register(HYBRID, hybrid_attention)
AttentionMaskInterface.register(HYBRID, sdpa_mask)


def attention_layers(model: nn.Module) -> dict[int, nn.Module]:
    """The self-attention module of each layer (the one that calls the attention function), by index."""
    return {m.layer_idx: m for m in model.modules()
            if type(m).__name__.endswith("Attention") and isinstance(getattr(m, "layer_idx", None), int)}


class GuidedHeads:
    """The guided heads of one transformers model, and the queries/keys their layers saw last.

    Attaching switches the model to `mpa_hybrid` attention; the exported weights and config are
    unchanged (the implementation is not saved), so checkpoints load as before.
    """

    def __init__(self, model: PreTrainedModel, heads: list[tuple[int, int]]):
        self.num_heads = model.config.num_attention_heads
        self.heads: dict[int, list[int]] = {}
        for layer, head in sorted(heads):
            self.heads.setdefault(layer, []).append(head)
        self.captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]] = {}
        layers = attention_layers(model)
        for layer in self.heads:
            setattr(layers[layer], ATTRIBUTE, self)
        model.set_attn_implementation(HYBRID)

    def record(self, layer: int, query, key, mask, scaling: float) -> None:
        self.captured[layer] = (query, key, mask, scaling)

    def take(self) -> dict[int, tuple]:
        """What the last forward recorded (and forget it, so no graph outlives its step)."""
        captured, self.captured = self.captured, {}
        return captured

    def unguided(self, layer: int) -> list[int]:
        return [h for h in range(self.num_heads) if h not in self.heads[layer]]


def log_rows(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float,
             rows: torch.Tensor, positions: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """Log pre-dropout attention probabilities [N, len(heads), L] of the queries at (rows[n], positions[n])
    over all keys of their sequence, for `heads`; fp32. `rows` must be sorted (nonzero() order).

    Queries are packed per row ([B, h, T, d], T = most queries in one row) so the cost is one
    [T x L] block per row instead of the full [L x L] attention.
    """
    q, k = query[:, heads].float(), key[:, heads].float()
    count = rows.numel()
    first = torch.searchsorted(rows, rows)  # index of each row's first query
    slot = torch.arange(count, device=rows.device) - first
    width = int(slot.max()) + 1 if count else 1
    packed = q.new_zeros(q.shape[0], len(heads), width, q.shape[-1])
    packed[rows, :, slot] = q[rows, :, positions]
    logits = (packed @ k.transpose(-1, -2) * scaling)[rows, :, slot]  # [N, h, L]
    if mask is not None:
        allowed = mask[rows if mask.shape[0] > 1 else torch.zeros_like(rows), 0, positions]  # [N, L]
        logits = logits.masked_fill(~allowed[:, None, :], torch.finfo(logits.dtype).min)
    return torch.log_softmax(logits, dim=-1)
