"""Similar-word providers and the `neighbours` table data_prep builds from them."""

import json

import numpy as np
import pytest
import torch

from data_prep.lexicon import CilinSynonyms, NeighboursConfig, VectorNeighbours, WordNetSynonyms
from data_prep.neighbour_table import NeighbourTable, word_keys
from pretrain_bench.errors import UserError
from tests.conftest import SHARED_DATA
from tests.word_rows import (CHINESE_LEXICON, ENGLISH_LEXICON, chinese_slice, english_slice,  # noqa: F401
                             single_thread)


def texts(found):
    return [text for text, _ in found]


def test_wordnet_synonyms_most_frequent_sense_first():
    wordnet = WordNetSynonyms(str(SHARED_DATA / "lexicons" / "wordnet"))
    car, quick, unknown = wordnet.similar(["car", "quick", "qwzx"])
    assert texts(car)[:4] == ["auto", "automobile", "machine", "motorcar"]  # car%1:06:00, SemCor count 71
    assert "railcar" in texts(car)  # the second sense
    assert "speedy" in texts(quick) and unknown == []
    assert all(s <= 1.0 for _, s in car) and car[0][1] == 1.0
    # senses never seen in SemCor are dropped when another one was: 'a' is only ever 'angstrom' there
    assert texts(wordnet.similar(["a"])[0]) == ["angstrom", "angstrom unit"]  # not 'vitamin A', 'adenine'...


def test_cilin_synonym_groups():
    cilin = CilinSynonyms(CHINESE_LEXICON.path, include_related=False)
    people, = cilin.similar(["人民"])
    assert {"国民", "公民", "老百姓"} <= set(texts(people)) and "人民" not in texts(people)
    related = CilinSynonyms(CHINESE_LEXICON.path, include_related=True)
    assert len(related.similar(["良民"])[0]) > len(cilin.similar(["良民"])[0])  # '良民' is in a '#' group


def test_vectors_from_a_word2vec_file(tmp_path):
    path = tmp_path / "vectors.txt"
    vectors = {"king": [1, 0.1, 0], "queen": [0.9, 0.2, 0], "prince": [0.8, 0.05, 0.3], "apple": [0, 0, 1]}
    path.write_text(f"{len(vectors)} 3\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    cfg = NeighboursConfig(provider="vectors", path=str(path), min_similarity=0.5)
    found = VectorNeighbours(cfg, None, []).similar(["king", "apple", "unseen"])
    assert texts(found[0]) == ["queen", "prince"]  # by cosine, 'apple' below the threshold
    assert found[0][0][1] == pytest.approx(np.dot([1, .1, 0], [.9, .2, 0]) / np.linalg.norm([1, .1, 0])
                                           / np.linalg.norm([.9, .2, 0]), abs=1e-5)
    assert found[1] == [] and found[2] == []


def test_missing_lexicons_are_named():
    assert "objective.similar.path: the wordnet provider needs" in NeighboursConfig(provider="wordnet").problems(
        "objective.similar")[0]
    assert "does not exist" in NeighboursConfig(provider="cilin", path="/no/such.json").problems("objective.similar")[0]
    assert NeighboursConfig().problems("objective.similar") == []  # vectors trained on the corpus
    with pytest.raises(UserError, match="no WordNet 3.0 database"):
        WordNetSynonyms(str(SHARED_DATA / "lexicons" / "cilin"))


def test_word_keys_ignore_padding_width():
    words = torch.tensor([[5, 9, -1, -1], [5, 9, 7, -1], [9, 5, -1, -1]])
    keys = word_keys(words)
    assert len(set(keys.tolist())) == 3
    assert torch.equal(word_keys(words[:, :3]), keys) and torch.equal(word_keys(torch.tensor([[5, 9]])), keys[:1])


@pytest.mark.parametrize("slice_name,lexicon", [("english_slice", ENGLISH_LEXICON), ("chinese_slice", CHINESE_LEXICON)])
def test_table_invariants_on_real_corpora(slice_name, lexicon, request):
    prepared = request.getfixturevalue(slice_name)
    table = NeighbourTable(prepared.artifacts["neighbours"])
    meta = json.loads((prepared.artifacts["neighbours"] / "meta.json").read_text())
    assert meta["provider"] == lexicon.provider and meta["tokenizer_hash"] == prepared.manifest["tokenizer_hash"]
    assert 0.2 < meta["coverage"] < 1 and meta["with_neighbours"] > 1000
    corpus = meta["corpus_words"]
    words, lengths, neighbours = table.words, table.lengths, table.neighbours[:corpus]
    assert (lengths[:corpus].diff() >= 0).all()  # corpus words sorted by token length
    has = neighbours >= 0
    owner = torch.arange(corpus)[:, None].expand_as(neighbours)[has]
    assert (lengths[neighbours[has]] == lengths[owner]).all()  # same token count
    assert not (words[neighbours[has]] == words[owner]).all(dim=1).any()  # never the word itself
    special = torch.tensor(sorted(prepared.tokenizer.all_special_ids))
    assert not torch.isin(words[neighbours[has]], special).any()
    assert torch.equal(table.lookup(words[:corpus]), torch.arange(corpus))
    assert (table.lookup(torch.tensor([[3, 3, 3, 3, 3, 3, 3, 3, 3]])) == -1).all()  # longer than any entry
    # a random word: same length, never the excluded one
    picks = torch.randint(0, corpus, (20000,), generator=torch.Generator().manual_seed(0))
    random = table.random_word(lengths[picks], picks, torch.Generator().manual_seed(1))
    drawn = random >= 0
    assert drawn.float().mean() > 0.99
    assert (lengths[random[drawn]] == lengths[picks[drawn]]).all() and not (random == picks).any()
    assert (random[drawn] < corpus).all()  # from the corpus words only
    # what the providers said, as text
    tokens = prepared.tokenizer.convert_ids_to_tokens
    first = int(has[:, 0].nonzero()[0])
    assert tokens(words[first][words[first] >= 0].tolist()) != tokens(
        words[neighbours[first, 0]][words[neighbours[first, 0]] >= 0].tolist())
