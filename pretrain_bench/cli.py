"""`pretrain-bench <command>`: parse, build, run. Each command's code lives in its own room and is
imported only when chosen, so `pretrain-bench objectives` answers at once."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pretrain_bench.errors import RunStopped, UserError

# name -> (module:function that adds the arguments, module:function that runs, one-line help)
COMMANDS = {
    "prepare": ("pretrain_bench.commands:prepare_args", "pretrain_bench.commands:prepare",
                "tokenize and pack a config's corpus into cached shards"),
    "train": ("pretrain_bench.commands:train_args", "pretrain_bench.commands:train",
              "pre-train one objective (prepares data first if needed)"),
    "objectives": ("pretrain_bench.commands:no_args", "pretrain_bench.commands:list_objectives",
                   "list the registered objectives"),
    "budget-plan": ("pretrain_bench.commands:config_args", "pretrain_bench.commands:budget_plan",
                    "measure throughput and say what the budget buys"),
    "finetune": ("pretrain_bench.eval.cli:finetune_args", "pretrain_bench.eval.cli:finetune",
                 "fine-tune a checkpoint on a GLUE/CLUE task over several seeds (GLUE-sane recipe)"),
    "compare": ("pretrain_bench.compare.cli:compare_args", "pretrain_bench.compare.cli:compare",
                "pre-train objectives at equal budget, fine-tune each, write a report"),
}


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pretrain-bench", description="Pre-train BERT-style encoders and "
                                  "compare objectives under a fixed budget.")
    # The deepspeed launcher inserts --local_rank=N before our own arguments.
    top.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, _, help_text) in COMMANDS.items():
        _resolve(add_args)(commands.add_parser(name, help=help_text, description=help_text))
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, rest = top.parse_known_args(argv)
    # argparse ends the positional overrides at the first flag: 'train c.yaml --resume lr=1' keeps 'lr=1' too
    stray = [a for a in rest if "=" not in a or a.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        top.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides += rest
    sys.stdout.reconfigure(line_buffering=True)  # log lines reach a redirected file as they happen
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        _resolve(COMMANDS[args.command][1])(args)
    except UserError as e:
        print(f"pretrain-bench: error: {e}", file=sys.stderr)
        return e.exit_code
    except RunStopped as e:
        print(f"pretrain-bench: stopped: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
