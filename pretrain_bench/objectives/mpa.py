"""`mpa`: mis-predictions as harm alerts (Xing, Liu, Xiong, arXiv:2012.08789), wrapped around a base
objective (`mlm` by default). The paper's method sections are not available: this is our
reconstruction from its abstract (SPEC §5, docs/objectives/mpa.md), with every choice configurable.

When the base mis-predicts a selected position t (argmax ŷ_t ≠ target), the guided heads are
penalised for the attention the query at t gives to key tokens that co-occur with ŷ_t:
    L_mpa = mean over triggers t and guided heads h of  sum_j a^h_tj * s(ŷ_t, x_j),
with s the normalized PPMI from the `cooccurrence` artifact (0 for j = t, special tokens and
non-partners) and a^h the pre-dropout attention row, by default renormalized over the word keys
(`keys: words`; `keys: all` keeps the whole row, as SPEC §5 writes it). Total loss = base loss +
weight * L_mpa. Triggers and scores carry no gradient; it reaches only the guided heads' queries/keys.

Over ELECTRA the guided heads are the discriminator's (the network that is kept) and the keys are the
tokens it sees; triggers are the generator's mis-predictions (ŷ_t as above) or, with
`trigger: discriminator`, its wrong replaced/original decisions, the harm word then being the token it
misjudged (docs/objectives/mpa.md, "MPA over ELECTRA").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, SerializeAsAny, ValidationError, model_serializer, model_validator
from pydantic_core import PydanticCustomError
from torch import nn

from data_prep.cooccur import CooccurrenceConfig, load_table
from pretrain_bench import objectives
from pretrain_bench.errors import UserError
from pretrain_bench.models.guided_attention import GuidedHeads, log_rows
from pretrain_bench.objectives.base import Objective, ObjectiveConfig
from pretrain_bench.section import Section, known_keys

# The base module's side outputs each trigger source reads.
TRIGGER_OUTPUTS = {"generator": ("_selected", "_predicted", "_targets"),
                   "discriminator": ("_disc_logits", "_disc_labels"),
                   "discriminator_missed": ("_disc_logits", "_disc_labels")}
PER_HEAD = ("harm_guided", "nonword_guided", "harm_unguided", "nonword_unguided")  # metrics averaged over heads


class MPASettings(Section):
    """MPA's own settings (`objective.mpa`); the wrapped objective keeps its keys in `objective`."""

    weight: float = Field(0.1, ge=0, description="lambda: total loss = base loss + weight * L_mpa "
                          "(0 trains the base objective alone and still logs the harm metrics)")
    guided_heads: list[tuple[int, int]] | None = Field(
        None, description="[layer, head] pairs whose attention is guided; null: heads 0 and 1 of each layer in "
        "the upper half (head 0 only when a layer has 2 heads, so one unguided head stays as the control; a "
        "1-head model has no control head)")
    keys: Literal["words", "all"] = Field(
        "words", description="words: the guided row renormalized over word keys (not special, not the query), "
        "so attention parked on [CLS]/[SEP]/[MASK] is no escape; all: the whole row, as SPEC §5 writes it")
    target: Literal["mass", "kl"] = Field(
        "mass", description="mass: minimise the attention mass on co-occurring keys; kl: KL(q || a) towards "
        "q proportional to a.detach() * exp(-kl_beta * score)")
    kl_beta: float = Field(1.0, gt=0, description="how strongly the kl target moves mass off a key of score 1")
    trigger: Literal["generator", "discriminator", "discriminator_missed"] = Field(
        "generator", description="which mistakes raise an alert. generator: selected positions whose MLM argmax "
        "is wrong (the MLM family's model, ELECTRA's generator), the harm word being that argmax; "
        "discriminator (ELECTRA): every token the discriminator judges wrongly, the harm word being that "
        "token; discriminator_missed: only replaced tokens judged original")
    cooccurrence: CooccurrenceConfig = Field(default_factory=CooccurrenceConfig)


def _base_class(name: str) -> type[Objective]:
    """The wrapped objective's class, or a ValueError worded for `objective.base`."""
    if name == "mpa":
        raise ValueError("mpa cannot wrap itself; name the objective it guides, e.g. mlm")
    try:
        return objectives.get(name)
    except UserError as e:  # the registry words it for objective.name; keep only the reason
        raise ValueError(str(e).split(": ", 1)[-1]) from None


class MPAConfig(ObjectiveConfig):
    """`objective.name: mpa`, `objective.base: <objective>`, that objective's own keys unchanged beside
    them (validated by its own Config), and MPA's settings under `objective.mpa`."""

    name: str = "mpa"
    base: str = Field("mlm", description="the objective MPA wraps: mlm, wwm, mac (the MLM family) or electra; "
                      "its own keys (e.g. masking.rate) are written beside MPA's, flat in objective.*")
    mpa: MPASettings = Field(default_factory=MPASettings)
    base_config: SerializeAsAny[ObjectiveConfig] = Field(
        description="the wrapped objective's validated settings (written flat in objective.*, not under this key)",
        json_schema_extra={"internal": True})

    @model_validator(mode="wrap")
    @classmethod
    def _validate_base_keys(cls, data, handler):
        """Split the section into MPA's keys and the base's, validate the latter with the base's own
        Config and report every problem of both at once, at its full key path."""
        if not isinstance(data, dict):
            return handler(data)
        own = {k: v for k, v in data.items() if k in ("name", "base", "mpa")}
        base = own.setdefault("base", "mlm")
        errors, base_config = [], ObjectiveConfig(name=str(base))
        if "base_config" in data:  # the serialized field's name, not a key users write
            errors.append({"type": PydanticCustomError(
                "flat_base_keys", "write the base objective's keys flat in objective.* (e.g. objective.masking), "
                "not under base_config"), "loc": ("base_config",), "input": data["base_config"]})
            data = {k: v for k, v in data.items() if k != "base_config"}
        try:
            base_config = _base_class(str(base)).Config.model_validate(
                {k: v for k, v in data.items() if k not in own} | {"name": base})
        except ValidationError as e:
            errors += [_with_known_keys(err, _base_class(str(base)).Config) for err in e.errors()]
        except ValueError as e:
            errors.append({"type": PydanticCustomError("base_objective", "{reason}", {"reason": str(e)}),
                           "loc": ("base",), "input": base})
        try:
            validated = handler(own | {"base_config": base_config})
        except ValidationError as e:
            errors += e.errors()
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, [
                {k: err[k] for k in ("type", "loc", "input", "ctx") if k in err} for err in errors])
        return validated

    @model_serializer(mode="wrap")
    def _flat(self, handler):
        data = handler(self)
        base = {k: v for k, v in data.pop("base_config").items() if k != "name"}
        return {"name": data["name"], "base": data["base"], **base, "mpa": data["mpa"]}


def _with_known_keys(error: dict, base_config: type[Section]) -> dict:
    """An unknown base key's error that carries the base Config's key names at its level, so the message
    still says 'did you mean' (the run config's schema has no `objective.masking` to look them up in)."""
    if error["type"] != "extra_forbidden":
        return error
    keys = known_keys(base_config, tuple(error["loc"]))
    return {**error, "type": PydanticCustomError("extra_forbidden", "Extra inputs are not permitted",
                                                 {"known_keys": keys})}


def guided_network(module: nn.Module) -> nn.Module | None:
    """The transformers model whose heads MPA guides: ELECTRA's `discriminator` (the network that is kept
    and fine-tuned; its generator is thrown away) or an MLM-family module's `model`."""
    for name in ("discriminator", "model"):
        if isinstance(getattr(module, name, None), nn.Module):
            return getattr(module, name)
    return None


def guided_heads(settings: MPASettings, model) -> list[tuple[int, int]]:
    """The configured (layer, head) pairs, or the default for this model's shape."""
    if settings.guided_heads is not None:
        return [tuple(pair) for pair in settings.guided_heads]
    layers, _, heads, _ = model.dims()
    per_layer = min(2, max(1, heads - 1))
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(per_layer)]


class HarmAlerts(nn.Module):
    """A base module whose guided heads learn from its mis-predictions; `base` is what's exported."""

    def __init__(self, base: nn.Module, heads: list[tuple[int, int]], partners, scores, special_ids,
                 settings: MPASettings):
        super().__init__()
        self.base = base
        self.settings = settings
        network = guided_network(base)
        self.guides_discriminator = network is getattr(base, "discriminator", None)
        self.guided = GuidedHeads(network, heads)
        # Rebuilt from the artifact at every start, so not part of checkpoints.
        self.register_buffer("partners", torch.as_tensor(partners, dtype=torch.long), persistent=False)
        self.register_buffer("scores", torch.as_tensor(scores), persistent=False)
        self.register_buffer("special_ids", torch.as_tensor(special_ids, dtype=torch.long), persistent=False)

    def forward(self, **inputs):
        self.guided.take()  # nothing from a call outside this forward may leak in
        out = self.base(**inputs)
        needed = TRIGGER_OUTPUTS[self.settings.trigger] + (("_disc_input_ids",) if self.guides_discriminator else ())
        missing = [k for k in needed if k not in out]
        if missing:
            raise UserError(f"objective.base: its module returns no {', '.join(missing)}; with objective.mpa.trigger "
                            f"'{self.settings.trigger}' MPA wraps objectives that report them (generator: the MLM "
                            "family and electra; discriminator: electra)")
        seen = out["_disc_input_ids"] if self.guides_discriminator else inputs["input_ids"]  # the guided net's input
        penalty, metrics = self.harm(out, seen, inputs["attention_mask"], self.guided.take(), inputs.get("pair_ids"))
        loss = out["loss"] + self.settings.weight * penalty if self.settings.weight else out["loss"]
        return {**out, **metrics, "loss": loss}

    def score(self, words: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """float[N, L]: normalized PPMI of each predicted word with each key token (0 if not a partner)."""
        table = self.partners[words]  # [N, K], ascending ids
        slot = torch.searchsorted(table, keys).clamp(max=table.shape[1] - 1)
        hit = table.gather(1, slot) == keys
        return torch.where(hit, self.scores[words].gather(1, slot).float(), 0.0)

    def triggers(self, out: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(rows, positions, harm words, mis-prediction rate) of the alerts, in nonzero() order; no gradient.
        `input_ids` is what the guided network saw."""
        if self.settings.trigger == "generator":
            wrong = out["_predicted"] != out["_targets"]
            rows, positions = (index[wrong] for index in out["_selected"].nonzero(as_tuple=True))
            return rows, positions, out["_predicted"][wrong], wrong.float().mean()
        # A special token has no co-occurrence partners: its misjudgement names no word to look away from.
        words = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        replaced = out["_disc_labels"].bool()
        wrong, among = words & ((out["_disc_logits"] > 0) != replaced), words
        if self.settings.trigger == "discriminator_missed":  # replaced tokens judged original
            wrong, among = wrong & replaced, words & replaced
        rows, positions = wrong.nonzero(as_tuple=True)
        return rows, positions, input_ids[rows, positions], wrong.sum() / among.sum()

    def harm(self, out: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor, captured: dict,
             pair_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(L_mpa, metrics) from the base's side outputs and the guided layers' queries and keys;
        `input_ids` is what the guided network saw, `pair_ids` which packed sentence pair each token is in."""
        rows, positions, words, rate = self.triggers(out, input_ids, attention_mask)
        nan = input_ids.new_tensor(float("nan"), dtype=torch.float32)
        metrics = {"mpa_mispredict_rate": rate.float(),
                   "mpa_triggers": input_ids.new_tensor(float(words.numel()), dtype=torch.float32)}
        if words.numel() == 0:
            zero = nan.new_zeros(())
            return zero, {**metrics, "mpa_loss": zero, "mpa_harm_uniform": nan, **{f"mpa_{n}": nan for n in PER_HEAD}}
        with torch.no_grad():
            keys = input_ids[rows]
            reachable = attention_mask[rows].bool()
            if pair_ids is not None:  # packed sentence pairs: a query attends to its own pair only
                reachable &= pair_ids[rows] == pair_ids[rows, positions][:, None]
            score = torch.where(reachable, self.score(words, keys), 0.0)
            word_keys = ~torch.isin(keys, self.special_ids) & reachable
            own = torch.arange(len(rows), device=rows.device), positions
            score[own], word_keys[own] = 0.0, False  # the query's own position is no key
            visible = word_keys if self.settings.keys == "words" else reachable
        parts = {name: [] for name in ("term", *PER_HEAD)}
        for layer, (query, key, mask, scaling) in sorted(captured.items()):
            log_attention = log_rows(query, key, mask, scaling, rows, positions, self.guided.heads[layer])
            term, mass, nonword = self.assess(log_attention, score, word_keys)
            parts["term"].append(term)
            parts["harm_guided"].append(mass.detach())
            parts["nonword_guided"].append(nonword.detach())
            unguided = self.guided.unguided(layer)
            if unguided:
                with torch.no_grad():
                    _, mass, nonword = self.assess(
                        log_rows(query, key, mask, scaling, rows, positions, unguided), score, word_keys)
                parts["harm_unguided"].append(mass)
                parts["nonword_unguided"].append(nonword)
        mean = {name: torch.cat(values, 1).mean() if values else nan for name, values in parts.items()}
        penalty = mean.pop("term")
        metrics.update(mpa_loss=penalty.detach(), **{f"mpa_{name}": value for name, value in mean.items()},
                       mpa_harm_uniform=(score.sum(1) / visible.sum(1).clamp(min=1)).mean())
        return penalty, metrics

    def assess(self, log_attention: torch.Tensor, score: torch.Tensor, word_keys: torch.Tensor):
        """Per trigger and head: (penalty term, harm mass, attention share on keys that are no word)."""
        nonword = 1 - (log_attention.exp() * word_keys[:, None]).sum(-1)
        if self.settings.keys == "words":  # the row among word keys: parking on [SEP] is no escape
            log_attention = log_attention.masked_fill(~word_keys[:, None], torch.finfo(log_attention.dtype).min)
            log_attention = log_attention - torch.logsumexp(log_attention, dim=-1, keepdim=True)
        mass = (log_attention.exp() * score[:, None]).sum(-1)
        term = mass if self.settings.target == "mass" else kl_to_target(log_attention, score, self.settings.kl_beta)
        return term, mass, nonword


def kl_to_target(log_attention: torch.Tensor, score: torch.Tensor, beta: float) -> torch.Tensor:
    """KL(q || a) per query and head, q ∝ a.detach() * exp(-beta * score): [N, heads]."""
    log_target = torch.log_softmax(log_attention.detach() - beta * score[:, None], dim=-1)
    return (log_target.exp() * (log_target - log_attention)).sum(-1)


@objectives.register("mpa")
class MPA(Objective):
    """A base objective plus the harm-alert regularizer on a set of guided attention heads."""

    Config = MPAConfig
    summary = ("mis-predictions as harm alerts over a base objective (mlm by default): guided heads learn to "
               "look away from words that co-occur with a mis-prediction")

    def __init__(self, config: MPAConfig, vocab, artifacts):
        super().__init__(config, vocab, artifacts)
        self.base = objectives.get(config.base)(config.base_config, vocab, artifacts)

    @classmethod
    def artifacts_needed(cls, config: MPAConfig):
        return {**objectives.get(config.base).artifacts_needed(config.base_config),
                "cooccurrence": config.mpa.cooccurrence}

    @classmethod
    def packing(cls, config: MPAConfig) -> str:
        return objectives.get(config.base).packing(config.base_config)

    @classmethod
    def check(cls, config: MPAConfig, model) -> list[str]:
        issues = objectives.get(config.base).check(config.base_config, model)
        if model.attn_implementation != "sdpa":
            issues.append(f"model.attn_implementation '{model.attn_implementation}': mpa runs its own attention "
                          "function (transformers' SDPA that also hands the guided layers' queries and keys to "
                          "the regularizer); set it to sdpa")
        layers, _, heads, _ = model.dims()
        pairs = guided_heads(config.mpa, model)
        outside = [list(p) for p in pairs if not (0 <= p[0] < layers and 0 <= p[1] < heads)]
        if outside:
            issues.append(f"objective.mpa.guided_heads {outside} lie outside the model ({layers} layers x {heads} "
                          f"heads); use 0 <= layer < {layers} and 0 <= head < {heads}")
        if len(set(pairs)) != len(pairs):
            issues.append("objective.mpa.guided_heads names a head twice; list each [layer, head] once")
        if not pairs:
            issues.append("objective.mpa.guided_heads is empty; give [layer, head] pairs or null for the default")
        return issues

    def corrupt(self, batch, generator):
        return self.base.corrupt(batch, generator)

    def build(self, model):
        module = self.base.build(model)
        if guided_network(module) is None:
            raise UserError(f"objective.base '{self.config.base}': MPA guides the transformers model a module holds "
                            f"as `.model` (MLM family) or `.discriminator` (electra), and {type(module).__name__} "
                            "has neither; wrap mlm, wwm, mac or electra")
        trigger = self.config.mpa.trigger
        if trigger != "generator" and not isinstance(getattr(module, "discriminator", None), nn.Module):
            raise UserError(f"objective.mpa.trigger '{trigger}' needs a base with a discriminator, and "
                            f"'{self.config.base}' has none; use trigger generator or base electra")
        partners, scores = load_table(Path(self.artifacts["cooccurrence"]))
        return HarmAlerts(module, guided_heads(self.config.mpa, model), partners, scores, self.vocab.special_ids,
                          self.config.mpa)

    def export(self, module: HarmAlerts, folder: Path) -> list[Path]:
        return self.base.export(module.base, folder)
