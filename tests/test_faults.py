"""Fault injection on real `pretrain-bench` processes: SIGKILL at five points, SIGTERM/SIGINT, a corrupted
newest checkpoint, injected NaN losses (a user plug-in objective), a full disk, a dead rank.

Every fault is made by a real mechanism (signals, edited files, a small filesystem, a killed process);
the product has no switch for any of it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from pretrain_bench import cli
from pretrain_bench.errors import UserError
from pretrain_bench.train.checkpoint import TMP_PREFIX, CheckpointManager
from pretrain_bench.train.tracker import Tracker
from tests.conftest import REPO, clean_env, launch, read_metrics, shm_buffers_left

pytestmark = pytest.mark.e2e
CONFIG = REPO / "configs" / "tiny-cpu.yaml"
STEPS = ["train.max_steps=60", "train.checkpoint_every=20", "train.log_every=5", "train.eval_at=[0.5,1.0]"]


def start(args, run_dir: Path, *extra, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pretrain_bench", "train", str(CONFIG), *map(str, args),
                             f"run_dir={run_dir}", *extra], env=clean_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def wait_for(process: subprocess.Popen, event, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not event():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: exit {process.returncode}\n{process.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.002)


def logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
    except FileNotFoundError:
        return 0


def checkpoints(run_dir: Path) -> CheckpointManager:
    return CheckpointManager(run_dir / "checkpoints", None, 2, True, lambda: None, lambda m: None)


def assert_no_half_checkpoint_is_visible(run_dir: Path) -> None:
    """Whatever the moment of death: `latest` names a complete checkpoint whose files match their checksums."""
    manager = checkpoints(run_dir)
    pointer = manager.folder / "latest"
    if pointer.exists():
        tag = pointer.read_text().strip()
        assert tag in manager.complete_tags() and manager.verify(tag) is None, tag
    for tag in manager.complete_tags():
        assert manager.verify(tag) is None, tag


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_overrides):
    """The uninterrupted run every interrupted one must reproduce exactly."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, err = finish(start([*tiny_overrides, *STEPS], run_dir))
    assert code == 0, err[-3000:]
    return run_dir


def assert_same_run(run_dir: Path, reference: Path, signalled_at: int | None = None) -> None:
    """The same training as the reference: every logged loss, every evaluation, the exported weights.
    A run stopped by a signal logs one extra line at that step, and the line after it averages fewer
    micro-batches (the window restarts at the resume), so those two are left out."""
    ours, theirs = read_metrics(run_dir), read_metrics(reference)
    assert [r["step"] for r in theirs] == list(range(5, 61, 5))
    if signalled_at is not None:
        assert signalled_at in [r["step"] for r in ours]
        skip = {signalled_at, 5 * math.ceil(signalled_at / 5)}
        ours, theirs = [r for r in ours if r["step"] not in skip], [r for r in theirs if r["step"] not in skip]
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]
    assert [r["eval_loss"] for r in read_metrics(run_dir, "eval")] == [r["eval_loss"] for r in read_metrics(reference, "eval")]
    mine, other = weights(run_dir), weights(reference)
    assert mine.keys() == other.keys() and all(torch.equal(mine[k], other[k]) for k in mine)


def test_sigkill_at_five_points_then_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_overrides, cache_dir,
                                                                             reference):
    # A fresh cache holding only the session's tokenizer: the first kill lands while shards are being packed.
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir / "tokenizers", cache / "tokenizers")
    args = [*tiny_overrides, f"data.cache_dir={cache}", *STEPS]
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    points = [
        ("while packing shards", lambda: any(cache.glob("prepared/*.tmp*"))),
        ("mid-training before any checkpoint", lambda: logged_step(run_dir) >= 10),
        ("while saving a checkpoint", lambda: (ckpt / f"{TMP_PREFIX}step00000040").exists()
         or (ckpt / "step00000040").exists()),
        ("between checkpoints", lambda: logged_step(run_dir) >= 50),
        ("while exporting final/", lambda: (run_dir / f"{TMP_PREFIX}final").exists() or (run_dir / "final").exists()),
    ]
    for number, (what, event) in enumerate(points):
        process = start(args, run_dir, *(["--resume"] if number else []))
        wait_for(process, event, what)
        process.send_signal(signal.SIGKILL)
        code, _ = finish(process)
        assert code == -signal.SIGKILL, f"{what}: the run was not killed (exit {code})"
        assert_no_half_checkpoint_is_visible(run_dir)
    code, err = finish(start(args, run_dir, "--resume"))
    assert code == 0, err[-3000:]
    assert "resumed from" in err and f"{ckpt / 'step00000060'}" in err  # the last kill came after the final save
    assert not list(ckpt.glob(f"{TMP_PREFIX}*"))  # a save killed half-way leaves nothing behind
    assert_same_run(run_dir, reference)


def test_sigterm_checkpoints_at_the_next_step_exits_75_and_resumes_exactly(tmp_path, tiny_overrides, reference):
    """A pre-emption as a cluster sends it: SIGTERM to every process of the job, DataLoader workers included."""
    args = [*tiny_overrides, *STEPS, "train.num_workers=1"]
    run_dir = tmp_path / "run"
    process = start(args, run_dir, start_new_session=True)
    wait_for(process, lambda: logged_step(run_dir) >= 25, "step 25")
    os.killpg(process.pid, signal.SIGTERM)
    code, err = finish(process)
    assert code == 75, err[-3000:]
    tag = (run_dir / "checkpoints" / "latest").read_text()
    step = int(tag.removeprefix("step"))
    assert 25 < step < 60 and step % 20, tag  # a checkpoint of its own, not the periodic one
    assert f"SIGTERM received: checkpoint saved at step {step}; continue with --resume" in err.splitlines()[-1]
    assert_no_half_checkpoint_is_visible(run_dir)
    code, err = finish(start(args, run_dir, "--resume"))
    assert code == 0, err[-3000:]
    assert_same_run(run_dir, reference, signalled_at=step)


def test_second_signal_exits_at_once_and_keeps_the_last_checkpoint(tmp_path, tiny_overrides):
    """Ctrl-C twice: the first asks for a checkpoint at the next step (here up to 150 micro-batches of 64
    rows away), the second leaves at once; the checkpoint from before is untouched."""
    run_dir = tmp_path / "run"
    process = start([*tiny_overrides, "train.max_steps=2", "train.checkpoint_every=1", "train.log_every=1",
                     "train.eval_at=[1.0]", "train.micro_batch_size=64", "train.grad_accum_steps=150",
                     "budget.batch_size_ramp=0.5"], run_dir)  # step 1: one micro-batch; step 2: all 150
    wait_for(process, lambda: (run_dir / "checkpoints" / "step00000001").exists(), "the first checkpoint")
    process.send_signal(signal.SIGINT)
    time.sleep(1.5)  # past the window in which a duplicate (a launcher forwarding the same signal) is ignored
    process.send_signal(signal.SIGINT)
    code, err = finish(process, timeout=60)
    assert code == 128 + signal.SIGINT, err[-3000:]
    assert "SIGINT: saving a checkpoint at the next step boundary" in err
    assert checkpoints(run_dir).complete_tags()[-1] == (run_dir / "checkpoints" / "latest").read_text()
    assert_no_half_checkpoint_is_visible(run_dir)


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path, tiny_overrides, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "final")  # as if the run had died before its export
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace(str(reference), str(run_dir)))
    newest = run_dir / "checkpoints" / "step00000060" / "mp_rank_00_model_states.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    code, err = finish(start([*tiny_overrides, *STEPS], run_dir, "--resume"))
    assert code == 0, err[-3000:]
    assert (f"checkpoint {newest.parent} is unusable (mp_rank_00_model_states.pt does not match its checksum); "
            "trying the previous one") in err
    assert f"resumed from {run_dir / 'checkpoints' / 'step00000040'} (step 40" in err
    assert f"moved it to {newest.parent.with_name('.unusable-step00000060')}" in err
    assert_same_run(run_dir, reference)


def test_truncated_or_unreadable_checkpoints_are_reported(tmp_path, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    manager = checkpoints(run_dir)
    assert manager.complete_tags() == ["step00000040", "step00000060"]
    optim = next((manager.folder / "step00000060").glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[:100])
    assert manager.verify("step00000060") == f"{optim.name} is missing or truncated"
    (manager.folder / "step00000040" / "checkpoint.json").write_text("{not json")
    assert manager.verify("step00000040").startswith("unreadable checkpoint.json")


class LoadingEngine:
    """Stands in for DeepSpeed's load: hands back the tag it was asked for, or fails as DeepSpeed does when
    the run has another number of ranks than the checkpoint."""

    def __init__(self, refuse: bool = False):
        self.refuse = refuse

    def load_checkpoint(self, folder: str, tag: str):
        if self.refuse:
            raise RuntimeError("the checkpoint being loaded used a DP world size of 1 but the current world size is 2")
        return f"{folder}/{tag}", {"tag": tag}


def test_an_intact_checkpoint_that_does_not_load_stops_the_run_and_stays_in_place(tmp_path, reference):
    """Another number of ranks is a setting to put back, not damage: the run stops with the fix, and no
    checkpoint is moved aside (a resume with the right settings still finds them all)."""
    folder = tmp_path / "run" / "checkpoints"
    shutil.copytree(reference / "checkpoints", folder)
    manager = CheckpointManager(folder, LoadingEngine(refuse=True), 2, True, lambda: None, lambda m: None)
    with pytest.raises(UserError, match=r"step00000060: the checkpoint is intact but does not load into this run "
                                        r"\(RuntimeError: .*DP world size.*\); resume with the settings and the torch and deepspeed versions"):
        manager.load_latest()
    assert manager.complete_tags() == ["step00000040", "step00000060"]
    assert not list(folder.glob(".unusable-*"))


def test_a_complete_checkpoint_newer_than_the_latest_pointer_is_the_one_loaded(tmp_path, reference):
    """A kill between a checkpoint's rename and the move of the `latest` pointer: the newer checkpoint is
    complete, so a resume continues from it rather than from the one the pointer still names."""
    folder = tmp_path / "run" / "checkpoints"
    shutil.copytree(reference / "checkpoints", folder)
    (folder / "latest").write_text("step00000040")
    manager = CheckpointManager(folder, LoadingEngine(), 2, True, lambda: None, lambda m: None)
    assert manager.load_latest() == ("step00000060", {"tag": "step00000060"})


def _load_on_rank(rank: int, folders: list[Path], port: int, out: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    said: list[str] = []
    manager = CheckpointManager(folders[rank], LoadingEngine(), 2, rank == 0, torch.distributed.barrier, said.append)
    (out / f"rank{rank}.json").write_text(json.dumps({"loaded": manager.load_latest()[0], "said": said}))
    torch.distributed.destroy_process_group()


def _damage(folder: Path, how: str) -> str:
    """Rank 1's view of its newest checkpoint; the problem it reports."""
    newest = folder / "step00000060"
    if how == "truncated":
        optim = next(newest.glob("*optim_states.pt"))
        optim.write_bytes(optim.read_bytes()[:100])
        return f"{optim.name} is missing or truncated"
    if how == "missing":  # a stale listing: the folder not there yet
        shutil.rmtree(newest)
        return "not in this rank's checkpoint folder"
    present = next(newest.glob("*optim_states.pt")).name  # a manifest of another shape: no sizes
    (newest / "checkpoint.json").write_text(json.dumps({"files": {present: {}}}))
    return "unreadable (KeyError: 'size')"


@pytest.mark.parametrize("how", ["truncated", "missing", "malformed"])
def test_ranks_load_the_newest_checkpoint_intact_on_all_of_them(tmp_path, reference, how):
    """Two gloo ranks, each with its own view of the checkpoints (a filesystem that shows one rank a damaged,
    stale or odd copy): both load the previous checkpoint, no rank leaves the agreement with an exception, and
    rank 0 keeps its intact newest in place rather than moving it aside."""
    from pretrain_bench.train.engine import free_port

    folders = [tmp_path / f"rank{rank}" / "checkpoints" for rank in range(2)]
    for folder in folders:
        shutil.copytree(reference / "checkpoints", folder)
    problem = _damage(folders[1], how)
    torch.multiprocessing.spawn(_load_on_rank, args=(folders, free_port(), tmp_path), nprocs=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["loaded"] for r in results] == ["step00000040", "step00000040"]
    assert results[0]["said"] == [f"checkpoint {folders[0] / 'step00000060'} is not usable on every rank "
                                  f"(rank 1: {problem}); trying the previous one"]
    assert (folders[0] / "step00000060").is_dir() and not list(folders[0].glob(".unusable-*"))


def test_a_metrics_line_cut_short_by_a_full_disk_is_dropped_on_resume(tmp_path):
    lines = [json.dumps({"split": "train", "step": step, "loss": 1.0}) for step in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"split": "train", "st')
    Tracker(tmp_path, True, resume_step=30).close()
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines


def test_injected_nan_is_skipped_and_counted(tmp_path, tiny_overrides, capsys):
    run_dir = tmp_path / "run"
    code = cli.main(["train", str(CONFIG), *tiny_overrides, "objective.name=tests.plugins.nan_objective:NaNAtCalls",
                     "objective.nan_at_calls=[3,4]", "train.max_steps=10", "train.log_every=1", "train.eval_at=[1.0]",
                     f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    lines = read_metrics(run_dir)
    assert [r["skipped_steps"] for r in lines] == [0, 0, 0, 1, 2, 2, 2, 2, 2, 2]
    assert [r["loss"] is None for r in lines] == [False] * 3 + [True] * 2 + [False] * 5
    assert all(math.isfinite(r["loss"]) for r in lines[5:])  # the skipped steps left the weights finite
    assert "step 5: non-finite loss or gradient, step skipped (2 in a row)" in err
    info = json.loads((run_dir / "final" / "pretrain_bench.json").read_text())
    assert info["skipped_steps"] == 2 and info["steps"] == 10
    assert all(torch.isfinite(w).all() for w in weights(run_dir).values())


def test_too_many_nonfinite_steps_in_a_row_stop_and_keep_the_last_good_checkpoint(tmp_path, tiny_overrides, capsys):
    run_dir = tmp_path / "run"
    code = cli.main(["train", str(CONFIG), *tiny_overrides, "objective.name=tests.plugins.nan_objective:NaNAtCalls",
                     "objective.nan_at_calls=[4,5,6]", "train.max_nonfinite_steps=3", "train.max_steps=20",
                     "train.checkpoint_every=2", "train.log_every=1", "train.eval_at=[1.0]", f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 3, err[-3000:]
    assert err.splitlines()[-1] == (f"pretrain-bench: stopped: 3 non-finite steps in a row (train.max_nonfinite_steps); "
                                    f"the last good checkpoint is in {run_dir / 'checkpoints'}; lower train.lr or check "
                                    "the data")
    manager = checkpoints(run_dir)
    assert (manager.folder / "latest").read_text() == "step00000006"  # step 6 was skipped: its weights are step 4's
    assert manager.verify("step00000006") is None
    states = torch.load(manager.folder / "step00000006" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert all(torch.isfinite(v).all() for v in states.values())
    assert not (run_dir / "final").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 6 MB filesystem (tmpfs); needs the right to mount. Without it the test fails and says so: a
    skipped test would pass for a check that never ran."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.fail(f"cannot mount a 6 MB tmpfs for the full-disk test ({made.stderr.decode().strip()}); run the "
                    "tests as a user allowed to mount, or deselect it with -k 'not full_disk_keeps' "
                    "(test_full_disk_in_process checks the same path without a real disk)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_keeps_the_previous_checkpoint_and_stops_clearly(small_disk, tiny_overrides):
    """Each checkpoint is ~2.4 MB: the third does not fit beside two others on a 6 MB disk."""
    run_dir = small_disk / "run"
    code, err = finish(start([*tiny_overrides, *STEPS], run_dir))
    assert code == 3, err[-3000:]
    folder = run_dir / "checkpoints"
    assert ("pretrain-bench: stopped: saving checkpoint step00000060 failed (" in err.splitlines()[-1]
            and f"the previous checkpoint {folder / 'step00000040'} is intact; free disk space and resume "
            "with --resume" in err.splitlines()[-1]), err[-2000:]
    assert checkpoints(run_dir).complete_tags() == ["step00000020", "step00000040"]
    assert (folder / "latest").read_text() == "step00000040"
    assert not list(folder.glob(f"{TMP_PREFIX}*"))
    assert_no_half_checkpoint_is_visible(run_dir)
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)  # space freed
    code, err = finish(start([*tiny_overrides, *STEPS], run_dir, "--resume"))
    assert code == 0 and f"resumed from {folder / 'step00000040'}" in err, err[-3000:]


def test_full_disk_in_process(tmp_path, tiny_overrides, capsys, monkeypatch):
    """The same fault where no filesystem can be mounted: DeepSpeed's checkpoint writer (torch.save) raises ENOSPC."""
    run_dir = tmp_path / "run"
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "step00000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code = cli.main(["train", str(CONFIG), *tiny_overrides, "train.max_steps=6", "train.checkpoint_every=2",
                     "train.eval_at=[1.0]", f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 3, err[-3000:]
    folder = run_dir / "checkpoints"
    assert ("saving checkpoint step00000004 failed (OSError: [Errno 28] No space left on device" in err
            and f"MiB free in {run_dir / 'checkpoints'})" in err
            and f"the previous checkpoint {folder / 'step00000002'} is intact" in err), err[-2000:]
    assert checkpoints(run_dir).complete_tags() == ["step00000002"]
    assert not list(folder.glob(f"{TMP_PREFIX}*"))


def test_a_dead_rank_stops_the_others_and_the_run_resumes(tmp_path, tiny_overrides):
    run_dir = tmp_path / "two"
    args = ["train", str(CONFIG), *tiny_overrides, "train.max_steps=40", "train.checkpoint_every=10",
            "train.log_every=5", "train.eval_at=[1.0]", "train.zero_stage=2", f"run_dir={run_dir}"]
    from pretrain_bench.train.engine import free_port

    port = free_port()
    launcher = subprocess.Popen([str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2", "--master_port",
                                 str(port), "--module", "pretrain_bench", *args], cwd=REPO,
                                env=clean_env(DS_ACCELERATOR="cpu"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    wait_for(launcher, lambda: logged_step(run_dir) >= 15, "step 15")
    rank1 = next(p for p in psutil.Process(launcher.pid).children(recursive=True)
                 if any(a.startswith("--local_rank=1") for a in p.cmdline()))
    # Both ranks' shared-memory all-reduce buffers are mapped, and already unlinked, so the kill leaks none.
    mapped = {line.split(maxsplit=5)[-1] for line in Path(f"/proc/{rank1.pid}/maps").read_text().splitlines()
              if f"_{port}_" in line}
    assert {name.rsplit("_", 1)[-1] for name in mapped} == {"0 (deleted)", "1 (deleted)"}, mapped
    rank1.kill()
    start_s = time.time()
    code, err = finish(launcher, timeout=120)  # not the 10-minute collective timeout
    assert code != 0 and time.time() - start_s < 60, err[-3000:]
    assert not [p for p in psutil.process_iter(["cmdline"]) if f"run_dir={run_dir}" in " ".join(p.info["cmdline"] or [])]
    assert_no_half_checkpoint_is_visible(run_dir)
    assert not shm_buffers_left(port)
    saved = (run_dir / "checkpoints" / "latest").read_text()
    result = launch(*args, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / saved}" in result.stderr
    info = json.loads((run_dir / "final" / "pretrain_bench.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 40


def test_full_disk_while_exporting_stops_clearly(tmp_path, tiny_overrides, capsys, monkeypatch):
    """The disk fills after the last checkpoint, while final/ is written: exit 3 naming the intact checkpoint."""
    from pretrain_bench.train import run

    def export(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "final"))

    monkeypatch.setattr(run, "export", export)
    run_dir = tmp_path / "run"
    code = cli.main(["train", str(CONFIG), *tiny_overrides, "train.max_steps=3", "train.eval_at=[1.0]",
                     f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 3, err[-3000:]
    assert err.splitlines()[-1] == (f"pretrain-bench: stopped: disk full writing {run_dir / 'final'} (No space left on "
                                    f"device); the last checkpoint {run_dir / 'checkpoints' / 'step00000003'} is "
                                    "intact; free disk space and resume with --resume")
