"""`pretrain-bench finetune CHECKPOINT TASK_DIR`: the GLUE-sane recipe over several seeds on one task.
Only argparse at import time; the work is imported when the command runs."""

from __future__ import annotations

import argparse


def finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a transformers model folder, an export (final/) or a run folder")
    p.add_argument("task", help="a GLUE/CLUE task folder (e.g. ../shared/data/tasks/glue/SST-2) or builtin:docstrings")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="recipe and task settings, e.g. finetune.lr=1e-4 finetune.seeds=[0,1,2] "
                        "task.max_train_examples=2000 (see docs/evaluation.md)")
    p.add_argument("--recipe", metavar="CONFIG", help="take the finetune section of this YAML file (e.g. a compare config)")
    p.add_argument("--random-init", action="store_true",
                   help="fine-tune the checkpoint's architecture from fresh weights (the random-init floor)")
    p.add_argument("--cache-dir", default="~/.cache/pretrain-bench", help="where builtin:docstrings is cached")
    p.add_argument("--output", metavar="FILE", help="also write every seed's result and the summary as JSON")


def finetune(args) -> None:
    import json
    from pathlib import Path

    import pydantic

    from pretrain_bench import config as config_
    from pretrain_bench.errors import UserError
    from pretrain_bench.eval.finetune import FinetuneJob, finetune_seeds
    from pretrain_bench.eval.metrics import summarize
    from pretrain_bench.eval.tasks import load_task
    from pretrain_bench.section import validation_error

    recipe = config_.read_yaml(args.recipe).get("finetune") if args.recipe else None
    if not isinstance(recipe, dict | None):
        raise UserError(f"{args.recipe}: 'finetune' must be a mapping of fine-tuning keys (epochs, lr, ...)")
    raw = {"finetune": dict(recipe or {}), "task": {"path": args.task}}
    applied = config_.apply_overrides(raw, args.overrides)
    source = args.recipe or "command line"
    try:
        job = FinetuneJob.model_validate(raw)
    except pydantic.ValidationError as e:
        raise validation_error(e, FinetuneJob, source, applied) from None
    task = load_task(job.task, Path(args.cache_dir))
    for note in task.notes:
        print(f"finetune: {note}")
    results = finetune_seeds(args.checkpoint, task, job.finetune, "random" if args.random_init else "pretrained")
    summary = {key: summarize([r["metrics"][key] for r in results]) for key in task.metric_keys()}
    summary["score"] = summarize([r["score"] for r in results])
    for key, stats in summary.items():
        print(f"{task.name} {key}: median {100 * stats['median']:.1f} (min {100 * stats['min']:.1f}, "
              f"max {100 * stats['max']:.1f}) over {stats['n']} seeds")
    if args.output:
        Path(args.output).write_text(json.dumps({"task": task.name, "results": results, "summary": summary}, indent=1))
