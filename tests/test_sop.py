"""Sentence-order prediction: ALBERT's pairs in data_prep, the swap at training time (SPEC §3 SOP)."""

import numpy as np
import pytest
import torch

from data_prep.pack import SpecialIds, Tokenized
from data_prep.prepare import DataConfig, prepare
from data_prep.sop import SegmentPairPacker, truncated_lengths
from pretrain_bench.objectives.mac import swap_segments
from tests.word_rows import all_rows, single_thread  # noqa: F401

SPECIAL = SpecialIds(cls=2, sep=3, pad=0)


def albert_truncate(a: int, b: int, max_tokens: int) -> tuple[int, int]:
    """albert/create_pretraining_data.py::truncate_seq_pair, token by token."""
    while a + b > max_tokens:
        if a > b:
            a -= 1
        else:
            b -= 1
    return a, b


def test_truncation_matches_albert():
    for a in range(1, 70):
        for b in range(1, 70):
            assert truncated_lengths(a, b, 40) == albert_truncate(a, b, 40), (a, b)


def documents(count: int, seed: int = 0):
    """Documents whose token ids are consecutive and unique, so every piece can be traced back; the last
    token of each sentence is listed as a sentence end."""
    rng = np.random.default_rng(seed)
    ids, starts, lengths, ends, next_id = [], [], [], [], 10
    for _ in range(count):
        sentences = rng.integers(3, 40, rng.integers(1, 7))
        n = int(sentences.sum())
        ids.append(np.arange(next_id, next_id + n))
        flags = rng.random(n) < 0.7
        flags[np.cumsum(sentences)[:-1]] = flags[0] = True
        starts.append(flags)
        ends += (next_id + np.cumsum(sentences) - 1).tolist()
        lengths.append(n)
        next_id += n + 1000  # a gap: pieces of two documents are never consecutive
    return Tokenized(np.concatenate(ids).astype(np.int32), np.concatenate(starts), np.array(lengths)), set(ends)


def test_pairs_come_from_one_document_and_split_at_sentences():
    batch, ends = documents(1500)
    packer = SegmentPairPacker(64, SPECIAL, sorted(ends))
    rows = next(packer.add(batch))
    ids, b_start = rows["input_ids"].astype(np.int64), rows["b_start"]
    assert rows["word_start"].shape == ids.shape == (len(b_start), 64)
    assert len(b_start) > 1500  # every document gives at least one row, long ones several
    sentence_split = one_sentence = 0
    for row, b in zip(ids, b_start):
        length = int((row != SPECIAL.pad).sum())
        assert row[0] == SPECIAL.cls and row[b - 1] == SPECIAL.sep and row[length - 1] == SPECIAL.sep
        a_ids, b_ids = row[1:b - 1], row[b:length - 1]
        assert len(a_ids) >= 1 and len(b_ids) >= 1 and length <= 64
        assert (np.diff(a_ids) == 1).all() and (np.diff(b_ids) == 1).all()  # contiguous pieces
        assert 0 <= b_ids[0] - a_ids[-1] - 1 < 1000  # B follows A in the same document
        if b_ids[0] == a_ids[-1] + 1 and len(a_ids) + len(b_ids) < 61:  # nothing trimmed between them
            if a_ids[-1] in ends:
                sentence_split += 1
            else:
                one_sentence += 1
                assert not ends.intersection(a_ids.tolist())  # only a one-sentence chunk splits inside
    assert sentence_split > 500 and one_sentence > 50
    assert rows["word_start"][:, 1].all() and rows["word_start"][np.arange(len(b_start)), b_start].all()


def synthetic_pairs(rows: int, length: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(1, 60, (rows,), generator=g)
    b = (torch.rand(rows, generator=g) * (length - 3 - a)).long() + 1
    p = torch.arange(length)[None, :]
    ids = torch.randint(10, 1000, (rows, length), generator=g)
    ids = torch.where((p == a[:, None] + 1) | (p == a[:, None] + b[:, None] + 2), SPECIAL.sep, ids)
    ids = torch.where(p > a[:, None] + b[:, None] + 2, SPECIAL.pad, ids)
    ids[:, 0] = SPECIAL.cls
    return ids, torch.rand(rows, length, generator=g) < 0.6, a + 2, a, b


def test_swap_label_rate_token_types_and_reconstruction():
    ids, starts, b_start, a, b = synthetic_pairs(20000)
    out_ids, out_starts, types, label = swap_segments(ids, starts, b_start, SPECIAL.pad,
                                                      torch.Generator().manual_seed(0))
    assert abs(label.float().mean().item() - 0.5) < 0.01
    kept = label == 0
    assert torch.equal(out_ids[kept], ids[kept]) and torch.equal(out_starts[kept], starts[kept])
    for r in torch.nonzero(~kept).squeeze(1)[:2000].tolist():
        la, lb = int(a[r]), int(b[r])
        row, original = out_ids[r], ids[r]
        assert row[0] == SPECIAL.cls and row[lb + 1] == SPECIAL.sep and row[la + lb + 2] == SPECIAL.sep
        rebuilt = torch.cat([row[:1], row[lb + 2: lb + 2 + la], row[lb + 1: lb + 2], row[1: lb + 1], row[la + lb + 2:]])
        assert torch.equal(rebuilt, original)
        moved = torch.cat([out_starts[r, :1], out_starts[r, lb + 2: lb + 2 + la], out_starts[r, lb + 1: lb + 2],
                           out_starts[r, 1: lb + 1], out_starts[r, la + lb + 2:]])
        assert torch.equal(moved, starts[r])
    first_sep = torch.where(kept, a + 1, b + 1)
    p = torch.arange(ids.shape[1])[None, :]
    expected = (p > first_sep[:, None]) & (ids != SPECIAL.pad)
    assert torch.equal(types.bool(), expected)


def test_prepare_writes_pairs(corpus_file, cache_dir):
    cfg = DataConfig(path=str(corpus_file), cache_dir=str(cache_dir), seq_len=64, num_proc=1,
                     tokenizer={"vocab_size": 400})
    prepared = prepare(cfg, "segment_pairs", log=lambda m: None)
    assert prepared.manifest["packing"] == "segment_pairs"
    rows = all_rows(prepared)
    assert set(rows) == {"input_ids", "word_start", "b_start"}
    ids, b_start = rows["input_ids"], rows["b_start"].long()
    assert (ids.gather(1, b_start[:, None] - 1) == prepared.tokenizer.sep_token_id).all()
    tokens = prepared.tokenizer.convert_ids_to_tokens(ids.gather(1, b_start[:, None] - 2).squeeze(1).tolist())
    assert np.mean([t == "." for t in tokens]) > 0.6  # A ends a sentence, unless ALBERT trimmed its end


@pytest.mark.parametrize("seq_len", [8, 128])
def test_short_rows_still_make_pairs(seq_len):
    batch, ends = documents(200, seed=1)
    rows = next(SegmentPairPacker(seq_len, SPECIAL, sorted(ends)).add(batch))
    lengths = (rows["input_ids"] != SPECIAL.pad).sum(1)
    assert (lengths <= seq_len).all() and (rows["b_start"] >= 2).all() and (rows["b_start"] < lengths - 1).all()
