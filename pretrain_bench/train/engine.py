"""Config -> `deepspeed.initialize`, for one process on a laptop CPU as for many ranks under the launcher."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from pretrain_bench.section import merged

SINGLE_PROCESS_ENV = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}


def init_distributed(timeout_s: float | None = None) -> tuple[int, int]:
    """(rank, world size). Outside the `deepspeed` launcher, give this process the rendezvous variables
    of a one-rank job (otherwise DeepSpeed looks for MPI) and a free port. `timeout_s` bounds every
    collective: a rank whose peer died fails after it instead of DeepSpeed's default."""
    if "WORLD_SIZE" not in os.environ:
        for key, value in SINGLE_PROCESS_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    from datetime import timedelta

    from deepspeed.constants import default_pg_timeout

    timeout = default_pg_timeout if timeout_s is None else timedelta(seconds=timeout_s)
    deepspeed.init_distributed(dist_backend=None, verbose=False, timeout=timeout)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        release_shm_allreduce_buffer(rank, world)
    return rank, world


def shm_allreduce_buffer(rank: int) -> Path:
    """Where DeepSpeed's CPU all-reduce keeps this rank's buffer (ops/csrc/cpu/comm/shm.cpp names it)."""
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
                               f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def release_shm_allreduce_buffer(rank: int, world: int) -> None:
    """DeepSpeed maps one 66 MB shared-memory buffer per rank on a CPU and never unlinks it, so every run
    under the launcher would leave them in RAM. Once every rank has mapped its peers' (the barrier), the
    names can go: the mappings live until the processes exit, a killed run included."""
    if world > 1:
        torch.distributed.barrier()
    shm_allreduce_buffer(rank).unlink(missing_ok=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 (AMD Zen 4, Intel Cooper Lake) or AMX (Sapphire Rapids and later): bf16 matmuls faster
    than fp32 (2.6x on a 2-core Zen 4 here); without either, torch emulates them."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolved_precision(precision: str) -> str:
    """`auto`: bf16 where the hardware runs it natively (a GPU, a CPU with AVX512-BF16 or AMX), else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"  # not a V100's emulation
    return "bf16" if cpu_has_native_bf16() else "fp32"


def takes_weight_decay(name: str, param: nn.Parameter) -> bool:
    """No weight decay on biases, normalisation weights and embeddings' LayerNorm (BERT/ELECTRA practice)."""
    return param.ndim >= 2 and "norm" not in name.lower()


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (decay if takes_weight_decay(name, param) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# DeepSpeed's default ZeRO bucket: 5e8 elements
DEFAULT_BUCKET_ELEMENTS = 500_000_000


def bucket_elements(parameters: int) -> int:
    """ZeRO's gradient and all-gather buckets sized to the model, up to DeepSpeed's default. ZeRO-1/2 allocate
    a reduce bucket at every micro-step (2 GB in fp32 at the default): on a CPU its release trims glibc's
    heap and the next step faults everything placed above it in again (95,000 page faults and 7% of a
    BERT-mini step on a 2-core EPYC); on a GPU it is memory the model never uses. A model smaller than the
    default fills one bucket either way."""
    return min(DEFAULT_BUCKET_ELEMENTS, -(-parameters // 1024) * 1024)  # all-gather wants an aligned multiple


def deepspeed_config(*, micro_batch: int, grad_accum: int, world: int, zero_stage: int, precision: str,
                     grad_clip: float, parameters: int, extra: dict) -> dict:
    bucket = bucket_elements(parameters)
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return merged(config, extra)


def build_engine(module: nn.Module, optimizer: torch.optim.Optimizer, config: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine
