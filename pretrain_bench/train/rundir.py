"""The run folder: who owns it, and what may change when a run is resumed."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from pretrain_bench import config as config_
from pretrain_bench.errors import UserError
from pretrain_bench.train.budget import BudgetConfig
from pretrain_bench.train.checkpoint import atomic_write_text

# Keys that may differ on --resume: they change how a run is watched or where it stops, not what it learns
# (train.max_steps only with a budget: without one, progress, and so the schedule, is measured against it).
RESUMABLE_KEYS = {"train.max_steps", "train.log_every", "train.num_workers", "train.threads",
                  "train.keep_checkpoints", "train.checkpoint_every", "train.checkpoint_every_minutes",
                  "train.collective_timeout_s",
                  "data.num_proc", "data.cache_dir"}
RUN_CONTENT = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "tensorboard", "snapshots")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def saved_config(path: Path) -> dict:
    """A run's config.yaml read through the current schema, so that a setting added to the tool since the
    run was made counts at its default instead of as a change (a new setting's default keeps the behaviour
    from before it existed); as written if it no longer validates, so every difference shows."""
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return config_.validate(raw, str(path)).model_dump(mode="json")
    except UserError:
        return raw


def differences(old: dict, new: dict) -> dict[str, tuple]:
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check(run_dir: Path, config: dict, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder that holds another run, before any work and without writing anything.

    A folder holding another run is refused unless --resume (same config, operational keys aside)
    or --overwrite (delete it and start over) is given.
    """
    existing = run_dir / "config.yaml"
    if existing.exists():
        changed = differences(saved_config(existing), config)
        if resume:
            budgeted = BudgetConfig(**config.get("budget", {})).mode != "steps"
            resumable = RESUMABLE_KEYS if budgeted else RESUMABLE_KEYS - {"train.max_steps"}
            blocking = {k: v for k, v in changed.items() if k not in resumable}
            if blocking:
                detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(blocking.items())[:5])
                raise UserError(f"{existing}: the run was made with a different config ({detail}); resume with "
                                "the same config, or choose a new run_dir")
        elif not overwrite:
            raise UserError(f"run_dir {run_dir} already holds a run ({existing}); pass --resume to continue it, "
                            "--overwrite to delete it and start over, or choose a new run_dir")
    elif any((run_dir / name).exists() for name in RUN_CONTENT) and not overwrite:
        raise UserError(f"run_dir {run_dir} holds run files but no config.yaml; pass --overwrite to replace "
                        "them or choose a new run_dir")


def claim(run_dir: Path, config: dict, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Check that `run_dir` may hold this run, then write its config.yaml (rank 0). The runner calls it
    once the data is verified, so a run refused for bad input leaves the folder as it was."""
    if not is_main:  # rank 0 alone decides: a rank that starts late would find rank 0's own config.yaml
        return
    check(run_dir, config, resume, overwrite)
    if overwrite and not resume:
        for name in RUN_CONTENT:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
