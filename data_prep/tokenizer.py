"""Train (or load) the WordPiece tokenizer and save it as a transformers fast tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

from pydantic import Field
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase

from pretrain_bench.errors import UserError
from pretrain_bench.section import Section

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CONTINUING_PREFIX = "##"


class TokenizerConfig(Section):
    """A WordPiece tokenizer trained on the training split, or an existing one."""

    path: str | None = Field(None, description="an existing transformers tokenizer folder; skips training")
    vocab_size: int = Field(8192, ge=len(SPECIAL_TOKENS) + 100, description="WordPiece vocabulary size")
    lowercase: bool = Field(True, description="lower-case and strip accents, as uncased BERT")
    split_cjk_chars: bool = Field(True, description="every CJK character is its own token, as Chinese BERT")
    min_frequency: int = Field(2, ge=1, description="drop pieces seen fewer times")
    max_training_documents: int | None = Field(
        200_000, ge=1, description="documents the tokenizer is trained on (the first ones); null for all")


def train(documents: Callable[[], Iterable[str]], cfg: TokenizerConfig) -> PreTrainedTokenizerBase:
    """A BERT-style WordPiece tokenizer: BertNormalizer, BertPreTokenizer, [CLS] A [SEP] (B [SEP]).

    The same documents give the same tokenizer in every process. tokenizers' trainer numbers the
    word-continuing characters ('##e') in the order of a hash map seeded per process, and breaks ties
    between equally frequent merges by those numbers, so it kept other pieces in each process
    (huggingface/tokenizers#1794). A first, merge-less pass over `documents()` finds those characters;
    the real pass gets them up front, in code-point order, and they leave the special tokens after it."""
    continuing = sorted(piece for piece in _fit(documents(), cfg, [], len(SPECIAL_TOKENS) + 1).get_vocab()
                        if piece.startswith(CONTINUING_PREFIX) and len(piece) == len(CONTINUING_PREFIX) + 1)
    tok = _fit(documents(), cfg, continuing, cfg.vocab_size)
    _renumber_in_code_point_order(tok)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return BertTokenizer(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                         cls_token="[CLS]", mask_token="[MASK]",
                         # BertTokenizer rebuilds its normalizer from these on load: keep them in step.
                         do_lower_case=cfg.lowercase, strip_accents=cfg.lowercase,
                         tokenize_chinese_chars=cfg.split_cjk_chars)


def _fit(documents: Iterable[str], cfg: TokenizerConfig, continuing: list[str], vocab_size: int) -> Tokenizer:
    """WordPiece trained with `continuing` pieces numbered right after the specials (as special tokens of
    the trainer; they are plain pieces again in the tokenizer returned)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=cfg.split_cjk_chars,
                                                strip_accents=cfg.lowercase, lowercase=cfg.lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUING_PREFIX)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=cfg.min_frequency,
                                        special_tokens=SPECIAL_TOKENS + continuing,
                                        continuing_subword_prefix=CONTINUING_PREFIX)
    tok.train_from_iterator(documents, trainer)
    if not continuing:
        return tok
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    return Tokenizer.from_str(json.dumps(state))


def _renumber_in_code_point_order(tok: Tokenizer) -> None:
    """The specials first, then every piece in code-point order (the trainer numbers pieces in the order
    it made them)."""
    pieces = sorted(set(tok.get_vocab(with_added_tokens=False)) - set(SPECIAL_TOKENS))
    vocab = {piece: i for i, piece in enumerate([*SPECIAL_TOKENS, *pieces])}
    assert all(tok.token_to_id(t) == vocab[t] for t in SPECIAL_TOKENS)  # the trainer put them first, in order
    trained = tok.model
    tok.model = models.WordPiece(vocab, unk_token=trained.unk_token,
                                 max_input_chars_per_word=trained.max_input_chars_per_word,
                                 continuing_subword_prefix=trained.continuing_subword_prefix)


def load(path: str | Path) -> PreTrainedTokenizerBase:
    """A saved fast tokenizer with the specials BERT-style objectives need."""
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"data.tokenizer.path '{path}': not a transformers tokenizer folder ({e}); "
                        "give a folder with tokenizer.json, or remove the key to train one") from None
    missing = [name for name in ("pad_token", "cls_token", "sep_token", "mask_token", "unk_token")
               if getattr(tok, name) is None]
    if missing:
        raise UserError(f"data.tokenizer.path '{path}': the tokenizer lacks {', '.join(missing)}; "
                        "use a BERT-style tokenizer or train one")
    return tok


def fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's vocabulary and processing pipeline: what shards and artifacts depend on."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
