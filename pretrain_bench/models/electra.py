"""ELECTRA's two networks as transformers classes, a generator (MLM) and a discriminator (one logit
per token), in one of two families:

- `bert` (ELECTRA's own): `ElectraForMaskedLM` and `ElectraForPreTraining`, post-LayerNorm.
- `crammed`: the crammed encoder of `model.arch: crammed` (ModernBERT's layout) for both networks,
  `ModernBertForMaskedLM` and `ModernBertForTokenClassification` with one label. ModernBERT has no
  embedding projection, so shared tables need a generator as wide as the discriminator: it is made
  smaller by depth (DeBERTa-v3's generator is half the depth at full width).

Their embeddings are shared in one of three ways:
- `es`: one embeddings module used by both, the generator's output layer tied to the word table (ELECTRA).
- `nes`: nothing shared.
- `gdes`: DeBERTa-v3's gradient-disentangled sharing, E_D = sg(E_G) + E_delta for the token (and, in
  `bert`, position) tables, E_delta starting at zero; only the generator's MLM loss moves E_G.

Both export with `save_pretrained` and load with `AutoModelFor*` without this package.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import (ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining, ModernBertForTokenClassification,
                          PretrainedConfig, PreTrainedModel)

from pretrain_bench.models import backbone
from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.objectives.base import Vocab

Dims = tuple[int, int, int, int]  # (layers, hidden, heads, ffn)
CRAMMED = backbone.ARCHITECTURES["crammed"]  # the crammed encoder, whose layout both networks take


def generator_dims(model: ModelConfig, width: float, depth: float) -> Dims:
    """(layers, hidden, heads, ffn) of the generator, as ELECTRA's `get_generator_config`:
    a share of the discriminator's width and depth, heads of 64 dimensions, ffn = 4 x hidden."""
    layers, hidden, _, _ = model.dims()
    gen_hidden = max(1, int(round(hidden * width)))
    return max(1, int(round(layers * depth))), gen_hidden, max(1, gen_hidden // 64), 4 * gen_hidden


def _electra_config(model: ModelConfig, vocab: Vocab, dims: Dims, embedding_size: int) -> ElectraConfig:
    layers, hidden, heads, ffn = dims
    return ElectraConfig(
        vocab_size=vocab.size, embedding_size=embedding_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, hidden_act="gelu",
        hidden_dropout_prob=model.hidden_dropout, attention_probs_dropout_prob=model.attention_dropout,
        max_position_embeddings=model.max_position_embeddings, type_vocab_size=2, pad_token_id=vocab.pad_id)


def _crammed_config(model: ModelConfig, vocab: Vocab, dims: Dims, embedding_size: int) -> PretrainedConfig:
    """`embedding_size` is unused: ModernBERT's tables have the encoder's width (check() refuses another)."""
    layers, hidden, heads, ffn = dims
    shaped = model.model_copy(update={"num_layers": layers, "hidden_size": hidden, "num_heads": heads,
                                      "intermediate_size": ffn})
    return CRAMMED.make_config(shaped, vocab)


def _crammed_discriminator(config: PretrainedConfig) -> PreTrainedModel:
    """A token classifier with one label: the replaced/original logit."""
    config.num_labels = 1
    return ModernBertForTokenClassification(config)


def _crammed_exported(discriminator: PreTrainedModel) -> PreTrainedModel:
    """The crammed discriminator's encoder (`ModernBertModel`). ModernBERT has no replaced-token-detection
    class, and its token classifier's last layer is named `classifier`, as the fine-tuning head is, which
    would then start from the detection weights. The config drops the detection head's single label, so a
    plain `AutoModelForSequenceClassification` load gets transformers' default (2), not a regression head."""
    encoder = copy.copy(discriminator.model)  # the same modules and weights, under a config of its own
    encoder.config = copy.deepcopy(discriminator.model.config)
    encoder.config.num_labels = PretrainedConfig().num_labels
    return encoder


@dataclass(frozen=True)
class Family:
    """One transformers family's ELECTRA networks and how to reach their parts."""

    make_config: Callable[[ModelConfig, Vocab, Dims, int], PretrainedConfig]
    generator_class: type[PreTrainedModel]
    make_discriminator: Callable[[PretrainedConfig], PreTrainedModel]
    encoder_attr: str                  # the encoder inside either network
    gdes_tables: tuple[str, ...]       # the tables GDES shares, as DeBERTa-v3's rtd_task.py
    predict: Callable[[PreTrainedModel, torch.Tensor], torch.Tensor]  # generator, hidden[N, H] -> logits[N, V]
    exported: Callable[[PreTrainedModel], PreTrainedModel]  # discriminator -> the model its export saves

    def encoder(self, network: PreTrainedModel) -> nn.Module:
        return getattr(network, self.encoder_attr)

    def embeddings(self, network: PreTrainedModel) -> nn.Module:
        return self.encoder(network).embeddings


FAMILIES: dict[str, Family] = {
    "bert": Family(_electra_config, ElectraForMaskedLM, ElectraForPreTraining, "electra",
                   ("word_embeddings", "position_embeddings"),
                   lambda generator, hidden: generator.generator_lm_head(generator.generator_predictions(hidden)),
                   lambda discriminator: discriminator),
    "crammed": Family(_crammed_config, CRAMMED.mlm_class, _crammed_discriminator, CRAMMED.encoder_attr,
                      ("tok_embeddings",), CRAMMED.predict, _crammed_exported),
}


def build_pair(model: ModelConfig, vocab: Vocab, *, width: float, depth: float, embedding_size: int,
               sharing: str) -> tuple[PreTrainedModel, PreTrainedModel]:
    """A freshly initialised (generator, discriminator) of `model.arch`'s family, their embeddings
    shared per `sharing`."""
    family = FAMILIES[model.arch]

    def config(dims: Dims) -> PretrainedConfig:
        made = family.make_config(model, vocab, dims, embedding_size)
        made._attn_implementation = model.attn_implementation
        return made

    discriminator = family.make_discriminator(config(model.dims()))  # first: the seed's draws as before
    generator = family.generator_class(config(generator_dims(model, width, depth)))
    if sharing == "es":
        family.encoder(generator).embeddings = family.embeddings(discriminator)
        # transformers v5 leaves the output layer on the replaced table until it is re-tied
        generator.tie_weights()
    elif sharing == "gdes":
        for name in family.gdes_tables:
            table = getattr(family.embeddings(discriminator), name)
            parametrize.register_parametrization(
                table, "weight", DetachedPlusDelta(getattr(family.embeddings(generator), name).weight))
            with torch.no_grad():
                table.parametrizations.weight.original.zero_()
    if model.compile:
        for network in (generator, discriminator):
            family.encoder(network).compile()  # in place: parameter names keep no '_orig_mod.' prefix
    return generator, discriminator


def detection_logits(discriminator: PreTrainedModel, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    """logits[B, L] of 'replaced' (ElectraForPreTraining gives [B, L], a one-label token classifier [B, L, 1])."""
    return discriminator(input_ids=input_ids, attention_mask=attention_mask).logits.reshape(input_ids.shape)


class DetachedPlusDelta(nn.Module):
    """GDES parametrization of a discriminator table: weight = sg(generator's table) + delta, where delta
    is the parameter the discriminator owns and trains."""

    def __init__(self, source: nn.Parameter):
        super().__init__()
        self.source = (source,)  # a tuple, so the generator's table is not registered here a second time

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        source = self.source[0]
        if _partitioned(source):  # ZeRO-3 holds the generator's table in pieces outside its own forward
            import deepspeed

            with deepspeed.zero.GatheredParameters([source]):
                return source.detach().clone() + delta
        return source.detach() + delta


def _partitioned(param: torch.Tensor) -> bool:
    if not hasattr(param, "ds_status"):
        return False
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return param.ds_status == ZeroParamStatus.NOT_AVAILABLE


def plain_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights as a plain transformers model holds them: under GDES each parametrized
    table is stored as its value E_G + E_delta (what DeBERTa-v3 exports)."""
    state = {}
    for name, value in network.state_dict().items():
        if ".parametrizations.weight.original" in name:
            module_name = name.replace(".parametrizations.weight.original", "")
            state[f"{module_name}.weight"] = network.get_submodule(module_name).weight.detach()
        else:
            state[name] = value
    return state


def save_discriminator(discriminator: PreTrainedModel, family: Family, folder: Path) -> None:
    """`ElectraForPreTraining` whole; the crammed discriminator as its encoder (see `_crammed_exported`)."""
    network = family.exported(discriminator)
    network.save_pretrained(folder, state_dict=plain_state_dict(network))
