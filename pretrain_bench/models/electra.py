"""ELECTRA's two networks as transformers classes: a discriminator (`ElectraForPreTraining`) and a
smaller generator (`ElectraForMaskedLM`), with their embeddings shared in one of three ways:

- `es`: one embeddings module (word, position and type tables and their LayerNorm) used by both, the
  generator's output layer tied to the word table (ELECTRA).
- `nes`: nothing shared.
- `gdes`: DeBERTa-v3's gradient-disentangled sharing, E_D = sg(E_G) + E_delta for the word and position
  tables, E_delta starting at zero; only the generator's MLM loss moves E_G.

Both export with `save_pretrained` and load with `AutoModelFor*` without this package.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.objectives.base import Vocab

GDES_TABLES = ("word_embeddings", "position_embeddings")  # as DeBERTa-v3's rtd_task.py


def generator_dims(model: ModelConfig, width: float, depth: float) -> tuple[int, int, int, int]:
    """(layers, hidden, heads, ffn) of the generator, as ELECTRA's `get_generator_config`:
    a share of the discriminator's width and depth, heads of 64 dimensions, ffn = 4 x hidden."""
    layers, hidden, _, _ = model.dims()
    gen_hidden = max(1, int(round(hidden * width)))
    return max(1, int(round(layers * depth))), gen_hidden, max(1, gen_hidden // 64), 4 * gen_hidden


def electra_config(model: ModelConfig, vocab: Vocab, dims: tuple[int, int, int, int],
                   embedding_size: int) -> ElectraConfig:
    layers, hidden, heads, ffn = dims
    config = ElectraConfig(
        vocab_size=vocab.size, embedding_size=embedding_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, hidden_act="gelu",
        hidden_dropout_prob=model.hidden_dropout, attention_probs_dropout_prob=model.attention_dropout,
        max_position_embeddings=model.max_position_embeddings, type_vocab_size=2, pad_token_id=vocab.pad_id)
    config._attn_implementation = model.attn_implementation
    return config


def build_pair(model: ModelConfig, vocab: Vocab, *, width: float, depth: float, embedding_size: int,
               sharing: str) -> tuple[ElectraForMaskedLM, ElectraForPreTraining]:
    """A freshly initialised (generator, discriminator) with their embeddings shared per `sharing`."""
    discriminator = ElectraForPreTraining(electra_config(model, vocab, model.dims(), embedding_size))
    generator = ElectraForMaskedLM(electra_config(model, vocab, generator_dims(model, width, depth), embedding_size))
    if sharing == "es":
        generator.electra.embeddings = discriminator.electra.embeddings
        # transformers v5 leaves the output layer on the replaced table until it is re-tied
        generator.tie_weights()
    elif sharing == "gdes":
        for name in GDES_TABLES:
            table = getattr(discriminator.electra.embeddings, name)
            parametrize.register_parametrization(
                table, "weight", DetachedPlusDelta(getattr(generator.electra.embeddings, name).weight))
            with torch.no_grad():
                table.parametrizations.weight.original.zero_()
    if model.compile:
        for network in (generator, discriminator):
            network.electra.compile()  # in place: parameter names keep no '_orig_mod.' prefix
    return generator, discriminator


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


def plain_state_dict(discriminator: ElectraForPreTraining) -> dict[str, torch.Tensor]:
    """The discriminator's weights as a plain `ElectraForPreTraining` holds them: under GDES each
    parametrized table is stored as its value E_G + E_delta (what DeBERTa-v3 exports)."""
    state = {}
    for name, value in discriminator.state_dict().items():
        if ".parametrizations.weight.original" in name:
            module_name = name.replace(".parametrizations.weight.original", "")
            state[f"{module_name}.weight"] = discriminator.get_submodule(module_name).weight.detach()
        else:
            state[name] = value
    return state
