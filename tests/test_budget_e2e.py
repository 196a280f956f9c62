"""Budget mode end to end through DeepSpeed on the CPU with tiny models.

Wall-clock runs use an injected clock that moves only when the model computes: one second per training
micro-batch, a thousand per evaluation batch (which must not count). Time-budget runs are then exact and
repeatable, and no test waits for real time.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain_bench import config
from pretrain_bench.errors import RunStopped
from pretrain_bench.objectives.mlm import MaskedLM
from pretrain_bench.train.budget import Budget
from pretrain_bench.train.checkpoint import CheckpointManager
from pretrain_bench.train.plan import budget_plan
from pretrain_bench.train.run import train
from pretrain_bench.train.schedules import lr_factor
from tests.conftest import REPO, clean_env, read_metrics, tiny_config

pytestmark = pytest.mark.e2e

TRAIN_SECONDS, EVAL_SECONDS = 1.0, 1000.0


class Crash(Exception):
    """Stands for a kill: the process dies between two checkpoints."""


class ModelClock:
    """Time advances only inside the module's forward; `crash_at` kills the run at that training forward."""

    def __init__(self, origin: float, crash_at: int | None = None):
        self.t, self.crash_at, self.forwards = origin, crash_at, 0

    def __call__(self) -> float:
        return self.t

    def forward(self, module) -> None:
        if module.training:
            self.forwards += 1
            if self.forwards == self.crash_at:
                raise Crash
        self.t += TRAIN_SECONDS if module.training else EVAL_SECONDS


@pytest.fixture
def clocked(monkeypatch):
    """Install a ModelClock into MaskedLM.forward; returns a function making a fresh one."""
    current = {}
    original = MaskedLM.forward

    def forward(self, *args, **kwargs):
        current["clock"].forward(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MaskedLM, "forward", forward)

    def make(origin: float = 0.0, crash_at: int | None = None) -> ModelClock:
        current["clock"] = ModelClock(origin, crash_at)
        return current["clock"]

    return make


TIME_RUN = ["budget.minutes=1", "train.max_steps=null", "train.grad_accum_steps=4", "budget.batch_size_ramp=0.4",
            "train.schedule.shape=triangular", "train.schedule.warmup=0.5", "train.log_every=1",
            "train.eval_at=[0.25,0.5,1.0]", "train.snapshot_at=[0.5,1.0]", "train.checkpoint_every=3",
            "train.threads=1"]  # one thread: tiny models gain nothing from two, and a shared CPU costs less


def expected_windows(cfg) -> list[int]:
    """Micro-batches per optimizer step as the budget plans them, one second each, until the deadline."""
    budget, seconds = Budget(cfg.budget, None), cfg.budget.seconds
    windows, done = [], 0
    while True:
        accum = budget.grad_accum_steps(cfg.train.grad_accum_steps, done / seconds)
        if done + accum > seconds:
            return windows
        windows.append(accum)
        done += accum


def test_time_budget_stops_at_the_deadline_and_a_crashed_run_resumes_on_its_clock(tmp_path, tiny_overrides, clocked):
    whole = tiny_config(tiny_overrides, tmp_path / "whole", *TIME_RUN)
    summary = train(whole, now=clocked(origin=5000.0))
    # the deadline is checked after every micro-batch: the run stops at exactly 60 one-second micro-batches,
    # in the middle of an accumulation window, which is dropped
    windows = expected_windows(whole)
    assert sum(windows) < 60 and len(windows) == summary["steps"]
    assert summary["stop_reason"] == "budget" and summary["training_seconds"] == 60.0 and summary["progress"] == 1.0
    assert summary["tokens"] == 60 * 16 * 64 and summary["export_seconds"] >= 0
    lines = read_metrics(whole.run_dir)
    done = 0
    for line, window in zip(lines, windows):  # ramp: accumulation grows 1 -> 4 over the first 40%
        done += window
        assert line["elapsed_s"] == done and line["progress"] == pytest.approx(done / 60, abs=1e-6)
        assert line["grad_accum"] == Budget(whole.budget, None).grad_accum_steps(4, done / 60)
        assert line["lr"] == pytest.approx(whole.train.lr * lr_factor(line["progress"], whole.train.schedule),
                                           rel=0, abs=whole.train.lr * 1e-5)  # the triangle against progress
    assert [line["grad_accum"] for line in lines][:3] == [1, 1, 1] and lines[-1]["grad_accum"] == 4
    evals = read_metrics(whole.run_dir, "eval")  # evaluation (1000 s a batch) did not eat into the budget
    assert [e["progress"] >= p for e, p in zip(evals, (0.25, 0.5, 1.0))] == [True] * 3 and len(evals) == 3
    snapshots = Path(whole.run_dir) / "snapshots"  # named by their point, stamped with the training time
    half = json.loads((snapshots / "p0.50" / "pretrain_bench.json").read_text())
    assert half["point"] == 0.5 and half["progress"] >= 0.5 and half["training_seconds"] == 60 * half["progress"]
    assert (snapshots / "p1.00" / "model.safetensors").exists() and (snapshots / "p0.50" / "model.safetensors").exists()

    crashed = tiny_config(tiny_overrides, tmp_path / "crashed", *TIME_RUN)
    with pytest.raises(Crash):
        train(crashed, now=clocked(origin=5000.0, crash_at=33))
    assert not (Path(crashed.run_dir) / "final").exists()
    # days later, on a clock with another origin: the time spent down is not counted
    messages = []
    resumed = train(crashed, resume=True, now=clocked(origin=9e6), log=messages.append)
    saved = max(s for s in range(3, len(windows) + 1, 3) if sum(windows[:s]) <= 32)  # last checkpoint before the kill
    assert any(f"(step {saved}, " in m and f"{sum(windows[:saved]):.1f}s of training)" in m for m in messages), messages
    assert {k: resumed[k] for k in ("steps", "tokens", "training_seconds", "stop_reason")} == \
           {k: summary[k] for k in ("steps", "tokens", "training_seconds", "stop_reason")}
    keys = ("step", "tokens", "elapsed_s", "progress", "lr", "grad_accum", "loss", "mlm_acc", "tokens_per_s")
    assert [[r[k] for k in keys] for r in read_metrics(crashed.run_dir)] == [[r[k] for k in keys] for r in lines]
    assert [e["eval_loss"] for e in read_metrics(crashed.run_dir, "eval")] == [e["eval_loss"] for e in evals]


def test_early_termination_keeps_a_checkpoint(tmp_path, tiny_overrides, clocked):
    cfg = tiny_config(tiny_overrides, tmp_path / "diverged", *TIME_RUN, "budget.early_stop.at=0.3",
                      "budget.early_stop.loss_above=1.5")  # no tiny model gets below 1.5 in a minute
    with pytest.raises(RunStopped) as stopped:
        train(cfg, now=clocked())
    assert stopped.value.exit_code == 3
    message = str(stopped.value)
    assert "early termination" in message and "above budget.early_stop.loss_above=1.5" in message
    line = read_metrics(cfg.run_dir)[-1]
    assert line["progress"] >= 0.3 and read_metrics(cfg.run_dir)[-2]["progress"] < 0.3  # the first chance
    folder = Path(cfg.run_dir) / "checkpoints"
    kept = f"step{line['step']:08d}"
    assert f"checkpoint kept in {folder}" in message and (folder / "latest").read_text() == kept
    assert CheckpointManager(folder, None, 2, True, lambda: None, print).verify(kept) is None
    assert not (Path(cfg.run_dir) / "final").exists()


TOKEN_RUN = [  # the one-GPU recipe itself, shrunk to a tiny model, fp32 and a token budget
    "model.size=tiny", "model.num_layers=2", "model.max_position_embeddings=64", "train.precision=fp32",
    "train.micro_batch_size=16", "train.grad_accum_steps=4", "train.num_workers=0", "train.log_every=2", "train.threads=1",
    "train.eval_batches=4", "train.eval_at=[0.5,1.0]", "train.snapshot_at=[]", "train.checkpoint_every_minutes=null",
    "budget.hours=null", "budget.tokens=90000", "budget.early_stop=null",
    "budget.seq_len_curriculum=[{until: 0.3, seq_len: 32}]"]


def test_token_budget_runs_repeat_exactly_and_export_loads_without_our_package(tmp_path, corpus_file, cache_dir):
    data = [f"data.path={corpus_file}", f"data.cache_dir={cache_dir}", "data.tokenizer.vocab_size=400",
            "data.seq_len=64", "data.num_proc=1"]
    runs = []
    for name in ("first", "second"):
        cfg = config.load(REPO / "configs" / "recipes" / "cramming-1gpu-24h.yaml",
                          [*data, *TOKEN_RUN, f"run_dir={tmp_path / name}"])
        runs.append((cfg, train(cfg)))
    (first, a), (second, b) = runs
    assert a["stop_reason"] == "budget" and a["tokens"] >= 90000 and a["tokens"] - 90000 < 16 * 64
    assert (a["steps"], a["tokens"]) == (b["steps"], b["tokens"])
    lines, again = read_metrics(first.run_dir), read_metrics(second.run_dir)
    assert [r["loss"] for r in lines] == [r["loss"] for r in again] and len(lines) >= 5
    assert [(r["step"], r["lr"], r["grad_accum"], r["seq_len"]) for r in lines] == \
           [(r["step"], r["lr"], r["grad_accum"], r["seq_len"]) for r in again]
    assert [e["eval_loss"] for e in read_metrics(first.run_dir, "eval")] == \
           [e["eval_loss"] for e in read_metrics(second.run_dir, "eval")]
    assert {r["seq_len"] for r in lines} == {32, 64}  # the curriculum ran both stages
    for line in lines:  # the triangle against the token fraction (progress is logged to 6 decimals)
        assert line["lr"] == pytest.approx(first.train.lr * lr_factor(line["progress"], first.train.schedule),
                                           rel=0, abs=first.train.lr * 1e-5)

    # the crammed export: transformers alone, in a process that has never imported pretrain_bench
    final = Path(first.run_dir) / "final"
    script = f"""
import sys, torch
from transformers import AutoModelForMaskedLM, AutoTokenizer
model = AutoModelForMaskedLM.from_pretrained({str(final)!r}).eval()
tokenizer = AutoTokenizer.from_pretrained({str(final)!r})
batch = tokenizer(["the quiet cat slowly finds a [MASK] ."], return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
assert "pretrain_bench" not in sys.modules
config = model.config
print(type(model).__name__, logits.shape[-1] == len(tokenizer), config.mlp_bias, config.attention_bias, config.decoder_bias,
      config.intermediate_size, model.decoder.weight.data_ptr() == model.model.embeddings.tok_embeddings.weight.data_ptr())
"""
    env = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ModernBertForMaskedLM", "True", "False", "False", "False", "128", "True"]


def test_budget_plan_measures_and_compares_with_the_data(tmp_path, tiny_overrides, capsys):
    cfg = tiny_config(tiny_overrides, tmp_path / "planned", "budget.minutes=30", "train.max_steps=null",
                      "train.grad_accum_steps=4", "budget.batch_size_ramp=0.5", "train.threads=1")
    plan = budget_plan(cfg)
    printed = capsys.readouterr().out
    assert plan["tokens_per_s"] > 0 and plan["step_tokens"] == 4 * 16 * 64
    assert plan["budget_tokens"] == pytest.approx(plan["tokens_per_s"] * 1800)
    manifest = json.loads((Path(cache_of(cfg)) / "manifest.json").read_text())
    assert plan["train_tokens"] == manifest["splits"]["train"]["rows"] * 64  # packed rows have no padding
    assert plan["epochs"] == pytest.approx(plan["budget_tokens"] / plan["train_tokens"])
    full_steps = plan["budget_tokens"] / plan["step_tokens"]
    assert full_steps < plan["steps"] < 4 * full_steps  # smaller steps during the ramp: more of them
    assert "tokens/s" in printed and "does not cover it" in printed and f"{plan['train_tokens']:,}" in printed
    assert not Path(f"{cfg.run_dir}.budget-plan").exists() and not Path(cfg.run_dir).exists()


def cache_of(cfg) -> str:
    from data_prep.prepare import prepare

    return str(prepare(cfg.data, log=lambda m: None).root)
