"""Shared fixtures: a generated corpus, a session-wide data cache, and tiny run configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests import corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return corpus.write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", 3000)


# The recipe configs/tiny-cpu.yaml had when the suite's thresholds were set; pinned so that tuning the smoke
# config for real corpora does not move every test's run. A test's own later overrides still win.
TINY_RECIPE = ["model.hidden_dropout=0.1", "model.attention_dropout=0.1", "train.lr=1e-3",
               "train.schedule.warmup=0.06", "train.max_steps=300"]


@pytest.fixture(scope="session")
def tiny_overrides(corpus_file, cache_dir):
    """Overrides that turn configs/tiny-cpu.yaml into a seconds-long run on the generated corpus."""
    return [*TINY_RECIPE, f"data.path={corpus_file}", f"data.cache_dir={cache_dir}", "data.tokenizer.vocab_size=400",
            "data.seq_len=64", "data.num_proc=1", "train.micro_batch_size=16", "train.num_workers=0",
            "train.eval_batches=4", "train.checkpoint_every_minutes=null"]


def tiny_config(overrides, run_dir, *extra):
    from pretrain_bench import config

    return config.load(REPO / "configs" / "tiny-cpu.yaml", [*TINY_RECIPE, *overrides, f"run_dir={run_dir}", *extra])


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra) -> dict:
    """This process's environment without the rendezvous variables an in-process run has set."""
    return {**{k: v for k, v in os.environ.items() if k not in DIST_VARS}, "PYTHONPATH": str(REPO), **extra}


def cli(*args, check=True, timeout=600, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m pretrain_bench ...` in a fresh process (kills, signals, exit codes)."""
    full_env = clean_env(**(env or {}))
    result = subprocess.run([sys.executable, "-m", "pretrain_bench", *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, env=full_env, cwd=REPO, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stderr[-4000:]}")
    return result


def launch(*args, num_gpus: int = 2, timeout: int = 600, port: int | None = None) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus N --module pretrain_bench ...` with this environment's launcher (whether or
    not it is on PATH), CPU ranks and `port` (a free one by default)."""
    from pretrain_bench.train.engine import free_port

    launcher = Path(sys.executable).with_name("deepspeed")
    command = [str(launcher), "--num_gpus", str(num_gpus), "--master_port", str(port or free_port()),
               "--module", "pretrain_bench", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=clean_env(DS_ACCELERATOR="cpu"))


def read_metrics(run_dir: Path, split: str = "train") -> list[dict]:
    import json

    return [r for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if r["split"] == split]


def shm_buffers_left(port: int) -> list[Path]:
    """DeepSpeed's CPU all-reduce buffers that the ranks of a run on `port` left in /dev/shm."""
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
