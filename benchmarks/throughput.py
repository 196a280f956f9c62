"""Training throughput, side by side on one machine: the Hugging Face recipe a user would pick instead
(`BertForMaskedLM` + `DataCollatorForLanguageModeling` + `Trainer`, as run_mlm does), a bare PyTorch
loop over pre-collated batches (the ceiling for our framework overhead), and pretrain-bench's own loop,
for every registered objective. Same model shape, same packed data, same micro-batch.

    python benchmarks/throughput.py                       # all contenders, writes benchmarks/results/
    python benchmarks/throughput.py --objectives mlm,electra --steps 30

Each contender runs in its own process (peak memory is per process). Reported: tokens/s, step time,
ratio to the baseline, MFU against a matmul peak measured here at the start and again at the end
(the higher counts: one slow reading would flatter every MFU) and, for the lockstep contenders, each step's
MFU against a peak read between the cycles around it (below), the share of step time spent waiting for data,
and peak memory.

A shared virtual machine drifts by 10-25% within a minute or two, more than the differences measured here.
So our loops and their bare loops run in lockstep: the processes of a group (`mlm`'s pair and two other
objectives' pairs) start together, and the driver passes one turn at a time round them, forwards then
backwards, one optimizer step per turn; a contender waits, idle, while the others step. Every step of a group
thus runs on the same minutes of the machine as its neighbours, and "vs bare loop" and "step vs mlm" are
medians over these neighbouring steps. The only instrument in our loop is that wait, taken after each log
line and outside the timed span. With `--rounds N` every group runs N times, and the fastest run of each
contender gives its tokens/s and MFU: a neighbour's burst slows whatever runs at that moment, never speeds
it up. The Trainer baseline runs alone, once a round. The matmul peak drifts the same way, so the driver
also reads it (1 s) after every cycle, all children waiting: "MFU (steps)" puts each step's FLOP/s over the
mean of the readings on either side of its cycle, numerator and denominator from the same seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
SHARED_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "en"

# 4 layers, width 256, 4 heads, FFN 1024; no dropout for every contender (cramming's pre-training
# practice; on a CPU dropout's random masks cost a sixth of the step)
MODEL = {"size": "mini", "hidden_dropout": 0.0, "attention_dropout": 0.0}
SEQ_LEN = 128


def data_config(args) -> dict:
    corpus = args.corpus or (str(SHARED_CORPUS) if SHARED_CORPUS.exists() else "builtin:docstrings")
    return {"path": corpus, "seq_len": SEQ_LEN, "tokenizer": {"vocab_size": args.vocab}, "cache_dir": args.cache_dir,
            "max_documents": args.max_documents}


def run_config(args, objective: str, run_dir: str) -> dict:
    return {"run_dir": run_dir, "seed": 0, "data": data_config(args), "model": {**MODEL, "compile": args.compile},
            "objective": {"name": objective},
            "train": {"max_steps": args.warmup + args.steps, "micro_batch_size": args.micro_batch,
                      "log_every": 1, "eval_at": [], "checkpoint_every_minutes": None,
                      "num_workers": args.num_workers, "precision": "bf16" if args.cuda else "fp32",
                      "keep_freed_memory": not args.malloc_defaults,
                      "peak_flops": args.peak_flops}}  # the driver's, so every contender's MFU has one denominator


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


TURN_FDS = "PRETRAIN_BENCH_TURN_FDS"  # the two pipe ends a lockstep child reads its turns from and reports on


class Turns:
    """A contender's side of the lockstep: wait for the driver's turn, take one step, hand the turn back.
    Run by hand (`--contender`, no driver) every turn is granted at once."""

    def __init__(self):
        fds = os.environ.get(TURN_FDS)
        self.go, self.done = ((os.fdopen(int(fd), mode) for fd, mode in zip(fds.split(","), "rw")) if fds
                              else (None, None))

    def _say(self, word: str) -> None:
        if self.done:
            print(word, file=self.done, flush=True)

    def ready(self) -> None:
        """Set up and past the first step (not in lockstep: the group starts together)."""
        self._say("ready")

    def take(self) -> float:
        """Wait for the turn; returns when it starts."""
        if self.go:
            self.go.readline()
        return time.perf_counter()

    def hand_back(self) -> None:
        self._say("done")

    def released(self) -> None:
        """After the last step: wait until the driver ends the lockstep (it closes the pipe), so that what this
        process does on its way out never runs next to another contender's step."""
        if self.go:
            self.go.read()


def summary(seconds: list[float], tokens: list[int], steps: int) -> dict:
    """The measured (last `steps`) lockstep steps: tokens/s and mean step time over them, and each step's
    seconds and tokens for the driver's pairing."""
    seconds, tokens = seconds[-steps:], tokens[-steps:]
    return {"tokens_per_s": sum(tokens) / sum(seconds), "step_s": sum(seconds) / len(seconds),
            "step_seconds": seconds, "step_tokens": tokens}


# --- contenders (each runs in a child process and prints one JSON line) ----------------------------

def hf_trainer(args) -> dict:
    """What a user would run instead: the run_mlm recipe on the same packed rows."""
    import datasets
    from transformers import (BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer,
                              TrainerCallback, TrainingArguments)

    from data_prep.prepare import DataConfig, prepare
    from pretrain_bench.data import Rows
    from pretrain_bench.models.backbone import ModelConfig

    prepared = prepare(DataConfig(**data_config(args)), log=lambda m: None)
    tokenizer = prepared.tokenizer
    total = args.warmup + args.steps
    rows = Rows(prepared, "train").take(__import__("numpy").arange(total * args.micro_batch))["input_ids"]
    dataset = datasets.Dataset.from_dict({"input_ids": rows.tolist()})
    layers, hidden, heads, ffn = ModelConfig(**MODEL).dims()
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                       num_attention_heads=heads, intermediate_size=ffn,
                                       hidden_dropout_prob=MODEL["hidden_dropout"],
                                       attention_probs_dropout_prob=MODEL["attention_dropout"]))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    collate_seconds = [0.0]

    def timed_collator(features):
        start = time.perf_counter()
        batch = collator(features)
        collate_seconds[0] += time.perf_counter() - start
        return batch

    marks = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kw):
            if state.global_step == args.warmup:
                marks["start"], marks["collate_start"] = time.perf_counter(), collate_seconds[0]

        def on_step_end(self, _args, state, control, **kw):
            marks["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, max_steps=total, per_device_train_batch_size=args.micro_batch, learning_rate=5e-4,
            weight_decay=0.01, warmup_steps=0, report_to=[], save_strategy="no", logging_strategy="no",
            use_cpu=not args.cuda, bf16=args.cuda, dataloader_num_workers=0, seed=0, disable_tqdm=True)
        Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=timed_collator,
                callbacks=[Clock()]).train()
    seconds = marks["end"] - marks["start"]
    from pretrain_bench.train.throughput import training_flops

    sample = collator([{"input_ids": r} for r in rows[: args.micro_batch].tolist()])
    flops = training_flops(model, {k: v for k, v in sample.items()})
    # concat-packed rows hold no padding: every position is a token, as the other contenders count them
    return {"tokens_per_s": args.steps * args.micro_batch * SEQ_LEN / seconds, "step_s": seconds / args.steps,
            "flops_per_step": flops, "data_wait": (collate_seconds[0] - marks["collate_start"]) / seconds,
            "peak_memory_mb": peak_memory_mb()}


def bare_loop(args, objective_name: str) -> dict:
    """Our module and corruption, pre-collated, in a plain PyTorch loop: no DeepSpeed, no loader."""
    import torch

    from pretrain_bench import config, objectives
    from pretrain_bench.data import MicroBatches, Rows
    from pretrain_bench.objectives import Vocab
    from pretrain_bench.train.engine import parameter_groups
    from pretrain_bench.train.throughput import training_flops
    from data_prep.prepare import prepare

    cfg = config.validate(run_config(args, objective_name, "unused"), "benchmark")
    cls = objectives.get(objective_name)
    prepared = prepare(cfg.data, cls.packing(cfg.objective), cls.artifacts_needed(cfg.objective), log=lambda m: None)
    vocab = Vocab.from_tokenizer(prepared.tokenizer)
    objective = cls(cfg.objective, vocab, prepared.artifacts)
    # the very rows and corruption of the loop's first steps, so both count the same (non-pad) tokens: rows
    # in file order would be the first documents only (padding differs between them with segment pairs)
    micro_batches = MicroBatches(Rows(prepared, "train"), objective.corrupt, vocab.pad_id,
                                 args.micro_batch, cfg.seed, 0, 1, cfg.data.seq_len)
    device = "cuda" if args.cuda else "cpu"
    batches, step_tokens = [], []
    for m in range(args.warmup + args.steps):
        inputs, num_tokens = micro_batches[m]
        batches.append({k: v.to(device) for k, v in inputs.items()})
        step_tokens.append(num_tokens)
    torch.manual_seed(0)
    module = objective.build(cfg.model).to(device)  # compiled in place when --compile
    optimizer = torch.optim.AdamW(parameter_groups(module, 0.01), lr=5e-4, fused=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.cuda)

    def step(batch):
        with autocast:
            loss = module(**batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if args.cuda else (lambda: None)
    turns = Turns()
    step(batches[0])
    sync()
    turns.ready()
    seconds = []
    for batch in batches[1:]:
        start = turns.take()
        step(batch)
        sync()
        seconds.append(time.perf_counter() - start)
        turns.hand_back()
    turns.released()
    measured = {**summary(seconds, step_tokens[1:], args.steps), "data_wait": 0.0, "peak_memory_mb": peak_memory_mb(),
                "flops_per_step": training_flops(module, batches[0])}
    return {**measured, **(op_shares(step, batches[-3:], args.cuda) if args.profile else {})}


MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def op_shares(step, batches, cuda: bool) -> dict:
    """Where a step's time goes (torch.profiler over a few more steps): the share of the wall time taken
    by the matmul kernels, by the attention kernels, and by the largest other operators. Matmuls and
    attention are what MFU counts; everything else is time MFU cannot see, so their share bounds MFU."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        sync()
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        sync()
        total = (time.perf_counter() - start) * 1e6  # microseconds, as the profiler counts
    # operators as launched (on a GPU, with the device time of the kernels each launched; the kernels'
    # own events would count that time twice)
    own = {e.key: (e.self_device_time_total if cuda else e.self_cpu_time_total) for e in prof.key_averages()
           if e.device_type == DeviceType.CPU}
    attention = {k for k in own if "attention" in k or "scaled_dot_product" in k}
    others = sorted(((k, v / total) for k, v in own.items() if k not in MATMULS | attention), key=lambda kv: -kv[1])
    return {"matmul_share": sum(own[k] for k in MATMULS if k in own) / total,
            "attention_share": sum(own[k] for k in attention) / total, "top_others": others[:6],
            "profiled_step_s": total / 1e6 / len(batches)}


def pretrain_bench_loop(args, objective_name: str) -> dict:
    """The real thing: `train()` with DeepSpeed, the loader and its workers, logging, the budget. A step is
    timed from the end of one train log line (every step logs) to the end of the next, which spans the
    whole loop: fetching the micro-batch, the step, the bookkeeping and the log line itself."""
    from pretrain_bench import config
    from pretrain_bench.train.run import train
    from pretrain_bench.train.tracker import Tracker

    turns, total = Turns(), args.warmup + args.steps
    seconds, tokens, wait_s, flops = [], [], [], []
    clock = {"turn": None, "tokens": 0}
    original_log = Tracker.log

    def log_in_lockstep(tracker, record):
        original_log(tracker, record)
        if record["split"] != "train":
            return
        if clock["turn"] is None:
            turns.ready()
        else:
            seconds.append(time.perf_counter() - clock["turn"])
            turns.hand_back()
            tokens.append(record["tokens"] - clock["tokens"])
            # the record's step_s also counts the wait for the turn; its data wait and FLOPs are absolute
            wait_s.append(record["data_wait"] * record["step_s"])
            flops.append(record["mfu"] * args.peak_flops * record["step_s"])
        clock["tokens"] = record["tokens"]
        if record["step"] < total:
            clock["turn"] = turns.take()
        else:
            turns.released()  # before the export

    Tracker.log = log_in_lockstep
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            train(config.validate(run_config(args, objective_name, run_dir), "benchmark"), log=lambda m: None)
    finally:
        Tracker.log = original_log
    measured = summary(seconds, tokens, args.steps)
    return {**measured, "data_wait": sum(wait_s[-args.steps:]) / sum(measured["step_seconds"]),
            "flops_per_step": statistics.mean(flops[-args.steps:]), "peak_memory_mb": peak_memory_mb()}


# --- the driver --------------------------------------------------------------------------------

def machine() -> dict:
    import platform

    import deepspeed
    import torch
    import transformers

    from pretrain_bench.train.throughput import machine as hardware

    return {"device": hardware(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "deepspeed": deepspeed.__version__,
            "date": time.strftime("%Y-%m-%d")}


def child_command(args, contender: str, peak: float) -> tuple[list[str], dict]:
    command = [sys.executable, __file__, "--contender", contender, "--peak-flops", str(peak), *sys.argv[1:]]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu" if not args.cuda else "cuda")}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return command, env


def child_result(returncode: int, stdout: str, stderr: str) -> dict:
    """The child's last stdout line, or its last error line."""
    if returncode != 0:
        return {"error": stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {returncode}"}
    return json.loads(stdout.strip().splitlines()[-1])


def child(args, contender: str, peak: float) -> dict:
    """A contender alone (the Trainer baseline)."""
    command, env = child_command(args, contender, peak)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    return child_result(result.returncode, result.stdout, result.stderr)


class LockstepChild:
    """A contender in its own process that steps when the driver gives it the turn (`Turns`)."""

    def __init__(self, args, contender: str, peak: float):
        command, env = child_command(args, contender, peak)
        go_read, go_write = os.pipe()
        done_read, done_write = os.pipe()
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # never a full pipe
        self.process = subprocess.Popen(command, stdout=self.out, stderr=self.err, text=True,
                                        env={**env, TURN_FDS: f"{go_read},{done_write}"},
                                        pass_fds=(go_read, done_write))
        os.close(go_read)
        os.close(done_write)
        self.go, self.done = os.fdopen(go_write, "w"), os.fdopen(done_read)
        self.alive = True

    def wait(self) -> None:
        """Until the child reports (ready, or its step done); a child that exited instead drops out."""
        self.alive = self.alive and self.done.readline() != ""

    def turn(self) -> None:
        """One step of the child, the rest of the group waiting."""
        if not self.alive:
            return
        try:
            print("go", file=self.go, flush=True)
        except BrokenPipeError:
            self.alive = False
            return
        self.wait()

    def result(self) -> dict:
        """Release the child and wait for its exit and result (one child at a time)."""
        self.go.close()
        returncode = self.process.wait()
        self.out.seek(0)
        self.err.seek(0)
        return child_result(returncode, self.out.read(), self.err.read())


def groups(names: list[str], size: int) -> list[list[str]]:
    """`mlm` and up to `size` other objectives per group, so that every objective's steps pair with mlm's;
    a group's processes hold their memory together (about 2 GB each here)."""
    others = [n for n in names if n != "mlm"]
    head = ["mlm"] if "mlm" in names else []
    return [head + others[i:i + size] for i in range(0, len(others), size)] or [head]


def run_group(args, contenders: list[str], peak: float, measure_peak) -> dict[str, dict]:
    """Start the group's contenders together; once each is set up and past its first step, pass the turn
    round them, forwards then backwards, one step each, for each of their remaining steps. Between cycles,
    the children waiting, the driver reads the matmul peak (`measure_peak`): each step's MFU is against the
    mean of the readings on either side of its cycle, from the same seconds of the machine."""
    children = {c: LockstepChild(args, c, peak) for c in contenders}
    for c in contenders:
        children[c].wait()
    readings = [measure_peak()]
    for cycle in range(args.warmup + args.steps - 1):
        for c in (contenders if cycle % 2 == 0 else contenders[::-1]):
            children[c].turn()
        readings.append(measure_peak())
    cycle_peaks = [(before + after) / 2 for before, after in zip(readings, readings[1:])]
    results = {c: children[c].result() for c in contenders}
    for r in results.values():
        if "error" not in r:
            r["step_peaks"] = cycle_peaks[-len(r["step_seconds"]):]
    return results


def paired(group_runs: list[dict], a: str, b: str, per_step) -> list[float]:
    """`per_step(a's seconds, a's tokens, b's seconds, b's tokens)` for each lockstep step of every group
    run that held both contenders (their n-th steps ran next to each other)."""
    values = []
    for run in group_runs:
        ra, rb = run.get(a), run.get(b)
        if ra and rb and "error" not in ra and "error" not in rb:
            values += [per_step(*step) for step in zip(ra["step_seconds"], ra["step_tokens"], rb["step_seconds"],
                                                       rb["step_tokens"])]
    return values


def table(results: dict, info: dict, peak: float) -> str:
    readings = info["peak_readings"]
    lockstep_low, lockstep_high = info["lockstep_peak_range"]
    measured = (f"the higher of {readings[0] / 1e9:,.0f} at the start and {readings[1] / 1e9:,.0f} at the end"
                if len(readings) == 2 else "given with --peak-flops")
    baseline = results["hf_trainer"].get("tokens_per_s")
    lines = [f"# Training throughput: {info['name']}", "",
             f"{info['device']}; torch {info['torch']}, transformers {info['transformers']}, deepspeed "
             f"{info['deepspeed']}; {info['date']}. Model: BERT 4 layers, width 256, 4 heads, FFN 1024, no dropout, "
             f"vocabulary {info['vocab']}, length {SEQ_LEN}, micro-batch {info['micro_batch']}; {info['steps']} steps after "
             f"{info['warmup']} warm-up{info['compiled']}{info['allocator']}; our loops and their bare loops stepping in "
             f"lockstep, in groups ({info['groups']}); the fastest of {info['rounds']} round(s); against the bare loop and "
             f"against `mlm`'s step, the median over lockstep steps (quartiles). Matmul peak: "
             f"{peak / 1e9:,.0f} GFLOP/s ({info['dtype']}; {measured}). MFU (steps): each lockstep step against the "
             f"peak read between the cycles on either side of it ({lockstep_low / 1e9:,.0f}-{lockstep_high / 1e9:,.0f} "
             f"GFLOP/s), the median over steps (quartiles).", "",
             "| contender | tokens/s | step (ms) | vs baseline | vs bare loop (steps) | step vs mlm (steps) | MFU "
             "| MFU (steps) | data wait | peak memory (MB) | spread over rounds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "n/a"

    def median_quartiles(values: list[float], unit: str = "x") -> str:
        if len(values) < 2:
            return "n/a"
        low, median, high = statistics.quantiles(values, n=4)
        if unit == "%":
            return f"{median:.1%} ({low:.1%}-{high:.1%})"
        return f"{median:.2f}x ({low:.2f}-{high:.2f})"

    def spread(r):
        rounds = r["tokens_per_s_rounds"]
        return f"{1 - min(rounds) / max(rounds):.1%} of {len(rounds)}" if len(rounds) > 1 else "one run"

    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | | | |")
            continue
        ours = name.startswith("pretrain-bench:")
        lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['step_s'] * 1e3:,.1f} | "
                     f"{ratio(r['tokens_per_s'], baseline)} | {median_quartiles(r['vs_bare_steps']) if ours else 'n/a'} | "
                     f"{median_quartiles(r['vs_mlm_steps']) if ours else ''} | "
                     f"{r['mfu']:.1%} | {median_quartiles(r['mfu_steps'], '%')} | {r['data_wait']:.1%} | "
                     f"{r['peak_memory_mb']:,.0f} | {spread(r)} |")
    profiled = {name: r for name, r in results.items() if "matmul_share" in r}
    if profiled:
        lines += ["", "Where the bare loop's step goes (torch.profiler, own time per operator, as shares of the profiled "
                  "step): MFU counts the matmul and attention kernels' FLOPs only, so their time bounds it.", "",
                  "| contender | matmuls | attention | MFU if nothing else took time | largest other operators |",
                  "|---|---:|---:|---:|---|"]
        for name, r in profiled.items():
            others = ", ".join(f"{op.removeprefix('aten::')} {share:.1%}" for op, share in r["top_others"])
            lines.append(f"| {name} | {r['matmul_share']:.1%} | {r['attention_share']:.1%} | "
                         f"{r['mfu_matmul_only']:.1%} | {others} |")
    return "\n".join(lines) + "\n"


def fastest(measured: list[dict], peak: float) -> dict:
    """The run with the most tokens/s (the least disturbed), its MFU against the driver's final peak, and the
    tokens/s of every run."""
    ok = [r for r in measured if "error" not in r]
    if not ok:
        return measured[-1]
    r = dict(max(ok, key=lambda r: r["tokens_per_s"]))
    r["mfu"] = r["flops_per_step"] / r["step_s"] / peak
    if "matmul_share" in r:  # the MFU if every other operator took no time (kernel times, not shares:
        # the profiler slows the step, not the kernels)
        kernels_s = (r["matmul_share"] + r["attention_share"]) * r["profiled_step_s"]
        r["mfu_matmul_only"] = r["flops_per_step"] / kernels_s / peak
    r["tokens_per_s_rounds"] = [m["tokens_per_s"] for m in ok]
    r["mfu_steps"] = [m["flops_per_step"] / (s * p) for m in ok if "step_peaks" in m
                      for s, p in zip(m["step_seconds"], m["step_peaks"])]
    return r


def machine_name(cuda: bool) -> str:
    """cpu-2core-amd-epyc-f26m2-avx512, gpu-nvidia-h100-...: results of different machines never overwrite each
    other (files before 2026-12-07 lack the CPU family and model: cpu-2core-amd-epyc-avx512 is the Zen 4)."""
    import re

    import torch

    if cuda:
        device = "gpu-" + torch.cuda.get_device_name(0)
    else:
        cpu, kernels, _threads = machine()["device"].rsplit(",", 2)
        family = re.search(r"\(family (\d+), model (\d+)\)", cpu)
        cpu = cpu[:family.start()] if family else cpu
        words = [w for w in re.sub(r"\(r\)|\(tm\)|processor|\d+-core", "", cpu.lower()).split() if w]
        words = words[:2] + ([f"f{family[1]}m{family[2]}"] if family else [])
        device = f"cpu-{os.cpu_count()}core-" + "-".join(words + [kernels.strip()])
    return re.sub(r"[^a-z0-9.-]+", "-", device.lower())


def default_name(args) -> str:
    """The machine, the vocabulary, and whether compiled: cpu-2core-amd-epyc-avx2-v32768."""
    return f"{machine_name(args.cuda)}-v{args.vocab}{'-compiled' if args.compile else ''}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default=None, help="results file name (default: the machine, e.g. cpu-2core-amd-epyc-avx2-v32768)")
    p.add_argument("--objectives", default=None, help="comma-separated (default: every registered objective)")
    p.add_argument("--steps", type=int, default=16, help="measured steps after warm-up")
    p.add_argument("--warmup", type=int, default=6, help="steps not measured")
    p.add_argument("--micro-batch", type=int, default=64, help="rows per step")
    p.add_argument("--vocab", type=int, default=32768,
                   help="WordPiece vocabulary size (the issue's range: 16k-32k; BERT has 30,522, cramming 32,768)")
    p.add_argument("--rounds", type=int, default=2, help="runs of every lockstep group (and of the Trainer); each contender's fastest gives its tokens/s")
    p.add_argument("--group-size", type=int, default=2,
                   help="objectives besides mlm per lockstep group (each adds two processes of about 2 GB)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile our encoder (bare loop and pretrain-bench; the baseline stays as run_mlm runs it)")
    p.add_argument("--num-workers", type=int, default=1, help="pretrain-bench DataLoader workers")
    p.add_argument("--profile", action="store_true",
                   help="profile the bare loops: matmul and attention shares of the step, the MFU ceiling they set")
    p.add_argument("--corpus", default=None, help="text file/folder (default: ../shared/data/corpus/en or the built-in corpus)")
    p.add_argument("--max-documents", type=int, default=20000, help="documents read for the benchmark data")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "pretrain-bench-benchmark"))
    p.add_argument("--malloc-defaults", action="store_true",
                   help="glibc's default allocator in every contender (without train.keep_freed_memory)")
    p.add_argument("--contender", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peak-flops", type=float, default=None,
                   help="MFU denominator in FLOP/s (default: a square matmul measured at the start, at the end "
                        "and between lockstep cycles)")
    args = p.parse_args()
    import torch

    from pretrain_bench.train.host_memory import keep_freed_memory
    from pretrain_bench.train.throughput import matmul_peak_flops

    args.cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if args.cuda else torch.float32

    def measure_peak(seconds: float = 3.0, windows: int = 4) -> float:  # a fresh reading each time, not the
        # one the function caches for training
        return matmul_peak_flops.__wrapped__("cuda" if args.cuda else "cpu", dtype, seconds=seconds, windows=windows)

    def lockstep_peak() -> float:  # between cycles: the best of four 0.25 s windows, or the peak given
        return args.peak_flops or measure_peak(seconds=1.0, windows=4)

    if args.contender:
        kind, _, objective = args.contender.partition(":")
        if not (args.cuda or args.malloc_defaults):  # every contender, as train() does on a CPU
            keep_freed_memory()
        args.peak_flops = args.peak_flops or measure_peak()  # our loop's FLOPs are read back from its MFU
        run = {"hf_trainer": lambda: hf_trainer(args), "bare": lambda: bare_loop(args, objective),
               "pretrain-bench": lambda: pretrain_bench_loop(args, objective)}[kind]
        print(json.dumps(run()))
        return

    from pretrain_bench import objectives

    start_peak = args.peak_flops or measure_peak()
    names = args.objectives.split(",") if args.objectives else list(objectives.available())
    runs = {contender: [] for contender in ["hf_trainer"] + [f"{kind}:{n}" for n in names
                                                               for kind in ("bare", "pretrain-bench")]}
    group_runs = []
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}: running hf_trainer ...", file=sys.stderr, flush=True)
        runs["hf_trainer"].append(r := child(args, "hf_trainer", start_peak))
        print(f"  {json.dumps(r)}", file=sys.stderr, flush=True)
        for group in groups(names, args.group_size):
            contenders = [f"{kind}:{n}" for n in group for kind in ("bare", "pretrain-bench")]
            print(f"round {round_ + 1}/{args.rounds}: running {', '.join(contenders)} in lockstep ...",
                  file=sys.stderr, flush=True)
            group_runs.append(run_group(args, contenders, start_peak, lockstep_peak))
            for contender, r in group_runs[-1].items():
                runs[contender].append(r)
                print(f"  {contender}: " + (r["error"] if "error" in r else f"{r['tokens_per_s']:,.0f} tokens/s"),
                      file=sys.stderr, flush=True)
    readings = [] if args.peak_flops else [start_peak, measure_peak()]
    peak = max(readings) if readings else args.peak_flops
    results = {contender: fastest(measured, peak) for contender, measured in runs.items()}
    for name in names:
        ours = f"pretrain-bench:{name}"
        results[ours]["vs_bare_steps"] = paired(group_runs, ours, f"bare:{name}",
                                                lambda s, t, bare_s, bare_t: (t / s) / (bare_t / bare_s))
        results[ours]["vs_mlm_steps"] = paired(group_runs, ours, "pretrain-bench:mlm",
                                               lambda s, t, mlm_s, mlm_t: s / mlm_s)
    lockstep = [p for run in group_runs for r in run.values() for p in r.get("step_peaks", [])] or [0.0]
    info = {**machine(), "name": args.name or default_name(args), "rounds": args.rounds,
            "steps": args.steps, "warmup": args.warmup,
            "groups": "; ".join(", ".join(g) for g in groups(names, args.group_size)),
            "micro_batch": args.micro_batch, "vocab": args.vocab,
            "compiled": "; our encoder torch.compiled" if args.compile else "",
            "allocator": "" if args.cuda else ("; glibc's default allocator" if args.malloc_defaults
                                               else "; freed memory kept in every process (train.keep_freed_memory)"),
            "dtype": "bf16" if args.cuda else "fp32", "peak_flops": peak,
            "peak_readings": readings, "lockstep_peak_range": [min(lockstep), max(lockstep)]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{info['name']}.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    markdown = table(results, info, peak)
    (RESULTS / f"{info['name']}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
