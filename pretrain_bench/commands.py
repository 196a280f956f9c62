"""The pre-training commands: prepare, train, objectives, budget-plan."""

from __future__ import annotations

import argparse

from pretrain_bench import config as config_
from pretrain_bench import objectives


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config values")


def prepare_args(p: argparse.ArgumentParser) -> None:
    config_args(p)


def train_args(p: argparse.ArgumentParser) -> None:
    config_args(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")
    group.add_argument("--overwrite", action="store_true", help="delete the run in run_dir and start over")


def no_args(p: argparse.ArgumentParser) -> None:
    pass


def prepare(args) -> None:
    from data_prep.prepare import prepare as run_prepare

    cfg = config_.load(args.config, args.overrides)
    cls = objectives.get(cfg.objective.name)
    prepared = run_prepare(cfg.data, cls.packing(cfg.objective), cls.artifacts_needed(cfg.objective))
    print(prepared.root)


def train(args) -> None:
    from pretrain_bench.train.run import train as run_train

    cfg = config_.load(args.config, args.overrides)
    run_train(cfg, resume=args.resume, overwrite=args.overwrite)


def list_objectives(args) -> None:
    for name, cls in objectives.available().items():
        print(f"{name:10s} {cls.summary}")


def budget_plan(args) -> None:
    from pretrain_bench.train.plan import budget_plan as run_plan

    run_plan(config_.load(args.config, args.overrides))
