"""`electra`: replaced-token detection (SPEC §4, arXiv:2003.10555). A small MLM generator fills masked
positions with samples from its softmax; a discriminator labels every token original or replaced. Both
networks live in one module, so one DeepSpeed engine clips and accumulates for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pretrain_bench.models import electra as networks
from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.models.heads import sparse_mlm
from pretrain_bench.objectives import masking, register
from pretrain_bench.objectives.base import Corruption, Objective, ObjectiveConfig
from pretrain_bench.objectives.masking import MaskingConfig


class ElectraMaskingConfig(MaskingConfig):
    """ELECTRA's masking (`pretrain_helpers.mask`): k = max(1, min(N, round(len * rate))) positions drawn
    with replacement, 85% [MASK] and 15% kept. BERT-style: selection without_replacement (Google's exact-k)
    or bernoulli, mask_prob 0.8, random_prob 0.1."""

    selection: Literal["with_replacement", "without_replacement", "bernoulli"] = Field(
        "with_replacement", description="with_replacement: ELECTRA's k draws, duplicates collapse; "
        "without_replacement: exactly k distinct positions (BERT's exact-k); bernoulli: i.i.d. per token")
    max_predictions: int | None = Field(
        None, ge=1, description="N, the cap on k per row (not used by bernoulli); default int((rate+0.005)*L) "
        "as ELECTRA's max_predictions_per_seq")
    mask_prob: float = Field(0.85, ge=0, le=1, description="selected -> [MASK] (ELECTRA 0.85, BERT 0.8)")
    random_prob: float = Field(0.0, ge=0, le=1, description="selected -> random token, the rest kept "
                               "(ELECTRA 0, BERT 0.1)")


class ElectraObjectiveConfig(ObjectiveConfig):
    name: str = "electra"
    masking: ElectraMaskingConfig = Field(default_factory=ElectraMaskingConfig)
    generator_width: float | None = Field(
        None, gt=0, le=1, description="generator hidden size as a share of the discriminator's; "
        "default 1/3 for model.size base, 1/4 otherwise (ELECTRA Table 6)")
    generator_depth: float = Field(1.0, gt=0, le=1, description="generator layers as a share of the "
                                   "discriminator's (ELECTRA 1.0; DeBERTa-v3 base 0.5)")
    embedding_size: int | None = Field(None, ge=8, description="width of the token/position tables "
                                       "(ELECTRA-Small 128); default the discriminator's hidden size")
    embedding_sharing: Literal["es", "nes", "gdes"] = Field(
        "es", description="es: one shared embeddings module; nes: none; gdes: DeBERTa-v3's "
        "gradient-disentangled sharing")
    temperature: float = Field(1.0, gt=0, description="generator sampling temperature T in softmax(logits/T)")
    disallow_correct: bool = Field(False, description="never sample the original token (ELECTRA option)")
    disc_weight: float = Field(50.0, ge=0, description="lambda in loss = generator MLM + lambda * discriminator BCE")


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample per row from softmax(logits / T), in fp32 without gradient: the first entry whose
    cumulative probability exceeds one uniform draw per row (so an entry of probability 0 is never drawn).
    The distribution of ELECTRA's Gumbel-max sampling with one draw per row instead of one per logit:
    torch draws CPU random numbers one at a time, and the Gumbel noise over 1,229 selected positions x
    32,768 logits took a tenth of a benchmark step, five times this sampler's time."""
    with torch.no_grad():
        scaled = logits.detach().float() / temperature
        cumulative = scaled.sub_(scaled.amax(-1, keepdim=True)).exp_().cumsum_(-1)  # accumulated in fp64 on CPUs
        draw = torch.rand(len(cumulative), 1, generator=generator, device=cumulative.device) * cumulative[:, -1:]
        # the clamp: a draw that rounds up to the total mass
        return torch.searchsorted(cumulative, draw, right=True).squeeze(1).clamp_(max=cumulative.shape[1] - 1)


def draw_with_replacement(cand: torch.Tensor, counts: torch.Tensor, max_draws: int,
                          generator: torch.Generator) -> torch.Tensor:
    """bool[B, L]: `counts[b]` positions drawn uniformly from row b's candidates with replacement
    (ELECTRA's `tf.random.categorical`); a position drawn twice is selected once."""
    has_any = cand.any(1, keepdim=True)
    weights = (cand | ~has_any).float()  # a row without candidates draws nothing but needs valid weights
    draws = torch.multinomial(weights, max_draws, replacement=True, generator=generator)
    used = torch.arange(max_draws) < (counts[:, None] * has_any)
    hits = torch.zeros(cand.shape, dtype=torch.long).scatter_add_(1, draws, used.long())
    return hits > 0


def binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC AUC as the Mann-Whitney U statistic, tied scores at their mean rank; NaN (0/0) when only one
    class is present. No branch on values, so no device sync."""
    scores, labels = scores.double(), labels.double()
    ordered = scores.sort().values
    rank = (torch.searchsorted(ordered, scores) + torch.searchsorted(ordered, scores, right=True) + 1) / 2
    positives = labels.sum()
    negatives = labels.numel() - positives
    return ((rank * labels).sum() - positives * (positives + 1) / 2) / (positives * negatives)


class ReplacedTokenDetection(nn.Module):
    """Generator MLM on the masked positions, samples from its softmax put into the original sequence, and
    the discriminator's BCE over every non-pad token; loss = gen_loss + disc_weight * disc_loss."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, family: networks.Family,
                 cfg: ElectraObjectiveConfig):
        super().__init__()
        self.generator, self.discriminator, self.family = generator, discriminator, family
        self.temperature, self.disc_weight = cfg.temperature, cfg.disc_weight
        self.disallow_correct = cfg.disallow_correct
        self.kinds = (Corruption.MASK, Corruption.KEEP) + ((Corruption.RANDOM,) if cfg.masking.random_prob else ())

    def generate(self, input_ids, attention_mask, labels, corruption_type):
        """(MLM loss, its metrics and side outputs, fp32 logits at the masked positions)."""
        encoder = self.family.encoder(self.generator)
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = []

        def predict(h):  # keeps the sparse logits: they are also the sampling distribution
            logits.append(self.family.predict(self.generator, h).float())
            return logits[0]

        loss, metrics = sparse_mlm(predict, hidden, labels, corruption_type, prefix="gen", kinds_reported=self.kinds)
        return loss, metrics, logits[0]

    def discriminate(self, input_ids, attention_mask, replaced):
        """(BCE in fp32 over non-pad tokens, logits[B, L])."""
        logits = networks.detection_logits(self.discriminator, input_ids, attention_mask)
        active = attention_mask.bool()
        return F.binary_cross_entropy_with_logits(logits[active].float(), replaced[active].float()), logits

    def forward(self, input_ids, attention_mask, labels, corruption_type):
        gen_loss, metrics, logits = self.generate(input_ids, attention_mask, labels, corruption_type)
        selected, targets = metrics["_selected"], metrics["_targets"]
        if self.disallow_correct:
            logits = logits.detach().clone()
            logits[torch.arange(len(targets)), targets] -= 1000.0  # as ELECTRA: never the original
        sampled = sample_tokens(logits, self.temperature)
        original = torch.where(selected, labels, input_ids)
        fake = original.masked_scatter(selected, sampled)
        replaced = (fake != original).long()  # a correctly sampled token counts as original
        disc_loss, disc_logits = self.discriminate(fake, attention_mask, replaced)
        loss = gen_loss + self.disc_weight * disc_loss
        return {"loss": loss, **metrics, **detection_metrics(disc_loss, disc_logits, replaced, attention_mask),
                "gen_sampled_acc": (sampled == targets).float().mean(), "_sampled": sampled,
                "_disc_logits": disc_logits.detach(), "_disc_labels": replaced, "_disc_input_ids": fake}


def detection_metrics(loss, logits, replaced, attention_mask) -> dict[str, torch.Tensor]:
    """ELECTRA's `metric_fn` over non-pad tokens (precision/recall NaN when undefined), and the share
    of non-pad tokens that were replaced: recall above it beats guessing at that rate."""
    with torch.no_grad():
        active = attention_mask.bool()
        scores, truth = logits[active].float(), replaced[active].bool()
        predicted = scores > 0
        hits = (predicted & truth).sum().float()
        return {"disc_loss": loss.detach(), "disc_acc": (predicted == truth).float().mean(),
                "disc_precision": hits / predicted.sum(), "disc_recall": hits / truth.sum(),
                "disc_auc": binary_auc(scores, truth).float(), "replaced_fraction": truth.float().mean()}


@register("electra")
class Electra(Objective):
    """ELECTRA: generator MLM + lambda x discriminator replaced-token detection, trained jointly."""

    Config = ElectraObjectiveConfig
    summary = "ELECTRA replaced-token detection: a small MLM generator corrupts, a discriminator spots replacements"

    @classmethod
    def generator_width(cls, config: ElectraObjectiveConfig, model: ModelConfig) -> float:
        return config.generator_width or (1 / 3 if model.size == "base" else 1 / 4)

    @classmethod
    def check(cls, config, model):
        issues = []
        _, hidden, heads, _ = networks.generator_dims(model, cls.generator_width(config, model), config.generator_depth)
        width = model.dims()[1]
        if model.arch == "crammed":  # ModernBERT's embeddings have no projection to another width
            if config.embedding_size not in (None, width):
                issues.append(f"objective.embedding_size {config.embedding_size}: model.arch crammed has no "
                              f"embedding projection; leave it unset (the width, {width})")
            if config.embedding_sharing != "nes" and hidden != width:
                issues.append(f"objective.embedding_sharing '{config.embedding_sharing}' on model.arch crammed shares "
                              f"tables of width {width}, so the generator must be as wide (objective.generator_width "
                              f"gives a generator of width {hidden}); set objective.generator_width: 1.0 and make the "
                              "generator smaller with objective.generator_depth (DeBERTa-v3: 0.5), or "
                              "objective.embedding_sharing: nes")
        if hidden % heads:
            issues.append(f"objective.generator_width gives a generator of width {hidden}, not divisible by its "
                          f"{heads} heads of ~64; choose a width share that makes it a multiple of {heads}")
        return issues

    def corrupt(self, batch, generator):
        ids = batch["input_ids"]
        m = self.config.masking
        cand = masking.candidates(ids, self.vocab)
        if m.selection == "bernoulli":
            selected = masking.select_tokens(cand, None, m.rate, generator)
        else:
            cap = m.max_predictions or max(1, int((m.rate + 0.005) * ids.shape[1]))
            counts = masking.exact_k_counts(ids, self.vocab, m.rate, cap)
            selected = (draw_with_replacement(cand, counts, cap, generator) if m.selection == "with_replacement"
                        else masking.select_tokens(cand, counts, m.rate, generator))
        corrupted, kinds = masking.replace(ids, selected, self.vocab, m, generator)
        return {"input_ids": corrupted, "attention_mask": (ids != self.vocab.pad_id).long(),
                "labels": masking.labels_for(ids, selected), "corruption_type": kinds}

    def build(self, model):
        c = self.config
        generator, discriminator = networks.build_pair(
            model, self.vocab, width=self.generator_width(c, model), depth=c.generator_depth,
            embedding_size=c.embedding_size or model.dims()[1], sharing=c.embedding_sharing)
        return ReplacedTokenDetection(generator, discriminator, networks.FAMILIES[model.arch], c)

    def export(self, module, folder: Path):
        """The discriminator as `folder` itself (fine-tune it), the generator in `folder/generator`."""
        networks.save_discriminator(module.discriminator, module.family, folder)
        module.generator.save_pretrained(folder / "generator")
        return [folder, folder / "generator"]
