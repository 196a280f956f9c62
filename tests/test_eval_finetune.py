"""Fine-tuning: each head type learns a generated task; every checkpoint layout loads (our BERT and
crammed exports, an ELECTRA export with its discriminator listed first, a plain transformers encoder);
the random-init floor has fresh weights; a seed reproduces its result; the command's output."""

import json
import shutil

import pytest
import torch
from transformers import BertConfig, BertModel, ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from data_prep import tokenizer as tokenizers
from pretrain_bench.cli import main
from pretrain_bench.errors import UserError
from pretrain_bench.eval.finetune import (FinetuneConfig, build_model, finetune_seeds, layer_depth,
                                         layerwise_groups, model_folder)
from pretrain_bench.eval.tasks import TaskConfig, load_task
from pretrain_bench.models import backbone
from pretrain_bench.objectives import Vocab
from tests import corpus, tasks

RECIPE = FinetuneConfig(epochs=4, lr=2e-3, seeds=[0], threads=1)


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers.train(lambda: corpus.documents(500), tokenizers.TokenizerConfig(vocab_size=300))


def save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny BERT as our export writes it (untrained: the heads must learn these tasks on their own)."""
    torch.manual_seed(0)
    model = backbone.build_mlm_model(backbone.ModelConfig(size="tiny"), Vocab.from_tokenizer(tokenizer))
    folder = save(model, tokenizer, tmp_path_factory.mktemp("bert") / "final")
    (folder / "pretrain_bench.json").write_text(json.dumps({"objective": "mlm", "models": ["."]}))
    return folder.parent


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return {kind: load_task(TaskConfig(path=str(tasks.write(root / name, kind, train=320, dev=120))), root)
            for kind, name in (("binary", "SST-2"), ("three", "MNLI"), ("regression", "STS-B"))}


def test_two_class_head(checkpoint, generated):
    [result] = finetune_seeds(checkpoint, generated["binary"], RECIPE, log=lambda m: None)
    assert result["metrics"]["accuracy"] >= 0.95
    assert result["epoch_train_loss"][-1] < result["epoch_train_loss"][0]


def test_three_class_head_on_pairs(checkpoint, generated):
    recipe = FinetuneConfig(epochs=6, lr=2e-3, seeds=[0], threads=1)
    [result] = finetune_seeds(checkpoint, generated["three"], recipe, log=lambda m: None)
    assert set(result["metrics"]) == {"accuracy", "accuracy_mismatched"}
    assert min(result["metrics"].values()) >= 0.9  # chance is 1/3


def test_regression_head(checkpoint, generated):
    recipe = FinetuneConfig(epochs=8, lr=2e-3, seeds=[0], threads=1)
    [result] = finetune_seeds(checkpoint, generated["regression"], recipe, log=lambda m: None)
    assert result["metrics"]["pearson"] >= 0.8 and result["metrics"]["spearman"] >= 0.8
    assert result["score"] == pytest.approx((result["metrics"]["pearson"] + result["metrics"]["spearman"]) / 2)


def test_same_seed_same_result_other_seed_differs(checkpoint, generated):
    recipe = FinetuneConfig(epochs=1, lr=2e-3, seeds=[3, 3, 4], threads=1)
    a, b, c = finetune_seeds(checkpoint, generated["binary"], recipe, log=lambda m: None)
    assert a["epoch_train_loss"] == b["epoch_train_loss"] and a["metrics"] == b["metrics"]
    assert a["epoch_train_loss"] != c["epoch_train_loss"]


def test_random_init_floor_has_fresh_weights(checkpoint, generated):
    folder = model_folder(checkpoint)
    task = generated["binary"]
    pretrained, random_a, random_b = (build_model(folder, task, init, seed=1)
                                      for init in ("pretrained", "random", "random"))
    saved = BertModel.from_pretrained(folder).embeddings.word_embeddings.weight
    assert torch.equal(pretrained.bert.embeddings.word_embeddings.weight, saved)
    assert not torch.equal(random_a.bert.embeddings.word_embeddings.weight, saved)
    assert torch.equal(random_a.bert.embeddings.word_embeddings.weight, random_b.bert.embeddings.word_embeddings.weight)
    assert type(random_a) is type(pretrained) and random_a.config.to_dict() == pretrained.config.to_dict()
    shapes = [{name: p.shape for name, p in model.state_dict().items()} for model in (pretrained, random_a)]
    assert shapes[0] == shapes[1]  # the same architecture, tensor for tensor


def test_a_checkpoint_missing_encoder_weights_is_refused(tmp_path, checkpoint, generated):
    """transformers starts missing weights from random values with a warning only: the 'pre-trained' arm
    would be partly random. The task head is the one part a checkpoint may lack."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "final"
    shutil.copytree(model_folder(checkpoint), folder)
    weights = load_file(folder / "model.safetensors")
    dropped = next(name for name in weights if "encoder.layer.1.attention.self.query.weight" in name)
    save_file({name: w for name, w in weights.items() if name != dropped}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"1 encoder weight\(s\) are missing from the checkpoint \(.*layer.1.attention"):
        build_model(folder, generated["binary"], "pretrained", seed=0)


@pytest.mark.parametrize("arch", ["bert", "crammed"])
def test_dropout_override_reaches_every_dropout_module(tmp_path, tokenizer, generated, arch):
    model_cfg = backbone.ModelConfig(size="tiny", arch=arch, hidden_dropout=0.0, attention_dropout=0.0)
    folder = save(backbone.build_mlm_model(model_cfg, Vocab.from_tokenizer(tokenizer)), tokenizer, tmp_path / arch)

    def rates(model) -> set[float]:
        found = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        for name in ("attention_dropout", "attention_probs_dropout_prob"):  # SDPA reads these from the config
            found |= {getattr(m, name) for m in model.modules() if isinstance(getattr(m, name, None), float)}
        return found

    assert rates(build_model(folder, generated["binary"], "pretrained", 0)) <= {0.0}
    for init in ("pretrained", "random"):
        assert rates(build_model(folder, generated["binary"], init, 0, dropout=0.1)) == {0.1}


def test_pooling_choice_reaches_the_classifier_and_is_refused_where_fixed(tmp_path, tokenizer, generated):
    vocab, task = Vocab.from_tokenizer(tokenizer), generated["binary"]
    folders = {arch: save(backbone.build_mlm_model(backbone.ModelConfig(size="tiny", arch=arch), vocab), tokenizer,
                          tmp_path / arch) for arch in ("bert", "crammed")}
    ids = torch.tensor([tokenizer.encode("def load(path): return open(path).read()")])
    logits = {}
    for pooling in ("cls", "mean"):
        model = build_model(folders["crammed"], task, "pretrained", 0, pooling=pooling).eval()
        assert model.config.classifier_pooling == pooling
        logits[pooling] = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert not torch.allclose(logits["cls"], logits["mean"])  # same weights, other pooled vector
    with pytest.raises(UserError, match=r"finetune.pooling 'mean': .* bert checkpoint.*set finetune.pooling: null"):
        build_model(folders["bert"], task, "pretrained", 0, pooling="mean")


def test_crammed_electra_and_plain_checkpoints(tmp_path, tokenizer, generated):
    # the "pre-trained" weights are fresh ones: seeded, so they do not depend on what ran before in the session
    torch.manual_seed(0)
    vocab = Vocab.from_tokenizer(tokenizer)
    crammed = save(backbone.build_mlm_model(backbone.ModelConfig(size="tiny", arch="crammed"), vocab), tokenizer,
                   tmp_path / "crammed")
    export = tmp_path / "electra" / "final"  # an ELECTRA export: the discriminator first, the generator after
    small = dict(vocab_size=vocab.size, embedding_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128, pad_token_id=vocab.pad_id)
    save(ElectraForPreTraining(ElectraConfig(hidden_size=64, **small)), tokenizer, export / "discriminator")
    save(ElectraForMaskedLM(ElectraConfig(hidden_size=32, **small)), tokenizer, export / "generator")
    (export / "pretrain_bench.json").write_text(json.dumps({"objective": "electra",
                                                             "models": ["discriminator", "generator"]}))
    plain = save(BertModel(BertConfig(vocab_size=vocab.size, hidden_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=128)), tokenizer, tmp_path / "plain")
    assert model_folder(export.parent) == export / "discriminator"
    # At 3 epochs and lr 2e-3 the ELECTRA layout stayed at chance with some of the vocabularies the tokenizer
    # trainer kept when it was not yet deterministic (about 1 run in 15).
    recipe = FinetuneConfig(epochs=8, lr=1e-3, seeds=[0], threads=1)
    for folder, expected in ((crammed, "ModernBertForSequenceClassification"),
                             (export, "ElectraForSequenceClassification"), (plain, "BertForSequenceClassification")):
        assert type(build_model(model_folder(folder), generated["binary"], "pretrained", 0)).__name__ == expected
        [result] = finetune_seeds(folder, generated["binary"], recipe, log=lambda m: None)
        assert result["metrics"]["accuracy"] >= 0.9, folder


@pytest.mark.parametrize("arch", ["bert", "crammed"])
def test_layer_lr_decay_scales_each_depth_and_zero_freezes_the_encoder(tmp_path, tokenizer, generated, arch):
    model_cfg = backbone.ModelConfig(size="tiny", arch=arch)  # 2 layers
    folder = save(backbone.build_mlm_model(model_cfg, Vocab.from_tokenizer(tokenizer)), tokenizer, tmp_path / arch)
    model = build_model(folder, generated["binary"], "pretrained", 0)
    scale_of = {id(p): group["lr_scale"] for group in layerwise_groups(model, 0.01, 0.5) for p in group["params"]}
    names = dict(model.named_parameters())
    assert len(scale_of) == len(names)  # every parameter in exactly one group
    expected = {}
    for name in names:
        if "embeddings" in name:
            expected[name] = 0.125  # 0.5 ** (2 layers + 1)
        elif ".0." in name:
            expected[name] = 0.25
        elif ".1." in name:
            expected[name] = 0.5
        else:
            expected[name] = 1.0  # pooler, final norm, head, classifier
    assert {name: scale_of[id(p)] for name, p in names.items()} == expected
    trained = {id(p) for group in layerwise_groups(model, 0.01, 0.0) for p in group["params"]}
    assert trained == {id(names[name]) for name, scale in expected.items() if scale == 1.0}
    assert {name for name, p in names.items() if p.requires_grad} == {n for n, s in expected.items() if s == 1.0}


@pytest.mark.parametrize("arch", ["bert", "crammed"])
def test_freeze_embeddings_freezes_exactly_the_embedding_layer(tmp_path, tokenizer, generated, arch):
    model_cfg = backbone.ModelConfig(size="tiny", arch=arch)
    folder = save(backbone.build_mlm_model(model_cfg, Vocab.from_tokenizer(tokenizer)), tokenizer, tmp_path / arch)
    model = build_model(folder, generated["binary"], "pretrained", 0)
    names = dict(model.named_parameters())
    embeddings = {name for name in names if name.split(".")[1] == "embeddings"}
    assert any("word_embeddings" in n or "tok_embeddings" in n for n in embeddings)
    trained = {id(p) for group in layerwise_groups(model, 0.01, 0.5, freeze_embeddings=True) for p in group["params"]}
    assert {name for name, p in names.items() if id(p) in trained} == names.keys() - embeddings
    assert {name for name, p in names.items() if not p.requires_grad} == embeddings


@pytest.mark.parametrize("arch", ["bert", "crammed"])
def test_reinit_top_layers_replaces_exactly_the_top_layers(tmp_path, tokenizer, generated, arch):
    model_cfg = backbone.ModelConfig(size="tiny", arch=arch)  # 2 layers
    folder = save(backbone.build_mlm_model(model_cfg, Vocab.from_tokenizer(tokenizer)), tokenizer, tmp_path / arch)
    task = generated["binary"]
    kept = dict(build_model(folder, task, "pretrained", 0).named_parameters())
    for count, fresh_depths in ((1, {2}), (2, {1, 2})):
        built = dict(build_model(folder, task, "pretrained", 0, reinit_top_layers=count).named_parameters())
        assert built.keys() == kept.keys()
        replaced = {name for name in kept if not torch.equal(kept[name], built[name])}
        in_fresh_layers = {name for name in kept if layer_depth(name, 2) in fresh_depths}
        # every weight matrix of a fresh layer is redrawn (norms and zero biases may repeat the saved ones)
        assert {name for name in in_fresh_layers if kept[name].dim() == 2} <= replaced <= in_fresh_layers
    with pytest.raises(UserError, match=r"finetune.reinit_top_layers 3: .* has 2 encoder layers; give at most 2"):
        build_model(folder, task, "random", 0, reinit_top_layers=3)


def test_a_bf16_checkpoint_and_its_floor_are_fine_tuned_in_fp32(tmp_path, tokenizer, generated):
    # transformers builds a checkpoint saved in bf16, and a model from its config, in bf16
    model = backbone.build_mlm_model(backbone.ModelConfig(size="tiny", arch="crammed"), Vocab.from_tokenizer(tokenizer))
    folder = save(model.to(torch.bfloat16), tokenizer, tmp_path / "bf16")
    for init in ("pretrained", "random"):
        built = build_model(folder, generated["binary"], init, 0)
        assert {p.dtype for p in built.parameters()} == {torch.float32}, init


def test_bad_checkpoint_and_too_long_sequences(tmp_path, checkpoint, generated):
    with pytest.raises(UserError, match="not a transformers model folder"):
        model_folder(tmp_path)
    with pytest.raises(UserError, match="max_seq_len 1024 exceeds the model's max_position_embeddings 512"):
        finetune_seeds(checkpoint, generated["binary"], FinetuneConfig(max_seq_len=1024, seeds=[0]))


def test_finetune_command(tmp_path, checkpoint, capsys):
    task_dir = tasks.write(tmp_path / "SST-2", "binary", train=64, dev=32)
    out = tmp_path / "result.json"
    assert main(["finetune", str(checkpoint), str(task_dir), "finetune.epochs=1", "finetune.seeds=[0,1]",
                 "finetune.lr=2e-3", "finetune.threads=1", "task.max_dev_examples=20", "--random-init",
                 "--output", str(out)]) == 0
    written = json.loads(out.read_text())
    assert [r["seed"] for r in written["results"]] == [0, 1] and written["results"][0]["init"] == "random"
    assert written["results"][0]["eval_examples"] == {"dev": 20}
    assert f"median {100 * written['summary']['accuracy']['median']:.1f}" in capsys.readouterr().out
    assert main(["finetune", str(checkpoint), str(task_dir), "finetune.lrr=1"]) == 2
    assert "unknown key 'finetune.lrr' (did you mean 'lr'?)" in capsys.readouterr().err
