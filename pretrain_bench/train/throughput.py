"""Model FLOPs utilisation: FLOPs of one micro-batch counted by torch's FlopCounterMode (so every
objective, sparse heads and generators included, is measured the same way) against a matmul peak
measured on this machine at start-up; and the description of that machine each run records."""

from __future__ import annotations

import platform
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


@lru_cache(maxsize=None)
def matmul_peak_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, size: int = 2048,
                      seconds: float = 1.0, windows: int = 4) -> float:
    """Sustained FLOP/s of a square matmul in `dtype`: the denominator of MFU on this machine. The best
    of `windows` equal slices of `seconds`, so a neighbour's burst on a shared machine does not lower it.
    A CPU that emulates `dtype` (bf16 without AVX512-BF16 or AMX) takes minutes over one 2,048 matmul: the
    size halves until one matmul fits in `seconds`."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    probe = torch.ones(256, 256, device=device, dtype=dtype)  # no RNG draws: the training stream stays put
    probe @ probe
    sync()
    start = time.perf_counter()
    probe @ probe
    sync()
    rate = 2 * 256**3 / max(time.perf_counter() - start, 1e-9)
    while size > 256 and 2 * size**3 / rate > seconds:
        size //= 2
    a = torch.ones(size, size, device=device, dtype=dtype)
    b = torch.ones(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    for _ in range(windows):
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / windows:
            a @ b
            runs += 1
        sync()
        best = max(best, 2 * size**3 * runs / (time.perf_counter() - start))
    return best


def machine(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The hardware a run's speed belongs to, e.g. "AMD EPYC (family 26, model 2), AVX512, 2 threads": what a
    wall-clock budget buys depends on it. A virtual machine may name two CPU generations alike ("AMD EPYC"):
    the family and model numbers and the kernels torch dispatches to tell them apart."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    fields = {}
    for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []):
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def random_state_kept(device: torch.device):
    """A context after which the CPU generator, and on a GPU the device's (ELECTRA samples there), are as they
    were: measurement and evaluation must not shift the random streams a resumed run has to reproduce."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def training_flops(module: torch.nn.Module, inputs: dict) -> float:
    """FLOPs of forward + backward for one micro-batch: the counted forward times 3 (backward ~ 2x).
    Runs in eval mode without gradients and leaves the RNG untouched."""
    was_training = module.training
    module.eval()
    with (random_state_kept(next(module.parameters()).device), torch.no_grad(),
          FlopCounterMode(display=False) as counter):
        module(**inputs)
    module.train(was_training)
    return 3.0 * counter.get_total_flops()
