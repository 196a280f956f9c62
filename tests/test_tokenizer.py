import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.tokenizer import SPECIAL_TOKENS, TokenizerConfig, fingerprint, load, train
from pretrain_bench.errors import UserError
from tests.corpus import documents


@pytest.mark.parametrize("lowercase,cjk", [(True, True), (False, False)])
def test_save_load_round_trip(tmp_path, lowercase, cjk):
    docs = documents(300) + ["中文分词的测试句子，还有一些汉字。"] * 50
    tok = train(lambda: iter(docs), TokenizerConfig(vocab_size=400, lowercase=lowercase, split_cjk_chars=cjk))
    tok.save_pretrained(str(tmp_path))
    loaded = load(tmp_path)
    assert fingerprint(loaded) == fingerprint(tok)
    text = "The Quiet cat 测试 slowly finds a garden."
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    encoded = loaded(text)["input_ids"]
    assert encoded[0] == loaded.cls_token_id and encoded[-1] == loaded.sep_token_id
    pieces = loaded.convert_ids_to_tokens(encoded)
    assert ("##试" in pieces) != cjk  # CJK characters are words of their own only with split_cjk_chars
    assert ("the" in pieces) == lowercase


def test_load_refuses_non_tokenizer(tmp_path):
    with pytest.raises(UserError, match="not a transformers tokenizer folder"):
        load(tmp_path)


def test_ids_follow_code_point_order():
    # the trainer numbers pieces in a hash map's order, seeded per process; renumbered, a corpus that gives
    # the same pieces gives the same ids in every process
    tok = train(lambda: documents(300), TokenizerConfig(vocab_size=400))
    by_id = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert by_id[:5] == SPECIAL_TOKENS and by_id[5:] == sorted(by_id[5:]) and len(set(by_id)) == len(tok)
    assert tok.decode(tok("the quiet gardens")["input_ids"], skip_special_tokens=True) == "the quiet gardens"


def test_same_documents_same_tokenizer_in_every_process():
    # tokenizers' trainer numbers the '##x' pieces in a hash map's order, seeded per process, and breaks ties
    # between merges by those numbers: before data_prep gave it those pieces in order, four processes kept
    # four different vocabularies of this corpus
    script = ("from data_prep.tokenizer import TokenizerConfig, train; from tests.corpus import documents; "
              "print(train(lambda: documents(300), TokenizerConfig(vocab_size=300)).backend_tokenizer.to_str())")
    repo = Path(__file__).resolve().parents[1]
    trained = {subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True,
                              check=True).stdout for _ in range(4)}
    assert len(trained) == 1
    # the '##x' pieces are plain pieces of the model again, not special tokens
    tok = train(lambda: documents(300), TokenizerConfig(vocab_size=300))
    assert set(tok.all_special_tokens) == set(SPECIAL_TOKENS) and "##e" in tok.get_vocab()
    assert tok.convert_ids_to_tokens(tok("the gardens")["input_ids"]) == ["[CLS]", "the", "garden", "##s", "[SEP]"]
