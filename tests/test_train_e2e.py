"""End to end through DeepSpeed on the CPU with a tiny model on the generated corpus."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from pretrain_bench import objectives
from pretrain_bench.models import backbone
from pretrain_bench.objectives import Vocab
from pretrain_bench.train import engine as engine_module
from pretrain_bench.train import run as run_module
from pretrain_bench.train.engine import free_port, resolved_precision
from pretrain_bench.train.run import train
from tests.conftest import REPO, clean_env, cli, launch, read_metrics, shm_buffers_left, tiny_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file, cache_dir):
    overrides = [f"data.path={corpus_file}", f"data.cache_dir={cache_dir}", "data.tokenizer.vocab_size=400",
                 "data.seq_len=64", "data.num_proc=1", "train.micro_batch_size=16", "train.num_workers=1",
                 "train.eval_batches=4", "train.checkpoint_every_minutes=null", "train.max_steps=150",
                 "train.eval_at=[0.02,1.0]", "train.lr=2e-3"]
    run_dir = tmp_path_factory.mktemp("run") / "mlm"
    cfg = tiny_config(overrides, run_dir)
    return cfg, train(cfg)


def test_held_out_loss_falls_and_metrics_are_complete(trained):
    cfg, summary = trained
    evals = read_metrics(cfg.run_dir, "eval")
    assert [e["step"] for e in evals] == [3, 150]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.0
    lines = read_metrics(cfg.run_dir)
    assert lines[-1]["loss"] < lines[0]["loss"] - 1.0
    for key in ("step", "tokens", "elapsed_s", "lr", "loss", "tokens_per_s", "mfu", "mlm_loss", "mlm_acc"):
        assert all(line[key] is not None for line in lines), key
    assert summary["steps"] == 150 and summary["tokens"] == 150 * 16 * 64
    assert list((Path(cfg.run_dir) / "tensorboard").glob("events.*"))


def test_export_loads_and_matches_training_logits(trained):
    cfg, summary = trained
    final = Path(cfg.run_dir) / "final"
    model = AutoModelForMaskedLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert json.loads((final / "pretrain_bench.json").read_text())["objective"] == "mlm"
    batch = tokenizer(["The quiet cat slowly finds a garden.", "A river follows the city."], padding=True,
                      return_tensors="pt")
    # the training module, rebuilt from the final engine checkpoint's weights

    objective = objectives.get("mlm")(cfg.objective, Vocab.from_tokenizer(tokenizer), {})
    module = objective.build(cfg.model)
    module.model.load_state_dict(model.state_dict())
    module.eval()
    with torch.no_grad():
        hidden = backbone.encoder(module.model, cfg.model)(input_ids=batch["input_ids"],
                                                          attention_mask=batch["attention_mask"]).last_hidden_state
        ours = backbone.predict(module.model, cfg.model, hidden)
        theirs = model(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    checkpoint = sorted((Path(cfg.run_dir) / "checkpoints").glob("step*"))[-1]
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    exported = {f"model.{k}": v for k, v in model.state_dict().items()}
    for key, value in state.items():
        assert torch.equal(value, exported[key]), key


def test_bf16_run_exports_its_fp32_master_weights(tmp_path, tiny_overrides, monkeypatch):
    # DeepSpeed's bf16 trains bf16 weights against fp32 masters in the optimizer; on a CPU without native bf16
    # (here: made to look so) the run says it would be faster in fp32
    monkeypatch.setattr(run_module, "cpu_has_native_bf16", lambda: False)
    cfg = tiny_config([*tiny_overrides, "train.precision=bf16", "train.max_steps=6", "train.eval_at=[]",
                       "train.lr=1e-3"], tmp_path / "bf16")
    messages = []
    train(cfg, log=messages.append)
    assert any("has no native bf16" in m for m in messages)
    assert json.loads((Path(cfg.run_dir) / "final" / "pretrain_bench.json").read_text())["precision"] == "bf16"
    model = AutoModelForMaskedLM.from_pretrained(Path(cfg.run_dir) / "final")
    weights = [p for p in model.parameters() if p.dim() == 2]
    assert model.config.dtype == torch.float32 and {p.dtype for p in weights} == {torch.float32}
    # trained fp32 masters, not bf16 copies: most entries fall between two bf16 numbers
    rounded = sum(int((p == p.bfloat16().float()).sum()) for p in weights)
    assert rounded < 0.05 * sum(p.numel() for p in weights)


def test_zero_buckets_are_sized_to_the_model(tmp_path, tiny_overrides, monkeypatch):
    # ZeRO allocates its reduce bucket at every micro-step: at DeepSpeed's default (5e8 elements, 2 GB in fp32)
    # its release trims glibc's heap on a CPU, and every step faulted its tensors in again
    engines = []
    monkeypatch.setattr(run_module, "build_engine",
                        lambda *args: engines.append(engine_module.build_engine(*args)) or engines[-1])
    train(tiny_config([*tiny_overrides, "train.max_steps=2", "train.eval_at=[]"], tmp_path / "run"))
    parameters = sum(p.numel() for p in engines[0].module.parameters())
    bucket = engine_module.bucket_elements(parameters)
    assert engines[0].optimizer.reduce_bucket_size == engines[0].optimizer.allgather_bucket_size == bucket
    assert parameters <= bucket < parameters + 1024 and bucket % 1024 == 0
    assert engine_module.bucket_elements(10**12) == engine_module.DEFAULT_BUCKET_ELEMENTS


def test_extra_deepspeed_keys_merge_into_nested_sections():
    config = engine_module.deepspeed_config(
        micro_batch=8, grad_accum=2, world=1, zero_stage=2, precision="bf16", grad_clip=1.0, parameters=5000,
        extra={"zero_optimization": {"overlap_comm": True, "reduce_bucket_size": 2048}, "bf16": {"enabled": False},
               "steps_per_print": 10})
    assert config["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 2048, "allgather_bucket_size": 5120,
                                           "overlap_comm": True}
    assert config["bf16"] == {"enabled": False} and config["steps_per_print"] == 10
    assert config["train_batch_size"] == 16


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_native(native, monkeypatch):
    monkeypatch.setattr(engine_module, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved_precision("auto") == ("bf16" if native else "fp32")
    assert resolved_precision("fp32") == "fp32" and resolved_precision("bf16") == "bf16"


@pytest.mark.parametrize("gpu", ["a100", "v100"])
def test_auto_precision_on_a_gpu_is_bf16_only_where_native(gpu, monkeypatch):
    """torch's bf16 check counts emulation unless told not to: a V100 (compute capability 7.0) passes it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: gpu == "a100" or including_emulation)
    assert resolved_precision("auto") == ("bf16" if gpu == "a100" else "fp32")


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_overrides):
    args = ["train", REPO / "configs" / "tiny-cpu.yaml", *tiny_overrides, "train.max_steps=60",
            "train.checkpoint_every=20", "train.log_every=5", "train.eval_at=[0.5,1.0]"]
    cli(*args, f"run_dir={tmp_path / 'whole'}")
    killed = tmp_path / "killed"
    env = clean_env()
    process = subprocess.Popen([sys.executable, "-m", "pretrain_bench", *map(str, args), f"run_dir={killed}"],
                               env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step00000040").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    cli(*args, f"run_dir={killed}", "--resume")
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(killed)
    assert [r["step"] for r in whole] == [r["step"] for r in resumed] == list(range(5, 61, 5))
    assert [r["loss"] for r in whole] == [r["loss"] for r in resumed]
    assert read_metrics(tmp_path / "whole", "eval")[-1]["eval_loss"] == read_metrics(killed, "eval")[-1]["eval_loss"]


def test_two_ranks_zero2_under_the_deepspeed_launcher(tmp_path, tiny_overrides):
    run_dir, port = tmp_path / "two", free_port()
    result = launch("train", str(REPO / "configs" / "tiny-cpu.yaml"), *tiny_overrides,
                    "train.max_steps=20", "train.zero_stage=2", f"run_dir={run_dir}", port=port)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not shm_buffers_left(port)  # DeepSpeed's shared-memory all-reduce buffers are freed
    info = json.loads((run_dir / "final" / "pretrain_bench.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 20
    assert info["tokens"] == 20 * 2 * 16 * 64  # both ranks' rows count
    AutoModelForMaskedLM.from_pretrained(run_dir / "final")
