"""Batched tokenization into flat arrays, in worker processes. Imports nothing heavy: workers load
the tokenizer from its tokenizer.json and the segmenter only if one is chosen."""

from __future__ import annotations

import os
from itertools import chain

import numpy as np
from tokenizers import Tokenizer

from data_prep.pack import Tokenized
from data_prep.words import continuation_table, refiner

_state: dict = {}


def init_worker(tokenizer_file: str, segmenter: str, options: dict, in_pool: bool) -> None:
    if in_pool:  # one process per core: no nested Rust thread pools
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tok = Tokenizer.from_file(tokenizer_file)
        tok.encode_special_tokens = True  # '[PAD]' written in a document is text, not the pad token
        _state.update(tok=tok, continuation=continuation_table(tok.get_vocab(with_added_tokens=True)),
                      refine=refiner(segmenter, options))
    except Exception as e:
        if not in_pool:
            raise
        _state["error"] = e  # raised by the first job: a Pool restarts a failing initializer for ever


def tokenize(job: tuple[str, list[str]]) -> tuple[str, Tokenized, int]:
    """(split, documents) -> (split, their tokens, bytes of text consumed)."""
    if "error" in _state:
        raise _state["error"]
    split, texts = job
    tok, refine = _state["tok"], _state["refine"]
    encodings = (tok.encode_batch if refine else tok.encode_batch_fast)(texts, add_special_tokens=False)
    id_lists = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(lengths.sum()))
    starts = ~_state["continuation"][ids]
    if refine:
        per_doc = np.split(starts, np.cumsum(lengths)[:-1])
        starts = np.concatenate(refine(texts, encodings, per_doc)) if len(per_doc) else starts
    return split, Tokenized(ids, starts, lengths), sum(len(t.encode("utf-8")) for t in texts)
