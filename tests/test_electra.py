"""SPEC §4 (ELECTRA): corruption statistics on >= 1e5 samples, the sampler, labels, the loss
identity, embedding sharing (es, nes, gdes), and end-to-end runs through DeepSpeed on the CPU with one
and two ranks whose exports load with transformers' Auto classes."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu
from transformers import (AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining,
                          AutoModelForSequenceClassification, AutoTokenizer)

from pretrain_bench import config
from pretrain_bench.errors import UserError
from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.models.electra import generator_dims
from pretrain_bench.objectives import Corruption, Vocab, get
from pretrain_bench.objectives.electra import binary_auc, sample_tokens
from pretrain_bench.train.run import train
from tests.conftest import REPO, launch, read_metrics, tiny_config

VOCAB = Vocab(size=1000, pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1, special_ids=(0, 1, 2, 3, 4))
SMALL_VOCAB = Vocab(size=12, pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1, special_ids=(0, 1, 2, 3, 4))


def objective(vocab=VOCAB, masking=None, **fields):
    cls = get("electra")
    return cls(cls.Config(masking=masking or {}, **fields), vocab, {})


def packed_rows(rows: int, length: int = 128, seed: int = 0, vocab=VOCAB) -> torch.Tensor:
    """Full two-segment rows, [CLS] a [SEP] b [SEP]: 125 candidates at L=128, as in SPEC §4."""
    ids = torch.randint(5, vocab.size, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, length // 2], ids[:, -1] = vocab.cls_id, vocab.sep_id, vocab.sep_id
    return ids


def corrupt(ids, seed=1, vocab=VOCAB, **masking):
    return objective(vocab, masking).corrupt({"input_ids": ids, "word_start": torch.ones_like(ids, dtype=torch.bool)},
                                             torch.Generator().manual_seed(seed))


# --- corruption -------------------------------------------------------------------------------------------

def test_with_replacement_unique_masked_fraction_at_128():
    ids = packed_rows(2000)
    selected = corrupt(ids)["labels"] >= 0
    fraction = selected.sum().item() / (2000 * 125)
    assert abs(fraction - 0.1415) < 0.003
    assert abs(fraction - (1 - (124 / 125) ** 19)) < 0.003  # analytic: 19 draws among 125 candidates
    per_row = selected.sum(1)
    assert per_row.max() == 19 and (per_row < 19).float().mean() > 0.5  # duplicates collapse


def test_without_replacement_gives_exactly_k():
    ids = packed_rows(2000)
    per_row = (corrupt(ids, selection="without_replacement")["labels"] >= 0).sum(1)
    assert (per_row == 19).all()  # k = max(1, min(int(0.155 * 128), round(128 * 0.15))) = 19 of 125


def test_generator_input_is_85_mask_15_keep_no_random():
    ids = packed_rows(6000)
    out = corrupt(ids)
    selected = out["labels"] >= 0
    kinds = out["corruption_type"][selected]
    assert kinds.numel() > 100_000
    assert abs((kinds == Corruption.MASK).float().mean().item() - 0.85) < 0.01
    assert abs((kinds == Corruption.KEEP).float().mean().item() - 0.15) < 0.01
    assert not (kinds == Corruption.RANDOM).any()
    assert torch.equal(selected, out["corruption_type"] != Corruption.NONE)
    assert (out["input_ids"][out["corruption_type"] == Corruption.MASK] == VOCAB.mask_id).all()
    kept = out["corruption_type"] != Corruption.MASK
    assert torch.equal(out["input_ids"][kept], ids[kept])
    assert torch.equal(out["labels"][selected], ids[selected])


def test_bert_style_option_is_exact_k_with_80_10_10():
    ids = packed_rows(6000)
    out = corrupt(ids, selection="without_replacement", mask_prob=0.8, random_prob=0.1)
    selected = out["labels"] >= 0
    assert (selected.sum(1) == 19).all()
    kinds = out["corruption_type"][selected]
    for kind, share in ((Corruption.MASK, 0.8), (Corruption.RANDOM, 0.1), (Corruption.KEEP, 0.1)):
        assert abs((kinds == kind).float().mean().item() - share) < 0.01


def test_bernoulli_rate():
    ids = packed_rows(1000)
    selected = corrupt(ids, selection="bernoulli")["labels"] >= 0
    assert abs(selected.sum().item() / (1000 * 125) - 0.15) < 0.004


@pytest.mark.parametrize("selection", ["with_replacement", "without_replacement", "bernoulli"])
def test_specials_padding_and_empty_rows_are_never_selected(selection):
    ids = packed_rows(400)
    ids[:, 90:] = VOCAB.pad_id
    ids[:, 30] = VOCAB.unk_id
    ids[7, 1:90] = VOCAB.sep_id  # a row with no candidates at all
    out = corrupt(ids, selection=selection)
    selected = out["labels"] >= 0
    assert not selected[torch.isin(ids, torch.tensor(VOCAB.special_ids))].any()
    assert not selected[7].any() and selected.sum() > 0
    assert torch.equal(out["attention_mask"], (ids != VOCAB.pad_id).long())


def test_same_seed_same_corruption_other_seed_differs():
    ids = packed_rows(64)
    a, b, c = corrupt(ids, seed=5), corrupt(ids, seed=5), corrupt(ids, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])


# --- sampling and metrics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_sampled_frequencies_match_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    draws = sample_tokens(logits.expand(100_000, -1), temperature, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=6).double() / 100_000
    assert (frequencies - torch.softmax(logits.double() / temperature, -1)).abs().max() < 0.01


def test_sampling_over_a_large_vocabulary_matches_softmax_and_never_draws_impossible_tokens():
    """32,768 logits (a benchmark vocabulary): the last thousand entries, where the cumulative sum is
    largest, are drawn as often as their softmax says, and entries pushed down by `disallow_correct`'s
    -1000 are never drawn."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32_768, generator=g)
    logits[-1000:] += 3.0  # about half of the mass at the end
    logits[::2] -= 1000.0
    draws = sample_tokens(logits.expand(100_000, -1), 1.0, g)
    probs = torch.softmax(logits.double(), -1)
    assert not (draws % 2 == 0).any()
    assert abs((draws >= 32_768 - 1000).double().mean() - probs[-1000:].sum()) < 0.01
    buckets = torch.bincount(draws // 4096, minlength=8).double() / 100_000
    assert (buckets - probs.reshape(8, -1).sum(1)).abs().max() < 0.01


def test_samples_tend_to_argmax_as_temperature_falls():
    g = torch.Generator().manual_seed(0)
    logits = torch.stack([torch.randperm(50, generator=g) * 0.01 for _ in range(2000)])  # gaps >= 0.01
    assert torch.equal(sample_tokens(logits, 1e-4, g), logits.argmax(-1))
    assert not torch.equal(sample_tokens(logits, 1.0, g), logits.argmax(-1))


def test_auc_matches_mann_whitney_with_ties():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(5000, generator=g) < 0.15
    scores = (torch.randn(5000, generator=g) + labels.float()).mul(4).round()  # many ties
    u = mannwhitneyu(scores[labels].numpy(), scores[~labels].numpy()).statistic
    assert abs(binary_auc(scores, labels).item() - u / (labels.sum().item() * (~labels).sum().item())) < 1e-9
    assert math.isnan(binary_auc(scores, torch.zeros(5000, dtype=torch.bool)).item())
    assert math.isnan(binary_auc(scores, torch.ones(5000, dtype=torch.bool)).item())


# --- the module -------------------------------------------------------------------------------------------

def build(vocab=VOCAB, seed=0, model=None, **fields):
    torch.manual_seed(seed)
    obj = objective(vocab, **fields)
    return obj, obj.build(model or ModelConfig())


def batch(obj, rows=8, length=64, seed=0):
    ids = packed_rows(rows, length, seed, obj.vocab)
    ids[-1, 40:] = obj.vocab.pad_id
    return ids, obj.corrupt({"input_ids": ids}, torch.Generator().manual_seed(seed))


def capture_discriminator_input(module) -> dict:
    seen = {}
    module.discriminator.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    return seen


def test_discriminator_sees_samples_and_labels_only_where_they_differ():
    obj, module = build(SMALL_VOCAB)  # 7 ordinary tokens: the generator often samples the original
    ids, inputs = batch(obj, rows=64)
    seen = capture_discriminator_input(module)
    out = module(**inputs)
    selected, labels, fake = out["_selected"], out["_disc_labels"], seen["input_ids"]
    assert torch.equal(selected, inputs["labels"] >= 0)
    assert torch.equal(fake[~selected], ids[~selected])
    assert torch.equal(fake[selected], out["_sampled"])
    assert torch.equal(labels, (fake != ids).long())
    assert not labels[~selected].any()
    assert torch.equal(labels[selected].bool(), out["_sampled"] != out["_targets"])
    correct = out["_sampled"] == out["_targets"]
    assert correct.any() and (~correct).any()  # both cases occurred: correct samples are labelled original
    assert out["_predicted"].shape == out["_targets"].shape == (int(selected.sum()),)
    assert out["_disc_logits"].shape == ids.shape


def test_disallow_correct_replaces_every_masked_position():
    obj, module = build(SMALL_VOCAB, disallow_correct=True)
    _, inputs = batch(obj, rows=64)
    out = module(**inputs)
    assert out["_disc_labels"][out["_selected"]].all()


def test_total_loss_is_generator_plus_50_times_discriminator():
    obj, module = build()
    ids, inputs = batch(obj)
    module.eval()  # no dropout: the generator's loss can be recomputed from a plain forward
    with torch.no_grad():
        out = module(**inputs)
        assert torch.equal(out["loss"], out["gen_loss"] + 50.0 * out["disc_loss"])
        selected = out["_selected"]
        logits = module.generator(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        gen = F.cross_entropy(logits[selected].float(), ids[selected])
        active = inputs["attention_mask"].bool()
        disc = F.binary_cross_entropy_with_logits(out["_disc_logits"][active], out["_disc_labels"][active].float())
    assert torch.allclose(out["gen_loss"], gen, atol=1e-5) and torch.allclose(out["disc_loss"], disc, atol=1e-6)
    _, weighted = build(disc_weight=10.0)
    weighted.eval()
    with torch.no_grad():
        out10 = weighted(**inputs)
    assert torch.equal(out10["loss"], out10["gen_loss"] + 10.0 * out10["disc_loss"])


def shared_tables(module):
    g, d = module.generator.electra.embeddings, module.discriminator.electra.embeddings
    names = ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
             "LayerNorm.weight", "LayerNorm.bias")
    return [(g.get_parameter(n), d.get_parameter(n)) for n in names]


def test_es_shares_every_embedding_and_the_generator_head():
    _, module = build(embedding_size=32)
    for g, d in shared_tables(module):
        assert g.data_ptr() == d.data_ptr()
    word = module.discriminator.electra.embeddings.word_embeddings.weight
    assert module.generator.generator_lm_head.weight.data_ptr() == word.data_ptr()
    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()})  # as a resume does
    assert module.generator.generator_lm_head.weight.data_ptr() == word.data_ptr()
    assert module.generator.electra.embeddings_project.in_features == 32  # embedding size != generator width
    assert module.discriminator.electra.embeddings_project.out_features == 64


def test_nes_shares_nothing():
    _, module = build(embedding_sharing="nes")
    for g, d in shared_tables(module):
        assert g.data_ptr() != d.data_ptr()
    own = module.generator.electra.embeddings.word_embeddings.weight
    assert module.generator.generator_lm_head.weight.data_ptr() == own.data_ptr()


@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
def test_sampling_stops_the_discriminator_gradient_at_the_generator(sharing):
    """The generator's encoder and head learn from its MLM loss alone: the whole loss, lambda x BCE included,
    gives them exactly the gradient of the generator's loss (a differentiable sampler would add to it)."""
    obj, module = build(embedding_sharing=sharing)
    module.eval()  # no dropout: both forwards below see the same generator
    _, inputs = batch(obj)
    generator = module.generator
    layers = [*generator.electra.encoder.parameters(), *generator.generator_predictions.parameters()]
    whole = torch.autograd.grad(module(**inputs)["loss"], layers)
    gen_loss, _, _ = module.generate(**inputs)
    assert all(torch.allclose(w, g) for w, g in zip(whole, torch.autograd.grad(gen_loss, layers)))
    if sharing == "es":  # the control: the one shared table does learn from the discriminator, and this sees it
        table = generator.electra.embeddings.word_embeddings.weight
        whole, = torch.autograd.grad(module(**inputs)["loss"], table)
        assert not torch.allclose(whole, torch.autograd.grad(module.generate(**inputs)[0], table)[0])


def test_gdes_discriminator_loss_leaves_the_generator_embeddings_alone():
    obj, module = build(embedding_sharing="gdes")
    g_tables = [module.generator.electra.embeddings.get_parameter(f"{n}.weight")
                for n in ("word_embeddings", "position_embeddings")]
    d_tables = [module.discriminator.electra.embeddings.get_submodule(n)
                for n in ("word_embeddings", "position_embeddings")]
    deltas = [t.parametrizations.weight.original for t in d_tables]
    for table, source, delta in zip(d_tables, g_tables, deltas):
        assert torch.equal(table.weight, source) and not delta.any()  # E_D = sg(E_G) + 0 at the start
    _, inputs = batch(obj)
    seen = capture_discriminator_input(module)
    out = module(**inputs)
    disc_loss, _ = module.discriminate(seen["input_ids"], inputs["attention_mask"], out["_disc_labels"])
    to_generator = torch.autograd.grad(disc_loss, g_tables, allow_unused=True)
    assert all(g is None or not g.any() for g in to_generator)  # dBCE/dE_G == 0
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(disc_loss, deltas))  # ... it trains E_delta
    gen_loss, _, _ = module.generate(**inputs)
    assert torch.autograd.grad(gen_loss, g_tables[0])[0].abs().sum() > 0  # only the MLM loss moves E_G
    # the discriminator keeps its own type table and LayerNorm, as in DeBERTa-v3
    g_norm = module.generator.electra.embeddings.LayerNorm.weight
    assert g_norm.data_ptr() != module.discriminator.electra.embeddings.LayerNorm.weight.data_ptr()


def test_generator_sizes_follow_electra():
    base, small = ModelConfig(size="base"), ModelConfig(size="tiny", hidden_size=256, num_layers=12, num_heads=4)
    electra_cls = get("electra")
    assert electra_cls.generator_width(electra_cls.Config(), base) == pytest.approx(1 / 3)
    assert generator_dims(base, 1 / 3, 1.0) == (12, 256, 4, 1024)
    assert generator_dims(small, electra_cls.generator_width(electra_cls.Config(), small), 1.0) == (12, 64, 1, 256)
    assert generator_dims(ModelConfig(size="large"), 0.25, 1.0) == (24, 256, 4, 1024)
    assert generator_dims(base, 1.0, 0.5) == (6, 768, 12, 3072)  # DeBERTa-v3's base generator
    _, module = build(model=ModelConfig(size="mini"), generator_depth=0.5)
    assert module.generator.config.num_hidden_layers == 2 and module.generator.config.hidden_size == 64


def test_electra_small_config_has_the_papers_shapes(tmp_path):
    cfg = config.load(REPO / "configs" / "electra-small.yaml", [f"run_dir={tmp_path}"])
    electra_cls = get("electra")
    width = electra_cls.generator_width(cfg.objective, cfg.model)
    assert cfg.model.dims() == (12, 256, 4, 1024) and cfg.objective.embedding_size == 128
    assert generator_dims(cfg.model, width, cfg.objective.generator_depth) == (12, 64, 1, 256)
    assert electra_cls.check(cfg.objective, cfg.model) == []


def test_impossible_combinations_are_refused(tmp_path, tiny_overrides):
    with pytest.raises(UserError, match=r"'es' on model.arch crammed shares tables of width 64, so the generator must "
                       r"be as wide \(objective.generator_width gives a generator of width 16\); set "
                       r"objective.generator_width: 1.0"):
        tiny_config(tiny_overrides, tmp_path, "objective.name=electra", "model.arch=crammed")
    with pytest.raises(UserError, match="objective.embedding_size 32: model.arch crammed has no embedding projection"):
        tiny_config(tiny_overrides, tmp_path, "objective.name=electra", "model.arch=crammed",
                    "objective.generator_width=1.0", "objective.embedding_size=32")
    with pytest.raises(UserError, match="generator of width 129, not divisible by its 2 heads"):
        tiny_config(tiny_overrides, tmp_path, "objective.name=electra", "model.hidden_size=516", "model.num_heads=4")
    with pytest.raises(UserError, match="objective.disc_weight"):
        tiny_config(tiny_overrides, tmp_path, "objective.name=electra", "objective.disc_weight=-1")


# --- the crammed family: both networks in ModernBERT's layout -----------------------------------------------

CRAMMED = ModelConfig(arch="crammed", hidden_dropout=0.0, attention_dropout=0.0)  # 2 layers, width 64


def build_crammed(sharing="es", seed=0):
    return build(model=CRAMMED, seed=seed, generator_width=1.0, generator_depth=0.5, embedding_sharing=sharing)


def test_crammed_networks_are_modernbert_with_a_shallower_generator():
    obj, module = build_crammed()
    assert type(module.generator).__name__ == "ModernBertForMaskedLM"
    assert type(module.discriminator).__name__ == "ModernBertForTokenClassification"
    assert module.generator.config.num_hidden_layers == 1 and module.discriminator.config.num_hidden_layers == 2
    assert module.generator.config.hidden_size == module.discriminator.config.hidden_size == 64
    ids, inputs = batch(obj)
    module.eval()
    with torch.no_grad():
        out = module(**inputs)
    assert torch.equal(out["loss"], out["gen_loss"] + 50.0 * out["disc_loss"])
    with torch.no_grad():  # the discriminator's own forward on what it saw, one logit per token
        logits = module.discriminator(input_ids=out["_disc_input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert logits.shape == (*ids.shape, 1) and torch.equal(out["_disc_logits"], logits[..., 0])
    active = inputs["attention_mask"].bool()
    bce = F.binary_cross_entropy_with_logits(logits[..., 0][active], out["_disc_labels"][active].float())
    assert torch.allclose(out["disc_loss"], bce, atol=1e-6)


def test_crammed_nes_takes_a_narrower_generator():
    obj, module = build(model=CRAMMED, generator_width=0.25, embedding_sharing="nes")
    assert module.generator.config.hidden_size == 16 and module.generator.config.num_attention_heads == 1
    _, inputs = batch(obj)
    out = module(**inputs)
    out["loss"].backward()
    assert module.generator.model.embeddings.tok_embeddings.weight.grad.abs().sum() > 0


def test_crammed_sharing():
    _, es = build_crammed("es")
    table = es.discriminator.model.embeddings.tok_embeddings.weight
    assert es.generator.model.embeddings is es.discriminator.model.embeddings
    assert es.generator.decoder.weight.data_ptr() == table.data_ptr()
    es.load_state_dict({k: v.clone() for k, v in es.state_dict().items()})  # as a resume does
    assert es.generator.decoder.weight.data_ptr() == table.data_ptr()
    _, nes = build_crammed("nes")
    own = nes.generator.model.embeddings.tok_embeddings.weight
    assert own.data_ptr() != nes.discriminator.model.embeddings.tok_embeddings.weight.data_ptr()
    assert nes.generator.decoder.weight.data_ptr() == own.data_ptr()
    obj, gdes = build_crammed("gdes")
    source = gdes.generator.model.embeddings.tok_embeddings.weight
    shared = gdes.discriminator.model.embeddings.tok_embeddings
    delta = shared.parametrizations.weight.original
    assert torch.equal(shared.weight, source) and not delta.any()
    assert gdes.generator.decoder.weight.data_ptr() == source.data_ptr()  # the generator's head stays on E_G
    _, inputs = batch(obj)
    seen = capture_discriminator_input(gdes)
    out = gdes(**inputs)
    disc_loss, _ = gdes.discriminate(seen["input_ids"], inputs["attention_mask"], out["_disc_labels"])
    to_source, to_delta = torch.autograd.grad(disc_loss, [source, delta], allow_unused=True)
    assert (to_source is None or not to_source.any()) and to_delta.abs().sum() > 0
    gen_loss, _, _ = gdes.generate(**inputs)
    assert torch.autograd.grad(gen_loss, source)[0].abs().sum() > 0  # only the MLM loss moves E_G


@pytest.mark.parametrize("sharing", ["es", "gdes"])
def test_crammed_export_is_the_discriminators_encoder(tmp_path, sharing):
    obj, module = build_crammed(sharing)
    with torch.no_grad():  # trained-looking weights: E_delta away from zero, a detection head of its own
        for p in module.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert obj.export(module, tmp_path) == [tmp_path, tmp_path / "generator"]
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder).__name__ == "ModernBertModel"
    expected = module.discriminator.model.state_dict()
    for name, value in encoder.state_dict().items():
        if name == "embeddings.tok_embeddings.weight":  # gdes: E_G + E_delta as one plain table
            assert torch.equal(value, module.discriminator.model.embeddings.tok_embeddings.weight)
        else:
            assert torch.equal(value, expected[name]), name
    generator = AutoModelForMaskedLM.from_pretrained(tmp_path / "generator")
    assert torch.equal(generator.model.embeddings.tok_embeddings.weight,
                       module.generator.model.embeddings.tok_embeddings.weight)
    for folder in (tmp_path, tmp_path / "generator"):  # no one-label (regression) default from the detection head
        assert AutoModelForSequenceClassification.from_pretrained(folder).classifier.out_features == 2
    regression = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1)
    # the detection logit is not reused as a one-label task head
    assert not torch.equal(regression.classifier.weight, module.discriminator.classifier.weight)
    assert torch.equal(regression.model.embeddings.tok_embeddings.weight, encoder.embeddings.tok_embeddings.weight)


# --- end to end through DeepSpeed -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file, cache_dir):
    # The generated corpus is a grammar whose nouns, verbs and adjectives are interchangeable: once the
    # generator samples the right word class, a replacement is undetectable by construction. T=100
    # makes the samples near-uniform, so the discriminator has something to learn in 60 steps; the
    # generator's loss does not depend on T.
    overrides = [f"data.path={corpus_file}", f"data.cache_dir={cache_dir}", "data.tokenizer.vocab_size=400",
                 "data.seq_len=64", "data.num_proc=1", "train.micro_batch_size=16", "train.num_workers=1",
                 "train.eval_batches=4", "train.checkpoint_every_minutes=null", "train.max_steps=60",
                 "train.eval_at=[0.05,1.0]", "train.lr=2e-3", "train.log_every=5", "objective.name=electra",
                 "objective.temperature=100", "train.threads=1"]  # one thread: no spinning on a busy machine
    run_dir = tmp_path_factory.mktemp("run") / "electra"
    cfg = tiny_config(overrides, run_dir)
    return cfg, train(cfg)


@pytest.mark.e2e
def test_generator_learns_and_discriminator_beats_the_baseline(trained):
    cfg, summary = trained
    lines, evals = read_metrics(cfg.run_dir), read_metrics(cfg.run_dir, "eval")
    for key in ("gen_loss", "gen_acc", "gen_sampled_acc", "disc_loss", "disc_acc", "disc_recall", "disc_auc",
                "replaced_fraction"):
        assert all(line[key] is not None for line in lines), key
    assert lines[-1]["gen_loss"] < lines[0]["gen_loss"] - 1.0
    last = evals[-1]
    assert last["eval_gen_loss"] < evals[0]["eval_gen_loss"] - 1.0
    assert last["eval_disc_auc"] > max(0.8, evals[0]["eval_disc_auc"] + 0.1)
    assert last["eval_disc_recall"] > 2 * last["eval_replaced_fraction"]  # well above guessing at that rate
    assert last["eval_disc_acc"] > 1 - last["eval_replaced_fraction"]  # above 'nothing was replaced'
    assert summary["steps"] == 60


@pytest.mark.e2e
def test_both_exports_load_and_hold_the_trained_weights(trained):
    cfg, _ = trained
    final = Path(cfg.run_dir) / "final"
    info = json.loads((final / "pretrain_bench.json").read_text())
    assert info["objective"] == "electra" and info["models"] == [".", "generator"]
    discriminator = AutoModelForPreTraining.from_pretrained(final).eval()
    generator = AutoModelForMaskedLM.from_pretrained(final / "generator").eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(final, num_labels=3)
    assert type(discriminator).__name__ == "ElectraForPreTraining"
    assert type(generator).__name__ == "ElectraForMaskedLM" and type(classifier).__name__.startswith("Electra")
    checkpoint = sorted((Path(cfg.run_dir) / "checkpoints").glob("step*"))[-1]
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    exported = {**{f"discriminator.{k}": v for k, v in discriminator.state_dict().items()},
                **{f"generator.{k}": v for k, v in generator.state_dict().items()}}
    for key, value in state.items():
        assert torch.equal(value, exported[key]), key
    assert torch.equal(generator.electra.embeddings.word_embeddings.weight,
                       discriminator.electra.embeddings.word_embeddings.weight)  # es
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer(["The quiet cat slowly finds a garden."], return_tensors="pt")
    with torch.no_grad():
        assert discriminator(**ids).logits.shape == ids["input_ids"].shape
        assert classifier(**ids).logits.shape == (1, 3)
    AutoTokenizer.from_pretrained(final / "generator")


@pytest.mark.e2e
@pytest.mark.parametrize("zero_stage", [1, 3])
def test_gdes_run_exports_the_generator_table_plus_delta(tmp_path, tiny_overrides, zero_stage):
    # ZeRO-3 with every parameter partitioned: the discriminator reads the generator's table outside its forward
    partition_all = 'train.deepspeed={"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}'
    cfg = tiny_config(tiny_overrides, tmp_path / "gdes", "objective.name=electra", "objective.embedding_sharing=gdes",
                      "train.max_steps=6", "train.eval_at=[1.0]", "train.lr=2e-3", "train.threads=1",
                      f"train.zero_stage={zero_stage}",
                      *([partition_all] if zero_stage == 3 else []))
    train(cfg)
    final = Path(cfg.run_dir) / "final"
    discriminator = AutoModelForPreTraining.from_pretrained(final)
    generator = AutoModelForMaskedLM.from_pretrained(final / "generator")
    for table in ("word_embeddings", "position_embeddings"):
        exported = getattr(discriminator.electra.embeddings, table).weight
        source = getattr(generator.electra.embeddings, table).weight
        assert (exported - source).abs().max() > 0  # E_delta has trained
        if zero_stage == 1:  # the engine checkpoint holds E_G and E_delta themselves
            checkpoint = sorted((Path(cfg.run_dir) / "checkpoints").glob("step*"))[-1]
            state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
            delta = state[f"discriminator.electra.embeddings.{table}.parametrizations.weight.original"]
            assert torch.equal(state[f"generator.electra.embeddings.{table}.weight"], source)
            assert torch.equal(exported, source + delta)


@pytest.mark.e2e
def test_crammed_run_exports_the_trained_encoder(tmp_path, tiny_overrides):
    cfg = tiny_config(tiny_overrides, tmp_path / "crammed", "objective.name=electra", "model.arch=crammed",
                      "objective.generator_width=1.0", "objective.generator_depth=0.5", "train.max_steps=6",
                      "train.eval_at=[1.0]", "train.lr=2e-3", "train.threads=1")
    summary = train(cfg)
    assert summary["steps"] == 6 and all(line["disc_auc"] is not None for line in read_metrics(cfg.run_dir))
    final = Path(cfg.run_dir) / "final"
    encoder = AutoModel.from_pretrained(final)
    checkpoint = sorted((Path(cfg.run_dir) / "checkpoints").glob("step*"))[-1]
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, state[f"discriminator.model.{name}"]), name
    classifier = AutoModelForSequenceClassification.from_pretrained(final, num_labels=2)
    ids = AutoTokenizer.from_pretrained(final)(["The quiet cat slowly finds a garden."], return_tensors="pt")
    with torch.no_grad():
        assert classifier(**ids).logits.shape == (1, 2)


@pytest.mark.e2e
def test_two_ranks_under_the_deepspeed_launcher(tmp_path, tiny_overrides):
    run_dir = tmp_path / "two"
    result = launch("train", str(REPO / "configs" / "tiny-cpu.yaml"), *tiny_overrides,
                    "objective.name=electra", "train.max_steps=8", "train.log_every=4", "train.eval_at=[1.0]",
                    "train.zero_stage=2", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run_dir / "final" / "pretrain_bench.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 8 and info["tokens"] == 8 * 2 * 16 * 64
    assert all(line["disc_auc"] is not None for line in read_metrics(run_dir))
    AutoModelForPreTraining.from_pretrained(run_dir / "final")
    AutoModelForMaskedLM.from_pretrained(run_dir / "final" / "generator")
