"""The `neighbours` artifact's format and its vectorised lookups: similar words for `mac`, precomputed by
data_prep (`data_prep.lexicon`) for one tokenizer, so training never touches a lexicon.

A word is a sequence of token ids (its WordPiece pieces, or a Chinese word's characters). Files:
    words.npy       int32[W, T]   token ids of each entry, -1 after its end. The corpus words come first,
                                  sorted by token length, then by frequency; entries that only occur as
                                  someone's neighbour follow (count 0).
    counts.npy      int64[W]      occurrences in the training rows
    neighbours.npy  int32[W, K]   entries similar to each corpus word, best first, all with its token
                                  length (so a replacement keeps the labels aligned); -1 = none
    scores.npy      float32[W, K] their similarity (cosine, or 1/(1 + sense rank) for lexicons)
    meta.json       provider, settings and coverage
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# Two polynomial hashes, each modulo a prime below 2^30, make one 60-bit key; lookups compare the tokens
# too, so a collision can only cost a miss, never a wrong word.
_HASHES = ((131_071, 1_000_000_007), (524_287, 998_244_353))


def word_keys(words: torch.Tensor) -> torch.Tensor:
    """int64[N]: a hash of each row of token ids; -1 padding adds nothing, so any padding width gives
    the same key."""
    values = (words.long() + 1).clamp(min=0)
    key = torch.zeros(len(words), dtype=torch.long)
    for base, prime in _HASHES:
        powers = torch.tensor([pow(base, j, prime) for j in range(words.shape[1])], dtype=torch.long)
        key = key * prime + ((values % prime) * powers).remainder(prime).sum(dim=1).remainder(prime)
    return key


def save(folder: Path, words: np.ndarray, counts: np.ndarray, neighbours: np.ndarray, scores: np.ndarray,
         meta: dict) -> None:
    np.save(folder / "words.npy", words.astype(np.int32))
    np.save(folder / "counts.npy", counts.astype(np.int64))
    np.save(folder / "neighbours.npy", neighbours.astype(np.int32))
    np.save(folder / "scores.npy", scores.astype(np.float32))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))


class NeighbourTable:
    """The artifact in memory, with the three questions `mac` asks during corruption."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.words = torch.from_numpy(np.load(self.folder / "words.npy")).long()
        self.neighbours = torch.from_numpy(np.load(self.folder / "neighbours.npy")).long()
        counts = np.load(self.folder / "counts.npy")
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.lengths = (self.words >= 0).sum(dim=1)
        self.width = self.words.shape[1]
        corpus = int((counts > 0).sum())
        self.sorted_keys, self.key_order = word_keys(self.words[:corpus]).sort()
        # corpus words of one token length are contiguous: entries [first[n], first[n + 1])
        self.length_first = torch.searchsorted(self.lengths[:corpus].contiguous(), torch.arange(self.width + 3))

    def lookup(self, words: torch.Tensor) -> torch.Tensor:
        """long[N]: the corpus entry of each word (rows of token ids, -1 padded), or -1."""
        if len(self.sorted_keys) == 0:
            return torch.full((len(words),), -1, dtype=torch.long)
        lengths = (words >= 0).sum(dim=1)
        place = torch.searchsorted(self.sorted_keys, word_keys(words)).clamp(max=len(self.sorted_keys) - 1)
        entry = self.key_order[place]
        width = min(self.width, words.shape[1])
        same = ((self.sorted_keys[place] == word_keys(words)) & (self.lengths[entry] == lengths)
                & (self.words[entry, :width] == words[:, :width]).all(dim=1) & (lengths <= self.width))
        return torch.where(same, entry, -1)

    def similar(self, entries: torch.Tensor, top_k: int, generator: torch.Generator) -> torch.Tensor:
        """long[N]: a similar entry for each entry (-1 = none): uniform over its best `top_k`, so the best
        one when top_k is 1."""
        candidates = self.neighbours[entries.clamp(min=0), :top_k]
        available = (candidates >= 0).sum(dim=1) * (entries >= 0)
        pick = (torch.rand(len(entries), generator=generator) * available).long().clamp(max=top_k - 1)
        return torch.where(available > 0, candidates.gather(1, pick[:, None]).squeeze(1), -1)

    def random_word(self, lengths: torch.Tensor, exclude: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """long[N]: a corpus word of each token length, uniform over the word types, never the entry
        `exclude` (-1 = nothing to exclude); -1 when the corpus has no other word of that length."""
        n = lengths.clamp(max=self.width + 1)
        first = self.length_first[n]
        excluded = (exclude >= 0).long()
        pool = self.length_first[n + 1] - first - excluded
        draw = (torch.rand(len(lengths), generator=generator) * pool.clamp(min=0)).long()
        draw = draw + (excluded.bool() & (first + draw >= exclude)).long()
        return torch.where(pool > 0, first + draw, -1)
