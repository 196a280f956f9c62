"""What a run records of the machine its tokens/s belong to."""

import platform

import torch

from pretrain_bench.train.throughput import machine

CPUINFO = """processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
"""


def test_two_cpu_generations_named_alike_are_told_apart(tmp_path):
    names = []
    for family, model in ((25, 17), (26, 2)):
        cpuinfo = tmp_path / f"cpuinfo-{family}"
        cpuinfo.write_text("\n".join(CPUINFO.format(n=n, family=family, model=model) for n in range(2)))
        names.append(machine(torch.device("cpu"), cpuinfo))
    kernels, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    assert names == [f"AMD EPYC (family {f}, model {m}), {kernels}, {threads} threads" for f, m in ((25, 17), (26, 2))]


def test_a_machine_without_cpuinfo_is_named_by_its_architecture(tmp_path):
    name = machine(torch.device("cpu"), tmp_path / "absent")
    assert name == f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
