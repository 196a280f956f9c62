"""Similar words for `mac` (SPEC §3): a provider answers "which words are like this one?", and the
`neighbours` artifact builder turns its answers into a table over the corpus words for one tokenizer.

Providers:
- `wordnet`: English synonyms, the lemmas that share a synset with the word, read from a WordNet 3.0
  database folder (`index.sense` and `data.*`, formats senseidx(5WN), wndb(5WN)); most frequent sense first.
- `cilin`: Chinese synonyms, the other members of the word's HIT Tongyici Cilin (extended) synonym
  groups (codes ending '=', optionally the related '#' groups).
- `vectors`: nearest neighbours by cosine in word vectors (gensim): a word2vec file the user gives, or
  vectors trained with gensim's Word2Vec on the training rows' words. MacBERT used the Synonyms toolkit,
  which is exactly this on its own word2vec model.

The builder keeps, for every word of the training rows, the best `top_k` candidates with the word's token
count (a replacement must keep the labels aligned), never the word itself, never one holding a special
token or spanning several words.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from pydantic import Field
from tokenizers import Tokenizer

from data_prep import neighbour_table
from data_prep.prepare import Prepared, register_artifact
from pretrain_bench.errors import UserError
from pretrain_bench.section import Section


class NeighboursConfig(Section):
    """Where similar words come from, and how many are kept per word."""

    provider: Literal["vectors", "wordnet", "cilin"] = Field(
        "vectors", description="vectors: word2vec neighbours (as MacBERT's Synonyms toolkit); wordnet: English "
        "synonyms; cilin: Chinese synonyms")
    path: str | None = Field(None, description="the WordNet 3.0 folder, the Cilin JSON, or a word2vec file; "
                             "for vectors, null trains word2vec on the training rows")
    vectors_binary: bool = Field(False, description="the word2vec file is in binary format (else text)")
    vectors_limit: int | None = Field(200_000, ge=1, description="read only the first N vectors of the file")
    vector_size: int = Field(100, ge=8, description="dimensions of vectors trained on the corpus")
    window: int = Field(5, ge=1, description="word2vec context window when training")
    min_count: int = Field(5, ge=1, description="words seen fewer times get no trained vector")
    epochs: int = Field(5, ge=1, description="word2vec passes over the corpus")
    candidates: int = Field(50, ge=1, description="nearest vectors examined per word before the length filter")
    min_similarity: float = Field(0.5, ge=-1, le=1, description="cosine below this is not similar (vectors only)")
    include_related: bool = Field(False, description="cilin: also the related groups (codes ending '#')")
    top_k: int = Field(8, ge=1, description="similar words stored per word")
    max_word_tokens: int = Field(8, ge=1, description="longer words get no entry (they fall back to random tokens)")
    min_word_count: int = Field(1, ge=1, description="corpus words seen fewer times get no entry")

    def problems(self, field: str) -> list[str]:
        """Missing files, each naming `field`.path and the fix."""
        if self.path is None:
            return [] if self.provider == "vectors" else [
                f"{field}.path: the {self.provider} provider needs its lexicon; give "
                + ("the WordNet 3.0 folder (e.g. ../shared/data/lexicons/wordnet)" if self.provider == "wordnet"
                   else "the Cilin JSON (e.g. ../shared/data/lexicons/cilin/cilin_tree.json)")]
        if not Path(self.path).expanduser().exists():
            return [f"{field}.path '{self.path}' does not exist; give the {self.provider} "
                    f"{'folder' if self.provider == 'wordnet' else 'file'}"]
        return []


# --- the words of the training rows ---------------------------------------------------------------

class CorpusWords:
    """Every word type of the training rows (token-id sequences up to `max_tokens`, no special tokens),
    with its count; words are delimited by the rows' `word_start` flags."""

    def __init__(self, prepared: Prepared, max_tokens: int):
        self.prepared, self.max_tokens = prepared, max_tokens
        self.special = np.array(sorted(prepared.tokenizer.all_special_ids))
        keys, counts, words = [], [], []
        for ids, starts in self._shards():
            matrix, _ = self._words(ids, starts)
            key = neighbour_table.word_keys(torch.from_numpy(matrix)).numpy()
            unique, first, count = np.unique(key, return_index=True, return_counts=True)
            keys.append(unique), counts.append(count), words.append(matrix[first])
        key = np.concatenate(keys)
        self.keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        self.counts = np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)
        self.words = np.concatenate(words)[first]  # int64[W, max_tokens], aligned with self.keys

    def _shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for shard in self.prepared.shards("train"):
            files = shard["files"]
            yield (np.load(self.prepared.root / files["input_ids"]["file"]).astype(np.int64),
                   np.load(self.prepared.root / files["word_start"]["file"]))

    def _words(self, ids: np.ndarray, word_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(int64[N, max_tokens] -1 padded, int64[N] row of each) for the words without special tokens."""
        flat = ids.reshape(-1)
        starts = np.flatnonzero(word_start.reshape(-1))
        lengths = np.diff(np.append(starts, len(flat)))
        has_special = np.add.reduceat(np.isin(flat, self.special), starts) > 0
        keep = ~has_special & (lengths <= self.max_tokens)
        starts, lengths = starts[keep], lengths[keep]
        offsets = np.arange(self.max_tokens)
        inside = offsets < lengths[:, None]
        matrix = np.where(inside, flat[np.minimum(starts[:, None] + offsets, len(flat) - 1)], -1)
        return matrix, starts // ids.shape[1]

    def strings(self) -> list[str]:
        """Each word as text: its pieces joined, '##' removed."""
        tokens = np.array(self.prepared.tokenizer.convert_ids_to_tokens(list(range(len(self.prepared.tokenizer)))),
                          dtype=object)
        pieces = np.vectorize(lambda t: t[2:] if t.startswith("##") else t, otypes=[object])(tokens)
        return ["".join(pieces[row[row >= 0]]) for row in self.words]

    def sentences(self, strings: list[str]) -> list[list[str]]:
        """Each training row as its list of words (for training word vectors)."""
        out = []
        for ids, starts in self._shards():
            matrix, rows = self._words(ids, starts)
            index = np.searchsorted(self.keys, neighbour_table.word_keys(torch.from_numpy(matrix)).numpy())
            bounds = np.searchsorted(rows, np.arange(ids.shape[0] + 1))
            out += [[strings[i] for i in index[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
        return out


# --- providers: word -> ranked (similar word, score) ----------------------------------------------

class WordNetSynonyms:
    """Synonyms from a WordNet 3.0 database: the lemmas of the word's synsets, senses ordered by their
    SemCor frequency (`index.sense`); when some sense was seen there, the never-seen ones are dropped, so
    'in' does not become 'inch' nor 'a' 'vitamin A'."""

    POS = {"1": "noun", "2": "verb", "3": "adj", "4": "adv", "5": "adj"}  # lex_sense ss_type -> data file

    def __init__(self, path: str):
        folder = next((f for f in (Path(path), Path(path) / "wordnet", Path(path) / "dict")
                       if (f / "data.noun").is_file() and (f / "index.sense").is_file()), None)
        if folder is None:
            raise UserError(f"objective.similar.path '{path}': no WordNet 3.0 database (data.noun, index.sense) "
                            "there or in its wordnet/ or dict/ folder; give the WordNet folder")
        self.synsets: dict[tuple[str, str], list[str]] = {}
        for pos in ("noun", "verb", "adj", "adv"):
            for line in open(folder / f"data.{pos}", encoding="utf-8"):
                if not line.startswith("  "):  # the licence header is indented
                    fields = line.split(" ")
                    count = int(fields[3], 16)
                    # adjectives carry a syntactic marker: 'galore(ip)'
                    self.synsets[pos, fields[0]] = [re.sub(r"\(\w+\)$", "", w).replace("_", " ")
                                                    for w in fields[4:4 + 2 * count:2]]
        senses: dict[str, list[tuple[int, int, str, str]]] = {}
        for line in open(folder / "index.sense", encoding="utf-8"):  # sense_key offset sense_number tag_cnt
            key, offset, number, tagged = line.split()
            lemma, _, lex_sense = key.partition("%")
            senses.setdefault(lemma, []).append((-int(tagged), int(number), self.POS[lex_sense[0]], offset))
        self.senses = {}
        for lemma, found in senses.items():
            found.sort()
            seen_in_semcor = [s for s in found if s[0] < 0]
            self.senses[lemma] = [(pos, offset) for _, _, pos, offset in seen_in_semcor or found]

    def similar(self, words: list[str]) -> list[list[tuple[str, float]]]:
        out = []
        for word in words:
            seen, found = {word.lower()}, []
            for rank, synset in enumerate(self.senses.get(word.lower(), ())):
                for lemma in self.synsets[synset]:
                    if lemma.lower() not in seen:
                        seen.add(lemma.lower())
                        found.append((lemma, 1.0 / (1 + rank)))
            out.append(found)
        return out


class CilinSynonyms:
    """Synonyms from HIT Tongyici Cilin (extended), as the nested JSON of the `cilin` package."""

    def __init__(self, path: str, include_related: bool):
        try:
            tree = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"objective.similar.path '{path}': not a Cilin JSON ({e}); give cilin_tree.json") from None
        self.groups: dict[str, list[tuple[list[str], float]]] = {}
        kinds = {"=": 1.0, "#": 0.5} if include_related else {"=": 1.0}

        def walk(node: dict) -> None:
            for code, child in node.items():
                if isinstance(child, list) and code[-1:] in kinds:
                    for word in child:
                        self.groups.setdefault(word, []).append((child, kinds[code[-1]]))
                elif isinstance(child, dict):
                    walk(child.get("sub", {}))

        walk(tree)
        if not self.groups:
            raise UserError(f"objective.similar.path '{path}': no synonym groups found; give cilin_tree.json")

    def similar(self, words: list[str]) -> list[list[tuple[str, float]]]:
        out = []
        for word in words:
            seen, found = {word}, []
            for members, score in sorted(self.groups.get(word, ()), key=lambda g: -g[1]):
                for other in members:
                    if other not in seen:
                        seen.add(other)
                        found.append((other, score))
            out.append(found)
        return out


def _stable_hash(text: str) -> int:
    """word2vec's per-word seed; Python's hash() changes between processes."""
    return zlib.crc32(text.encode("utf-8"))


class VectorNeighbours:
    """Nearest neighbours by cosine in gensim KeyedVectors, above a minimum similarity."""

    def __init__(self, cfg: NeighboursConfig, corpus: CorpusWords, strings: list[str]):
        from gensim.models import KeyedVectors, Word2Vec

        self.cfg = cfg
        if cfg.path:
            try:
                self.vectors = KeyedVectors.load_word2vec_format(cfg.path, binary=cfg.vectors_binary,
                                                                 limit=cfg.vectors_limit)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                raise UserError(f"objective.similar.path '{cfg.path}': not a word2vec "
                                f"{'binary' if cfg.vectors_binary else 'text'} file ({e}); give one, or set "
                                "objective.similar.vectors_binary") from None
        else:  # one worker and a stable hash: the same corpus gives the same vectors
            model = Word2Vec(corpus.sentences(strings), vector_size=cfg.vector_size, window=cfg.window,
                             min_count=cfg.min_count, epochs=cfg.epochs, workers=1, seed=0, hashfxn=_stable_hash)
            self.vectors = model.wv

    def similar(self, words: list[str]) -> list[list[tuple[str, float]]]:
        out: list[list[tuple[str, float]]] = [[] for _ in words]
        index = self.vectors.key_to_index
        known = [i for i, w in enumerate(words) if w in index]
        normed = torch.from_numpy(self.vectors.get_normed_vectors())
        keys = self.vectors.index_to_key
        take = min(self.cfg.candidates + 1, len(keys))
        for start in range(0, len(known), 256):  # 256 x 200k cosines: 200 MB at a time
            chunk = known[start:start + 256]
            rows = torch.tensor([index[words[i]] for i in chunk])
            scores, found = (normed[rows] @ normed.T).topk(take, dim=1)
            for i, row, row_scores, row_found in zip(chunk, rows.tolist(), scores.tolist(), found.tolist()):
                out[i] = [(keys[j], s) for j, s in zip(row_found, row_scores)
                          if j != row and s >= self.cfg.min_similarity]
        return out


def provider(cfg: NeighboursConfig, corpus: CorpusWords, strings: list[str]):
    if cfg.provider == "wordnet":
        return WordNetSynonyms(cfg.path)
    if cfg.provider == "cilin":
        return CilinSynonyms(cfg.path, cfg.include_related)
    return VectorNeighbours(cfg, corpus, strings)


# --- the artifact ----------------------------------------------------------------------------------

@register_artifact("neighbours")
def build_neighbours(prepared: Prepared, cfg: NeighboursConfig, folder: Path) -> None:
    """The neighbour table (see data_prep.neighbour_table) over the corpus words of `prepared`."""
    problems = cfg.problems("objective.similar")
    if problems:
        raise UserError("; ".join(problems))
    corpus = CorpusWords(prepared, cfg.max_word_tokens)
    keep = corpus.counts >= cfg.min_word_count
    lengths = (corpus.words >= 0).sum(axis=1)
    order = np.lexsort((corpus.keys, -corpus.counts, lengths))  # by length, then frequency
    order = order[keep[order]]
    words, counts, lengths = corpus.words[order], corpus.counts[order], lengths[order]
    corpus_strings = corpus.strings()
    strings = [corpus_strings[i] for i in order]
    answers = provider(cfg, corpus, corpus_strings).similar(strings)

    # every candidate string to token ids, once
    texts = sorted({text for found in answers for text, _ in found})
    tokenizer = Tokenizer.from_str(prepared.tokenizer.backend_tokenizer.to_str())
    tokenizer.encode_special_tokens = True  # candidate text is text, as in the shards
    encoded = {t: e.ids for t, e in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False))}
    special = set(prepared.tokenizer.all_special_ids)

    entry_of = {tuple(row[row >= 0].tolist()): i for i, row in enumerate(words)}
    extra: list[tuple[int, ...]] = []
    neighbours = np.full((len(words), cfg.top_k), -1, dtype=np.int64)
    scores = np.zeros((len(words), cfg.top_k), dtype=np.float32)
    other_length = 0
    for i, found in enumerate(answers):
        taken = {tuple(words[i, : lengths[i]].tolist())}  # never the word itself, nor one twice
        for text, score in found:
            ids = tuple(encoded[text])
            if len(ids) != lengths[i]:
                other_length += 1
                continue
            if ids in taken or re.search(r"\s", text) or special.intersection(ids):
                continue
            taken.add(ids)
            kept = len(taken) - 2
            if ids not in entry_of:
                entry_of[ids] = len(words) + len(extra)
                extra.append(ids)
            neighbours[i, kept], scores[i, kept] = entry_of[ids], score
            if kept + 1 == cfg.top_k:
                break

    table = np.full((len(words) + len(extra), cfg.max_word_tokens), -1, dtype=np.int64)
    table[: len(words)] = words
    for j, ids in enumerate(extra):
        table[len(words) + j, : len(ids)] = ids
    has = neighbours[:, 0] >= 0
    meta = {"provider": cfg.provider, "path": cfg.path, "tokenizer_hash": prepared.manifest["tokenizer_hash"],
            "corpus_words": int(len(words)), "with_neighbours": int(has.sum()), "extra_entries": len(extra),
            "occurrences": int(counts.sum()),
            "coverage": float(counts[has].sum() / max(counts.sum(), 1)),  # share of word occurrences
            "other_length_candidates_dropped": other_length}
    neighbour_table.save(folder, table, np.concatenate([counts, np.zeros(len(extra), np.int64)]),
                         np.concatenate([neighbours, np.full((len(extra), cfg.top_k), -1)]),
                         np.concatenate([scores, np.zeros((len(extra), cfg.top_k), np.float32)]), meta)
