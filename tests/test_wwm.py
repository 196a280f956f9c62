"""SPEC §2 statistics of the `wwm` corruption, on >= 1e5 candidate tokens, synthetic and real."""

import pytest
import torch

from pretrain_bench.objectives import Corruption, Vocab, get, masking, word_masking
from pretrain_bench.objectives.masking import MaskingConfig
from pretrain_bench.objectives.wwm import WWMConfig
from tests.word_rows import (VOCAB, all_rows, chinese_slice, english_slice, partial_words,  # noqa: F401
                             single_thread, synthetic_rows, word_groups)


def objective(vocab=VOCAB, **settings):
    masking_settings = {k: settings.pop(k) for k in list(settings) if k in MaskingConfig.model_fields}
    return get("wwm")(WWMConfig(masking=MaskingConfig(**masking_settings), **settings), vocab, {})


def corrupt(ids, starts, seed=1, vocab=VOCAB, **settings):
    return objective(vocab, **settings).corrupt({"input_ids": ids, "word_start": starts},
                                                torch.Generator().manual_seed(seed))


def reference_fill(sizes: list[int], capacity: int) -> list[bool]:
    """bert/create_pretraining_data.py: take a unit if it still fits, skip it otherwise."""
    taken, total = [], 0
    for size in sizes:
        fits = total < capacity and total + size <= capacity
        taken.append(fits)
        total += size if fits else 0
    return taken


def test_fill_matches_googles_sequential_loop():
    g = torch.Generator().manual_seed(0)
    starts = torch.rand(3000, 40, generator=g) < 0.5
    sizes = torch.randint(1, 6, (3000, 40), generator=g) * starts
    keys = torch.rand(3000, 40, generator=g)
    capacity = torch.randint(0, 30, (3000,), generator=g)
    taken = word_masking.fill_in_random_order(starts, sizes, keys, capacity)
    for row in range(3000):
        order = [i for i in keys[row].argsort().tolist() if starts[row, i]]
        expected = reference_fill([int(sizes[row, i]) for i in order], int(capacity[row]))
        assert [bool(taken[row, i]) for i in order] == expected
        assert not taken[row][~starts[row]].any()


def test_exact_k_takes_whole_words_within_budget():
    ids, starts = synthetic_rows(1000)
    out = corrupt(ids, starts)
    selected = out["labels"] >= 0
    cand = masking.candidates(ids, VOCAB)
    assert cand.sum() >= 1e5
    assert partial_words(selected, starts, cand) == 0
    per_row = selected.sum(1)
    assert (per_row <= 19).all()  # k = round(128 * 0.15), [CLS]/[SEP] counted as in Google's code
    assert per_row.float().mean() > 18  # the fill skips a word that does not fit and goes on with the next
    assert not selected[~cand].any()
    assert torch.equal(selected, out["corruption_type"] != Corruption.NONE)
    assert torch.equal(out["labels"][selected], ids[selected])


def test_bernoulli_per_word_gives_the_token_rate():
    ids, starts = synthetic_rows(2000, seed=2)
    out = corrupt(ids, starts, selection="bernoulli")
    selected = out["labels"] >= 0
    cand = masking.candidates(ids, VOCAB)
    assert partial_words(selected, starts, cand) == 0
    assert abs(selected.sum().item() / cand.sum().item() - 0.150) < 0.005  # each token inherits its word's p


@pytest.mark.parametrize("granularity", ["token", "word"])
def test_replacement_split_per_token_or_per_word(granularity):
    ids, starts = synthetic_rows(3000, seed=3)
    out = corrupt(ids, starts, replacement_granularity=granularity, selection="bernoulli")
    selected = out["labels"] >= 0
    kinds = out["corruption_type"]
    for kind, share in ((Corruption.MASK, 0.8), (Corruption.RANDOM, 0.1), (Corruption.KEEP, 0.1)):
        assert abs((kinds[selected] == kind).float().mean().item() - share) < 0.01
    assert (out["input_ids"][kinds == Corruption.MASK] == VOCAB.mask_id).all()
    assert torch.equal(out["input_ids"][kinds == Corruption.KEEP], ids[kinds == Corruption.KEEP])
    groups = word_groups(starts, masking.candidates(ids, VOCAB))[selected]
    kinds_per_word = torch.zeros(int(groups.max()) + 1, 5, dtype=torch.long)
    kinds_per_word.index_put_((groups, kinds[selected]), torch.ones_like(groups), accumulate=True)
    mixed = ((kinds_per_word > 0).sum(1) > 1).sum().item()
    if granularity == "word":
        assert mixed == 0
    else:
        assert mixed > 1000  # Google draws per wordpiece: the tokens of one word differ


@pytest.mark.parametrize("selection", ["exact_k", "bernoulli"])
def test_rows_without_multi_token_words_behave_exactly_like_mlm(selection):
    ids, _ = synthetic_rows(500, seed=4)
    ids[:, 60:64] = VOCAB.pad_id
    every = torch.ones_like(ids, dtype=torch.bool)
    mlm = get("mlm")(get("mlm").Config(masking=MaskingConfig(selection=selection)), VOCAB, {})
    expected = mlm.corrupt({"input_ids": ids, "word_start": every}, torch.Generator().manual_seed(7))
    out = corrupt(ids, every, seed=7, selection=selection)
    assert all(torch.equal(out[k], expected[k]) for k in expected)


def test_special_token_inside_a_word_is_never_selected():
    ids, starts = synthetic_rows(400, seed=5, continue_prob=0.8)
    ids[:, 20] = VOCAB.unk_id  # inside a long word most of the time
    out = corrupt(ids, starts, selection="bernoulli", rate=0.5)
    assert not (out["labels"][:, 20] >= 0).any()


@pytest.mark.parametrize("slice_name", ["english_slice", "chinese_slice"])
def test_statistics_on_real_corpora(slice_name, request):
    prepared = request.getfixturevalue(slice_name)
    rows = all_rows(prepared)
    vocab = Vocab.from_tokenizer(prepared.tokenizer)
    ids, starts = rows["input_ids"], rows["word_start"]
    cand = masking.candidates(ids, vocab)
    assert cand.sum() >= 1e5
    multi = word_groups(starts, cand)
    assert (torch.bincount(multi[cand]) > 1).float().mean() > 0.1  # real multi-token words
    exact = corrupt(ids, starts, vocab=vocab)
    selected = exact["labels"] >= 0
    assert partial_words(selected, starts, cand) == 0
    assert (selected.sum(1) <= masking.exact_k_counts(ids, vocab, 0.15, 20)).all()
    bernoulli = corrupt(ids, starts, vocab=vocab, selection="bernoulli")
    selected = bernoulli["labels"] >= 0
    assert partial_words(selected, starts, cand) == 0
    assert abs(selected.sum().item() / cand.sum().item() - 0.150) < 0.005
