import pytest

from data_prep.tokenizer import SPECIAL_TOKENS, TokenizerConfig, fingerprint, load, train
from pretrain_bench.errors import UserError
from tests.corpus import documents


@pytest.mark.parametrize("lowercase,cjk", [(True, True), (False, False)])
def test_save_load_round_trip(tmp_path, lowercase, cjk):
    docs = documents(300) + ["中文分词的测试句子，还有一些汉字。"] * 50
    tok = train(iter(docs), TokenizerConfig(vocab_size=400, lowercase=lowercase, split_cjk_chars=cjk))
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
    tok = train(iter(documents(300)), TokenizerConfig(vocab_size=400))
    by_id = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert by_id[:5] == SPECIAL_TOKENS and by_id[5:] == sorted(by_id[5:]) and len(set(by_id)) == len(tok)
    assert tok.decode(tok("the quiet gardens")["input_ids"], skip_special_tokens=True) == "the quiet gardens"
