"""Encoders from config, always as transformers classes so every checkpoint loads with `AutoModel*`.

Two architectures:
- `bert`: `BertForMaskedLM` (post-LayerNorm, GELU, biases, learned positions): the BERT baseline.
- `crammed`: the cramming paper's changes mapped onto `ModernBertForMaskedLM`: pre-LayerNorm, gated-GELU
  feed-forward of BERT's parameter count, linear layers without biases (switchable), tied decoder; dropout
  is set by the config (the recipes use 0). ModernBERT is the transformers class that has all of these as
  config switches, so the export needs no code of ours. What differs from cramming's own model (rotary
  positions, a head transform, ...) is listed in docs/budget.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from pydantic import Field
from torch import nn
from transformers import (BertConfig, BertForMaskedLM, BertForPreTraining, ModernBertConfig,
                          ModernBertForMaskedLM, PretrainedConfig, PreTrainedModel)

from pretrain_bench.objectives.base import Vocab
from pretrain_bench.section import Section

# (layers, hidden, heads, ffn); small..large follow Turc et al. 2019 / BERT.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 64, 2, 256),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


class ModelConfig(Section):
    """The encoder: a named size, optionally overridden dimension by dimension."""

    size: Literal["tiny", "mini", "small", "medium", "base", "large"] = Field(
        "tiny", description="named size; tiny is for tests, base is BERT-base")
    arch: Literal["bert", "crammed"] = Field("bert", description="bert: post-LN BERT; crammed: ModernBERT layout")
    num_layers: int | None = Field(None, ge=1, description="overrides the size's depth")
    hidden_size: int | None = Field(None, ge=8, description="overrides the size's width")
    num_heads: int | None = Field(None, ge=1, description="overrides the size's attention heads")
    intermediate_size: int | None = Field(None, ge=8, description="overrides the size's feed-forward width "
                                          "(crammed: split into the GLU's value and gate halves, as cramming)")
    hidden_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on hidden states (cramming's recipe: 0)")
    attention_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on attention probabilities")
    max_position_embeddings: int = Field(512, ge=8, description="longest sequence the model accepts")
    linear_bias: bool = Field(True, description="biases in linear layers, decoder included (crammed only; bert "
                              "always has them)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="attention kernel; flash_attention_2 needs a GPU, bf16 and the flash-attn package")
    compile: bool = Field(False, description="torch.compile the encoder (speed only, same numbers)")

    def dims(self) -> tuple[int, int, int, int]:
        """(layers, hidden, heads, ffn) after overrides."""
        layers, hidden, heads, ffn = SIZES[self.size]
        hidden = self.hidden_size or hidden
        return (self.num_layers or layers, hidden, self.num_heads or heads,
                self.intermediate_size or (ffn if self.hidden_size is None else 4 * hidden))

    def problems(self) -> list[str]:
        layers, hidden, heads, ffn = self.dims()
        issues = []
        if hidden % heads:
            issues.append(f"model.hidden_size {hidden} is not divisible by model.num_heads {heads}; "
                          "choose a head count that divides the width")
        if self.arch == "crammed" and ffn % 2:
            issues.append(f"model.intermediate_size {ffn} is odd; the crammed GLU splits it in two halves, "
                          "give an even width")
        return issues


@dataclass(frozen=True)
class Architecture:
    """How to build one transformers family and reach its encoder and MLM head."""

    make_config: Callable[[ModelConfig, Vocab], PretrainedConfig]
    mlm_class: type[PreTrainedModel]
    pretraining_class: type[PreTrainedModel] | None  # MLM + sentence-pair head, when the family has one
    encoder_attr: str
    predict: Callable[[PreTrainedModel, torch.Tensor], torch.Tensor]  # hidden[N, H] -> logits[N, V]


def _bert_config(cfg: ModelConfig, vocab: Vocab) -> BertConfig:
    layers, hidden, heads, ffn = cfg.dims()
    return BertConfig(vocab_size=vocab.size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=ffn,
                      hidden_dropout_prob=cfg.hidden_dropout, attention_probs_dropout_prob=cfg.attention_dropout,
                      max_position_embeddings=cfg.max_position_embeddings, pad_token_id=vocab.pad_id,
                      type_vocab_size=2)


def _crammed_config(cfg: ModelConfig, vocab: Vocab) -> ModernBertConfig:
    layers, hidden, heads, ffn = cfg.dims()
    # ModernBERT's Wi projects to 2 x intermediate_size (value and gate): half of BERT's width keeps BERT's
    # parameter count, as cramming's GELU-GLU does. LayerNorms keep their biases, as in cramming.
    return ModernBertConfig(
        vocab_size=vocab.size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn // 2, hidden_activation="gelu", max_position_embeddings=cfg.max_position_embeddings,
        layer_types=["full_attention"] * layers, attention_dropout=cfg.attention_dropout,
        mlp_dropout=cfg.hidden_dropout, embedding_dropout=cfg.hidden_dropout,
        attention_bias=cfg.linear_bias, mlp_bias=cfg.linear_bias, norm_bias=True,
        classifier_bias=cfg.linear_bias, decoder_bias=cfg.linear_bias, pad_token_id=vocab.pad_id,
        cls_token_id=vocab.cls_id, sep_token_id=vocab.sep_id, bos_token_id=vocab.cls_id,
        eos_token_id=vocab.sep_id, tie_word_embeddings=True)


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(_bert_config, BertForMaskedLM, BertForPreTraining, "bert",
                         lambda model, hidden: model.cls.predictions(hidden)),
    "crammed": Architecture(_crammed_config, ModernBertForMaskedLM, None, "model",
                            lambda model, hidden: model.decoder(model.head(hidden))),
}


def build_mlm_model(cfg: ModelConfig, vocab: Vocab, with_pair_head: bool = False) -> PreTrainedModel:
    """A freshly initialised MLM model (optionally with the sentence-pair head) of the configured shape."""
    arch = ARCHITECTURES[cfg.arch]
    cls = arch.pretraining_class if with_pair_head else arch.mlm_class
    config = arch.make_config(cfg, vocab)
    config._attn_implementation = cfg.attn_implementation
    model = cls(config)
    if cfg.compile:
        encoder(model, cfg).compile()  # in place: parameter names keep no '_orig_mod.' prefix
    return model


def encoder(model: PreTrainedModel, cfg: ModelConfig) -> nn.Module:
    return getattr(model, ARCHITECTURES[cfg.arch].encoder_attr)


def predict(model: PreTrainedModel, cfg: ModelConfig, hidden: torch.Tensor) -> torch.Tensor:
    """MLM logits for the given hidden states only (sparse prediction)."""
    return ARCHITECTURES[cfg.arch].predict(model, hidden)
