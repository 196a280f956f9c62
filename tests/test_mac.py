"""SPEC §3 statistics of the `mac` corruption on >= 1e5 candidate tokens (synthetic words with a planted
neighbour table, and real corpora with WordNet and Cilin), and its checks."""

import numpy as np
import pytest
import torch

from data_prep import neighbour_table
from data_prep.lexicon import NeighboursConfig
from pretrain_bench.errors import UserError
from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.objectives import Corruption, Vocab, get, masking, word_masking
from pretrain_bench.objectives.mac import MacConfig
from tests.word_rows import (CHINESE_LEXICON, ENGLISH_LEXICON, VOCAB, all_rows, chinese_slice,  # noqa: F401
                             english_slice, partial_words, single_thread, synthetic_rows, word_groups)


def test_span_lengths_follow_the_ngram_distribution():
    ids, starts = synthetic_rows(200, length=512, seed=0)  # long runs: truncation touches < 0.5% of spans
    cand, units = word_masking.unit_starts(ids, starts, VOCAB)
    spans, drawn = word_masking.ngram_spans(cand, units, torch.tensor([0.4, 0.3, 0.2, 0.1]),
                                            torch.Generator().manual_seed(0))
    words = word_masking.sizes(spans, units)[spans]  # the span's length in words
    assert len(words) >= 1e4
    assert not (spans & ~units).any()  # spans start at words
    for n, share in enumerate((0.4, 0.3, 0.2, 0.1), start=1):
        assert abs((words == n).float().mean().item() - share) < 0.01
    # a span is the n words drawn, only the last of a run is cut short by its end
    short = words < drawn[spans]
    assert short.sum() <= len(ids) and torch.equal(words[~short], drawn[spans][~short])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Rows made of 3000 words of 1-4 tokens, half of them with 1-3 similar words in the table."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 5, (3000,), generator=g).sort().values
    words = torch.full((3000, 8), -1)
    for i, n in enumerate(lengths.tolist()):
        words[i, :n] = torch.randint(5, VOCAB.size, (n,), generator=g)
    _, first = np.unique(neighbour_table.word_keys(words).numpy(), return_index=True)
    words = words[np.sort(first)]  # distinct words, still sorted by length
    lengths = (words >= 0).sum(1)
    neighbours = torch.full((len(words), 8), -1)
    for i in range(0, len(words), 2):
        same = torch.nonzero(lengths == lengths[i]).squeeze(1)
        others = same[same != i][torch.randperm(len(same) - 1, generator=g)[: 1 + i % 3]]
        neighbours[i, : len(others)] = others
    folder = tmp_path_factory.mktemp("table")
    neighbour_table.save(folder, words.numpy(), np.arange(len(words), 0, -1), neighbours.numpy(),
                         np.ones(neighbours.shape, np.float32), {"provider": "planted"})
    # rows: [CLS] 126 tokens of whole words (the last one may be cut) [SEP]
    picks = torch.randint(0, len(words), (2000, 100), generator=g)
    pieces = words[picks].view(2000, -1)
    first_piece = (torch.arange(8) == 0).expand(2000, 100, 8).reshape(2000, -1)
    order = (pieces < 0).long().argsort(dim=1, stable=True)[:, :126]  # the real tokens, in order
    tokens = torch.cat([torch.full((2000, 1), VOCAB.cls_id), pieces.gather(1, order),
                        torch.full((2000, 1), VOCAB.sep_id)], dim=1)
    flags = torch.nn.functional.pad(first_piece.gather(1, order), (1, 1), value=True)
    return folder, tokens, flags, words, neighbours


def mac(vocab, folder, **settings):
    return get("mac")(MacConfig(sop=False, **settings), vocab, {"neighbours": folder})


def check_corruption(ids, starts, out, vocab, table):
    """Every SPEC §3 property of one corruption; returns per-word counts for the rate checks."""
    cand = masking.candidates(ids, vocab)
    selected, kinds, new = out["labels"] >= 0, out["corruption_type"], out["input_ids"]
    assert (new == vocab.mask_id).sum() == 0  # never [MASK]
    assert partial_words(selected, starts, cand) == 0
    assert torch.equal(selected, kinds != Corruption.NONE) and torch.equal(out["labels"][selected], ids[selected])
    assert torch.equal(new[~selected], ids[~selected])  # lengths preserved: nothing else moves
    assert (selected.sum(1) <= masking.exact_k_counts(ids, vocab, 0.15, 20)).all()
    # per word: what it became
    groups = word_groups(starts, cand)
    _, units = word_masking.unit_starts(ids, starts, vocab)
    first = units & selected
    word_of = groups[first]
    changed = torch.zeros(int(groups.max()) + 2, dtype=torch.bool)
    changed.index_put_((groups[selected],), new[selected] != ids[selected], accumulate=True)
    word_kind = kinds[first]
    replaced = word_kind != Corruption.KEEP
    assert changed[word_of][replaced].all()  # a replacement never equals the original word
    assert not changed[word_of][~replaced].any()
    # similar words are the table's best neighbour, with the same token count
    rows, cols = torch.nonzero(first & (kinds == Corruption.SIMILAR), as_tuple=True)
    width = table.shape[1]
    spans = (cols[:, None] + torch.arange(width)).clamp(max=ids.shape[1] - 1)
    size = word_masking.sizes(units, cand)[rows, cols]
    inside = torch.arange(width) < size[:, None]
    original = torch.where(inside, ids[rows[:, None], spans], -1)
    replacement = torch.where(inside, new[rows[:, None], spans], -1)
    return {"words": len(word_kind), "wanted": int(out["similar_wanted"].sum()),
            "similar": int((word_kind == Corruption.SIMILAR).sum()),
            "random_not_wanted": int(((word_kind == Corruption.RANDOM) & ~out["similar_wanted"][first]).sum()),
            "keep": int((word_kind == Corruption.KEEP).sum()), "originals": original, "replacements": replacement}


def test_planted_table_statistics(planted):
    folder, ids, starts, words, neighbours = planted
    objective = mac(VOCAB, folder)
    assert masking.candidates(ids, VOCAB).sum() >= 1e5
    out = objective.corrupt({"input_ids": ids, "word_start": starts}, torch.Generator().manual_seed(1))
    counts = check_corruption(ids, starts, out, VOCAB, words)
    total = counts["words"]
    assert abs(counts["wanted"] / total - 0.8) < 0.01  # similar + fallback
    assert abs(counts["random_not_wanted"] / total - 0.1) < 0.01
    assert abs(counts["keep"] / total - 0.1) < 0.01
    assert 0.4 < counts["similar"] / counts["wanted"] < 0.6  # half the words have similar words
    table = objective.table
    entries = table.lookup(counts["originals"])
    assert (entries >= 0).all()
    assert torch.equal(table.lookup(counts["replacements"]), neighbours[entries, 0])  # the best one


def test_top_k_spreads_over_the_best_similar_words(planted):
    folder, ids, starts, words, neighbours = planted
    out = mac(VOCAB, folder, similar_top_k=3).corrupt({"input_ids": ids, "word_start": starts},
                                                       torch.Generator().manual_seed(2))
    counts = check_corruption(ids, starts, out, VOCAB, words)
    table = mac(VOCAB, folder).table
    entries, chosen = table.lookup(counts["originals"]), table.lookup(counts["replacements"])
    rank = (neighbours[entries] == chosen[:, None]).long().argmax(1)
    assert (neighbours[entries].gather(1, rank[:, None]).squeeze(1) == chosen).all()
    assert set(rank.tolist()) == {0, 1, 2}


def test_budget_in_words_and_random_tokens_when_no_other_word_fits(tmp_path):
    ids, starts = synthetic_rows(1000, seed=3)
    folder = tmp_path / "one"
    folder.mkdir()
    neighbour_table.save(folder, np.array([[7, 8, 9, -1]]), np.array([5]), np.full((1, 2), -1), np.zeros((1, 2)),
                         {"provider": "none"})
    objective = mac(VOCAB, folder, budget_unit="words")
    out = objective.corrupt({"input_ids": ids, "word_start": starts}, torch.Generator().manual_seed(4))
    cand, units = word_masking.unit_starts(ids, starts, VOCAB)
    chosen = units & (out["labels"] >= 0)
    budget = torch.round(units.sum(1) * 0.15)
    assert (chosen.sum(1) <= budget).all() and chosen.sum() > 0.95 * budget.sum()
    changed = out["corruption_type"] == Corruption.RANDOM  # no similar word anywhere: all random tokens
    assert changed.sum() > 0.85 * (out["labels"] >= 0).sum()
    assert not torch.isin(out["input_ids"][changed], torch.tensor(VOCAB.special_ids)).any()
    assert partial_words(out["labels"] >= 0, starts, cand) == 0


@pytest.mark.parametrize("slice_name,lexicon", [("english_slice", ENGLISH_LEXICON), ("chinese_slice", CHINESE_LEXICON)])
def test_statistics_on_real_corpora(slice_name, lexicon, request):
    prepared = request.getfixturevalue(slice_name)
    rows = all_rows(prepared)
    vocab = Vocab.from_tokenizer(prepared.tokenizer)
    objective = get("mac")(MacConfig(sop=False, similar=lexicon), vocab, prepared.artifacts)
    ids, starts = rows["input_ids"], rows["word_start"]
    assert masking.candidates(ids, vocab).sum() >= 1e5
    totals = {}
    for seed in range(4):  # ~50k selected words
        out = objective.corrupt({"input_ids": ids, "word_start": starts}, torch.Generator().manual_seed(seed))
        counts = check_corruption(ids, starts, out, vocab, objective.table.words)
        table = objective.table
        entries = table.lookup(counts["originals"])
        assert (entries >= 0).all()
        assert torch.equal(counts["replacements"], table.words[table.neighbours[entries, 0]])  # the best neighbour
        for key in ("words", "wanted", "similar", "random_not_wanted", "keep"):
            totals[key] = totals.get(key, 0) + counts[key]
    words = totals["words"]
    assert abs(totals["wanted"] / words - 0.8) < 0.01
    assert abs(totals["random_not_wanted"] / words - 0.1) < 0.01
    assert abs(totals["keep"] / words - 0.1) < 0.01
    assert 0.2 < totals["similar"] / totals["wanted"] < 0.9  # the lexicon's hit rate on this slice


def test_checks_and_config_errors(tmp_path):
    crammed = ModelConfig(arch="crammed")
    assert any("objective.sop needs a sentence-pair head" in p for p in get("mac").check(MacConfig(), crammed))
    assert get("mac").check(MacConfig(sop=False), crammed) == []
    assert "needs its lexicon" in get("mac").check(MacConfig(similar={"provider": "cilin"}), ModelConfig())[0]
    with pytest.raises(ValueError, match="similar_top_k 9 exceeds similar.top_k 8"):
        MacConfig(similar_top_k=9)
    with pytest.raises(ValueError, match="must be non-negative and sum to 1"):
        MacConfig(ngram_probs=[0.5, 0.4])
    with pytest.raises(UserError, match="needs data_prep's 'neighbours' table"):
        get("mac")(MacConfig(), VOCAB, {})
    assert get("mac").packing(MacConfig()) == "segment_pairs" and get("mac").packing(MacConfig(sop=False)) == "concat"
    assert get("mac").artifacts_needed(MacConfig(similar=NeighboursConfig(top_k=3)))["neighbours"].top_k == 3
