"""`segment_pairs`: rows for sentence-order prediction (SOP; ALBERT arXiv:1909.11942, as MacBERT uses it).

Each pair is `[CLS] A [SEP] B [SEP]` where A and B are consecutive pieces of one chunk of one document,
split at a random sentence boundary (`create_instances_from_document` in ALBERT's
`create_pretraining_data.py`). Pairs are stored in the original order; the objective swaps A and B with
p = 0.5 at training time (label 1 = swapped), so every epoch sees fresh pairs, and no pair ever mixes two
documents (SPEC §3).

A row holds as many pairs as fit (best-fit decreasing over the pairs of a batch of documents), as
Krell et al. pack BERT's sentence pairs ("Efficient Sequence Packing without Cross-contamination",
arXiv:2107.02027): one pair per row, as ALBERT writes them, left 27% of rows of 128 padding on
`corpus/en` and 60% on `corpus/zh` (0.6% and 2.7% packed). `pair_bounds[row, k] = (start, B's start)`
of the row's k-th pair (unused slots hold `seq_len`); a pair ends where the next begins, the last where
the padding does. The objective gives each pair its own positions and a block-diagonal attention mask,
so no pair sees another.

Where ALBERT differs from what is possible here, as the docs say:
- A chunk of a single sentence (a one-sentence review, say) cannot be split at a sentence boundary and
  ALBERT would pair it with a random document; it is split at a random word boundary instead.
- A sentence longer than a row is cut into row-sized pieces first, rather than truncated away.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from data_prep.pack import Packer, SpecialIds, Tokenized, register_packer

SENTENCE_END = (".", "!", "?", "。", "！", "？", "…")
SHORT_SEQ_PROB = 0.1  # ALBERT/BERT: this share of documents aims at a random shorter length
SHORTEST_PAIR = 5  # [CLS] a [SEP] b [SEP]


def max_pairs(seq_len: int) -> int:
    """Slots of `pair_bounds` per row: as many of the shortest pairs as a row holds."""
    return max(1, seq_len // SHORTEST_PAIR)


def truncated_lengths(a: int, b: int, max_tokens: int) -> tuple[int, int]:
    """The lengths ALBERT's `truncate_seq_pair` ends with: it removes one token at a time from the longer
    piece, from B on ties."""
    excess = a + b - max_tokens
    if excess <= 0:
        return a, b
    gap = abs(a - b)
    if excess <= gap:
        return (a - excess, b) if a > b else (a, b - excess)
    rest, shorter = excess - gap, min(a, b)
    return shorter - rest // 2, shorter - (rest + 1) // 2


@register_packer("segment_pairs")
class SegmentPairPacker(Packer):
    """One document at a time: sentences gathered into chunks of about a row, each chunk one A/B pair;
    the pairs of a batch of documents packed into rows."""

    version = 2  # 1: one pair per row

    def __init__(self, seq_len: int, special: SpecialIds, sentence_end_ids=()):
        super().__init__(seq_len, special)
        self.max_tokens = seq_len - 3  # [CLS] A [SEP] B [SEP]
        self.sentence_end = np.asarray(sorted(sentence_end_ids), dtype=np.int64)
        self.rng = np.random.default_rng(1909_11942)  # fixed: the data config's hash decides the rows

    @classmethod
    def for_tokenizer(cls, seq_len: int, special: SpecialIds, tokenizer) -> "SegmentPairPacker":
        vocab = tokenizer.get_vocab()
        return cls(seq_len, special, [vocab[t] for t in SENTENCE_END if t in vocab])

    def add(self, batch: Tokenized) -> Iterator[dict[str, np.ndarray]]:
        pairs = []
        ends = np.cumsum(batch.lengths)
        for start, end in zip(ends - batch.lengths, ends):
            pairs += self._document(batch.ids[start:end], batch.word_start[start:end])
        if pairs:
            yield self._rows(pairs)

    def _document(self, ids: np.ndarray, starts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """(ids, word starts, where B starts) of each pair made from one document."""
        if len(ids) < 2:
            return []
        sentence = np.flatnonzero(np.isin(ids[:-1], self.sentence_end) & starts[1:]) + 1
        bounds = np.unique(np.concatenate([[0], sentence, [len(ids)]]))
        # sentences longer than a row become row-sized pieces
        long_cuts = [np.arange(a + self.max_tokens, b, self.max_tokens) for a, b in zip(bounds[:-1], bounds[1:])]
        bounds = np.unique(np.concatenate([bounds, *long_cuts]))
        target = self.max_tokens
        if self.rng.random() < SHORT_SEQ_PROB:
            target = int(self.rng.integers(2, self.max_tokens + 1))
        pairs, first, length = [], 0, 0
        for i in range(len(bounds) - 1):
            length += bounds[i + 1] - bounds[i]
            if i == len(bounds) - 2 or length >= target:
                pair = self._pair(ids, starts, bounds[first: i + 2])
                if pair is not None:
                    pairs.append(pair)
                first, length = i + 1, 0
        return pairs

    def _pair(self, ids: np.ndarray, starts: np.ndarray, bounds: np.ndarray):
        begin, end = int(bounds[0]), int(bounds[-1])
        if len(bounds) > 2:  # split at a sentence boundary
            split = int(bounds[self.rng.integers(1, len(bounds) - 1)])
        else:  # one sentence: split at a word boundary (or, inside one long word, anywhere)
            inner = np.flatnonzero(starts[begin + 1:end]) + begin + 1
            if len(inner) == 0 and end - begin < 2:
                return None
            split = int(self.rng.choice(inner)) if len(inner) else int(self.rng.integers(begin + 1, end))
        a, b = truncated_lengths(split - begin, end - split, self.max_tokens)
        a_front = int(self.rng.binomial(split - begin - a, 0.5))  # ALBERT trims either end at random
        b_front = int(self.rng.binomial(end - split - b, 0.5))
        a_ids, b_ids = ids[begin + a_front: begin + a_front + a], ids[split + b_front: split + b_front + b]
        a_starts = starts[begin + a_front: begin + a_front + a].copy()
        b_starts = starts[split + b_front: split + b_front + b].copy()
        a_starts[0] = b_starts[0] = True  # a word cut by the trim restarts as a word
        sep, cls = np.array([self.special.sep]), np.array([self.special.cls])
        return (np.concatenate([cls, a_ids, sep, b_ids, sep]),
                np.concatenate([[True], a_starts, [True], b_starts, [True]]), a + 2)

    def _rows(self, pairs) -> dict[str, np.ndarray]:
        rows = self._fill([len(ids) for ids, _, _ in pairs])
        input_ids = np.full((len(rows), self.seq_len), self.special.pad, dtype=np.int32)
        word_start = np.ones((len(rows), self.seq_len), dtype=bool)
        bounds = np.full((len(rows), max_pairs(self.seq_len), 2), self.seq_len, dtype=np.int32)
        for r, members in enumerate(rows):
            at = 0
            for k, i in enumerate(sorted(members)):  # document order within the row
                ids, starts, b = pairs[i]
                input_ids[r, at: at + len(ids)] = ids
                word_start[r, at: at + len(ids)] = starts
                bounds[r, k] = at, at + b
                at += len(ids)
        return {"input_ids": input_ids, "word_start": word_start, "pair_bounds": bounds}

    def _fill(self, lengths: list[int]) -> list[list[int]]:
        """Best-fit decreasing: each pair, longest first, goes to the row it leaves the least space in.
        Returns the pairs' indices, row by row."""
        rows: list[list[int]] = []
        with_space: list[list[int]] = [[] for _ in range(self.seq_len + 1)]  # space left -> rows
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            need = lengths[i]
            space = next((s for s in range(need, self.seq_len + 1) if with_space[s]), None)
            if space is None:
                row, space = len(rows), self.seq_len
                rows.append([])
            else:
                row = with_space[space].pop()
            rows[row].append(i)
            if space - need >= SHORTEST_PAIR:  # so a row never holds more than max_pairs
                with_space[space - need].append(row)
        return rows
