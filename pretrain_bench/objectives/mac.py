"""`mac`: MacBERT's MLM-as-correction (SPEC §3; Cui et al., Findings of EMNLP 2020, arXiv:2004.13922).

No official pre-training code exists; this follows the paper, the README and the authors' replies:
1. words come from the rows' `word_start` flags (Chinese: a segmenter; English: WordPiece's '##');
2. n-gram spans of 1-4 words (probabilities 0.4/0.3/0.2/0.1) with a sequential pointer (MacBERT#13);
3. spans in random order fill a 15% budget, counted in tokens by default (MacBERT#5 is unanswered);
4. each selected word on its own: 80% a similar word (same token count, from the `neighbours` table
   data_prep built; a random word when it has none, "degrade to random word"), 10% a random word of the
   same token count, 10% kept. Never [MASK]; the labels are the original tokens of every selected word;
5. optionally sentence-order prediction (ALBERT's SOP) on BERT's pair head, loss CE_mlm + CE_sop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from data_prep.lexicon import NeighboursConfig
from data_prep.neighbour_table import NeighbourTable
from pretrain_bench.errors import UserError
from pretrain_bench.models import backbone
from pretrain_bench.models.heads import sparse_mlm
from pretrain_bench.objectives import masking, register, word_masking
from pretrain_bench.objectives.base import Corruption, Objective, ObjectiveConfig, Vocab


class MacConfig(ObjectiveConfig):
    name: str = "mac"
    rate: float = Field(0.15, gt=0, lt=1, description="share of the budget unit selected for correction")
    budget_unit: Literal["tokens", "words"] = Field(
        "tokens", description="what the 15% counts (MacBERT#5 is unanswered): tokens, with [CLS]/[SEP] in the "
        "length as Google's exact-k, or words")
    max_predictions: int | None = Field(None, ge=1, description="cap on the budget per row, in budget_unit; "
                                        "default round(L*rate)+1")
    ngram_probs: list[float] = Field([0.4, 0.3, 0.2, 0.1], min_length=1,
                                     description="probability of a span of 1, 2, ... words")
    similar_prob: float = Field(0.8, ge=0, le=1, description="selected word -> a similar word")
    random_prob: float = Field(0.1, ge=0, le=1, description="selected word -> a random word (the rest are kept)")
    similar_top_k: int = Field(1, ge=1, description="1: always the most similar word (SPEC); k: uniform over "
                               "the best k")
    sop: bool = Field(True, description="sentence-order prediction on BERT's pair head (MacBERT, ALBERT); "
                      "rows hold [CLS] A [SEP] B [SEP] pairs from one document, several to a row, each attending to "
                      "itself only")
    sop_weight: float = Field(1.0, ge=0, description="loss = CE_mlm + sop_weight * CE_sop")
    similar: NeighboursConfig = Field(default_factory=NeighboursConfig)

    @model_validator(mode="after")
    def _consistent(self):
        if any(p < 0 for p in self.ngram_probs) or abs(sum(self.ngram_probs) - 1) > 1e-6:
            raise ValueError(f"ngram_probs {self.ngram_probs} must be non-negative and sum to 1")
        if self.similar_prob + self.random_prob > 1:
            raise ValueError(f"similar_prob + random_prob = {self.similar_prob + self.random_prob} > 1; lower one")
        if self.similar_top_k > self.similar.top_k:
            raise ValueError(f"similar_top_k {self.similar_top_k} exceeds similar.top_k {self.similar.top_k}, the "
                             "words data_prep keeps; raise similar.top_k")
        return self


def swap_segments(input_ids: torch.Tensor, word_start: torch.Tensor, pair_bounds: torch.Tensor, pad_id: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """SOP over rows of packed `[CLS] A [SEP] B [SEP]` pairs (data_prep/sop.py): each pair becomes
    `[CLS] B [SEP] A [SEP]` with p = 0.5 (ALBERT's label 1). Returns the swapped `input_ids` and
    `word_start`, and per token its pair's index (`pair_ids`, -1 on padding), its position within the pair
    (`position_ids`) and segment (`token_type_ids`); `sop_label` has one entry per pair, in the order of the
    pairs' [CLS] tokens in the rows."""
    length = input_ids.shape[1]
    starts, b_starts = pair_bounds[..., 0].long(), pair_bounds[..., 1].long()  # [B, P]; unused slots: L
    filled = (input_ids != pad_id).sum(dim=1, keepdim=True)
    ends = torch.minimum(torch.cat([starts[:, 1:], torch.full_like(filled, length)], 1), filled)
    p = torch.arange(length)[None, :]
    in_pair = p < filled
    pair = ((p[:, None, :] >= starts[:, :, None]).sum(1) - 1).clamp(min=0)  # [B, L]
    start, b_start, end = (t.gather(1, pair) for t in (starts, b_starts, ends))
    swap_pair = torch.rand(starts.shape, generator=generator) < 0.5
    swap = swap_pair.gather(1, pair) & in_pair
    # within a pair (offset o from its [CLS]): where each position of the swapped pair reads from
    o, a_end, b_len = p - start, b_start - start, end - b_start - 1
    swapped_from = torch.where(o == 0, 0, torch.where(
        o < 1 + b_len, a_end + o - 1, torch.where(
            o == 1 + b_len, a_end - 1, torch.where(o < end - start - 1, o - b_len - 1, o))))
    source = torch.where(swap, start + swapped_from, p)
    first_sep = torch.where(swap, 1 + b_len, a_end - 1)
    return {"input_ids": input_ids.gather(1, source), "word_start": word_start.gather(1, source),
            "pair_ids": torch.where(in_pair, pair, -1), "position_ids": torch.where(in_pair, o, 0),
            "token_type_ids": ((o > first_sep) & in_pair).long(), "sop_label": swap_pair[starts < length].long()}


def pair_attention_mask(pair_ids: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """[B, 1, L, L]: each token attends to the tokens of its own pair only (padding to padding). Boolean
    (True = attend) for SDPA; eager attention adds its mask to the scores."""
    same = pair_ids[:, None, :, None] == pair_ids[:, None, None, :]
    if model.config._attn_implementation != "eager":
        return same
    blocked = torch.finfo(model.dtype).min
    return torch.zeros(same.shape, dtype=model.dtype, device=same.device).masked_fill(~same, blocked)


class CorrectionLM(nn.Module):
    """BERT's MLM head on the selected positions (fp32 CE), plus the 2-way pair head on every pair's [CLS]
    for SOP."""

    def __init__(self, model: nn.Module, model_cfg: backbone.ModelConfig, sop_weight: float):
        super().__init__()
        self.model, self.model_cfg, self.sop_weight = model, model_cfg, sop_weight

    def forward(self, input_ids, attention_mask, labels, corruption_type, similar_wanted, sop_label=None,
                pair_ids=None, **pair_inputs):
        bert = backbone.encoder(self.model, self.model_cfg)
        mask = attention_mask if pair_ids is None else pair_attention_mask(pair_ids, self.model)
        out = bert(input_ids=input_ids, attention_mask=mask, **pair_inputs)
        loss, metrics = sparse_mlm(lambda h: backbone.predict(self.model, self.model_cfg, h), out.last_hidden_state,
                                   labels, corruption_type,
                                   kinds_reported=(Corruption.SIMILAR, Corruption.RANDOM, Corruption.KEEP))
        with torch.no_grad():  # of the words drawn for a similar word, the share that had one
            hits = (similar_wanted & (corruption_type == Corruption.SIMILAR)).sum()
            metrics["similar_hit_rate"] = hits / similar_wanted.sum()  # NaN without any: skipped in the mean
        if sop_label is not None:
            first = (pair_inputs["position_ids"] == 0) & (pair_ids >= 0)  # each pair's [CLS], in row order
            pooled = bert.pooler(out.last_hidden_state[first][:, None])
            logits = self.model.cls.seq_relationship(pooled).float()
            sop_loss = F.cross_entropy(logits, sop_label)
            loss = loss + self.sop_weight * sop_loss
            metrics["sop_loss"] = sop_loss.detach()
            metrics["sop_acc"] = (logits.argmax(-1) == sop_label).float().mean().detach()
        return {"loss": loss, **metrics}


@register("mac")
class MacBERT(Objective):
    """MLM as correction: n-gram word spans replaced by similar words, never [MASK]; optional SOP."""

    Config = MacConfig
    summary = "MacBERT: n-gram word spans corrected from similar words (80/10/10 similar/random/keep, no [MASK]) + SOP"

    def __init__(self, config: MacConfig, vocab: Vocab, artifacts):
        super().__init__(config, vocab, artifacts)
        if "neighbours" not in self.artifacts:
            raise UserError("objective mac needs data_prep's 'neighbours' table; build it with "
                            "`pretrain-bench prepare` (train does it too)")
        self.table = NeighbourTable(self.artifacts["neighbours"])
        self.ngram_probs = torch.tensor(config.ngram_probs, dtype=torch.float)

    @classmethod
    def artifacts_needed(cls, config):
        return {"neighbours": config.similar}

    @classmethod
    def packing(cls, config):
        return "segment_pairs" if config.sop else "concat"

    @classmethod
    def check(cls, config, model):
        problems = config.similar.problems("objective.similar")
        if config.sop and backbone.ARCHITECTURES[model.arch].pretraining_class is None:
            problems.append(f"objective.sop needs a sentence-pair head, which model.arch {model.arch} lacks; "
                            "set model.arch=bert or objective.sop=false")
        if config.sop and model.attn_implementation == "flash_attention_2":
            problems.append("objective.sop packs several sentence pairs per row, each attending to itself only, and "
                            "model.attn_implementation flash_attention_2 takes no such mask; use sdpa or set "
                            "objective.sop=false")
        return problems

    def select(self, input_ids: torch.Tensor, word_start: torch.Tensor, generator: torch.Generator):
        """(selected tokens, word-unit starts, span starts, the n drawn per span): bool/long[B, L]."""
        c = self.config
        cand, units = word_masking.unit_starts(input_ids, word_start, self.vocab)
        spans, drawn = word_masking.ngram_spans(cand, units, self.ngram_probs, generator)
        cap = c.max_predictions or masking.default_max_predictions(input_ids.shape[1], c.rate)
        if c.budget_unit == "tokens":
            counted, budget = cand, masking.exact_k_counts(input_ids, self.vocab, c.rate, cap)
        else:
            counted = units
            budget = torch.clamp(torch.round(units.sum(dim=1) * c.rate), min=1, max=cap).long()
        keys = torch.rand(input_ids.shape, generator=generator)
        taken = word_masking.fill_in_random_order(spans, word_masking.sizes(spans, counted), keys, budget)
        return word_masking.spread(taken, spans, cand), units, spans, drawn

    def replace(self, input_ids: torch.Tensor, selected: torch.Tensor, units: torch.Tensor,
                generator: torch.Generator):
        """Each selected word on its own: (corrupted ids, corruption_type, similar_wanted at word starts)."""
        c = self.config
        cand = masking.candidates(input_ids, self.vocab)
        rows, cols = (units & selected).nonzero(as_tuple=True)
        lengths = word_masking.sizes(units, cand)[rows, cols]
        width = int(lengths.max()) if len(rows) else 1
        offsets = torch.arange(width)
        inside = offsets < lengths[:, None]
        columns = (cols[:, None] + offsets).clamp(max=input_ids.shape[1] - 1)
        words = torch.where(inside, input_ids[rows[:, None], columns], -1)

        u = torch.rand(len(rows), generator=generator)
        want_similar = u < c.similar_prob
        want_random = (u >= c.similar_prob) & (u < c.similar_prob + c.random_prob)
        entry = self.table.lookup(words)
        similar = torch.where(want_similar, self.table.similar(entry, c.similar_top_k, generator), -1)
        hit = similar >= 0
        to_random = want_random | (want_similar & ~hit)  # no similar word: degrade to a random word
        random_entry = self.table.random_word(lengths, entry, generator)
        chosen = torch.where(hit, similar, random_entry)
        table_words = self.table.words[chosen.clamp(min=0)]
        new = torch.full_like(words, -1)
        common = min(width, table_words.shape[1])
        new[:, :common] = table_words[:, :common]
        no_word = to_random & (random_entry < 0)  # the corpus has no other word of that length
        new[no_word] = self._random_tokens(words[no_word], generator)
        changed = hit | to_random

        kind = torch.full_like(rows, int(Corruption.KEEP))
        kind[to_random] = Corruption.RANDOM
        kind[hit] = Corruption.SIMILAR
        corrupted = input_ids.clone()
        kinds = torch.full_like(input_ids, Corruption.NONE)
        write = inside & changed[:, None]
        corrupted[rows[:, None].expand_as(columns)[write], columns[write]] = new[write]
        kinds[rows[:, None].expand_as(columns)[inside], columns[inside]] = kind[:, None].expand_as(columns)[inside]
        wanted = torch.zeros_like(selected)
        wanted[rows[want_similar], cols[want_similar]] = True
        return corrupted, kinds, wanted

    def _random_tokens(self, words: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random non-special tokens in place of each word's (-1 padded) tokens, never the word itself."""
        out = words.clone()
        redo = torch.ones(len(words), dtype=torch.bool)
        while redo.any():
            draws = masking.random_tokens(int(redo.sum()) * words.shape[1], self.vocab, True, generator)
            out[redo] = torch.where(words[redo] >= 0, draws.view(-1, words.shape[1]), -1)
            redo = (out == words).all(dim=1)
        return out

    def corrupt(self, batch, generator):
        ids, word_start, inputs = batch["input_ids"], batch["word_start"], {}
        if self.config.sop:
            inputs = swap_segments(ids, word_start, batch["pair_bounds"], self.vocab.pad_id, generator)
            ids, word_start = inputs.pop("input_ids"), inputs.pop("word_start")
        selected, units, _, _ = self.select(ids, word_start, generator)
        corrupted, kinds, wanted = self.replace(ids, selected, units, generator)
        return {"input_ids": corrupted, "attention_mask": (ids != self.vocab.pad_id).long(),
                "labels": masking.labels_for(ids, selected), "corruption_type": kinds, "similar_wanted": wanted,
                **inputs}

    def build(self, model):
        return CorrectionLM(backbone.build_mlm_model(model, self.vocab, with_pair_head=self.config.sop), model,
                            self.config.sop_weight)

    def export(self, module, folder: Path):
        module.model.save_pretrained(folder)
        return [folder]
