"""`wwm`: whole-word masking (SPEC §2; BERT-wwm, Chinese BERT-wwm arXiv:1906.08101).

Words come from the `word_start` flags data_prep stores with the rows: WordPiece's '##' rule in English,
a Chinese segmenter (jieba, or LTP) over single-character tokens in Chinese. A word is selected whole or
not at all; the selected tokens then get BERT's 80/10/10, drawn per token as Google's code does, or per
word. The model, the loss and the export are the MLM ones.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pretrain_bench.objectives import masking, register, word_masking
from pretrain_bench.objectives.base import ObjectiveConfig
from pretrain_bench.objectives.masking import MaskingConfig
from pretrain_bench.objectives.mlm import MLM


class WWMConfig(ObjectiveConfig):
    name: str = "wwm"
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    replacement_granularity: Literal["token", "word"] = Field(
        "token", description="80/10/10 drawn per token (Google's create_pretraining_data.py) or once per word "
        "(UER-py #200)")


@register("wwm")
class WholeWordMasking(MLM):
    """MLM over whole words: exact-k fill over shuffled words (Google) or one Bernoulli draw per word."""

    Config = WWMConfig
    summary = "whole-word masking: words selected whole (exact-k or per-word Bernoulli), 80/10/10, English and Chinese"

    def select(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """bool[B, L]: the tokens to predict, whole words only.

        One uniform draw per position keys the word starting there, so a row without multi-token words
        selects exactly what `mlm` selects from the same generator."""
        m = self.config.masking
        ids = batch["input_ids"]
        cand, starts = word_masking.unit_starts(ids, batch["word_start"], self.vocab)
        noise = torch.rand(ids.shape, generator=generator)
        if m.selection == "bernoulli":
            taken = starts & (noise < m.rate)
        else:
            cap = m.max_predictions or masking.default_max_predictions(ids.shape[1], m.rate)
            budget = masking.exact_k_counts(ids, self.vocab, m.rate, cap)
            taken = word_masking.fill_in_random_order(starts, word_masking.sizes(starts, cand), noise, budget)
        return word_masking.spread(taken, starts, cand)

    def replace(self, batch, selected, generator):
        if self.config.replacement_granularity == "token":
            return super().replace(batch, selected, generator)
        ids = batch["input_ids"]
        _, starts = word_masking.unit_starts(ids, batch["word_start"], self.vocab)
        per_word = torch.rand(ids.shape, generator=generator).gather(1, word_masking.owner(starts))
        return masking.replace_by_draw(ids, selected, per_word, self.vocab, self.config.masking, generator)
