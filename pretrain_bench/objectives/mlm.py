"""`mlm`: BERT's masked language modelling (SPEC §1), with sparse prediction and fp32 cross-entropy."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from pretrain_bench.models import backbone
from pretrain_bench.models.heads import sparse_mlm
from pretrain_bench.objectives import masking, register
from pretrain_bench.objectives.masking import MaskingConfig
from pretrain_bench.objectives.base import Objective, ObjectiveConfig


class MaskedLM(nn.Module):
    """A transformers MLM model trained on selected positions only; `model` is what gets exported."""

    def __init__(self, model: nn.Module, model_cfg: backbone.ModelConfig):
        super().__init__()
        self.model = model
        self.model_cfg = model_cfg

    def forward(self, input_ids, attention_mask, labels, corruption_type):
        hidden = backbone.encoder(self.model, self.model_cfg)(
            input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        loss, metrics = sparse_mlm(lambda h: backbone.predict(self.model, self.model_cfg, h),
                                   hidden, labels, corruption_type)
        return {"loss": loss, **metrics}


class MLMConfig(ObjectiveConfig):
    name: str = "mlm"
    masking: MaskingConfig = Field(default_factory=MaskingConfig)


@register("mlm")
class MLM(Objective):
    """Masked language modelling: select tokens (exact-k or Bernoulli), 80/10/10, predict the originals."""

    Config = MLMConfig
    summary = "BERT masked language modelling: 15% of tokens, 80/10/10 [MASK]/random/keep, sparse prediction"

    def select(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """bool[B, L]: the positions to predict."""
        m = self.config.masking
        ids = batch["input_ids"]
        counts = None
        if m.selection == "exact_k":
            cap = m.max_predictions or masking.default_max_predictions(ids.shape[1], m.rate)
            counts = masking.exact_k_counts(ids, self.vocab, m.rate, cap)
        return masking.select_tokens(masking.candidates(ids, self.vocab), counts, m.rate, generator)

    def replace(self, batch: dict[str, torch.Tensor], selected: torch.Tensor, generator: torch.Generator):
        """(corrupted ids, corruption type per position): BERT's 80/10/10, drawn per token."""
        return masking.replace(batch["input_ids"], selected, self.vocab, self.config.masking, generator)

    def corrupt(self, batch, generator):
        ids = batch["input_ids"]
        selected = self.select(batch, generator)
        corrupted, kinds = self.replace(batch, selected, generator)
        return {"input_ids": corrupted, "attention_mask": (ids != self.vocab.pad_id).long(),
                "labels": masking.labels_for(ids, selected), "corruption_type": kinds}

    def build(self, model):
        return MaskedLM(backbone.build_mlm_model(model, self.vocab), model)

    def export(self, module, folder: Path):
        module.model.save_pretrained(folder)
        return [folder]
