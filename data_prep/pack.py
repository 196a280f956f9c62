"""Packing tokenized documents into fixed-length rows, and writing them as checksummed shards.

A packer consumes `Tokenized` batches (flat ids, word-start flags, document lengths) and yields row
chunks: a dict of arrays whose first dimension is the row. Packers are registered by name; an
objective chooses one with `Objective.packing`. Every packer yields at least `input_ids` and
`word_start` of shape [rows, seq_len].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np


@dataclass
class Tokenized:
    """A batch of documents after tokenization, without special tokens."""

    ids: np.ndarray  # int32[total]
    word_start: np.ndarray  # bool[total]
    lengths: np.ndarray  # int64[documents]


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    pad: int


class Packer:
    """Turns a stream of tokenized batches into rows; state (e.g. a partial row) carries across batches.
    What is left when the stream ends, less than a row, is dropped."""

    version = 1  # part of the data hash: a packer that changes its rows raises it, so caches rebuild

    def __init__(self, seq_len: int, special: SpecialIds):
        self.seq_len, self.special = seq_len, special

    @classmethod
    def for_tokenizer(cls, seq_len: int, special: SpecialIds, tokenizer) -> "Packer":
        """The packer data_prep uses; a packer that needs more of the tokenizer (e.g. which tokens end a
        sentence) overrides this."""
        return cls(seq_len, special)

    def add(self, batch: Tokenized) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError


PACKERS: dict[str, type[Packer]] = {}


def register_packer(name: str):
    def add(cls: type[Packer]) -> type[Packer]:
        PACKERS[name] = cls
        return cls

    return add


@register_packer("concat")
class ConcatPacker(Packer):
    """Documents joined by [SEP] into one stream, cut into `[CLS] ... [SEP]` rows: no padding at all.
    A word cut by a row boundary continues as a new word in the next row."""

    def __init__(self, seq_len: int, special: SpecialIds):
        super().__init__(seq_len, special)
        self.carry_ids = np.zeros(0, dtype=np.int32)
        self.carry_starts = np.zeros(0, dtype=bool)

    def add(self, batch: Tokenized) -> Iterator[dict[str, np.ndarray]]:
        body, sep, cls = self.seq_len - 2, self.special.sep, self.special.cls
        ends = np.cumsum(batch.lengths)
        ids = np.concatenate([self.carry_ids, np.insert(batch.ids, ends, sep)])
        starts = np.concatenate([self.carry_starts, np.insert(batch.word_start, ends, True)])
        rows = len(ids) // body
        self.carry_ids, self.carry_starts = ids[rows * body:], starts[rows * body:]
        if rows == 0:
            return
        ids = ids[: rows * body].reshape(rows, body)
        starts = starts[: rows * body].reshape(rows, body).copy()
        starts[:, 0] = True
        yield {
            "input_ids": np.concatenate([np.full((rows, 1), cls, np.int32), ids,
                                         np.full((rows, 1), sep, np.int32)], axis=1),
            "word_start": np.pad(starts, ((0, 0), (1, 1)), constant_values=True),
        }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Collects row chunks and writes shards of `rows_per_shard` rows: one .npy file per field."""

    def __init__(self, folder: Path, split: str, rows_per_shard: int, id_dtype: np.dtype):
        self.folder, self.split, self.rows_per_shard, self.id_dtype = folder, split, rows_per_shard, id_dtype
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0
        self.shards: list[dict] = []

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        self.pending.append(chunk)
        self.pending_rows += len(next(iter(chunk.values())))
        while self.pending_rows >= self.rows_per_shard:
            self._write(self.rows_per_shard)

    def close(self) -> list[dict]:
        if self.pending_rows:
            self._write(self.pending_rows)
        return self.shards

    def _write(self, rows: int) -> None:
        merged = {k: np.concatenate([c[k] for c in self.pending]) for k in self.pending[0]}
        left = self.pending_rows - rows
        self.pending = [{k: v[rows:] for k, v in merged.items()}] if left else []
        self.pending_rows = left
        files = {}
        for field, values in merged.items():
            values = values[:rows]
            if field == "input_ids":
                values = values.astype(self.id_dtype)
            name = f"{self.split}-{len(self.shards):05d}.{field}.npy"
            np.save(self.folder / name, values)
            files[field] = {"file": name, "sha256": sha256_file(self.folder / name)}
        self.shards.append({"rows": rows, "files": files})
