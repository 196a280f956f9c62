"""Word boundaries as per-token `word_start` flags, stored with the packed rows.

English: a token starting with '##' continues the previous word (BERT's `do_whole_word_mask` rule).
Other segmenters refine those flags from the text (Chinese: multi-character words from a segmenter).
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import numpy as np


# A refiner takes the documents, their tokenizers.Encodings and the '##'-based flags (one bool array
# per document) and returns refined flags. Factories are named 'module:function' and imported only
# when chosen, so a tokenization worker loads no segmenter it does not use.
Refiner = Callable[[Sequence[str], Sequence[object], list[np.ndarray]], list[np.ndarray]]
SEGMENTERS: dict[str, str | None] = {"wordpiece": None, "jieba": "data_prep.segment_zh:jieba",
                                      "ltp": "data_prep.segment_zh:ltp"}
# the packages whose versions decide the words, so key the cache (LTP's model code lives in ltp-core)
SEGMENTER_PACKAGES: dict[str, tuple[str, ...]] = {"jieba": ("jieba",), "ltp": ("ltp", "ltp-core")}


def refiner(name: str, options: dict) -> Refiner | None:
    """The refiner for data.segmenter, a name DataConfig has checked (None: '##' rule only)."""
    target = SEGMENTERS[name]
    if target is None:
        return None
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)(options)


def continuation_table(vocab: dict[str, int]) -> np.ndarray:
    """bool[vocab]: True for '##' word pieces."""
    table = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for token, idx in vocab.items():
        table[idx] = token.startswith("##")
    return table
