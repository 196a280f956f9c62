"""SPEC §5 MPA over ELECTRA: the discriminator's heads are guided, triggers come from the generator or the
discriminator; the regularizer against a reference loop, its gradient, and a DeepSpeed run with exports."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoModelForSequenceClassification, AutoTokenizer

from pretrain_bench import config
from pretrain_bench.errors import UserError
from pretrain_bench.models.guided_attention import HYBRID
from pretrain_bench.train.run import train
from tests.conftest import read_metrics, tiny_config
from tests.test_mpa import (TINY, VOCAB, batch_with_padding, guided_parameters, mpa_objective, planted_mass_on_partner,
                             random_table)


def electra_mpa(tmp_path, **settings):
    return mpa_objective(tmp_path, base="electra", **settings)


# --- config -------------------------------------------------------------------------------------

def test_electra_keys_stay_flat_round_trip_and_keep_their_hints(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: r\ntrain:\n  max_steps: 10\nobjective:\n  name: mpa\n  base: electra\n"
                    "  disc_weight: 10\n  masking:\n    selection: bernoulli\n  mpa:\n    trigger: discriminator\n")
    cfg = config.load(path)
    assert type(cfg.objective.base_config).__name__ == "ElectraObjectiveConfig"
    assert cfg.objective.base_config.disc_weight == 10 and cfg.objective.base_config.masking.selection == "bernoulli"
    assert cfg.objective.mpa.trigger == "discriminator"
    dumped = yaml.safe_load(cfg.to_yaml())["objective"]
    assert dumped["disc_weight"] == 10 and "base_config" not in dumped
    assert config.validate(yaml.safe_load(cfg.to_yaml()), "config.yaml").objective == cfg.objective
    with pytest.raises(UserError) as error:
        config.load(path, ["objective.generator_widht=0.3", "objective.masking.mask_prb=0.8"])
    assert "unknown key 'objective.generator_widht' (did you mean 'generator_width'?)" in str(error.value)
    assert "unknown key 'objective.masking.mask_prb' (did you mean 'mask_prob'?)" in str(error.value)
    with pytest.raises(UserError, match="'es' on model.arch crammed shares tables"):
        config.load(path, ["model.arch=crammed"])  # the base's own check() still runs


def test_discriminator_triggers_need_a_discriminator(tmp_path):
    with pytest.raises(UserError, match="objective.mpa.trigger 'discriminator' needs a base with a discriminator"):
        mpa_objective(tmp_path, trigger="discriminator").build(TINY)


def test_the_discriminator_is_guided_and_the_generator_keeps_sdpa(tmp_path):
    module = electra_mpa(tmp_path).build(TINY)
    assert module.guides_discriminator
    assert module.base.discriminator.config._attn_implementation == HYBRID
    assert module.base.generator.config._attn_implementation == "sdpa"
    assert all(not hasattr(m, "guided_heads") for m in module.base.generator.modules())


# --- the regularizer against a reference loop ---------------------------------------------------

def eager_attentions(module, ids, mask):
    """The discriminator's eager pre-dropout attention probabilities on `ids`, same weights."""
    twin = copy.deepcopy(module.base.discriminator).eval()
    twin.set_attn_implementation("eager")
    with torch.no_grad():
        return twin(input_ids=ids, attention_mask=mask, output_attentions=True).attentions


def reference_triggers(out, trigger: str, ids, mask):
    """([(row, position, harm word)], how many positions could have triggered), one position at a time."""
    if trigger == "generator":
        return [(b, t, w) for (b, t), w, y in zip(out["_selected"].nonzero().tolist(), out["_predicted"].tolist(),
                                                   out["_targets"].tolist()) if w != y], int(out["_selected"].sum())
    found, eligible = [], 0
    for b, t in mask.nonzero().tolist():
        word, replaced, says_replaced = int(ids[b, t]), bool(out["_disc_labels"][b, t]), bool(out["_disc_logits"][b, t] > 0)
        if word in VOCAB.special_ids or (trigger == "discriminator_missed" and not replaced):
            continue  # discriminator_missed: only replaced tokens, wrong when judged original
        eligible += 1
        if says_replaced != replaced:
            found.append((b, t, word))
    return found, eligible


# the crammed discriminator (ModernBERT's layout) with a generator as wide, half as deep: check()'s rule
CRAMMED_ELECTRA = {"generator_width": 1.0, "generator_depth": 0.5}


@pytest.mark.parametrize("arch,trigger", [("bert", "generator"), ("bert", "discriminator"),
                                          ("bert", "discriminator_missed"), ("crammed", "discriminator")])
def test_penalty_and_metrics_match_a_reference_loop_on_the_discriminator(tmp_path, arch, trigger):
    model_cfg = TINY.model_copy(update={"num_heads": 4, "arch": arch})
    heads = [[0, 2], [1, 0], [1, 3]]
    partners, scores = random_table(seed=2)
    objective = mpa_objective(tmp_path, (partners, scores), base="electra", guided_heads=heads, trigger=trigger,
                              base_keys=CRAMMED_ELECTRA if arch == "crammed" else {})
    torch.manual_seed(0)
    module = objective.build(model_cfg).eval()
    inputs = batch_with_padding(rows=16, length=24, seed=5, objective=objective)
    torch.manual_seed(1)  # the generator's samples
    out = module(**inputs)
    ids, mask = out["_disc_input_ids"], inputs["attention_mask"]
    original = torch.where(inputs["labels"] >= 0, inputs["labels"], inputs["input_ids"])
    assert not torch.equal(ids, inputs["input_ids"]) and not torch.equal(ids, original)  # keys: what it saw
    attentions = eager_attentions(module, ids, mask)
    table = {(v, int(p)): float(s) for v in range(VOCAB.size) for p, s in zip(partners[v], scores[v]) if p < VOCAB.size}
    found = {"harm_guided": [], "harm_unguided": [], "nonword_guided": [], "nonword_unguided": []}
    triggers, eligible = reference_triggers(out, trigger, ids, mask)
    for b, t, word in triggers:
        score = torch.tensor([0.0 if j == t else table.get((word, int(ids[b, j])), 0.0) for j in range(ids.shape[1])])
        is_word = torch.tensor([j != t and int(ids[b, j]) not in VOCAB.special_ids for j in range(ids.shape[1])])
        for layer in (0, 1):
            for head in range(4):
                row = attentions[layer][b, head, t]
                kind = "guided" if [layer, head] in heads else "unguided"
                found[f"harm_{kind}"].append((row * is_word / (row * is_word).sum() * score).sum())
                found[f"nonword_{kind}"].append(1 - (row * is_word).sum())
    assert out["mpa_triggers"].item() == len(triggers) > 15
    assert out["mpa_mispredict_rate"].item() == pytest.approx(len(triggers) / eligible)
    for name, values in found.items():
        assert out[f"mpa_{name}"].item() == pytest.approx(torch.stack(values).mean().item(), rel=1e-5), name
    base_loss = out["gen_loss"] + 50 * out["disc_loss"]
    assert out["loss"].item() == pytest.approx(base_loss.item() + 0.1 * out["mpa_loss"].item(), rel=1e-6)


def test_no_misjudgement_gives_a_zero_regularizer(tmp_path):
    objective = electra_mpa(tmp_path, trigger="discriminator")
    module = objective.build(TINY)
    inputs = batch_with_padding(rows=8, length=24, seed=6, objective=objective)
    module.guided.take()
    out = module.base(**inputs)
    out["_disc_logits"] = torch.where(out["_disc_labels"].bool(), 5.0, -5.0)  # every decision right
    penalty, metrics = module.harm(out, out["_disc_input_ids"], inputs["attention_mask"], module.guided.take())
    assert penalty.item() == 0 and metrics["mpa_triggers"].item() == 0 and metrics["mpa_mispredict_rate"].item() == 0


@pytest.mark.parametrize("sharing", ["nes", "es"])
def test_gradient_reaches_only_the_discriminators_guided_query_and_key(tmp_path, sharing):
    """The generator gets nothing but, under `es`, the embeddings it shares with the discriminator."""
    objective = mpa_objective(tmp_path, base="electra", base_keys={"embedding_sharing": sharing}, guided_heads=[[1, 0]])
    module = objective.build(TINY)
    inputs = batch_with_padding(rows=8, length=24, seed=4, objective=objective)
    module.guided.take()
    out = module.base(**inputs)
    penalty, _ = module.harm(out, out["_disc_input_ids"], inputs["attention_mask"], module.guided.take())
    assert penalty.item() > 0
    named = list(module.base.named_parameters())  # shared embeddings once, under generator.
    grads = dict(zip([n for n, _ in named], torch.autograd.grad(penalty, [p for _, p in named], allow_unused=True)))
    checked = set()
    for name, rows, expected in guided_parameters("bert", 64, 32):
        name = name.replace("bert.", "discriminator.electra.", 1)
        assert (grads[name] is not None and grads[name][rows].abs().sum().item() > 0) == expected, (name, rows)
        checked.add(name)
    embeddings = "generator.electra.embeddings." if sharing == "es" else "discriminator.electra.embeddings."
    upstream = (embeddings, "discriminator.electra.encoder.layer.0.")
    for name, grad in grads.items():
        if name not in checked:
            assert (grad is not None and grad.abs().sum().item() > 0) == name.startswith(upstream), name
    assert grads[embeddings + "word_embeddings.weight"].abs().sum() > 0


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.e2e
def test_deepspeed_run_logs_harm_metrics_and_exports_like_electra(tmp_path, tiny_overrides):
    cfg = tiny_config(tiny_overrides, tmp_path / "run", "objective.name=mpa", "objective.base=electra",
                      "objective.mpa.cooccurrence.min_count=2", "train.max_steps=40", "train.log_every=5",
                      "train.lr=2e-3", "train.eval_at=[0.1,1.0]", "train.threads=1")
    summary = train(cfg)
    lines, evals = read_metrics(cfg.run_dir), read_metrics(cfg.run_dir, "eval")
    assert summary["steps"] == 40 and lines[-1]["loss"] < lines[0]["loss"] - 1.0
    assert lines[-1]["gen_loss"] < lines[0]["gen_loss"] - 1.0
    for key in ("mpa_loss", "mpa_mispredict_rate", "mpa_triggers", "mpa_harm_guided", "mpa_harm_unguided",
                "mpa_harm_uniform", "disc_loss", "disc_auc"):
        assert all(line[key] is not None for line in lines), key
    assert evals[-1]["eval_mpa_harm_guided"] is not None
    final = Path(cfg.run_dir) / "final"
    info = json.loads((final / "pretrain_bench.json").read_text())
    assert info["objective"] == "mpa" and info["models"] == [".", "generator"]
    assert HYBRID not in (final / "config.json").read_text()
    discriminator = AutoModelForPreTraining.from_pretrained(final).eval()
    generator = AutoModelForMaskedLM.from_pretrained(final / "generator").eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(final, num_labels=2)
    assert type(discriminator).__name__ == "ElectraForPreTraining" and type(generator).__name__ == "ElectraForMaskedLM"
    assert discriminator.config._attn_implementation == "sdpa"
    checkpoint = sorted((Path(cfg.run_dir) / "checkpoints").glob("step*"))[-1]
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    exported = {**{f"base.discriminator.{k}": v for k, v in discriminator.state_dict().items()},
                **{f"base.generator.{k}": v for k, v in generator.state_dict().items()}}
    assert state.keys() == exported.keys()  # the co-occurrence table is no part of checkpoints
    for key, value in state.items():
        assert torch.equal(value, exported[key]), key
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer(["The quiet cat slowly finds a garden."], return_tensors="pt")
    with torch.no_grad():
        assert discriminator(**ids).logits.shape == ids["input_ids"].shape
        assert classifier(**ids).logits.shape == (1, 2)


def test_planted_pair_mpa_lowers_the_discriminators_mass_on_the_partner(tmp_path):
    """test_mpa's planted pair (5 and 6 only occur together) with ELECTRA: the generator's mis-predictions
    of 5 steer the discriminator's guided heads (all four) away from 6. Unlike the MLM model, the
    discriminator does not learn to look at 6 by itself (about uniform, 1/32, at lambda = 0)."""
    def attentions(module, batch):
        out = module.base(**batch)
        return eager_attentions(module, out["_disc_input_ids"], batch["attention_mask"])

    without, with_mpa = (planted_mass_on_partner(tmp_path, weight, steps=80, base="electra", attentions=attentions)
                         for weight in (0.0, 0.1))
    assert without > 0.015, without  # not already looking away
    assert with_mpa < 0.35 * without, (without, with_mpa)
