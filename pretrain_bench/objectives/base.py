"""The Objective interface: the only thing the loop, the loader and the export know about an objective."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping

import torch
from torch import nn

from pretrain_bench.section import Section

if TYPE_CHECKING:
    from pretrain_bench.models.backbone import ModelConfig


class Corruption(IntEnum):
    """What happened to each position (`corruption_type`); tests assert on it, never on token equality."""

    NONE = 0
    MASK = 1
    RANDOM = 2
    KEEP = 3
    SIMILAR = 4


class ObjectiveConfig(Section):
    """Settings shared by every objective; each objective subclasses it with its own fields."""

    name: str


@dataclass(frozen=True)
class Vocab:
    """What corruption needs to know about the tokenizer."""

    size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    unk_id: int
    special_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "Vocab":
        return cls(size=len(tokenizer), pad_id=tokenizer.pad_token_id, cls_id=tokenizer.cls_token_id,
                   sep_id=tokenizer.sep_token_id, mask_id=tokenizer.mask_token_id,
                   unk_id=tokenizer.unk_token_id, special_ids=tuple(sorted(tokenizer.all_special_ids)))


class Objective:
    """One pre-training objective. Subclass it, give it a `Config`, and register it by name
    (`@register("name")`) or name it in a config as `objective.name: "mypkg.mymod:MyObjective"`.

    Lifecycle: the config is validated against `Config`; data_prep builds what `artifacts()` asks for;
    the objective is constructed with the vocabulary and those artifacts; `corrupt` runs in DataLoader
    workers; `build` makes the module the DeepSpeed engine trains; `export` writes the checkpoints a
    user fine-tunes.
    """

    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: ObjectiveConfig, vocab: Vocab, artifacts: Mapping[str, Path]):
        self.config = config
        self.vocab = vocab
        self.artifacts = dict(artifacts)

    @classmethod
    def artifacts_needed(cls, config: ObjectiveConfig) -> dict[str, Section]:
        """Extra data_prep products by name (e.g. 'neighbours', 'cooccurrence') with their settings."""
        return {}

    @classmethod
    def check(cls, config: ObjectiveConfig, model: "ModelConfig") -> list[str]:
        """Problems with this objective/model combination, each naming the field and the fix."""
        return []

    @classmethod
    def packing(cls, config: ObjectiveConfig) -> str:
        """How data_prep lays out rows: 'concat' (documents joined by [SEP], no padding) or another
        packer registered in data_prep.pack (e.g. 'segment_pairs' for sentence-order prediction)."""
        return "concat"

    def corrupt(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Raw packed rows (`input_ids`, `word_start`, ...) to the module's keyword inputs. CPU, vectorised."""
        raise NotImplementedError

    def build(self, model: "ModelConfig") -> nn.Module:
        """The trainable module; `forward(**inputs)` returns {'loss': Tensor, **scalar metrics}. Keys that
        start with '_' are side outputs for wrapping objectives (e.g. MPA reads '_mlm_predictions'),
        never logged."""
        raise NotImplementedError

    def export(self, module: nn.Module, folder: Path) -> list[Path]:
        """Write transformers checkpoints (weights + config) under `folder`; return the model folders."""
        raise NotImplementedError
