"""`wwm` and `mac` (with SOP) end to end through DeepSpeed on the CPU, on the generated corpus. Chinese words
reach the shards in test_segment_zh; the real-corpus runs are in docs/objectives/."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer

from pretrain_bench.train.run import train
from tests.conftest import read_metrics, tiny_config

pytestmark = pytest.mark.e2e



def short_run(corpus, cache_dir) -> list[str]:
    """configs/tiny-cpu.yaml as a seconds-long run (as the tiny_overrides fixture, for module-wide runs)."""
    return [f"data.path={corpus}", f"data.cache_dir={cache_dir}", "data.tokenizer.vocab_size=400", "data.seq_len=64",
            "data.num_proc=1", "train.micro_batch_size=16", "train.num_workers=1", "train.eval_batches=4",
            "train.checkpoint_every_minutes=null", "train.max_steps=80", "train.eval_at=[0.02,1.0]", "train.lr=2e-3"]


@pytest.fixture(scope="module")
def wwm_english(tmp_path_factory, corpus_file, cache_dir):
    cfg = tiny_config(short_run(corpus_file, cache_dir), tmp_path_factory.mktemp("run") / "wwm", "objective.name=wwm",
                      "data.tokenizer.vocab_size=200")  # a small vocabulary: many words of several pieces
    return cfg, train(cfg)


@pytest.fixture(scope="module")
def mac_english(tmp_path_factory, corpus_file, cache_dir):
    cfg = tiny_config(short_run(corpus_file, cache_dir), tmp_path_factory.mktemp("run") / "mac", "objective.name=mac")
    return cfg, train(cfg)


def falls(run_dir, key: str) -> tuple[float, float]:
    evals = read_metrics(run_dir, "eval")
    return evals[0][key], evals[-1][key]


def test_wwm_trains_and_exports(wwm_english):
    cfg, summary = wwm_english
    assert summary["steps"] == 80
    first, last = falls(cfg.run_dir, "eval_mlm_loss")
    assert last < first - 1.0
    final = Path(cfg.run_dir) / "final"
    assert json.loads((final / "pretrain_bench.json").read_text())["objective"] == "wwm"
    model = AutoModelForMaskedLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    batch = tokenizer(["The quiet [MASK] [MASK] slowly finds a garden."], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_mac_trains_with_sop_and_exports_a_pretraining_model(mac_english):
    cfg, summary = mac_english
    first, last = falls(cfg.run_dir, "eval_mlm_loss")
    assert last < first - 1.0
    lines = read_metrics(cfg.run_dir)
    for key in ("mlm_acc_similar", "mlm_acc_random", "mlm_acc_keep", "similar_hit_rate", "sop_loss", "sop_acc"):
        assert all(line[key] is not None for line in lines), key
    assert 0.3 < lines[-1]["similar_hit_rate"] <= 1.0  # word2vec neighbours trained on the corpus
    assert "mlm_acc_mask" not in lines[-1]  # never [MASK]
    final = Path(cfg.run_dir) / "final"
    pretraining = AutoModelForPreTraining.from_pretrained(final).eval()
    masked_lm = AutoModelForMaskedLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    batch = tokenizer(["The quiet cat slowly finds a garden."], ["A river follows the city."], return_tensors="pt")
    with torch.no_grad():
        both = pretraining(**batch)
        alone = masked_lm(**batch).logits
    assert both.seq_relationship_logits.shape == (1, 2)
    assert torch.allclose(both.prediction_logits, alone, atol=1e-5)  # the same MLM weights either way
