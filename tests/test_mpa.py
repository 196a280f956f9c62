"""SPEC §5 MPA: config composition, the hybrid attention, the regularizer's properties, and a DeepSpeed run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from data_prep.cooccur import CooccurrenceConfig, build_table
from pretrain_bench import config, objectives
from pretrain_bench.errors import UserError
from pretrain_bench.models import backbone
from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.models.guided_attention import HYBRID, log_rows
from pretrain_bench.objectives import Vocab
from pretrain_bench.objectives.mlm import MLM
from pretrain_bench.objectives.mpa import MPAConfig, guided_heads
from tests.conftest import clean_env, read_metrics, tiny_config

VOCAB = Vocab(size=48, pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1, special_ids=(0, 1, 2, 3, 4))
TINY = ModelConfig(size="tiny", hidden_dropout=0.0, attention_dropout=0.0)  # 2 layers x 2 heads


def random_table(seed: int = 0, partners_per_token: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """partners sorted by id (padding id V) and scores in (0, 1]; specials have none and are none."""
    rng = np.random.default_rng(seed)
    words = np.arange(5, VOCAB.size)
    partners = np.full((VOCAB.size, partners_per_token), VOCAB.size)
    scores = np.zeros((VOCAB.size, partners_per_token), np.float32)
    for v in words:
        partners[v] = np.sort(rng.choice(words[words != v], partners_per_token, replace=False))
        scores[v] = rng.uniform(0.05, 1.0, partners_per_token)
    return partners.astype(np.int32), scores


def mpa_objective(tmp_path, table=None, base: str = "mlm", vocab: Vocab = VOCAB, base_keys: dict | None = None,
                  **settings):
    partners, scores = table if table is not None else random_table()
    folder = tmp_path / "cooccurrence"
    folder.mkdir(exist_ok=True)
    np.save(folder / "partners.npy", partners)
    np.save(folder / "scores.npy", scores)
    cfg = MPAConfig.model_validate({"base": base, **(base_keys or {}), "mpa": settings})
    return objectives.get("mpa")(cfg, vocab, {"cooccurrence": folder})


def batch_with_padding(rows: int = 6, length: int = 20, seed: int = 0, objective=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB.size, (rows, length), generator=g)
    ids[:, 0] = VOCAB.cls_id
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g)
    lengths[0] = length
    ids[torch.arange(length)[None, :] >= lengths[:, None]] = VOCAB.pad_id
    ids[torch.arange(rows), lengths - 1] = VOCAB.sep_id
    return ids if objective is None else objective.corrupt({"input_ids": ids}, g)


# --- config -------------------------------------------------------------------------------------

def load(tmp_path, text, *overrides):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: r\ntrain:\n  max_steps: 10\n" + text)
    return config.load(path, list(overrides))


def test_base_keys_stay_where_the_base_has_them_and_round_trip(tmp_path):
    cfg = load(tmp_path, "objective:\n  name: mpa\n  masking:\n    rate: 0.2\n", "objective.mpa.weight=0.3",
               "objective.masking.selection=bernoulli")
    assert cfg.objective.base == "mlm" and type(cfg.objective.base_config).__name__ == "MLMConfig"
    assert cfg.objective.base_config.masking.rate == 0.2 and cfg.objective.base_config.masking.selection == "bernoulli"
    assert cfg.objective.mpa.weight == 0.3
    dumped = yaml.safe_load(cfg.to_yaml())["objective"]
    assert list(dumped) == ["name", "base", "masking", "mpa"] and dumped["masking"]["rate"] == 0.2
    again = config.validate(yaml.safe_load(cfg.to_yaml()), "config.yaml")
    assert again.objective == cfg.objective and again.fingerprint() == cfg.fingerprint()


def test_errors_name_the_full_key_and_come_together(tmp_path):
    with pytest.raises(UserError) as error:
        load(tmp_path, "objective:\n  name: mpa\n  masking:\n    rat: 0.2\n  mpa:\n    weight: -1\n    targt: kl\n")
    message = str(error.value)
    assert "unknown key 'objective.masking.rat' (did you mean 'rate'?)" in message
    assert "'objective.mpa.weight' = -1 is invalid" in message
    assert "unknown key 'objective.mpa.targt' (did you mean 'target'?)" in message
    with pytest.raises(UserError, match=r"'objective.base' = 'mlmm' is invalid: unknown objective 'mlmm' \(did you mean 'mlm'\?\)"):
        load(tmp_path, "objective:\n  name: mpa\n  base: mlmm\n")
    with pytest.raises(UserError, match="mpa cannot wrap itself"):
        load(tmp_path, "objective:\n  name: mpa\n  base: mpa\n")
    with pytest.raises(UserError, match=r"command-line override 'objective.mpa.cooccurrence.top_k=0'"):
        load(tmp_path, "objective:\n  name: mpa\n", "objective.mpa.cooccurrence.top_k=0")


def test_check_reports_heads_outside_the_model_duplicates_and_attention_kernel(tmp_path):
    with pytest.raises(UserError) as error:
        load(tmp_path, "objective:\n  name: mpa\n", "objective.mpa.guided_heads=[[2,0],[1,2],[1,0],[1,0]]",
             "model.attn_implementation=eager")
    message = str(error.value)
    assert "objective.mpa.guided_heads [[2, 0], [1, 2]] lie outside the model (2 layers x 2 heads)" in message
    assert "names a head twice" in message and "model.attn_implementation 'eager'" in message
    with pytest.raises(UserError, match="guided_heads is empty"):
        load(tmp_path, "objective:\n  name: mpa\n", "objective.mpa.guided_heads=[]")


def test_default_guided_heads_are_two_per_upper_layer_and_leave_a_control():
    settings = MPAConfig().mpa
    assert guided_heads(settings, ModelConfig(size="base")) == [(l, h) for l in range(6, 12) for h in (0, 1)]
    assert guided_heads(settings, ModelConfig(size="mini")) == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert guided_heads(settings, ModelConfig(size="tiny")) == [(1, 0)]  # 2 heads: one stays unguided


def test_artifacts_packing_and_corruption_come_from_the_base(tmp_path):
    cfg = MPAConfig(mpa={"cooccurrence": {"window": 4}})
    cls = objectives.get("mpa")
    assert cls.artifacts_needed(cfg) == {"cooccurrence": CooccurrenceConfig(window=4)}
    assert cls.packing(cfg) == objectives.get("mlm").packing(cfg.base_config)
    objective = mpa_objective(tmp_path)
    ids = batch_with_padding()
    ours = objective.corrupt({"input_ids": ids}, torch.Generator().manual_seed(3))
    theirs = objective.base.corrupt({"input_ids": ids}, torch.Generator().manual_seed(3))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


class WithoutModel(MLM):
    """A user's objective whose module keeps its transformers model out of sight (MPA cannot wrap it)."""

    summary = "test plug-in: MLM whose module has no `.model`"

    def build(self, model):
        return nn.ModuleList([super().build(model)])


def test_wraps_a_users_mlm_family_objective_and_refuses_one_without_a_model(tmp_path):
    plugin = "tests.plugins.shuffle_objective:Shuffled"
    objective = mpa_objective(tmp_path, base=plugin, guided_heads=[[1, 0]])
    ids = batch_with_padding()
    ours = objective.corrupt({"input_ids": ids}, torch.Generator().manual_seed(3))
    theirs = objectives.get(plugin)(objective.config.base_config, VOCAB, {}).corrupt(
        {"input_ids": ids}, torch.Generator().manual_seed(3))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    out = objective.build(TINY)(**ours)
    assert out["mpa_triggers"] > 0 and torch.isfinite(out["loss"])
    with pytest.raises(UserError, match="objective.base 'tests.test_mpa:WithoutModel': MPA guides the transformers"):
        mpa_objective(tmp_path, base="tests.test_mpa:WithoutModel").build(TINY)


# --- attention ----------------------------------------------------------------------------------

def twin(module, model_cfg, implementation, vocab: Vocab = VOCAB):
    """The module's transformers model rebuilt with another attention implementation, same weights."""
    other = backbone.build_mlm_model(model_cfg.model_copy(update={"attn_implementation": implementation}), vocab)
    other.load_state_dict(module.base.model.state_dict())
    return other.train(module.training)


@pytest.mark.parametrize("arch", ["bert", "crammed"])
def test_guided_rows_equal_eager_attention_and_padding_gets_none(tmp_path, arch):
    model_cfg = TINY.model_copy(update={"arch": arch})
    module = mpa_objective(tmp_path, guided_heads=[[1, 0], [0, 1]]).build(model_cfg).eval()
    assert module.base.model.config._attn_implementation == HYBRID
    ids = batch_with_padding(seed=1)
    mask = (ids != VOCAB.pad_id).long()
    encoder = backbone.encoder(module.base.model, model_cfg)
    hybrid = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    captured = module.guided.take()
    assert sorted(captured) == [0, 1]
    eager = backbone.encoder(twin(module, model_cfg, "eager"), model_cfg)(
        input_ids=ids, attention_mask=mask, output_attentions=True)
    sdpa = backbone.encoder(twin(module, model_cfg, "sdpa"), model_cfg)(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    assert torch.allclose(hybrid[real], sdpa.last_hidden_state[real], atol=1e-6)  # same forward as plain SDPA
    rows, positions = real.nonzero(as_tuple=True)  # every real query
    for layer, (query, key, attn_mask, scaling) in captured.items():
        probs = log_rows(query, key, attn_mask, scaling, rows, positions, [0, 1]).exp()
        assert torch.allclose(probs, eager.attentions[layer][rows, :, positions], atol=1e-6)
        padded_keys = ~real[rows][:, None, :].expand_as(probs)
        assert padded_keys.any() and probs[padded_keys].abs().max() == 0  # exactly no mass on padding
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)


def test_rows_are_the_pre_dropout_probabilities(tmp_path):
    """Train mode with attention dropout 0.5: the rows still sum to one and equal eval-mode attention
    (layer 0 is guided: its input, the embeddings, has no dropout here)."""
    model_cfg = TINY.model_copy(update={"attention_dropout": 0.5})
    module = mpa_objective(tmp_path, guided_heads=[[0, 1]]).build(model_cfg).train()
    ids = batch_with_padding(seed=2)
    mask = (ids != VOCAB.pad_id).long()
    backbone.encoder(module.base.model, model_cfg)(input_ids=ids, attention_mask=mask)
    query, key, attn_mask, scaling = module.guided.take()[0]
    rows, positions = mask.bool().nonzero(as_tuple=True)
    probs = log_rows(query, key, attn_mask, scaling, rows, positions, [1]).exp()
    eager = twin(module, model_cfg, "eager")
    reference = backbone.encoder(eager.eval(), model_cfg)(
        input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0][rows, 1:, positions]
    assert torch.allclose(probs, reference, atol=1e-6)
    dropped = backbone.encoder(eager.train(), model_cfg)(
        input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
    assert (dropped.sum(-1) - 1).abs().max() > 0.1  # what eager attention exposes in train mode


# --- the regularizer ----------------------------------------------------------------------------

def forward_parts(module, inputs):
    """The base's outputs and the captured attention of one forward, as HarmAlerts sees them."""
    module.guided.take()
    out = module.base(**inputs)
    return out, module.guided.take()


def test_zero_without_mispredictions_or_co_occurring_keys(tmp_path):
    for target in ("mass", "kl"):
        objective = mpa_objective(tmp_path, guided_heads=[[1, 0], [0, 1]], target=target)
        module = objective.build(TINY)
        inputs = batch_with_padding(rows=8, length=24, objective=objective)
        out, captured = forward_parts(module, inputs)
        assert (out["_predicted"] != out["_targets"]).sum() > 10  # an untrained model is mostly wrong
        perfect = {**out, "_predicted": out["_targets"]}
        penalty, metrics = module.harm(perfect, inputs["input_ids"], inputs["attention_mask"], captured)
        assert penalty.item() == 0 and metrics["mpa_triggers"].item() == 0 and metrics["mpa_mispredict_rate"] == 0
        assert metrics["mpa_harm_guided"].isnan()  # no trigger: nothing to average (skipped in logs)
        module.scores.zero_()  # the table knows no partners
        penalty, metrics = module.harm(out, inputs["input_ids"], inputs["attention_mask"], captured)
        assert metrics["mpa_triggers"].item() > 10 and abs(penalty.item()) < 1e-6
        assert metrics["mpa_harm_guided"].item() == metrics["mpa_harm_unguided"].item() == 0


@pytest.mark.parametrize("keys", ["words", "all"])
def test_penalty_and_metrics_match_a_reference_loop(tmp_path, keys):
    model_cfg = TINY.model_copy(update={"num_heads": 4})
    heads = [[0, 1], [1, 0], [1, 3]]
    partners, scores = random_table(seed=1)
    objective = mpa_objective(tmp_path, (partners, scores), guided_heads=heads, keys=keys)
    module = objective.build(model_cfg).eval()
    inputs = batch_with_padding(rows=16, length=24, seed=3, objective=objective)
    out = module(**inputs)
    attentions = backbone.encoder(twin(module, model_cfg, "eager"), model_cfg)(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_attentions=True).attentions
    table = {(v, int(p)): float(s) for v in range(VOCAB.size) for p, s in zip(partners[v], scores[v]) if p < VOCAB.size}
    ids = inputs["input_ids"]
    found = {"harm_guided": [], "harm_unguided": [], "nonword_guided": [], "nonword_unguided": [], "harm_uniform": []}
    triggers = [(b, t, w) for (b, t), w, y in zip(out["_selected"].nonzero().tolist(), out["_predicted"].tolist(),
                                                   out["_targets"].tolist()) if w != y]
    for b, t, word in triggers:
        score = torch.tensor([0.0 if j == t else table.get((word, int(ids[b, j])), 0.0) for j in range(ids.shape[1])])
        is_word = torch.tensor([j != t and int(ids[b, j]) not in VOCAB.special_ids for j in range(ids.shape[1])])
        visible = is_word if keys == "words" else inputs["attention_mask"][b].bool()
        found["harm_uniform"].append(score.sum() / visible.sum())
        for layer in (0, 1):
            for head in range(4):
                row = attentions[layer][b, head, t]
                among = row * is_word / (row * is_word).sum() if keys == "words" else row
                kind = "guided" if [layer, head] in heads else "unguided"
                found[f"harm_{kind}"].append((among * score).sum())
                found[f"nonword_{kind}"].append(1 - (row * is_word).sum())
    assert out["mpa_triggers"].item() == len(triggers) > 20
    assert out["mpa_mispredict_rate"].item() == pytest.approx(len(triggers) / out["_selected"].sum().item())
    for name, values in found.items():
        assert out[f"mpa_{name}"].item() == pytest.approx(torch.stack(values).mean().item(), rel=1e-5), name
    assert out["mpa_loss"].item() == out["mpa_harm_guided"].item() > 0
    assert out["loss"].item() == pytest.approx(out["mlm_loss"].item() + 0.1 * out["mpa_loss"].item(), rel=1e-6)


def test_keys_of_another_packed_pair_count_for_nothing(tmp_path):
    """With sentence pairs packed into rows (mac with SOP), a trigger's keys are its own pair's: with every
    row one pair the metrics are the row's; cut in halves, the uniform harm is the half's."""
    objective = mpa_objective(tmp_path, random_table(seed=2), guided_heads=[[1, 0]], keys="all")
    torch.manual_seed(0)
    module = objective.build(TINY).eval()
    inputs = batch_with_padding(rows=16, length=24, seed=4, objective=objective)
    out, captured = forward_parts(module, inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    whole = module.harm(out, ids, mask, captured)[1]
    one_pair = module.harm(out, ids, mask, captured, torch.zeros_like(ids))[1]
    assert all(torch.equal(whole[k], one_pair[k]) for k in whole)
    halves = (torch.arange(ids.shape[1]) >= ids.shape[1] // 2).long().expand_as(ids)
    cut = module.harm(out, ids, mask, captured, halves)[1]
    rows, positions = (index[out["_predicted"] != out["_targets"]] for index in out["_selected"].nonzero(as_tuple=True))
    own_half = (halves[rows] == halves[rows, positions][:, None]) & mask[rows].bool()
    score = module.score(out["_predicted"][out["_predicted"] != out["_targets"]], ids[rows])
    score[torch.arange(len(rows)), positions] = 0.0
    expected = ((score * own_half).sum(1) / own_half.sum(1)).mean()
    assert len(rows) > 20 and cut["mpa_harm_uniform"].item() == pytest.approx(expected.item(), rel=1e-5)
    alone = module.harm(out, ids, mask, captured, torch.arange(ids.shape[1]).expand_as(ids))[1]  # a pair a token
    assert whole["mpa_harm_uniform"].item() > 0.01 and alone["mpa_harm_uniform"].item() == 0


def test_with_word_keys_parking_attention_on_special_tokens_is_no_escape(tmp_path):
    """Attention moved from words onto [CLS]/[SEP]/[MASK] lowers the SPEC's whole-row mass, not the
    default word-key mass (measured on corpus/en: with keys=all the guided head learnt to put 82% of its
    attention on special tokens)."""
    score = torch.tensor([[0.0, 0.9, 0.0, 0.5, 0.0]])
    word_keys = torch.tensor([[False, True, True, True, False]])  # [CLS] w w w [SEP]
    words_only = torch.tensor([[0.0, 0.5, 0.25, 0.25, 0.0]])
    parked = torch.tensor([[0.4, 0.25, 0.125, 0.125, 0.1]])  # the same shares among words
    for keys, same in (("words", True), ("all", False)):
        module = mpa_objective(tmp_path, keys=keys).build(TINY)
        masses = [module.assess(row.log()[:, None], score, word_keys)[1].item() for row in (words_only, parked)]
        assert (masses[0] == pytest.approx(masses[1])) == same, (keys, masses)
        nonword = module.assess(parked.log()[:, None], score, word_keys)[2].item()
        assert nonword == pytest.approx(0.5)


def guided_parameters(arch: str, hidden: int, head_dim: int):
    """(parameter name, row slice, should get gradient) in layer 1 when its head 0 is guided."""
    guided, other, rest = slice(0, head_dim), slice(head_dim, hidden), slice(None)
    if arch == "bert":
        prefix = "bert.encoder.layer.1.attention.self."
        return [(prefix + f"{proj}.{kind}", rows, yes) for proj in ("query", "key") for kind in ("weight", "bias")
                for rows, yes in ((guided, True), (other, False))] + \
               [(prefix + f"value.{kind}", rest, False) for kind in ("weight", "bias")]
    qkv = "model.layers.1.attn.Wqkv."  # rows: queries, keys, values, each head after head
    return [(qkv + kind, slice(offset + s.start, offset + s.stop), yes) for kind in ("weight", "bias")
            for offset in (0, hidden) for s, yes in ((guided, True), (other, False))] + \
           [(qkv + kind, slice(2 * hidden, 3 * hidden), False) for kind in ("weight", "bias")]


# What the guided queries and keys of layer 1 are computed from (everything else must get no gradient).
UPSTREAM = {"bert": ("bert.embeddings.", "bert.encoder.layer.0."),
            "crammed": ("model.embeddings.", "model.layers.0.", "model.layers.1.attn_norm.")}


@pytest.mark.parametrize("arch", ["bert", "crammed"])
def test_gradient_reaches_only_the_guided_heads_query_and_key(tmp_path, arch):
    model_cfg = TINY.model_copy(update={"arch": arch})
    objective = mpa_objective(tmp_path, guided_heads=[[1, 0]])
    module = objective.build(model_cfg)
    inputs = batch_with_padding(rows=8, length=24, seed=4, objective=objective)
    out, captured = forward_parts(module, inputs)
    penalty, _ = module.harm(out, inputs["input_ids"], inputs["attention_mask"], captured)
    assert penalty.item() > 0
    model = module.base.model
    names = [n for n, _ in model.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(penalty, list(model.parameters()), allow_unused=True)))
    reached = {n: g is not None and g.abs().sum().item() > 0 for n, g in grads.items()}
    checked = set()
    for name, rows, expected in guided_parameters(arch, 64, 32):
        grad = grads[name]
        assert (grad is not None and grad[rows].abs().sum().item() > 0) == expected, (name, rows)
        checked.add(name)
    for name in names:
        if name not in checked:  # layer 1's output path, later layers and the MLM head get nothing
            assert reached[name] == name.startswith(UPSTREAM[arch]), name
    assert reached[UPSTREAM[arch][0] + ("word_embeddings.weight" if arch == "bert" else "tok_embeddings.weight")]


def test_kl_target_is_zero_at_its_target_and_moves_mass_off_partners(tmp_path):
    log_attention = torch.log_softmax(torch.randn(30, 2, 12, generator=torch.Generator().manual_seed(0)), -1)
    score = torch.rand(30, 12, generator=torch.Generator().manual_seed(1))
    from pretrain_bench.objectives.mpa import kl_to_target

    assert kl_to_target(log_attention, torch.zeros_like(score), 1.0).abs().max() < 1e-6
    logits = log_attention.clone().requires_grad_()
    optimizer = torch.optim.SGD([logits], lr=1.0)
    before = (torch.softmax(logits, -1) * score[:, None]).sum(-1).mean().item()
    for _ in range(20):
        optimizer.zero_grad()
        kl_to_target(torch.log_softmax(logits, -1), score, 2.0).sum().backward()
        optimizer.step()
    after = (torch.softmax(logits, -1) * score[:, None]).sum(-1).mean().item()
    assert after < before - 0.01


def planted_rows(count: int, vocab: Vocab, seed: int, copies: int = 3):
    """Random tokens; in half of the rows token 6 once and token 5 `copies` times, at random places."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, vocab.size, (count, 32), generator=g)
    ids[:, 0], ids[:, -1] = vocab.cls_id, vocab.sep_id
    planted = torch.rand(count, generator=g) < 0.5
    places = torch.rand(count, 30, generator=g).argsort(1)[:, :copies + 1] + 1
    rows = planted.nonzero().squeeze(1)
    ids[rows[:, None], places[rows, 1:]] = 5
    ids[rows, places[rows, 0]] = 6
    return ids, planted, places[:, 0]


PLANTED_VOCAB = Vocab(size=200, pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1, special_ids=(0, 1, 2, 3, 4))


def planted_mass_on_partner(tmp_path, weight: float, steps: int, base: str = "mlm", attentions=None) -> float:
    """Train a tiny model with all four heads guided on planted rows (in-process AdamW, one thread), then
    the mean attention that the masked positions of held-out planted rows give to the partner token 6.
    `attentions(module, batch)` gives the guided network's eager attention (default: the MLM model's)."""
    torch.set_num_threads(1)
    train_ids, _, _ = planted_rows(20000, PLANTED_VOCAB, seed=0)
    table = build_table(train_ids.numpy(), PLANTED_VOCAB.size, PLANTED_VOCAB.special_ids, CooccurrenceConfig(top_k=8))
    assert table["partners"][5, 0] == 6 and table["scores"][5, 0] == pytest.approx(1.0)
    objective = mpa_objective(tmp_path, (table["partners"], table["scores"]), base=base, vocab=PLANTED_VOCAB,
                              weight=weight, guided_heads=[[0, 0], [0, 1], [1, 0], [1, 1]])
    torch.manual_seed(0)
    module = objective.build(TINY)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = objective.corrupt({"input_ids": train_ids[torch.randint(0, len(train_ids), (32,), generator=g)]}, g)
        optimizer.zero_grad()
        module(**batch)["loss"].backward()
        optimizer.step()
    eval_ids, planted, partner_at = planted_rows(1000, PLANTED_VOCAB, seed=1)
    batch = objective.corrupt({"input_ids": eval_ids}, torch.Generator().manual_seed(2))
    with torch.no_grad():
        found = attentions(module.eval(), batch) if attentions else twin(module.eval(), TINY, "eager", PLANTED_VOCAB)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True).attentions
    rows, queries = ((batch["labels"] >= 0) & planted[:, None]).nonzero(as_tuple=True)
    keep = queries != partner_at[rows]
    rows, queries = rows[keep], queries[keep]
    return torch.stack([a[rows, :, queries, partner_at[rows]] for a in found]).mean().item()


def test_planted_pair_mpa_lowers_the_guided_heads_mass_on_the_partner(tmp_path):
    """Tokens 5 and 6 only occur together, so a model that sees 6 is tempted to predict 5 at every
    masked position of the row: a mis-prediction whose co-occurring key is 6. Without MPA the heads
    learn to look at 6; with it (default weight 0.1) the guided heads look away. All four heads of the
    tiny model are guided, so the model cannot simply route the look through an unguided one."""
    without, with_mpa = (planted_mass_on_partner(tmp_path, weight, steps=150) for weight in (0.0, 0.1))
    assert without > 0.08  # 1/32 would be uniform: the baseline learnt to look at the partner
    assert with_mpa < 0.5 * without, (without, with_mpa)


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.e2e
def test_deepspeed_run_logs_harm_metrics_and_exports_like_mlm(tmp_path, tiny_overrides):
    from pretrain_bench.train.run import train

    cfg = tiny_config(tiny_overrides, tmp_path / "run", "objective.name=mpa", "objective.mpa.guided_heads=[[1,0]]",
                      "objective.mpa.cooccurrence.min_count=2", "train.max_steps=40", "train.log_every=5",
                      "train.lr=2e-3", "train.eval_at=[1.0]")
    summary = train(cfg)
    lines = read_metrics(cfg.run_dir)
    assert summary["steps"] == 40 and lines[-1]["loss"] < lines[0]["loss"] - 0.5
    for key in ("mpa_loss", "mpa_mispredict_rate", "mpa_triggers", "mpa_harm_guided", "mpa_harm_unguided",
                "mpa_harm_uniform", "mpa_nonword_guided", "mpa_nonword_unguided", "mlm_loss"):
        assert all(line[key] is not None for line in lines), key
    assert read_metrics(cfg.run_dir, "eval")[-1]["eval_mpa_harm_guided"] is not None
    final = Path(cfg.run_dir) / "final"
    assert json.loads((final / "pretrain_bench.json").read_text())["objective"] == "mpa"
    assert HYBRID not in (final / "config.json").read_text()
    # loads with transformers alone (no pretrain_bench import) and gives the training module's logits
    script = ("import sys, torch; from transformers import AutoModelForMaskedLM, AutoTokenizer;"
              "m = AutoModelForMaskedLM.from_pretrained(sys.argv[1]).eval(); t = AutoTokenizer.from_pretrained(sys.argv[1]);"
              "b = t(['The quiet cat slowly finds a garden.'], return_tensors='pt');"
              "print(m.config._attn_implementation); torch.save(m(**b).logits, sys.argv[2])")
    result = subprocess.run([sys.executable, "-c", script, str(final), str(tmp_path / "logits.pt")], capture_output=True,
                            text=True, env={**clean_env(), "PYTHONPATH": ""}, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "sdpa"
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    exported = AutoModelForMaskedLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    module = objectives.get("mlm")(cfg.objective.base_config, Vocab.from_tokenizer(tokenizer), {}).build(cfg.model)
    module.model.load_state_dict(exported.state_dict())
    batch = tokenizer(["The quiet cat slowly finds a garden."], return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.encoder(module.model.eval(), cfg.model)(**batch).last_hidden_state
        ours = backbone.predict(module.model, cfg.model, hidden)
    assert torch.allclose(ours, torch.load(tmp_path / "logits.pt"), atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("base, exported_as", [("wwm", "BertForMaskedLM"), ("mac", "BertForPreTraining")])
def test_wwm_and_mac_as_bases_train_and_export_like_themselves(tmp_path, tiny_overrides, base, exported_as):
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

    from pretrain_bench.train.run import train

    cfg = tiny_config(tiny_overrides, tmp_path / base, "objective.name=mpa", f"objective.base={base}",
                      "objective.mpa.cooccurrence.min_count=2", "train.max_steps=20", "train.log_every=5",
                      "train.lr=2e-3", "train.eval_at=[1.0]", "train.threads=1")
    assert type(cfg.objective.base_config) is objectives.get(base).Config
    assert objectives.get("mpa").packing(cfg.objective) == ("segment_pairs" if base == "mac" else "concat")
    summary = train(cfg)
    lines = read_metrics(cfg.run_dir)
    assert summary["steps"] == 20 and lines[-1]["loss"] < lines[0]["loss"] - 0.5
    own = ("sop_loss", "similar_hit_rate") if base == "mac" else ("mlm_acc_mask",)
    for key in ("mpa_loss", "mpa_triggers", "mpa_harm_guided", "mpa_harm_unguided", *own):
        assert all(line[key] is not None for line in lines), key
    final = Path(cfg.run_dir) / "final"
    assert json.loads((final / "pretrain_bench.json").read_text())["objective"] == "mpa"
    exported = (AutoModelForPreTraining if base == "mac" else AutoModelForMaskedLM).from_pretrained(final)
    assert type(exported).__name__ == exported_as and HYBRID not in (final / "config.json").read_text()
    checkpoint = sorted((Path(cfg.run_dir) / "checkpoints").glob("step*"))[-1]
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    weights = exported.state_dict()
    assert {k.removeprefix("base.model.") for k in state} == set(weights)
    assert all(torch.equal(value, weights[key.removeprefix("base.model.")]) for key, value in state.items())
