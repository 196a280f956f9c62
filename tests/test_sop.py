"""Sentence-order prediction: ALBERT's pairs in data_prep, the swap at training time (SPEC §3 SOP)."""

import numpy as np
import pytest
import torch

from data_prep.pack import SpecialIds, Tokenized
from data_prep.prepare import DataConfig, prepare
from data_prep.sop import SegmentPairPacker, max_pairs, truncated_lengths
from pretrain_bench.objectives.mac import pair_attention_mask, swap_segments
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


def pairs_in(rows: dict) -> list[tuple[int, np.ndarray, int]]:
    """(row, the pair's tokens, where its B starts within them) of every stored pair."""
    out = []
    for r, (ids, bounds) in enumerate(zip(np.asarray(rows["input_ids"]), np.asarray(rows["pair_bounds"]))):
        filled = int((ids != SPECIAL.pad).sum())
        used = bounds[bounds[:, 0] < len(ids)].astype(int)
        assert (np.diff(used[:, 0]) > 0).all() and used[0, 0] == 0  # pairs abut from the row's start
        for (start, b), end in zip(used, [*used[1:, 0], filled]):
            out.append((r, ids[start:end], b - start))
    return out


def test_pairs_come_from_one_document_and_split_at_sentences():
    batch, ends = documents(1500)
    rows = next(SegmentPairPacker(64, SPECIAL, sorted(ends)).add(batch))
    ids = rows["input_ids"]
    assert rows["word_start"].shape == ids.shape and rows["pair_bounds"].shape == (len(ids), max_pairs(64), 2)
    pairs = pairs_in(rows)
    assert len(pairs) > 1500  # every document gives at least one pair, long ones several
    one_per_row = 1 - sum(len(pair) for _, pair, _ in pairs) / (64 * len(pairs))
    assert one_per_row > 0.05 and (ids == SPECIAL.pad).mean() < one_per_row / 5  # best fit fills the rows
    sentence_split = one_sentence = 0
    for _, pair, b in pairs:
        pair = pair.astype(np.int64)
        assert pair[0] == SPECIAL.cls and pair[b - 1] == SPECIAL.sep and pair[-1] == SPECIAL.sep
        a_ids, b_ids = pair[1:b - 1], pair[b:-1]
        assert len(a_ids) >= 1 and len(b_ids) >= 1
        assert (np.diff(a_ids) == 1).all() and (np.diff(b_ids) == 1).all()  # contiguous pieces
        assert 0 <= b_ids[0] - a_ids[-1] - 1 < 1000  # B follows A in the same document
        if b_ids[0] == a_ids[-1] + 1 and len(a_ids) + len(b_ids) < 61:  # nothing trimmed between them
            if a_ids[-1] in ends:
                sentence_split += 1
            else:
                one_sentence += 1
                assert not ends.intersection(a_ids.tolist())  # only a one-sentence chunk splits inside
    assert sentence_split > 500 and one_sentence > 50
    starts = rows["pair_bounds"][..., 0].astype(int)
    used = starts < 64
    row_of = np.nonzero(used)[0]
    assert rows["word_start"][row_of, starts[used] + 1].all()
    assert rows["word_start"][row_of, rows["pair_bounds"][..., 1][used].astype(int)].all()


def test_packing_keeps_every_pair_once():
    """Packing moves pairs between rows; it never loses, repeats or changes one."""
    batch, ends = documents(400, seed=2)
    packer = SegmentPairPacker(64, SPECIAL, sorted(ends))
    pairs = []
    for document in np.split(np.arange(len(batch.ids)), np.cumsum(batch.lengths)[:-1]):
        pairs += packer._document(batch.ids[document], batch.word_start[document])
    packed = pairs_in(SegmentPairPacker(64, SPECIAL, sorted(ends)).add(batch).__next__())
    assert sorted(tuple(pair.tolist()) + (b,) for _, pair, b in packed) == \
        sorted(tuple(ids.tolist()) + (b,) for ids, _, b in pairs)


def packed_rows(rows: int, length: int = 128, seed: int = 0):
    """Rows of random `[CLS] A [SEP] B [SEP]` pairs back to back, the rest padding: (ids, word starts,
    pair_bounds, [(row, start, a, b)] per pair)."""
    rng = np.random.default_rng(seed)
    ids = np.full((rows, length), SPECIAL.pad, dtype=np.int64)
    bounds = np.full((rows, max_pairs(length), 2), length, dtype=np.int16)
    pairs = []
    for r in range(rows):
        at, k = 0, 0
        while length - at >= 5 and (k == 0 or rng.random() < 0.8):
            room = length - at
            a = int(rng.integers(1, min(40, room - 4) + 1))
            b = int(rng.integers(1, min(40, room - a - 3) + 1))
            ids[r, at: at + a + b + 3] = [SPECIAL.cls, *rng.integers(10, 1000, a), SPECIAL.sep,
                                          *rng.integers(10, 1000, b), SPECIAL.sep]
            bounds[r, k] = at, at + a + 2
            pairs.append((r, at, a, b))
            at, k = at + a + b + 3, k + 1
    starts = torch.from_numpy(np.random.default_rng(seed + 1).random((rows, length)) < 0.6)
    return torch.from_numpy(ids), starts, torch.from_numpy(bounds), pairs


def test_swap_label_rate_token_types_positions_and_reconstruction():
    ids, starts, bounds, pairs = packed_rows(8000)
    assert len(pairs) > 2 * len(ids)
    out = swap_segments(ids, starts, bounds, SPECIAL.pad, torch.Generator().manual_seed(0))
    label = out["sop_label"]
    assert label.shape == (len(pairs),) and abs(label.float().mean().item() - 0.5) < 0.01
    out_ids, out_starts, types = out["input_ids"], out["word_start"], out["token_type_ids"]
    padding = ids == SPECIAL.pad
    assert torch.equal(out_ids[padding], ids[padding]) and (out["pair_ids"][padding] == -1).all()
    assert (types[padding] == 0).all() and (out["position_ids"][padding] == 0).all()
    pair_index = [sum(1 for other in pairs[:k] if other[0] == r) for k, (r, *_) in enumerate(pairs[:6001])]
    for k, ((r, start, a, b), swapped) in enumerate(zip(pairs, label.tolist())):
        if k > 6000:
            break
        span = slice(start, start + a + b + 3)
        row, original, moved = out_ids[r, span], ids[r, span], out_starts[r, span]
        assert (out["pair_ids"][r, span] == pair_index[k]).all()
        assert torch.equal(out["position_ids"][r, span], torch.arange(a + b + 3))
        if not swapped:
            assert torch.equal(row, original) and torch.equal(moved, starts[r, span])
            assert torch.equal(types[r, span], (torch.arange(a + b + 3) > a + 1).long())
            continue
        assert row[0] == SPECIAL.cls and row[b + 1] == SPECIAL.sep and row[-1] == SPECIAL.sep  # [CLS] B [SEP] A [SEP]
        for swapped_tokens, tokens in ((row, original), (moved, starts[r, span])):
            rebuilt = torch.cat([swapped_tokens[:1], swapped_tokens[b + 2: b + 2 + a], swapped_tokens[b + 1: b + 2],
                                 swapped_tokens[1: b + 1], swapped_tokens[-1:]])
            assert torch.equal(rebuilt, tokens)
        assert torch.equal(types[r, span], (torch.arange(a + b + 3) > b + 1).long())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pairs_see_only_themselves(attention):
    """A pair's hidden states and SOP loss are the same packed beside others as alone in a row (no
    cross-contamination, Krell et al.), with SDPA's boolean mask and eager attention's additive one; the
    SOP head reads every pair's [CLS] in the order of the labels."""
    from pretrain_bench.models import backbone
    from pretrain_bench.objectives import Vocab
    from pretrain_bench.objectives.mac import CorrectionLM

    vocab = Vocab(size=1000, pad_id=0, cls_id=2, sep_id=3, mask_id=4, unk_id=1, special_ids=(0, 1, 2, 3, 4))
    cfg = backbone.ModelConfig(size="tiny", max_position_embeddings=64, attn_implementation=attention)
    torch.manual_seed(0)
    module = CorrectionLM(backbone.build_mlm_model(cfg, vocab, with_pair_head=True), cfg, sop_weight=1.0).eval()
    ids, starts, bounds, pairs = packed_rows(16, length=64, seed=3)

    def forward(inputs, attention_mask):
        nothing_selected = torch.full_like(inputs["input_ids"], -1)
        return module(attention_mask=attention_mask, labels=nothing_selected,
                      corruption_type=torch.zeros_like(nothing_selected),
                      similar_wanted=torch.zeros_like(nothing_selected, dtype=torch.bool), **inputs)

    inputs = swap_segments(ids, starts, bounds, SPECIAL.pad, torch.Generator().manual_seed(1))
    inputs.pop("word_start")
    with torch.no_grad():
        packed = module.model.bert(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                                   token_type_ids=inputs["token_type_ids"],
                                   attention_mask=pair_attention_mask(inputs["pair_ids"], module.model))
        packed_sop = forward(inputs, (ids != SPECIAL.pad).long())["sop_loss"]
        alone_sop = []
        for k, (r, start, a, b) in enumerate(pairs):
            span = slice(start, start + a + b + 3)
            alone = {name: inputs[name][r:r + 1, span] for name in ("input_ids", "token_type_ids", "position_ids")}
            alone.update(pair_ids=torch.zeros_like(alone["input_ids"]), sop_label=inputs["sop_label"][k:k + 1])
            hidden = module.model.bert(input_ids=alone["input_ids"], token_type_ids=alone["token_type_ids"])
            torch.testing.assert_close(packed.last_hidden_state[r:r + 1, span], hidden.last_hidden_state,
                                       atol=1e-5, rtol=1e-4)
            alone_sop.append(forward(alone, torch.ones_like(alone["input_ids"]))["sop_loss"])
    assert sum(start > 0 for _, start, _, _ in pairs) > 10  # pairs that sat after others in their row
    torch.testing.assert_close(packed_sop, torch.stack(alone_sop).mean(), atol=1e-5, rtol=1e-4)


def test_prepare_writes_pairs(corpus_file, cache_dir):
    cfg = DataConfig(path=str(corpus_file), cache_dir=str(cache_dir), seq_len=64, num_proc=1,
                     tokenizer={"vocab_size": 400})
    prepared = prepare(cfg, "segment_pairs", log=lambda m: None)
    assert prepared.manifest["packing"] == "segment_pairs"
    rows = all_rows(prepared)
    assert set(rows) == {"input_ids", "word_start", "pair_bounds"}
    pairs = pairs_in(rows)
    assert len(pairs) > 1.3 * len(rows["input_ids"])
    assert all(pair[b - 1] == prepared.tokenizer.sep_token_id for _, pair, b in pairs)
    tokens = prepared.tokenizer.convert_ids_to_tokens([int(pair[b - 2]) for _, pair, b in pairs])
    assert np.mean([t == "." for t in tokens]) > 0.6  # A ends a sentence, unless ALBERT trimmed its end


@pytest.mark.parametrize("seq_len", [8, 128])
def test_short_rows_still_make_pairs(seq_len):
    batch, ends = documents(200, seed=1)
    rows = next(SegmentPairPacker(seq_len, SPECIAL, sorted(ends)).add(batch))
    pairs = pairs_in(rows)
    assert len(pairs) >= 200
    assert all(2 <= b < len(pair) - 1 and len(pair) <= seq_len for _, pair, b in pairs)
