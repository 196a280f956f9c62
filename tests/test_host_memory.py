"""train.keep_freed_memory: once a run is in its stride, a step's large tensors reuse the pages earlier
steps freed instead of faulting fresh ones in from the kernel."""

import subprocess
import sys

# Makes and frees a 64 MB tensor 20 times, as steps do their activations; prints the page faults of the
# last 5. (glibc's heap takes a few rounds to settle: its aligned allocations do not fit the first freed
# blocks exactly.)
STEADY_STATE_FAULTS = """
import resource, sys, torch
from pretrain_bench.train.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(20):
    if step == 15:
        before = faults()
    activation = torch.ones(16 * 2**20)
    del activation
print(faults() - before)
"""
PAGES_PER_STEP = 64 * 2**20 // 4096


def steady_state_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", STEADY_STATE_FAULTS, mode], capture_output=True, text=True,
                            check=True)
    return int(result.stdout.split()[-1])


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    assert steady_state_faults("default") > 0.9 * 5 * PAGES_PER_STEP  # glibc maps each block fresh
    assert steady_state_faults("keep") < 0.02 * 5 * PAGES_PER_STEP
