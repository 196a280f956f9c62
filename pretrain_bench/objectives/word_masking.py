"""Word-level selection shared by `wwm` and `mac` (SPEC §2, §3), vectorised over the batch.

Everything works in position space, [B, L]: an *item* (a word, or an n-gram span of words) is marked at
its first token, and every token knows the start of the item it belongs to (`owner`), so a decision
taken once per item reaches all its tokens with one `gather`.

A *word unit* is a maximal run of candidate tokens (not special, not padding) that starts at a
`word_start` flag: a whole word, except that a special token inside a word (a Chinese word containing
an `[UNK]` character) splits it around that token, which is never selected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain_bench.objectives import masking
from pretrain_bench.objectives.base import Vocab


def unit_starts(input_ids: torch.Tensor, word_start: torch.Tensor, vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidates, unit starts): bool[B, L] each."""
    cand = masking.candidates(input_ids, vocab)
    after_non_candidate = ~F.pad(cand[:, :-1], (1, 0), value=False)
    return cand, cand & (word_start.bool() | after_non_candidate)


def owner(starts: torch.Tensor) -> torch.Tensor:
    """long[B, L]: the position of the last item start at or before each position (0 before the first)."""
    positions = torch.arange(starts.shape[1]).expand_as(starts)
    return torch.where(starts, positions, 0).cummax(dim=1).values


def sizes(starts: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """long[B, L]: how many `counted` positions each item holds, stored at the item's start (0 elsewhere).
    `counted` must be False between items (e.g. candidates, or unit starts for sizes in words)."""
    total = torch.zeros(starts.shape, dtype=torch.long).scatter_add_(1, owner(starts), counted.long())
    return total * starts


def fill_in_random_order(starts: torch.Tensor, item_sizes: torch.Tensor, keys: torch.Tensor,
                         capacity: torch.Tensor) -> torch.Tensor:
    """Google's fixed-budget fill (`create_masked_lm_predictions`): visit the items in ascending `keys`
    order and take each one that still fits in `capacity[b]`, skipping (not stopping at) one that does
    not. Returns bool[B, L], True at the starts of the items taken.

    One pass takes every item before the first that overflows; that item, and every later one larger
    than the room left before it, cannot fit any more and is dropped (the room only shrinks). The loop
    therefore runs once per overflow, a handful of times, never once per token.
    """
    order = torch.where(starts, keys, 2.0).argsort(dim=1)  # items first, in random order
    size = item_sizes.gather(1, order)
    alive = starts.gather(1, order)
    position = torch.arange(starts.shape[1])
    while True:
        total = torch.cumsum(size * alive, dim=1)
        over = alive & (total > capacity[:, None])
        if not over.any():
            break
        first = over.long().argmax(dim=1, keepdim=True)
        room = capacity[:, None] - (total.gather(1, first) - size.gather(1, first))
        alive &= ~(over.any(dim=1, keepdim=True) & (position >= first) & (size > room))
    return torch.zeros_like(starts).scatter_(1, order, alive)


def spread(taken_starts: torch.Tensor, starts: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """bool[B, L]: every candidate token of the items whose start is taken."""
    return cand & taken_starts.gather(1, owner(starts))


def ngram_spans(cand: torch.Tensor, units: torch.Tensor, probs: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MacBERT's n-gram spans with a sequential pointer (author, ymcui/MacBERT#13): at the pointer's word
    draw n with `probs` (n = 1..len(probs)), the span is the next n words, truncated where the text run
    ends (a special token or the row end), and the pointer moves n words on.

    The j-th span of a run takes the j-th draw of that run, so the span starts are an exclusive cumulative
    sum of i.i.d. draws: no loop. Returns (span starts bool[B, L], the n drawn for each span long[B, L]).
    """
    rows, cols = units.nonzero(as_tuple=True)  # word units in reading order
    count = len(rows)
    span_starts = torch.zeros_like(units)
    drawn_at = torch.zeros(units.shape, dtype=torch.long)
    if count == 0:
        return span_starts, drawn_at
    after_non_candidate = ~F.pad(cand[:, :-1], (1, 0), value=False)
    run_first = after_non_candidate[rows, cols]  # first word of a run of text
    run_of = torch.cumsum(run_first.long(), 0) - 1
    first_index = run_first.nonzero().squeeze(1)
    run_length = torch.bincount(run_of)
    draws = torch.multinomial(probs, count, replacement=True, generator=generator) + 1
    ends = torch.cumsum(draws, 0)
    base = (ends - draws)[first_index]  # words drawn before each run
    offset = ends - draws - base[run_of]  # where the j-th span of the run starts, in words
    valid = offset < run_length[run_of]
    target = first_index[run_of[valid]] + offset[valid]
    span_starts[rows[target], cols[target]] = True
    drawn_at[rows[target], cols[target]] = draws[valid]
    return span_starts, drawn_at
