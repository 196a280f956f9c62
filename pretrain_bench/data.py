"""From prepared shards to the module's inputs: memory-mapped rows, a deterministic resumable order,
and the objective's corruption in DataLoader workers.

Micro-batch `m` of rank `r` is a pure function of (seed, m, r): its rows come from a per-epoch
permutation and its corruption from a generator seeded with (seed, r, m). A resume therefore
reproduces the data exactly from the micro-batch counter alone, whatever the number of workers.
"""

from __future__ import annotations

import itertools
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_prep.prepare import Prepared
from pretrain_bench.errors import UserError


def seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Rows:
    """The rows of one split, memory-mapped across shards."""

    def __init__(self, prepared: Prepared, split: str):
        self.fields: dict[str, list[np.ndarray]] = {}
        sizes = []
        for shard in prepared.shards(split):
            sizes.append(shard["rows"])
            for field, entry in shard["files"].items():
                self.fields.setdefault(field, []).append(np.load(prepared.root / entry["file"], mmap_mode="r"))
        self.bounds = np.cumsum([0] + sizes)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def take(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        shard = np.searchsorted(self.bounds, rows, side="right") - 1
        local = rows - self.bounds[shard]
        out = {}
        for field, arrays in self.fields.items():
            first = arrays[0]
            values = np.empty((len(rows),) + first.shape[1:], dtype=first.dtype)
            for s in np.unique(shard):
                here = shard == s
                values[here] = arrays[s][local[here]]
            out[field] = torch.from_numpy(values.astype(np.int64) if field == "input_ids" else values)
        return out


def split_rows(batch: dict[str, torch.Tensor], seq_len: int) -> dict[str, torch.Tensor]:
    """[B, L] rows cut into [B*L/l, l] pieces (sequence-length curriculum: same tokens per micro-batch).
    The first token of each piece starts a word."""
    full = batch["input_ids"].shape[1]
    out = {}
    for field, values in batch.items():
        if values.dim() < 2 or values.shape[1] != full:
            raise UserError(f"budget.seq_len_curriculum: the objective's data has per-row field '{field}', "
                            "which cannot be split into shorter rows; remove the curriculum")
        out[field] = values.reshape(-1, seq_len, *values.shape[2:])
    if "word_start" in out:
        out["word_start"] = out["word_start"].clone()
        out["word_start"][:, 0] = True
    return out


class MicroBatches(Dataset):
    """Item m: the corrupted inputs of micro-batch m of this rank, and its number of non-pad tokens."""

    def __init__(self, rows: Rows, corrupt, pad_id: int, rows_per_batch: int, seed: int, rank: int,
                 world: int, seq_len: int):
        self.rows, self.corrupt, self.pad_id = rows, corrupt, pad_id
        self.rows_per_batch, self.seed, self.rank, self.world = rows_per_batch, seed, rank, world
        self.seq_len = seq_len
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:  # the sampler is unbounded; epochs wrap around
        return 2**62

    def row_indices(self, m: int) -> np.ndarray:
        n = len(self.rows)
        positions = (m * self.world + self.rank) * self.rows_per_batch + np.arange(self.rows_per_batch)
        epochs, offsets = positions // n, positions % n
        out = np.empty_like(offsets)
        for epoch in np.unique(epochs):
            if self._order is None or self._order[0] != epoch:
                self._order = (int(epoch), np.random.default_rng([self.seed, int(epoch)]).permutation(n))
            out[epochs == epoch] = self._order[1][offsets[epochs == epoch]]
        return out

    def __getitem__(self, m: int):
        batch = self.rows.take(self.row_indices(m))
        if self.seq_len != batch["input_ids"].shape[1]:
            batch = split_rows(batch, self.seq_len)
        num_tokens = int((batch["input_ids"] != self.pad_id).sum())
        generator = torch.Generator().manual_seed(seed_for(self.seed, self.rank, m))
        return self.corrupt(batch, generator), num_tokens


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    # Ctrl-C and a cluster's SIGTERM reach the whole process group: they are the main process's to handle
    # (it checkpoints, then ends its workers); a worker that died of them would crash the loop instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def loader(batches: MicroBatches, start: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """Micro-batches start, start+1, ... for ever."""
    # Its own generator: creating the iterator must not draw from the global RNG that dropout uses,
    # or a resumed run would see other dropout masks than an uninterrupted one.
    return DataLoader(batches, batch_size=None, sampler=itertools.count(start), num_workers=num_workers,
                      worker_init_fn=_worker_init if num_workers else None, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers else None, generator=torch.Generator())
