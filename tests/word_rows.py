"""Helpers for the word-level objective tests: synthetic rows with multi-token words, word groups, and
the real-corpus slices (English with WordNet, Chinese with jieba and Cilin) prepared once per session."""

from __future__ import annotations

import pytest
import torch

from data_prep.lexicon import NeighboursConfig
from data_prep.prepare import DataConfig, prepare
from pretrain_bench.objectives import Vocab
from tests.conftest import SHARED_DATA

VOCAB = Vocab(size=1000, pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1, special_ids=(0, 1, 2, 3, 4))


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Corruption runs on one thread in DataLoader workers; here too, which on a busy 2-core machine is
    also many times faster than two threads contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_rows(rows: int, length: int = 128, seed: int = 0, continue_prob: float = 0.4):
    """(input_ids, word_start): [CLS] body [SEP] rows whose words are 1, 2, 3, ... tokens long
    (each token continues the previous word with `continue_prob`)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB.size, (rows, length), generator=g)
    starts = torch.rand(rows, length, generator=g) >= continue_prob
    ids[:, 0], ids[:, -1] = VOCAB.cls_id, VOCAB.sep_id
    starts[:, 0] = starts[:, 1] = starts[:, -1] = True
    return ids, starts


def word_groups(word_start: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """long[B, L]: a batch-wide id for each word (a run from one word start to the next; a special token
    inside a word, such as [UNK], splits it), -1 off candidates."""
    after_special = torch.nn.functional.pad(~cand[:, :-1], (1, 0), value=True)
    flat = torch.cumsum((word_start | after_special).reshape(-1).long(), 0) - 1
    return torch.where(cand, flat.view_as(word_start), -1)


def partial_words(selected: torch.Tensor, word_start: torch.Tensor, cand: torch.Tensor) -> int:
    """How many words have some but not all of their candidate tokens selected."""
    groups = word_groups(word_start, cand)[cand]
    size = torch.bincount(groups)
    chosen = torch.bincount(groups, weights=selected[cand].double()).long()
    return int(((chosen > 0) & (chosen < size)).sum())


ENGLISH_LEXICON = NeighboursConfig(provider="wordnet", path=str(SHARED_DATA / "lexicons" / "wordnet"))
CHINESE_LEXICON = NeighboursConfig(provider="cilin", path=str(SHARED_DATA / "lexicons" / "cilin" / "cilin_tree.json"))


@pytest.fixture(scope="session")
def english_slice(cache_dir):
    """~180k tokens of the Brown corpus (WordPiece words) with the WordNet neighbour table."""
    cfg = DataConfig(path=str(SHARED_DATA / "corpus" / "en" / "brown.jsonl"), max_documents=60,
                     validation_fraction=0.1, cache_dir=str(cache_dir), seq_len=128, num_proc=1,
                     tokenizer={"vocab_size": 4000})
    return prepare(cfg, "concat", {"neighbours": ENGLISH_LEXICON}, log=lambda m: None)


@pytest.fixture(scope="session")
def chinese_slice(cache_dir):
    """~140k characters of CMRC 2018 Wikipedia paragraphs, words from jieba, with the Cilin neighbour table."""
    cfg = DataConfig(path=str(SHARED_DATA / "corpus" / "zh" / "cmrc2018_contexts.jsonl"), max_documents=300,
                     cache_dir=str(cache_dir), seq_len=128, num_proc=1, segmenter="jieba",
                     tokenizer={"vocab_size": 4000})
    return prepare(cfg, "concat", {"neighbours": CHINESE_LEXICON}, log=lambda m: None)


def all_rows(prepared, split: str = "train") -> dict[str, torch.Tensor]:
    from pretrain_bench.data import Rows

    rows = Rows(prepared, split)
    return rows.take(torch.arange(len(rows)).numpy())


# A small Chinese corpus made here: sentences of dictionary words, so jieba finds multi-character words.
_SUBJECTS = "我们 老师 学生 医生 农民 孩子 朋友 工程师 画家 记者".split()
_ADVERBS = "经常 慢慢 认真 偶尔 马上 一直".split()
_VERBS = "喜欢 研究 讨论 学习 参观 打扫 描述 记得 介绍 保护".split()
_ADJECTIVES = "美丽 安静 古老 明亮 重要 简单 干净 热闹".split()
_OBJECTS = "图书馆 公园 城市 花园 问题 语言 电脑 故事 河流 学校".split()


def chinese_documents(count: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)

    def sentence() -> str:
        return (f"{rng.choice(_SUBJECTS)}{rng.choice(_ADVERBS)}{rng.choice(_VERBS)}"
                f"{rng.choice(_ADJECTIVES)}的{rng.choice(_OBJECTS)}{rng.choice('。！？')}")

    return ["".join(sentence() for _ in range(rng.randint(2, 8))) for _ in range(count)]


def write_chinese_jsonl(path, count: int, seed: int = 0):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in chinese_documents(count, seed)),
                    encoding="utf-8")
    return path
