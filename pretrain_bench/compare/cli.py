"""`pretrain-bench compare CONFIG`: the whole study, resumable. Only argparse at import time."""

from __future__ import annotations

import argparse


def compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="study YAML (see configs/quickstart.yaml and docs/evaluation.md)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override study values, e.g. budget.minutes=2")


def compare(args) -> None:
    import sys
    from pathlib import Path

    from pretrain_bench.compare import config, report
    from pretrain_bench.compare.runner import run_study

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    study, runs = config.load(args.config, args.overrides)
    results = run_study(study, runs, say)
    path = report.write(results, Path(study.run_dir) / "report")
    say(f"compare: report written to {path}")
    print(path)
