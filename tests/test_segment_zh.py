"""Chinese word boundaries (SPEC §2b): jieba through data_prep into the shards, end to end."""

import jieba
import numpy as np
import pytest
import torch

from data_prep.prepare import DataConfig, _split_of, prepare
from data_prep.segment_zh import continuation_chars
from data_prep.words import refiner
from pretrain_bench.errors import UserError
from pretrain_bench.objectives import Vocab, get, masking
from tests.word_rows import (all_rows, chinese_documents, partial_words, single_thread,  # noqa: F401
                             write_chinese_jsonl)


def expected_flags(text: str) -> list[bool]:
    """The ref-file rule by hand: a non-initial character of a multi-character all-CJK word continues it."""
    flags = []
    for word in jieba.lcut(text):
        whole = len(word) > 1 and all("\u4e00" <= ch <= "\u9fff" for ch in word)
        flags += [True] + [not whole] * (len(word) - 1)
    return flags


@pytest.fixture(scope="module")
def chinese_rows(tmp_path_factory, cache_dir):
    path = write_chinese_jsonl(tmp_path_factory.mktemp("zh") / "zh.jsonl", 400)
    cfg = DataConfig(path=str(path), cache_dir=str(cache_dir), seq_len=64, num_proc=1, segmenter="jieba",
                     validation_fraction=0.1, tokenizer={"vocab_size": 300, "min_frequency": 1})
    return cfg, prepare(cfg, log=lambda m: None)


def test_shards_carry_jiebas_words(chinese_rows):
    cfg, prepared = chinese_rows
    assert prepared.manifest["segmenter"] == "jieba" and prepared.manifest["tokenizer_hash"]
    rows = all_rows(prepared)
    tokenizer = prepared.tokenizer
    ids, starts = rows["input_ids"][:, 1:-1].reshape(-1), rows["word_start"][:, 1:-1].reshape(-1)
    documents = [d for d in chinese_documents(400) if _split_of(d, cfg.validation_fraction) == "train"]
    stream = [ch for d in documents for ch in [*d, "[SEP]"]]
    flags = [f for d in documents for f in [*expected_flags(d), True]]
    assert tokenizer.convert_ids_to_tokens(ids.tolist()) == stream[: len(ids)]  # one token per character
    row_first = torch.arange(len(ids)) % 62 == 0  # a word cut by a row boundary restarts there
    expected = torch.tensor(flags[: len(ids)])
    assert torch.equal(starts[~row_first], expected[~row_first])
    assert starts[row_first].all()
    assert (~expected).float().mean() > 0.3  # most characters here continue a word


def test_wwm_masks_jieba_words_whole(chinese_rows):
    _, prepared = chinese_rows
    rows = all_rows(prepared)
    vocab = Vocab.from_tokenizer(prepared.tokenizer)
    wwm = get("wwm")(get("wwm").Config(masking={"selection": "bernoulli", "rate": 0.3}), vocab, {})
    out = wwm.corrupt(rows, torch.Generator().manual_seed(0))
    cand = masking.candidates(rows["input_ids"], vocab)
    assert partial_words(out["labels"] >= 0, rows["word_start"], cand) == 0
    tokens = np.array(prepared.tokenizer.convert_ids_to_tokens(rows["input_ids"].reshape(-1).tolist()))
    selected_text = "".join(tokens[(out["labels"] >= 0).reshape(-1).numpy()])
    assert "图书馆" in selected_text and "工程师" in selected_text  # three-character words, whole


def test_continuation_characters():
    text = "T恤很便宜，我们在2020年去了北京大学。"
    words = ["T恤", "很", "便宜", "，", "我们", "在", "2020", "年", "去", "了", "北京大学", "。"]
    marks = continuation_chars(text, words)
    expected = "".join("c" if m else "." for m in marks)
    assert expected == "....c..c.........ccc."  # 'T恤' mixes scripts: not a CJK word; '2020' is not CJK
    with pytest.raises(UserError, match="segmenter changed the text"):
        continuation_chars("我们", ["你们"])


def test_segmenter_needs_single_character_tokens(tmp_path):
    path = write_chinese_jsonl(tmp_path / "zh.jsonl", 200)
    cfg = DataConfig(path=str(path), cache_dir=str(tmp_path / "c"), seq_len=32, num_proc=1, segmenter="jieba",
                     tokenizer={"vocab_size": 300, "split_cjk_chars": False})
    with pytest.raises(UserError, match="split_cjk_chars=true"):
        prepare(cfg, log=lambda m: None)


def test_bad_segmenter_options_and_missing_ltp_weights(tmp_path):
    with pytest.raises(UserError, match="valid keys: hmm, user_dict"):
        refiner("jieba", {"hmmm": False})
    with pytest.raises(UserError, match="never downloaded"):
        refiner("ltp", {"model_path": str(tmp_path)})
