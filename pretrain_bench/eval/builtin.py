"""The offline downstream task: which package a docstring comes from. It is derived from the built-in
corpus (`data_prep.sources.builtin_docstrings`), so it exists on every machine that can run us, with
no network and no data folder. Its texts are also in the built-in pre-training corpus; the labels are not."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from data_prep.sources import builtin_docstrings
from pretrain_bench.errors import UserError
from pretrain_bench.eval.tasks import DOCSTRINGS, Examples, Task

NUM_CLASSES = 6  # the packages with the most docstrings (with our dependencies: torch, transformers, scipy, ...)
PER_CLASS = 400  # at most this many docstrings per package, so that the classes are near balanced
DEV_SHARE = 0.25


def _hash(text: str) -> float:
    """A stable number in [0, 1) from the text: fixes the subset and the split on every machine."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") / 2**64


def docstrings_task(cache_dir: Path, name: str = "docstrings") -> Task:
    records = builtin_docstrings(Path(cache_dir).expanduser())
    counts = Counter(r["package"] for r in records)
    packages = sorted(p for p, _ in counts.most_common(NUM_CLASSES))
    if len(packages) < 2:
        raise UserError(f"task '{DOCSTRINGS}': found docstrings of {len(packages)} package(s) only; "
                        "this Python installation is missing its standard library sources")
    splits = {"train": ([], []), "dev": ([], [])}
    for label, package in enumerate(packages):
        texts = sorted((r["text"] for r in records if r["package"] == package), key=_hash)[:PER_CLASS]
        for text in texts:
            # a second, independent hash for the split, so the dev share is even within each class
            split = "dev" if _hash(f"dev:{text}") < DEV_SHARE else "train"
            splits[split][0].append(text)
            splits[split][1].append(label)
    train, dev = (Examples(texts, None, labels) for texts, labels in splits.values())
    return Task(name=name, labels=tuple(packages), metrics=("accuracy",), train=train, evals={"dev": dev},
                notes=(f"docstrings of the {len(packages)} packages with the most of them on this machine, "
                       f"at most {PER_CLASS} each; {DEV_SHARE:.0%} held out by a hash of the text",))
