"""data_prep throughput: our tokenize-and-pack pipeline against the plain `datasets` recipe of the
Hugging Face run_mlm example (`Dataset.map(tokenizer, batched=True)` then `group_texts`), on the same
corpus, with the same trained tokenizer and the same number of processes.

    python benchmarks/data_prep.py            # writes benchmarks/results/data_prep-<machine>.json and .md
                                              # (e.g. data_prep-cpu-2core-amd-epyc-avx2)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import chain
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "en"


def corpus_bytes(path: Path) -> int:
    from data_prep.sources import files_of

    return sum(p.stat().st_size for p in files_of(path))


def ours(cfg, tokenizer_dir: Path) -> float:
    """Seconds for a cold prepare with the tokenizer given (tokenizer training is not timed)."""
    from data_prep.prepare import prepare

    cfg = cfg.model_copy(update={"tokenizer": cfg.tokenizer.model_copy(update={"path": str(tokenizer_dir)})})
    start = time.perf_counter()
    prepare(cfg, log=lambda m: None)
    return time.perf_counter() - start


def hf_recipe(corpus: Path, tokenizer_dir: Path, num_proc: int, seq_len: int, cache: Path) -> float:
    """run_mlm.py: load_dataset('json'), map(tokenize, batched), map(group_texts, batched)."""
    import datasets
    from transformers import AutoTokenizer

    from data_prep.sources import files_of

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    start = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=[str(p) for p in files_of(corpus)], split="train",
                                cache_dir=str(cache))

    def tokenize(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):  # verbatim logic of examples/pytorch/language-modeling/run_mlm.py
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // seq_len) * seq_len
        return {k: [t[i: i + seq_len] for i in range(0, total_length, seq_len)] for k, t in concatenated.items()}

    tokenized = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=raw.column_names)
    tokenized.map(group_texts, batched=True, num_proc=num_proc)
    return time.perf_counter() - start


def in_fresh_process(fn, *args) -> float:
    """`fn(*args)` in a process of its own, so no run inherits another's forked workers, threads or heap: run
    in one process, our second pipeline run, after the datasets recipe's, took 8 s longer than its first."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(SHARED_CORPUS), help="folder or file of .jsonl text")
    p.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="processes for the datasets recipe")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; the fastest counts")
    args = p.parse_args()
    from data_prep.prepare import DataConfig, prepare

    corpus = Path(args.corpus)
    size = corpus_bytes(corpus)
    work = Path(tempfile.mkdtemp(prefix="pb-dataprep-bench-"))
    try:
        base = DataConfig(path=str(corpus), seq_len=args.seq_len,  # default: the tokenizer's threads use every core
                          cache_dir=str(work / "warm"), tokenizer={"vocab_size": 16384})
        tokenizer_dir = prepare(base, log=lambda m: None).root / "tokenizer"  # train the tokenizer once
        runs = {"pretrain-bench": lambda r: (ours, base.model_copy(update={"cache_dir": str(work / f"ours{r}")}),
                                             tokenizer_dir),
                "datasets.map + group_texts": lambda r: (hf_recipe, corpus, tokenizer_dir, args.num_proc,
                                                         args.seq_len, work / f"hf{r}")}
        timings = {name: [] for name in runs}
        for repeat in range(args.repeats):  # alternating which goes first, as the machine drifts
            for name in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):
                timings[name].append(in_fresh_process(*runs[name](repeat)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from benchmarks.throughput import machine, machine_name

    info = {**machine(), "corpus": str(corpus), "corpus_mb": size / 1e6, "num_proc": args.num_proc}
    best = {k: min(v) for k, v in timings.items()}
    rows = {k: {"seconds": s, "mb_per_s": size / 1e6 / s} for k, s in best.items()}
    ratio = rows["pretrain-bench"]["mb_per_s"] / rows["datasets.map + group_texts"]["mb_per_s"]
    name = f"data_prep-{machine_name(cuda=False)}"
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"machine": info, "results": rows, "ratio": ratio,
                                                  "timings": timings}, indent=1))
    lines = [f"# data_prep throughput: {name}", "",
             f"{info['device']}; torch {info['torch']}, transformers {info['transformers']}; {info['date']}. "
             f"Corpus {corpus.name} ({size / 1e6:.1f} MB), {args.num_proc} processes, rows of {args.seq_len} "
             f"tokens, tokenizer trained beforehand (not timed); best of {args.repeats}.", "",
             "| pipeline | seconds | MB/s |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['seconds']:.1f} | {v['mb_per_s']:.2f} |" for k, v in rows.items()]
    lines += ["", f"Ratio: pretrain-bench is {ratio:.2f}x the datasets recipe."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
