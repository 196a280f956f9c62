"""Checkpoints that cannot be half-written.

A save goes to `checkpoints/.tmp-<tag>/` on every rank; rank 0 then writes `checkpoint.json` (every
file with its size and sha256), renames the folder to `<tag>` and only then moves the `latest`
pointer (write-then-rename). A load verifies the checksums first and falls back to the previous
complete checkpoint if the newest is damaged on any rank (the ranks agree on the tag); an intact
checkpoint that does not load (another number of ranks, another precision) stops the run and stays
where it is. A failed save (full disk) removes its temporary folder and leaves every earlier
checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from data_prep import durable
from data_prep.pack import sha256_file
from pretrain_bench.errors import RunStopped, UserError

MANIFEST = "checkpoint.json"
TMP_PREFIX = ".tmp-"
UNUSABLE_PREFIX = ".unusable-"  # a damaged checkpoint, kept for inspection, never loaded again


def from_every_rank(value) -> list:
    """`value` as each rank has it, in rank order; [value] in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    values = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    tmp.write_text(text)
    durable.replace(tmp, path)


class CheckpointManager:
    def __init__(self, folder: Path, engine, keep: int, is_main: bool, barrier: Callable[[], None],
                 log: Callable[[str], None]):
        self.folder, self.engine, self.keep, self.is_main = folder, engine, keep, is_main
        self.barrier, self.log = barrier, log

    def complete_tags(self) -> list[str]:
        """Finished checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists())

    def save(self, tag: str, client_state: dict, protected: set[str] = frozenset()) -> Path:
        """Save on all ranks; returns the final folder. Older checkpoints beyond `keep` are removed,
        except those in `protected`."""
        final, tmp = self.folder / tag, self.folder / f"{TMP_PREFIX}{tag}"
        try:
            if self.is_main:
                self.folder.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)
            self.barrier()
            self.engine.save_checkpoint(str(self.folder), tag=tmp.name, client_state=client_state,
                                        save_latest=False)
            durable.sync_tree(tmp)  # on every rank: only the node that wrote a file can flush it
            self.barrier()
            if self.is_main:
                files = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                         for p in sorted(tmp.rglob("*")) if p.is_file()}
                atomic_write_text(tmp / MANIFEST, json.dumps({"tag": tag, "files": files}, indent=1))
                shutil.rmtree(final, ignore_errors=True)
                durable.replace(tmp, final)
                atomic_write_text(self.folder / "latest", tag)  # for DeepSpeed's own tools (zero_to_fp32.py)
                self._rotate(protected | {tag})
        except (OSError, RuntimeError) as e:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = [t for t in self.complete_tags() if t != tag]
            kept = f"the previous checkpoint {self.folder / previous[-1]} is intact" if previous else "no earlier checkpoint exists"
            # torch's zip writer reports a full disk as an opaque position mismatch: say how much space is left
            free = shutil.disk_usage(self.folder).free / 2**20 if self.folder.is_dir() else float("nan")
            raise RunStopped(f"saving checkpoint {tag} failed ({e.__class__.__name__}: {e}; {free:.1f} MiB free in "
                             f"{self.folder}); {kept}; free disk space and resume with --resume") from None
        self.barrier()
        return final

    def _rotate(self, protected: set[str]) -> None:
        tags = self.complete_tags()
        for tag in tags[: max(0, len(tags) - self.keep)]:
            if tag not in protected:
                shutil.rmtree(self.folder / tag)

    def verify(self, tag: str) -> str | None:
        """None if every file matches its manifest entry, else what is wrong. Never raises: the ranks compare
        their answers in a collective that a rank leaving with an exception would hang."""
        folder = self.folder / tag
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            for name, entry in manifest["files"].items():
                path = folder / name
                if not path.is_file() or path.stat().st_size != entry["size"]:
                    return f"{name} is missing or truncated"
                if sha256_file(path) != entry["sha256"]:
                    return f"{name} does not match its checksum"
        except ValueError as e:
            return f"unreadable {MANIFEST} ({e})"
        except (OSError, KeyError, TypeError, AttributeError) as e:  # a failing disk, a manifest of another shape
            return f"unreadable ({e.__class__.__name__}: {e})"
        return None

    def load_latest(self) -> tuple[str, dict] | None:
        """Load the newest checkpoint intact on every rank into the engine: (tag, client state), or None if
        there is none (damaged ones are moved aside); a UserError if it does not load into this run."""
        if self.is_main and self.folder.is_dir():  # saves a kill interrupted: never complete, never read
            for stale in self.folder.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        loaded, unusable = None, []
        # newest first by name (step numbers), not by the `latest` pointer: a kill between a checkpoint's
        # rename and the pointer's move leaves the newer one complete. Every rank walks the same tags and
        # loads the same one, even where a filesystem shows one rank a stale listing or a damaged copy.
        for tag in sorted(set().union(*from_every_rank(self.complete_tags())), reverse=True):
            here = (self.folder / tag / MANIFEST).exists()
            problem = self.verify(tag) if here else "not in this rank's checkpoint folder"
            problems = from_every_rank(problem)
            if not any(problems):
                loaded = tag, self._load(tag)
                break
            if here and problem:
                self.log(f"checkpoint {self.folder / tag} is unusable ({problem}); trying the previous one")
                unusable.append(tag)
            else:
                ranks = "; ".join(f"rank {r}: {p}" for r, p in enumerate(problems) if p)
                self.log(f"checkpoint {self.folder / tag} is not usable on every rank ({ranks}); trying the previous one")
        self.barrier()  # every rank has read its files before rank 0 moves any
        if self.is_main:  # aside, so that rotation never keeps a bad checkpoint in place of a good one
            for tag in unusable:
                aside = self.folder / f"{UNUSABLE_PREFIX}{tag}"
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(self.folder / tag, aside)
                self.log(f"moved it to {aside}; delete it once inspected")
        return loaded

    def _load(self, tag: str) -> dict:
        """Load a verified checkpoint; its client state. Its files are as saved, so a failure here comes from the
        run's settings or the installed libraries, and the checkpoint stays in place for a resume that matches."""
        try:
            path, client_state = self.engine.load_checkpoint(str(self.folder), tag=tag)
            problem = None if path is not None else "DeepSpeed found nothing to load"
        except Exception as e:  # e.g. DeepSpeed refusing another data-parallel world size
            problem = f"{e.__class__.__name__}: {e}"
        if problem is None:
            return client_state
        raise UserError(f"{self.folder / tag}: the checkpoint is intact but does not load into this run ({problem}); "
                        "resume with the settings and the torch and deepspeed versions it was saved with (number of "
                        "ranks, train.precision, train.zero_stage), or start a new run in another run_dir")
