"""SPEC §5 co-occurrence statistics: counts, PPMI and its normalized score, the top-K table, the artifact."""

import itertools
import json

import numpy as np
import pytest

from data_prep import cooccur
from data_prep.cooccur import CooccurrenceConfig, PairCounts, build_table, pair_scores
from data_prep.prepare import DataConfig, prepare
from tests.conftest import SHARED_DATA

SPECIALS = (0, 1, 2, 3, 4)
VOCAB = 40


def token_rows(rows: int, length: int, seed: int, planted=(5, 6)) -> np.ndarray:
    """Zipf-like tokens between [CLS] and [SEP], some padding and [UNK]; the planted pair appears
    together in a third of the rows and never apart."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, VOCAB - 6)
    ids = rng.choice(np.arange(7, VOCAB), size=(rows, length), p=weights / weights.sum())
    ids[:, 0], ids[:, -1] = 2, 3
    ids[rng.random((rows, length)) < 0.03] = 1
    ids[: rows // 4, -4:] = 0
    together = np.flatnonzero(rng.random(rows) < 1 / 3)
    ids[together, 1], ids[together, 5] = planted
    return ids


def brute_force(ids: np.ndarray, window) -> dict:
    counts = {}
    for row in ids:
        tokens = [(i, int(t)) for i, t in enumerate(row) if t not in SPECIALS]
        if window is None:
            for v, w in itertools.permutations({t for _, t in tokens}, 2):
                counts[v, w] = counts.get((v, w), 0) + 1
        else:
            for (i, v), (j, w) in itertools.permutations(tokens, 2):
                if abs(i - j) <= window and v != w:
                    counts[v, w] = counts.get((v, w), 0) + 1
    return counts


@pytest.mark.parametrize("window", [None, 3])
def test_counts_marginals_and_total_match_a_brute_force_count(window):
    ids = token_rows(60, 16, seed=1)
    counts = PairCounts(ids, VOCAB, SPECIALS, window)
    expected = np.zeros((VOCAB, VOCAB))
    for (v, w), c in brute_force(ids, window).items():
        expected[v, w] = c
    assert np.array_equal(counts.rows(np.arange(VOCAB)), expected)
    if window is None:  # rows as events: rows holding a token, out of all rows
        held = [sum(v in set(row.tolist()) for row in ids) for v in range(VOCAB)]
        assert np.array_equal(counts.marginals, np.where(np.isin(np.arange(VOCAB), SPECIALS), 0, held))
        assert counts.total == len(ids)
    else:  # pairs as events
        assert np.array_equal(counts.marginals, expected.sum(1)) and counts.total == expected.sum()


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("normalize", ["npmi", "row_max"])
def test_ppmi_is_symmetric_before_truncation_scores_in_unit_interval_specials_zero(window, normalize):
    ids = token_rows(3000, 24, seed=2)
    cfg = CooccurrenceConfig(window=window, normalize=normalize, min_count=3)
    ppmi, score = pair_scores(PairCounts(ids, VOCAB, SPECIALS, window), np.arange(VOCAB), cfg)
    assert np.allclose(ppmi, ppmi.T, rtol=1e-12, atol=0) and (ppmi >= 0).all() and (ppmi > 0).sum() > 100
    if normalize == "npmi":  # row_max divides each row by its own maximum
        assert np.allclose(score, score.T, rtol=1e-12, atol=0)
    assert score.min() >= 0 and score.max() <= 1
    assert not ppmi[list(SPECIALS)].any() and not ppmi[:, list(SPECIALS)].any()
    assert not score[list(SPECIALS)].any() and not score[:, list(SPECIALS)].any()
    assert np.array_equal(score > 0, ppmi > 0)


def test_min_count_zeroes_rare_pairs():
    ids = token_rows(500, 24, seed=3)
    counts = PairCounts(ids, VOCAB, SPECIALS, None)
    raw = counts.rows(np.arange(VOCAB))
    ppmi, _ = pair_scores(counts, np.arange(VOCAB), CooccurrenceConfig(min_count=40))
    assert (raw[(raw > 0) & (raw < 40)]).size > 0 and not ppmi[raw < 40].any()


def test_a_pair_that_only_occurs_together_scores_one_and_ranks_first():
    ids = token_rows(3000, 24, seed=4)
    for window in (None, 4):
        table = build_table(ids, VOCAB, SPECIALS, CooccurrenceConfig(window=window, top_k=8))
        for word, partner in ((5, 6), (6, 5)):
            best = np.argmax(table["scores"][word])
            assert table["partners"][word, best] == partner
        if window is None:  # rows as events: p(5, 6) = p(5) = p(6), NPMI exactly 1
            assert table["scores"][5, table["partners"][5] == 6][0] == pytest.approx(1.0)


@pytest.mark.parametrize("normalize", ["npmi", "row_max"])
def test_table_keeps_the_top_k_partners_sorted_by_id(normalize, monkeypatch):
    ids = token_rows(3000, 24, seed=5)
    cfg = CooccurrenceConfig(top_k=6, min_count=2, normalize=normalize)
    ppmi, score = pair_scores(PairCounts(ids, VOCAB, SPECIALS, None), np.arange(VOCAB), cfg)
    monkeypatch.setattr(cooccur, "BLOCK_CELLS", 7 * VOCAB)  # several blocks of rows: same table
    table = build_table(ids, VOCAB, SPECIALS, cfg)
    partners = table["partners"]
    assert partners.shape == (VOCAB, 6) and partners.dtype == np.int32
    for v in range(VOCAB):
        present = partners[v] < VOCAB
        assert (np.diff(partners[v][present]) > 0).all() and (partners[v][~present] == VOCAB).all()
        assert np.allclose(table["scores"][v][present], score[v, partners[v][present]], rtol=1e-6)
        assert np.allclose(table["ppmi"][v][present], ppmi[v, partners[v][present]], rtol=1e-6)
        assert (table["scores"][v][~present] == 0).all()
        best = np.sort(score[v][score[v] > 0])[::-1][:6]
        assert np.allclose(np.sort(table["scores"][v][present])[::-1], best, rtol=1e-6)
    assert (partners[list(SPECIALS)] == VOCAB).all()
    assert not np.isin(partners, SPECIALS).any()


def test_artifact_is_built_once_beside_the_shards_and_keyed_by_settings(corpus_file, cache_dir):
    data = DataConfig(path=str(corpus_file), cache_dir=str(cache_dir), seq_len=64, num_proc=1,
                      tokenizer={"vocab_size": 400})
    messages = []
    settings = CooccurrenceConfig(top_k=16, max_rows=300)
    first = prepare(data, "concat", {"cooccurrence": settings}, messages.append)
    folder = first.artifacts["cooccurrence"]
    assert folder.parent == first.root / "artifacts"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tokenizer_hash"] == first.manifest["tokenizer_hash"] and meta["vocab_size"] == len(first.tokenizer)
    assert meta["rows"] == 300 and meta["settings"]["top_k"] == 16
    partners, scores = cooccur.load_table(folder)
    assert partners.shape == scores.shape == (len(first.tokenizer), 16)
    special = first.tokenizer.all_special_ids
    assert (partners[special] == len(first.tokenizer)).all() and not np.isin(partners, special).any()
    assert meta["tokens_with_partners"] > 30 and scores.max() <= 1
    again = prepare(data, "concat", {"cooccurrence": settings}, messages.append)
    assert again.artifacts["cooccurrence"] == folder and any("artifact 'cooccurrence' cached" in m for m in messages)
    other = prepare(data, "concat", {"cooccurrence": settings.model_copy(update={"window": 3})}, messages.append)
    assert other.artifacts["cooccurrence"] != folder


def test_real_english_collocations(tmp_path):
    """Inaugural addresses: within two tokens, 'united' pairs with 'states' and 'fellow' with 'citizens'."""
    data = DataConfig(path=str(SHARED_DATA / "corpus" / "en" / "inaugural.jsonl"), cache_dir=str(tmp_path),
                      seq_len=128, num_proc=1, tokenizer={"vocab_size": 3000})
    prepared = prepare(data, "concat", {"cooccurrence": CooccurrenceConfig(window=2, top_k=10)}, lambda m: None)
    partners, scores = cooccur.load_table(prepared.artifacts["cooccurrence"])
    tok = prepared.tokenizer
    for word, partner in (("united", "states"), ("fellow", "citizens")):
        row = tok.convert_tokens_to_ids(word)
        best = [tok.convert_ids_to_tokens(int(p)) for p in partners[row][np.argsort(-scores[row])[:3]]]
        assert partner in best, (word, best)
