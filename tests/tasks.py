"""Generated downstream tasks in the GLUE layouts, over the vocabulary of tests/corpus.py: the label is a
function of one word, so a tiny encoder learns it in seconds and a head that is wired wrong does not."""

from __future__ import annotations

import random
from pathlib import Path

from tests import corpus

STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
MNLI_HEADER = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label"
NLI = ("contradiction", "entailment", "neutral")


def sentence(rng: random.Random, adjective: str | None = None, verb: str | None = None) -> str:
    return (f"the {adjective or rng.choice(corpus.ADJECTIVES)} {rng.choice(corpus.NOUNS)} "
            f"{rng.choice(corpus.ADVERBS)} {verb or rng.choice(corpus.VERBS)} a {rng.choice(corpus.NOUNS)}")


def binary_row(rng: random.Random) -> str:
    """SST-2 layout; label 1 for the first five adjectives."""
    a = rng.randrange(len(corpus.ADJECTIVES))
    return f"{sentence(rng, corpus.ADJECTIVES[a])}\t{int(a < 5)}"


def three_class_row(rng: random.Random) -> str:
    """MNLI layout (pairs); the label is the group of the second sentence's verb."""
    v = rng.randrange(9)
    return f"0\t0\t0\tfiction\t{sentence(rng)}\t{sentence(rng, verb=corpus.VERBS[v])}\t{NLI[v // 3]}"


def regression_row(rng: random.Random) -> str:
    """STS-B layout (pairs); the score grows with the first sentence's adjective, 0 to 5."""
    a = rng.randrange(len(corpus.ADJECTIVES))
    return (f"0\tmain-news\tf\t2012\t0\tnone\tnone\t{sentence(rng, corpus.ADJECTIVES[a])}\t{sentence(rng)}\t"
            f"{5 * a / (len(corpus.ADJECTIVES) - 1):.3f}")


def write(folder: Path, kind: str, train: int, dev: int, seed: int = 0) -> Path:
    """A task folder: kind 'binary' (SST-2), 'three' (MNLI, matched and mismatched dev) or 'regression' (STS-B)."""
    rng = random.Random(seed)
    header, row = {"binary": ("sentence\tlabel", binary_row), "three": (MNLI_HEADER, three_class_row),
                   "regression": (STSB_HEADER, regression_row)}[kind]
    dev_files = ("dev_matched.tsv", "dev_mismatched.tsv") if kind == "three" else ("dev.tsv",)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.tsv", train), *((f, dev) for f in dev_files)):
        (folder / name).write_text("\n".join([header] + [row(rng) for _ in range(count)]) + "\n", encoding="utf-8")
    return folder
