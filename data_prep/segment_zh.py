"""Chinese word boundaries for whole-word masking (SPEC §2b): a segmenter cuts each document into words,
and the tokens of every multi-character, all-CJK word after its first character become continuations.

This is `run_chinese_ref.py`'s reference file done in place: its word positions are character offsets
of the same text the tokenizer saw, so they are exact whatever the packing and truncation that follow
(the flags travel with the tokens). The tokenizer must split CJK text into single characters, as Chinese
BERT does (`data.tokenizer.split_cjk_chars`).

Segmenters, registered in `data_prep.words.SEGMENTERS`:
- `jieba` (default for Chinese): its dictionary ships in the wheel, so it works offline.
- `ltp`: LTP's neural segmenter (the one Chinese-BERT-wwm used), only from weights already on disk
  (`data.segmenter_options.model_path`); it is never downloaded.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np
from pydantic import Field, ValidationError

from pretrain_bench.errors import UserError
from pretrain_bench.section import Section

# Code points BERT treats as Chinese characters (`BasicTokenizer._is_chinese_char`).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))

Cut = Callable[[Sequence[str]], list[list[str]]]  # documents -> their words, which concatenate to the text


class JiebaOptions(Section):
    """data.segmenter_options for segmenter: jieba."""

    hmm: bool = Field(True, description="let jieba's HMM join characters absent from its dictionary into words")
    user_dict: str | None = Field(None, description="a jieba user dictionary file (word [freq] [tag] per line)")


class LtpOptions(Section):
    """data.segmenter_options for segmenter: ltp."""

    model_path: str = Field(description="folder of local LTP weights (with config.json), e.g. a saved LTP/small")
    batch_size: int = Field(64, ge=1, description="documents per LTP call")


OPTIONS: dict[str, type[Section]] = {"jieba": JiebaOptions, "ltp": LtpOptions}  # by data.segmenter


def is_cjk(codes: np.ndarray) -> np.ndarray:
    """bool per code point: a Chinese character in BERT's sense."""
    out = np.zeros(codes.shape, dtype=bool)
    for low, high in CJK_RANGES:
        out |= (codes >= low) & (codes <= high)
    return out


def continuation_chars(text: str, words: Sequence[str]) -> np.ndarray:
    """bool per character of `text`: a non-initial character of a multi-character, all-CJK word.
    Words are found in the text in order, so a segmenter may drop whitespace (LTP does)."""
    starts = np.empty(len(words), dtype=np.int64)
    cursor = 0
    for i, word in enumerate(words):
        found = text.find(word, cursor)
        if found < 0:
            raise UserError(f"data.segmenter: the word {word!r} is not in its text {text[:40]!r}...; "
                            "the segmenter changed the text, use another one")
        starts[i] = found
        cursor = found + len(word)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    cjk = is_cjk(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
    inside = np.cumsum(np.r_[0, cjk])  # CJK characters before each offset
    qualifies = (lengths > 1) & (inside[starts + lengths] - inside[starts] == lengths)
    # +1 after each qualifying word's first character, -1 at its end: positive inside, after the first
    marks = np.zeros(len(text) + 1, dtype=np.int64)
    np.add.at(marks, starts[qualifies] + 1, 1)
    np.add.at(marks, starts[qualifies] + lengths[qualifies], -1)
    return np.cumsum(marks)[:-1] > 0


def refine(texts: Sequence[str], encodings: Sequence, flags: list[np.ndarray], cut: Cut) -> list[np.ndarray]:
    """The '##' flags with each token that starts on a continuation character turned into a continuation."""
    out = []
    for text, words, encoding, doc_flags in zip(texts, cut(texts), encodings, flags):
        if not len(doc_flags):
            out.append(doc_flags)
            continue
        offsets = np.asarray(encoding.offsets, dtype=np.int64)
        spans = offsets[:, 1] - offsets[:, 0]
        chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        begins = np.minimum(offsets[:, 0], max(len(text) - 1, 0))
        if np.any((spans > 1) & is_cjk(chars[begins])):
            raise UserError("data.segmenter: Chinese word boundaries need one token per CJK character; set "
                            "data.tokenizer.split_cjk_chars=true (as Chinese BERT) or data.segmenter=wordpiece")
        out.append(doc_flags & ~continuation_chars(text, words)[begins])
    return out


def checked_options(cls: type[Section], options: dict, segmenter: str) -> Section:
    try:
        return cls(**options)
    except ValidationError as e:
        problems = "; ".join(f"'{'.'.join(map(str, err['loc']))}': {err['msg']}" for err in e.errors())
        raise UserError(f"data.segmenter_options for segmenter {segmenter}: {problems}; "
                        f"valid keys: {', '.join(cls.model_fields)}") from None


def jieba(options: dict):
    """The jieba refiner (a factory named in SEGMENTERS)."""
    import jieba as jieba_

    opts = checked_options(JiebaOptions, options, "jieba")
    jieba_.setLogLevel(logging.WARNING)  # no "Building prefix dict" chatter from every worker
    segmenter = jieba_.Tokenizer()
    if opts.user_dict:
        if not os.path.isfile(opts.user_dict):
            raise UserError(f"data.segmenter_options.user_dict '{opts.user_dict}' does not exist; give a jieba "
                            "user dictionary file or remove the key")
        segmenter.load_userdict(opts.user_dict)
    segmenter.initialize()

    def cut(texts):
        return [list(segmenter.cut(t, HMM=opts.hmm)) for t in texts]

    return lambda texts, encodings, flags: refine(texts, encodings, flags, cut)


def ltp(options: dict):
    """The LTP refiner, from local weights only (a factory named in SEGMENTERS)."""
    opts = checked_options(LtpOptions, options, "ltp")
    if not os.path.isfile(os.path.join(opts.model_path, "config.json")):
        raise UserError(f"data.segmenter_options.model_path '{opts.model_path}' holds no LTP weights (config.json); "
                        "LTP models are never downloaded here: save one there first, or use data.segmenter=jieba")
    try:
        from ltp import LTP
    except ImportError:
        raise UserError("data.segmenter=ltp needs the ltp package (pip install ltp); or use data.segmenter=jieba") from None
    model = LTP(opts.model_path, local_files_only=True)

    def cut(texts):
        words = []
        for start in range(0, len(texts), opts.batch_size):
            words += model.pipeline(list(texts[start:start + opts.batch_size]), tasks=["cws"]).cws
        return words

    return lambda texts, encodings, flags: refine(texts, encodings, flags, cut)
