"""The `cooccurrence` artifact: which tokens co-occur in the packed training rows, for MPA (SPEC §5).

Counts are symmetric and exclude a token's pairing with itself and every special token. PMI(v, w) =
log(C[v, w] * T / (C[v] * C[w])), with counts over one of two kinds of events:
- `window: null` (rows, as in document-level NPMI for topic coherence): C[v, w] = rows that contain
  both v and w, C[v] = rows that contain v, T = rows;
- `window: N` (pairs, as in Church & Hanks): C[v, w] = position pairs at most N apart in one row
  holding v and w, C[v] = sum_w C[v, w], T = sum_v C[v].
PPMI = max(PMI, 0); pairs seen fewer than `min_count` times score 0. The score MPA reads is PPMI
normalized into [0, 1]: NPMI = PMI / -log(C[v, w] / T) (Bouma 2009; 1 for tokens that only ever occur
together), or PPMI divided by the token's largest PPMI.

Stored per token: its `top_k` partners with the highest score, as fixed-width arrays sorted by
partner id (padding: id = vocabulary size, score 0), so a batch of look-ups is one `searchsorted`:
    partners.npy int32[V, K]   scores.npy float32[V, K] (normalized)   ppmi.npy float32[V, K]
    meta.json                  settings, vocabulary size, tokenizer hash, rows and tokens counted
Count rows are made dense a block of tokens at a time, so the dense work stays O(block x V).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from data_prep.prepare import Prepared, register_artifact
from pretrain_bench.section import Section

BLOCK_CELLS = 1 << 22  # dense cells per block of count rows (float64: 32 MiB per array)


class CooccurrenceConfig(Section):
    """How co-occurrence statistics are counted and scored."""

    window: int | None = Field(None, ge=1, description="null: tokens co-occur when in the same packed row; "
                               "N: when at most N positions apart in a row")
    top_k: int = Field(64, ge=1, description="partners kept per token, highest score first")
    min_count: int = Field(5, ge=1, description="pairs counted fewer times score 0 (rare pairs' PMI is noise)")
    normalize: Literal["npmi", "row_max"] = Field(
        "npmi", description="npmi: PMI / -log p(v, w), clipped at 0; row_max: PPMI / the token's largest PPMI")
    max_rows: int | None = Field(500_000, ge=1, description="training rows counted, evenly spaced over the "
                                 "shards; null: all of them")


class PairCounts:
    """Symmetric co-occurrence counts of token rows, read a block of count-matrix rows at a time."""

    def __init__(self, ids: np.ndarray, vocab_size: int, special_ids, window: int | None):
        self.vocab_size = vocab_size
        valid = ~np.isin(ids, np.asarray(special_ids))
        if window is None:
            row = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)[valid]
            presence = sp.csr_matrix((np.ones(len(row)), (row, ids[valid])), shape=(len(ids), vocab_size))
            presence.data[:] = 1.0  # duplicates were summed: a row counts once per token
            self._left, self._right = presence.T.tocsr(), presence
            self.marginals = np.asarray(presence.sum(axis=0)).ravel()  # rows holding each token
            self.total = float(len(ids))
        else:
            pairs = sp.csr_matrix((vocab_size, vocab_size))
            for offset in range(1, window + 1):
                a, b = ids[:, :-offset], ids[:, offset:]
                keep = valid[:, :-offset] & valid[:, offset:] & (a != b)
                pairs = pairs + sp.csr_matrix((np.ones(int(keep.sum())), (a[keep], b[keep])),
                                              shape=(vocab_size, vocab_size))
            self._left = (pairs + pairs.T).tocsr()
            self._right = None
            self.marginals = np.asarray(self._left.sum(axis=1)).ravel()
            self.total = float(self.marginals.sum())

    def rows(self, tokens: np.ndarray) -> np.ndarray:
        """float64[len(tokens), V]: C[v, :] for each v in `tokens`, zero at (v, v)."""
        block = self._left[tokens]
        counts = (block @ self._right if self._right is not None else block).toarray()
        counts[np.arange(len(tokens)), tokens] = 0.0
        return counts


def pair_scores(counts: PairCounts, tokens: np.ndarray, cfg: CooccurrenceConfig) -> tuple[np.ndarray, np.ndarray]:
    """(PPMI, normalized score in [0, 1]) of `tokens` against the whole vocabulary, float64[len(tokens), V]."""
    c = counts.rows(tokens)
    c[c < cfg.min_count] = 0.0
    seen = c > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * counts.total / (counts.marginals[tokens, None] * counts.marginals[None, :]))
        ppmi = np.where(seen, np.maximum(pmi, 0.0), 0.0)
        if cfg.normalize == "npmi":
            surprise = -np.log(c / counts.total)
            score = np.where(seen & (surprise > 0), ppmi / surprise, 0.0)
        else:
            largest = ppmi.max(axis=1, keepdims=True)
            score = np.where(largest > 0, ppmi / largest, 0.0)
    return ppmi, np.clip(score, 0.0, 1.0)


def top_partners(score: np.ndarray, ppmi: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best-scoring partners of each row, sorted by id; missing ones are id V with score 0."""
    vocab_size = score.shape[1]
    k = min(k, vocab_size)
    best = np.argpartition(-score, k - 1, axis=1)[:, :k]
    best_score = np.take_along_axis(score, best, axis=1)
    partners = np.where(best_score > 0, best, vocab_size)
    order = np.argsort(partners, axis=1, kind="stable")
    partners = np.take_along_axis(partners, order, axis=1)
    present = partners < vocab_size
    return (partners.astype(np.int32), np.where(present, np.take_along_axis(best_score, order, 1), 0.0),
            np.where(present, np.take_along_axis(np.take_along_axis(ppmi, best, 1), order, 1), 0.0))


def build_table(ids: np.ndarray, vocab_size: int, special_ids, cfg: CooccurrenceConfig) -> dict[str, np.ndarray]:
    """partners int32[V, K], scores and ppmi float32[V, K] from token rows int[R, L]."""
    counts = PairCounts(ids, vocab_size, special_ids, cfg.window)
    step = max(1, BLOCK_CELLS // vocab_size)
    parts = []
    for start in range(0, vocab_size, step):
        tokens = np.arange(start, min(start + step, vocab_size))
        ppmi, score = pair_scores(counts, tokens, cfg)
        parts.append(top_partners(score, ppmi, cfg.top_k))
    partners, scores, ppmi = (np.concatenate(p) for p in zip(*parts))
    return {"partners": partners, "scores": scores.astype(np.float32), "ppmi": ppmi.astype(np.float32)}


def sample_rows(prepared: Prepared, max_rows: int | None) -> np.ndarray:
    """int64[R, L]: up to `max_rows` training rows, evenly spaced over all shards (deterministic)."""
    shards = prepared.shards("train")
    sizes = np.array([s["rows"] for s in shards])
    total = int(sizes.sum())
    wanted = np.arange(total) if max_rows is None or max_rows >= total else \
        np.unique(np.linspace(0, total - 1, max_rows).round().astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for shard, begin, end in zip(shards, starts[:-1], starts[1:]):
        local = wanted[(wanted >= begin) & (wanted < end)] - begin
        if len(local):
            rows = np.load(prepared.root / shard["files"]["input_ids"]["file"], mmap_mode="r")
            out.append(np.asarray(rows[local], dtype=np.int64))
    return np.concatenate(out)


@register_artifact("cooccurrence")
def build(prepared: Prepared, cfg: CooccurrenceConfig, folder: Path) -> None:
    tokenizer = prepared.tokenizer
    ids = sample_rows(prepared, cfg.max_rows)
    special = sorted(tokenizer.all_special_ids)
    table = build_table(ids, len(tokenizer), special, cfg)
    for name, values in table.items():
        np.save(folder / f"{name}.npy", values)
    (folder / "meta.json").write_text(json.dumps({
        "settings": cfg.model_dump(mode="json"), "vocab_size": len(tokenizer), "rows": len(ids),
        "tokens": int((~np.isin(ids, special)).sum()), "tokenizer_hash": prepared.manifest["tokenizer_hash"],
        "tokens_with_partners": int((table["partners"] < len(tokenizer)).any(axis=1).sum())}, indent=1))


def load_table(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(partners int32[V, K] sorted by id with padding id V, normalized scores float32[V, K])."""
    return np.load(folder / "partners.npy"), np.load(folder / "scores.npy")
