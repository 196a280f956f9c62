"""Vectorised building blocks for masking objectives: which positions may be selected, how many,
which ones, and what each selected position becomes. No Python loop per token."""

from __future__ import annotations

from typing import Literal

import torch

from pretrain_bench.objectives.base import Corruption, Vocab
from pretrain_bench.section import Section
from pydantic import Field, model_validator


class MaskingConfig(Section):
    """Selection and replacement settings shared by the MLM family (SPEC §0-§1)."""

    rate: float = Field(0.15, gt=0, lt=1, description="share of tokens selected for prediction")
    selection: Literal["exact_k", "bernoulli"] = Field(
        "exact_k", description="exact_k: Google's fixed count per sequence; bernoulli: HF's i.i.d. draw")
    max_predictions: int | None = Field(
        None, ge=1, description="cap on selections per sequence in exact_k mode; default round(L*rate)+1")
    mask_prob: float = Field(0.8, ge=0, le=1, description="selected -> [MASK]")
    random_prob: float = Field(0.1, ge=0, le=1, description="selected -> random token (rest kept)")
    exclude_special_from_random: bool = Field(False, description="draw random replacements from non-special ids")

    @model_validator(mode="after")
    def _probabilities_sum(self):
        if self.mask_prob + self.random_prob > 1:
            raise ValueError(f"mask_prob + random_prob = {self.mask_prob + self.random_prob} > 1; lower one")
        return self


def candidates(input_ids: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """bool[B, L]: positions that may be selected (not special, not padding)."""
    return ~torch.isin(input_ids, torch.tensor((*vocab.special_ids, vocab.pad_id), dtype=input_ids.dtype))


def exact_k_counts(input_ids: torch.Tensor, vocab: Vocab, rate: float, max_predictions: int) -> torch.Tensor:
    """Google's per-sequence budget: min(max_pred, max(1, round(len * rate))), len counting [CLS]/[SEP]."""
    lengths = (input_ids != vocab.pad_id).sum(dim=1)
    return torch.clamp(torch.round(lengths * rate), min=1, max=max_predictions).long()


def default_max_predictions(seq_len: int, rate: float) -> int:
    """max_predictions_per_seq ~ L*p as BERT's flags (20 @128, 78 @512 for p=0.15; BERT's 80 @512 never binds
    either, as k = round(len * p) <= 77)."""
    return int(round(seq_len * rate)) + 1


def rank_in_row(keys: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row by ascending key (0 = smallest)."""
    order = keys.argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(keys.shape[1]).expand_as(order).contiguous())
    return ranks


def select_tokens(cand: torch.Tensor, counts: torch.Tensor | None, rate: float,
                  generator: torch.Generator) -> torch.Tensor:
    """bool[B, L] selection of single-token units: exactly `counts[b]` candidates of each row in random
    order (exact_k), or i.i.d. Bernoulli(rate) when `counts` is None."""
    noise = torch.rand(cand.shape, generator=generator)
    if counts is None:
        return cand & (noise < rate)
    noise = noise.masked_fill(~cand, 2.0)  # non-candidates sort last
    return cand & (rank_in_row(noise) < counts[:, None])


def replace(input_ids: torch.Tensor, selected: torch.Tensor, vocab: Vocab, cfg: MaskingConfig,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 drawn per token: (corrupted ids, corruption_type)."""
    return replace_by_draw(input_ids, selected, torch.rand(input_ids.shape, generator=generator), vocab, cfg,
                           generator)


def replace_by_draw(input_ids: torch.Tensor, selected: torch.Tensor, u: torch.Tensor, vocab: Vocab,
                    cfg: MaskingConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """80/10/10 from given uniform draws u[B, L]: one per token, or one per word repeated over its tokens
    (whole-word masking with per-word replacement)."""
    to_mask = selected & (u < cfg.mask_prob)
    to_random = selected & (u >= cfg.mask_prob) & (u < cfg.mask_prob + cfg.random_prob)
    kinds = torch.full_like(input_ids, Corruption.NONE)
    kinds[selected] = Corruption.KEEP
    kinds[to_mask] = Corruption.MASK
    kinds[to_random] = Corruption.RANDOM
    out = input_ids.clone()
    out[to_mask] = vocab.mask_id
    out[to_random] = random_tokens(int(to_random.sum()), vocab, cfg.exclude_special_from_random, generator)
    return out, kinds


def random_tokens(n: int, vocab: Vocab, exclude_special: bool, generator: torch.Generator) -> torch.Tensor:
    """n ids uniform over the vocabulary (Google and HF include specials; optionally excluded)."""
    if not exclude_special:
        return torch.randint(vocab.size, (n,), generator=generator)
    allowed = torch.ones(vocab.size, dtype=torch.bool)
    allowed[list(vocab.special_ids)] = False
    pool = allowed.nonzero().squeeze(1)
    return pool[torch.randint(len(pool), (n,), generator=generator)]


def labels_for(input_ids: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Original ids at selected positions, -100 elsewhere."""
    return input_ids.masked_fill(~selected, -100)
