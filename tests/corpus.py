"""A generated English-like corpus for tests: a small grammar with word classes and agreement, so a
tiny model's loss falls within a few hundred steps, and nothing depends on files outside the repo."""

from __future__ import annotations

import json
import random
from pathlib import Path

NOUNS = ("cat dog bird teacher student farmer doctor river mountain city garden window engine library "
         "painter sailor village forest kitchen letter").split()
VERBS = ("sees likes follows paints carries finds builds visits remembers describes").split()
ADJECTIVES = ("small quiet bright ancient careful sudden golden patient distant gentle").split()
PLACES = ("near the river|under the bridge|in the garden|behind the library|across the valley|"
          "inside the kitchen").split("|")
ADVERBS = "slowly quickly quietly often rarely carefully".split()


def sentence(rng: random.Random) -> str:
    subject = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    obj = f"a {rng.choice(NOUNS)}"
    parts = [subject, rng.choice(ADVERBS), rng.choice(VERBS), obj]
    if rng.random() < 0.5:
        parts.append(rng.choice(PLACES))
    return " ".join(parts).capitalize() + "."


def documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(sentence(rng) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def write_jsonl(path: Path, count: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents(count, seed):
            f.write(json.dumps({"text": doc}) + "\n")
    return path
